"""Soak: the whole pipeline for N minutes under a rotation of faults (issue 10, scenarios 1-4),
with new postings arriving all the time. Reports each daemon's RSS growth over its process's
life (goal <= 10 %) and the database connection count (goal: stable). Not run in CI.

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

from jobpipe.sandbox import Options, Sandbox  # noqa: E402
from jobpipe.settings import DAEMONS  # noqa: E402


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
                "queue": {"lease_s": 10.0},
                "ollama": {"read_timeout_s": 2.0},
                "fetcher": {"incremental_interval_s": 20.0},
            },
        ),
        say=lambda s: print(s, flush=True),
    )
    samples: dict[str, list[tuple[int, int]]] = {}  # daemon -> [(pid, rss kB)]
    conns: list[int] = []
    faults: list[str] = []
    control = ""
    try:
        box.start()
        control = box.ba_url.split("/jobboerse")[0]
        box.start_daemons()
        box.wait_drained(timeout=600)
        end = time.monotonic() + args.minutes * 60
        rotation = ["sigkill", "postgres_restart", "ollama_flap", "ba_faults"]
        k = 0
        while time.monotonic() < end:
            requests.post(
                f"{control}/_fake/population", json={"add": max(10, args.postings // 20)}, timeout=10
            )
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
            else:
                requests.post(
                    f"{control}/_fake/faults",
                    json={"fail_next": {"n": 5, "status": 403}, "malformed_next": {"n": 1}},
                    timeout=5,
                )
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
        box.wait_drained(timeout=600)
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
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
