"""Soak: the whole pipeline for N minutes under a rotation of faults (issue 10, scenarios 1-4;
issue 15: hostile items on a page, a model slower than the lease, statement timeouts in writes),
with new postings arriving all the time. Reports each daemon's RSS growth over its process's
life (goal <= 10 %), the database connection count (goal: stable), and once drained: postings
lost (live at the BA, storable, not stored), rows duplicated, items given up (none should be:
every fault here is transient). Exit code 1 when any of those three is not 0. Not run in CI.

    python bench/soak.py --minutes 30            # table, then one `RESULT {json}` line
    python bench/soak.py --minutes 2 --postings 300
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import threading  # noqa: E402

from jobpipe.sandbox import Options, Sandbox  # noqa: E402
from jobpipe.settings import DAEMONS  # noqa: E402
from jobpipe.sim.ba_data import HOSTILE_KINDS  # noqa: E402

LEASE_S = 10.0
STATEMENT_TIMEOUT_S = 2.0


def hold_write_lock(box: Sandbox, result: dict[str, int], max_s: float = 60.0) -> None:
    """Block writes to posting_embeddings (SHARE lock: reads go on) until a write has run into the
    statement timeout (or max_s), so the embedder's write - not its load - is what times out."""
    with box.connect() as c, c.transaction():
        c.execute("LOCK TABLE posting_embeddings IN SHARE MODE")
        end = time.monotonic() + max_s
        with box.connect() as probe:
            while time.monotonic() < end:
                n = probe.execute(
                    "SELECT count(*) FROM queue WHERE last_error ILIKE '%%statement timeout%%'"
                ).fetchone()[0]
                if n > result.get("seen", 0):
                    result["seen"] = n
                    result["hit"] = result.get("hit", 0) + 1
                    return
                time.sleep(0.2)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--postings", type=int, default=1000)
    ap.add_argument("--cycle-s", type=float, default=60.0, help="seconds between faults")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="jobpipe-soak-"))
    box = Sandbox(
        home,
        Options(
            postings=args.postings,
            real_model=False,
            extra_config={
                "queue": {"lease_s": LEASE_S},
                # the slow-model fault answers after lease_s + 5 s: the call must not time out first
                "ollama": {"read_timeout_s": LEASE_S + 15.0},
                "fetcher": {"incremental_interval_s": 20.0},
                "database": {"statement_timeout_s": STATEMENT_TIMEOUT_S},
            },
        ),
        say=lambda s: print(s, flush=True),
    )
    samples: dict[str, list[tuple[int, int]]] = {}  # daemon -> [(pid, rss kB)]
    conns: list[int] = []
    faults: list[str] = []
    hostile: dict[str, str] = {}  # refnr -> HOSTILE_KINDS kind
    timeouts: dict[str, int] = {}
    outcome: dict[str, int] = {}
    control = ""
    try:
        box.start()
        control = box.ba_url.split("/jobboerse")[0]
        box.start_daemons()
        box.wait_drained(timeout=600)
        end = time.monotonic() + args.minutes * 60
        rotation = [
            "sigkill",
            "postgres_restart",
            "ollama_flap",
            "ba_faults",
            "hostile_items",
            "slow_model",
            "statement_timeout",
        ]
        k = 0
        undo = None
        while time.monotonic() < end:
            if undo is not None:
                undo()
                undo = None
            added = requests.post(
                f"{control}/_fake/population", json={"add": max(10, args.postings // 20)}, timeout=10
            ).json()["added"]
            fault = rotation[k % len(rotation)]
            if fault == "sigkill":
                victim = DAEMONS[(k // len(rotation)) % len(DAEMONS)]
                box.kill(victim)
                box.start_daemon(victim)
                fault = f"sigkill {victim}"
            elif fault == "postgres_restart":
                box.restart_database()
            elif fault == "ollama_flap":
                requests.post(f"{box.ollama_url}/_fake/configure", json={"fail_mode": "503"}, timeout=5)
                time.sleep(5)
                requests.post(f"{box.ollama_url}/_fake/configure", json={"fail_mode": None}, timeout=5)
            elif fault == "ba_faults":
                requests.post(
                    f"{control}/_fake/faults",
                    json={"fail_next": {"n": 5, "status": 403}, "malformed_next": {"n": 1}},
                    timeout=5,
                )
            elif fault == "hostile_items":
                dirty = dict(zip(added, HOSTILE_KINDS, strict=False))
                requests.post(f"{control}/_fake/population", json={"dirty": dirty}, timeout=10)
                hostile.update(dirty)
            elif fault == "slow_model":
                # every model call takes longer than the lease, for one cycle
                slow = {"latency_per_request": LEASE_S + 5.0}
                requests.post(f"{box.ollama_url}/_fake/configure", json=slow, timeout=5)

                def undo() -> None:
                    fast = {"latency_per_request": 0.0}
                    requests.post(f"{box.ollama_url}/_fake/configure", json=fast, timeout=5)

            else:
                locker = threading.Thread(target=hold_write_lock, args=(box, timeouts), daemon=True)
                locker.start()
            faults.append(fault)
            k += 1
            time.sleep(args.cycle_s)
            for (name, _), p in box.daemons.items():
                if p.alive():
                    samples.setdefault(name, []).append((p.proc.pid, rss_kb(p.proc.pid)))
            with box.connect() as c:
                conns.append(
                    c.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    ).fetchone()[0]
                )
            print(f"  {fault:<28} {box.progress()}", flush=True)
        if undo is not None:
            undo()
        # Drained is about the database; the postings added last reach it with the next crawl of
        # every source: wait for runs that started after the last addition, then drain again.
        with box.connect() as c:
            added_at = c.execute("SELECT now()").fetchone()[0]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with box.connect() as c:
                behind = c.execute(
                    "SELECT count(*) FROM fetch_sources WHERE enabled AND "
                    "(last_success_at IS NULL OR last_success_at < %s)",
                    (added_at,),
                ).fetchone()[0]
            if not behind:
                break
            time.sleep(1.0)
        box.wait_drained(timeout=600)
        outcome = final_check(box, control, hostile)
    finally:
        box.stop_daemons()
        for p in box.daemons.values():
            p.signal(signal.SIGKILL)
        box.stop()

    print(f"\n{'daemon':<12} {'pid life samples':>16} {'first MB':>9} {'last MB':>8} {'growth':>8}")
    growth: dict[str, float] = {}
    for name, ss in sorted(samples.items()):
        # the longest-lived process of this daemon (killed ones restart from scratch)
        pids = {}
        for pid, kb in ss:
            pids.setdefault(pid, []).append(kb)
        life = max(pids.values(), key=len)
        # the first sample is after one cycle of warm-up; growth is last vs first of that process
        g = (life[-1] - life[0]) / life[0] if life[0] else 0.0
        growth[name] = round(g, 3)
        print(f"{name:<12} {len(life):>16} {life[0] / 1024:>9.1f} {life[-1] / 1024:>8.1f} {g:>8.1%}")
    print(f"database client connections per cycle: {conns}")
    result = {
        "minutes": args.minutes,
        "faults": len(faults),
        "rss_growth": growth,
        "max_rss_growth": max(growth.values(), default=0.0),
        "connections_min": min(conns, default=0),
        "connections_max": max(conns, default=0),
        "hostile_items": len(hostile),
        "statement_timeouts_hit": timeouts.get("hit", 0),
        **outcome,
    }
    print(f"once drained: {outcome}")
    print("RESULT " + json.dumps(result, sort_keys=True))
    bad = outcome.get("lost", 1) or outcome.get("duplicated", 1) or outcome.get("given_up", 1)
    return 1 if bad else 0


def final_check(box: Sandbox, control: str, hostile: dict[str, str]) -> dict[str, int]:
    """Lost, duplicated and given-up counts of the drained pipeline."""
    live: set[str] = set()
    for source in box.config()["fetcher"]["sources"]:
        params = {k: v for k, v in source.items() if k != "name"}
        live |= set(requests.get(f"{control}/_fake/refnrs", params=params, timeout=30).json()["active"])
    # A 4,000-character referenznummer cannot be stored (it is dropped and counted): not lost.
    unstorable = {r for r, kind in hostile.items() if kind == "long_refnr"}
    digest = box.digest()
    dup = sum(digest[t]["rows"] - digest[t]["distinct"] for t in ("postings", "embeddings"))
    with box.connect() as c:
        stored = {r[0] for r in c.execute("SELECT external_id FROM postings").fetchall()}
        unembedded, given_up, lease_expired, timed_out = c.execute(
            """SELECT (SELECT count(*) FROM postings p WHERE NOT EXISTS
                        (SELECT 1 FROM posting_embeddings e WHERE e.posting_id = p.id)),
                      (SELECT count(*) FROM queue WHERE status = 'given_up'),
                      (SELECT count(*) FROM queue WHERE last_error LIKE 'lease expired%%'),
                      (SELECT count(*) FROM queue WHERE last_error ILIKE '%%statement timeout%%')"""
        ).fetchone()
    return {
        "lost": len(live - unstorable - stored) + unembedded,
        "not_stored": len(live - unstorable - stored),
        "not_embedded": unembedded,
        "duplicated": dup,
        "given_up": given_up,
        "unstorable_dropped": len(unstorable - stored),
        "items_lease_expired": lease_expired,
        "items_charged_statement_timeout": timed_out,
    }


if __name__ == "__main__":
    sys.exit(main())
