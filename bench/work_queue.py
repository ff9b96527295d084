"""Queue benchmark (named work_queue.py: a bench/queue.py would shadow the stdlib `queue` module
for every script in bench/): claim+complete throughput, and claim latency with little vs much history.

History must not slow claims: the claim path only touches partial indexes over live rows, so
the claim latency with 1,000,000 finished items should stay within 1.5x of that with 10,000.
Both are measured side by side in one run on the same server.

    python bench/work_queue.py            # 10,000 vs 1,000,000 finished items
    python bench/work_queue.py --quick    # 2,000 vs 100,000 (CI)

Prints a table, then one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobpipe import db, embedded, queue  # noqa: E402

POLICY = queue.RetryPolicy(max_attempts=5, backoff_base_s=1, backoff_max_s=10)


def make_history(conn, stage: str, finished: int) -> None:
    """`finished` done items (as a long-running system accumulates), then VACUUM ANALYZE."""
    conn.execute(
        """INSERT INTO queue (stage, subject, status, outcome, finished_at, created_at)
           SELECT %s, s, 'done', 'ok', now() - make_interval(secs => s), now() - make_interval(secs => s)
             FROM generate_series(1, %s) AS s""",
        (stage, finished),
    )
    conn.execute("VACUUM ANALYZE queue")


def claim_latency(conn, stage: str, live: int, batch: int, rounds: int) -> list[float]:
    """Enqueue `live` items then time claim+complete of `batch` items, `rounds` times (ms)."""
    queue.enqueue(conn, stage, range(10_000_000, 10_000_000 + live))
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        items = queue.claim(conn, stage, "bench", batch, 60, POLICY)
        out.append((time.perf_counter() - t0) * 1000)
        queue.complete(conn, stage, "bench", {i.id: "ok" for i in items})
    return out


def throughput(conn, stage: str, n: int, batch: int) -> float:
    queue.enqueue(conn, stage, range(20_000_000, 20_000_000 + n))
    t0 = time.perf_counter()
    done = 0
    while True:
        items = queue.claim(conn, stage, "bench", batch, 60, POLICY)
        if not items:
            break
        with conn.transaction():
            done += queue.complete(conn, stage, "bench", {i.id: "ok" for i in items})
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--url", help="a migrated database to use (default: a temporary embedded one)")
    args = ap.parse_args(argv)
    small, large = (2_000, 100_000) if args.quick else (10_000, 1_000_000)
    rounds, batch = (30, 32) if args.quick else (100, 32)

    tmp = None
    url = args.url
    if url is None:
        tmp = embedded.temporary_parent("jobpipe-bench-queue-") / "pg"
        url = embedded.start(tmp)
        db.migrate(url)
    try:
        with db.connect(url) as conn:
            make_history(conn, "small", small)
            make_history(conn, "large", large)
            # Interleave the two measurements so machine noise hits both alike.
            lat_small: list[float] = []
            lat_large: list[float] = []
            for _ in range(5):
                lat_small += claim_latency(conn, "small", rounds * batch // 5, batch, rounds // 5)
                lat_large += claim_latency(conn, "large", rounds * batch // 5, batch, rounds // 5)
            rate = throughput(conn, "rate", 20_000 if not args.quick else 5_000, batch)
    finally:
        if tmp is not None:
            embedded.stop(tmp)

    med_s, med_l = statistics.median(lat_small), statistics.median(lat_large)
    p95 = lambda xs: sorted(xs)[int(0.95 * (len(xs) - 1))]  # noqa: E731
    ratio = med_l / med_s
    print(f"{'finished items':>16} {'claim median ms':>16} {'claim p95 ms':>13}")
    print(f"{small:>16,} {med_s:>16.2f} {p95(lat_small):>13.2f}")
    print(f"{large:>16,} {med_l:>16.2f} {p95(lat_large):>13.2f}")
    print(f"claim latency ratio (large/small history): {ratio:.2f} (goal <= 1.5)")
    print(f"claim+complete throughput, batches of {batch}: {rate:,.0f} items/s")
    result = {
        "finished_small": small,
        "finished_large": large,
        "claim_ms_small": round(med_s, 3),
        "claim_ms_large": round(med_l, 3),
        "history_ratio": round(ratio, 3),
        "claim_complete_per_s": round(rate, 1),
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
