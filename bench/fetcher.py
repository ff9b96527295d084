"""Benchmark: BA ingest of N postings from the fake BA (no latency, no rate limit) into PostgreSQL.

Measures, each crawl in its own child process (so peak RSS is the ingest's own):
- run 1 on an empty database: postings upserted per second (goal >= 3,000/s) and peak RSS
  (goal <= 150 MB: the crawl streams page by page, it does not hold the data in memory);
- run 2 over the same data, all unchanged, right away: at least 3x faster (nothing is written:
  the postings were seen within fetcher.seen_resolution_s);
- run 3 as if a day had passed (last_seen_at aged by a day first, outside the measurement): every
  unchanged row gets last_seen_at bumped, which rewrites the row - reported, for the honest cost.

The fake BA runs as its own process (`python -m jobpipe.sim.ba`), the database is a fresh
embedded PostgreSQL (or --database-url). The crawl is the daemon's: one source without
filters, split by region and more under the 10,000-result cap, 100 postings per page.

Usage: python bench/fetcher.py [--postings 100000] [--quick]
Prints a table, then one last line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_RATE = 3000.0  # postings upserted per second, first run
GOAL_RSS_MB = 150.0  # peak RSS of the ingest process
GOAL_SPEEDUP = 3.0  # unchanged second run vs first


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds of a local process (the database backend serving the crawl), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # not local (DATABASE_URL elsewhere) or not Linux
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(url: str, db_url: str, page_size: int, resolution: float) -> None:
    """One crawl, in this (fresh) process; prints one JSON line with its figures."""
    from jobpipe import crawl, db
    from jobpipe.ba.client import BAClient

    t0 = time.perf_counter()
    with db.connect(db_url) as conn, BAClient(url, rate_limit_per_s=None, max_retries=2) as client:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        db_cpu0 = _proc_cpu_s(backend)
        crawl.sync_sources(conn, [crawl.Source("bench", {})])
        conn.execute("UPDATE fetch_sources SET lease_owner = NULL, lease_expires = NULL")
        run = crawl.DueRun("bench", {}, crawl.FULL, None)
        settings = crawl.CrawlSettings(page_size=page_size, lease_s=600, seen_resolution_s=resolution)
        result = crawl.run_source(client, conn, run, f"bench:{os.getpid()}", settings)
        assert result is not None
        db_cpu1 = _proc_cpu_s(backend)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = usage.ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "seconds": seconds,
                "crawl_seconds": result.seconds,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "db_cpu_seconds": None if db_cpu0 is None or db_cpu1 is None else db_cpu1 - db_cpu0,
                "peak_rss_mb": peak_kb / 1024,
                "error": result.error,
                **result.stats_json(),
            }
        )
    )


def start_fake(postings: int, seed: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobpipe.sim.ba",
            "--port",
            "0",
            "--postings",
            str(postings),
            "--seed",
            str(seed),
            "--expired-share",
            "0",
            "--occupations",
            "2000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    proc.stdout.readline()  # BERUFENET URL
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"the fake BA did not start (got {url!r})")
    return proc, url


def run_child(url: str, db_url: str, page_size: int, resolution: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--url",
            url,
            "--database-url",
            db_url,
            "--page-size",
            str(page_size),
            "--resolution",
            str(resolution),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"ingest child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu(run: dict[str, Any]) -> str:
    db_cpu = run.get("db_cpu_seconds")
    return f"{run['cpu_seconds']:.1f} / " + ("?" if db_cpu is None else f"{db_cpu:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--postings", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="5,000 postings (CI: keeps the benchmark alive)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--page-size", type=int, default=100)
    ap.add_argument(
        "--resolution", type=float, default=3600.0, help="fetcher.seen_resolution_s (default 3600)"
    )
    ap.add_argument("--database-url", help="an empty, migrated database (default: a fresh embedded server)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.url, args.database_url, args.page_size, args.resolution)
        return 0
    n = 5_000 if args.quick else args.postings

    from jobpipe import db, embedded

    tmp = None
    db_url = args.database_url
    if db_url is None:
        tmp = embedded.temporary_parent("jobpipe-bench-fetcher-")
        db_url = embedded.start(tmp / "pgdata")
    fake = None
    try:
        db.migrate(db_url)
        with db.connect(db_url) as conn:
            if conn.execute("SELECT count(*) FROM postings").fetchone()[0]:
                raise SystemExit("the database must be empty (postings has rows)")
        t = time.perf_counter()
        fake, url = start_fake(n, args.seed)
        gen_s = time.perf_counter() - t
        first = run_child(url, db_url, args.page_size, args.resolution)
        second = run_child(url, db_url, args.page_size, args.resolution)
        with db.connect(db_url) as conn:
            stored = conn.execute("SELECT count(*) FROM postings").fetchone()[0]
            # As if the next full crawl came a day later: every unchanged row gets last_seen_at bumped.
            conn.execute("UPDATE postings SET last_seen_at = last_seen_at - interval '1 day'")
            conn.execute("VACUUM ANALYZE postings")
        third = run_child(url, db_url, args.page_size, args.resolution)
    finally:
        if fake is not None:
            fake.terminate()
            fake.wait(10)
        if tmp is not None:
            embedded.stop(tmp / "pgdata")
            shutil.rmtree(tmp, ignore_errors=True)

    rate1 = first["inserted"] / first["crawl_seconds"] if first["crawl_seconds"] else 0.0
    seen2 = second["unchanged"] + second["updated"] + second["inserted"]
    rate2 = seen2 / second["crawl_seconds"] if second["crawl_seconds"] else 0.0
    speedup = first["crawl_seconds"] / second["crawl_seconds"] if second["crawl_seconds"] else 0.0
    speedup3 = first["crawl_seconds"] / third["crawl_seconds"] if third["crawl_seconds"] else 0.0
    rows = [
        ("postings in the fake", f"{n:,}", ""),
        ("stored postings", f"{stored:,}", "all" if stored == n else f"MISSING {n - stored}"),
        (
            "pages / requests / parts (run 1)",
            f"{first['pages']} / {first['requests']} / {first['parts']}",
            "",
        ),
        ("run 1: seconds (empty db)", f"{first['crawl_seconds']:.1f}", ""),
        ("run 1: postings upserted/s", f"{rate1:,.0f}", f"goal >= {GOAL_RATE:,.0f}"),
        ("run 1: peak RSS of the ingest (MB)", f"{first['peak_rss_mb']:.0f}", f"goal <= {GOAL_RSS_MB:.0f}"),
        ("run 1: CPU s of the ingest / its db backend", _cpu(first), "the rest of the wall time: waiting"),
        (
            "run 2: seconds (all unchanged, at once)",
            f"{second['crawl_seconds']:.1f}",
            f"{second['unchanged']:,} unchanged, {second['bumped']:,} rows rewritten, "
            f"{second['updated']} changed",
        ),
        ("run 2: postings/s", f"{rate2:,.0f}", ""),
        ("run 2: peak RSS (MB)", f"{second['peak_rss_mb']:.0f}", ""),
        ("run 2: CPU s of the ingest / its db backend", _cpu(second), ""),
        ("speed-up of run 2", f"{speedup:.1f}x", f"goal >= {GOAL_SPEEDUP:.0f}x"),
        (
            "run 3: seconds (unchanged, a day later)",
            f"{third['crawl_seconds']:.1f}",
            f"{third['bumped']:,} rows rewritten (last_seen_at bumped)",
        ),
        ("speed-up of run 3", f"{speedup3:.1f}x", "every unchanged row rewritten"),
        ("(fake BA start-up, generation)", f"{gen_s:.1f}s", "not measured"),
        ("load average (1 min) at the end", f"{os.getloadavg()[0]:.1f}", f"{os.cpu_count()} CPUs"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'fetcher ingest benchmark':<{width}}  {'value':>14}  notes")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}")
    result = {
        "postings": n,
        "stored": stored,
        "run1_seconds": round(first["crawl_seconds"], 3),
        "run1_postings_per_s": round(rate1, 1),
        "run1_peak_rss_mb": round(first["peak_rss_mb"], 1),
        "run1_cpu_seconds": round(first["cpu_seconds"], 2),
        "run1_db_cpu_seconds": first["db_cpu_seconds"],
        "load_average": round(os.getloadavg()[0], 2),
        "run2_seconds": round(second["crawl_seconds"], 3),
        "run2_postings_per_s": round(rate2, 1),
        "run2_peak_rss_mb": round(second["peak_rss_mb"], 1),
        "speedup": round(speedup, 2),
        "run3_seconds": round(third["crawl_seconds"], 3),
        "run3_bumped": third["bumped"],
        "speedup_run3": round(speedup3, 2),
        "pages": first["pages"],
        "requests": first["requests"],
        "parts": first["parts"],
        "truncated_parts": first["truncated_parts"],
        "goals_met": {
            "rate": rate1 >= GOAL_RATE,
            "rss": first["peak_rss_mb"] <= GOAL_RSS_MB,
            "speedup": speedup >= GOAL_SPEEDUP,
            "complete": stored == n,
        },
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
