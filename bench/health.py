"""How long does `jobpipe health` take on a production-sized database? Goal: <= 1 s at 1,000,000 postings.

The data set (generated inside PostgreSQL with generate_series, triggers off) is what 14 days of
operation leave behind for N postings: the postings themselves; queue history for every stage
(embed and verify done for nearly every posting, descriptions with 0.2 % given up, titles
classified, a backlog of due and scheduled items, some in flight); per-minute outcome counts for
14 days (the queue's retention); daemon heartbeats, a firing alert, alert samples; and one stage
with the predecessor's silent failure (56 of 56 failed, nothing pending), which must come out FAIL.

Measured: `health.collect` (all the queries and verdicts, median of --repeat runs) and the whole
`jobpipe health --json` command as an operator runs it (Python start-up included). Prints a table
and one `RESULT {json}` line. `--quick` is the small CI variant.

Usage: python bench/health.py [--quick] [--postings N] [--repeat R] [--db-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobpipe import config, db, embedded, health  # noqa: E402
from jobpipe.settings import DAEMONS  # noqa: E402

GOAL_S = 1.0
DAYS = 14


def populate(conn: Any, n: int) -> dict[str, float]:
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # generated data: no triggers
        conn.execute(
            """INSERT INTO postings (external_id, title, first_seen_at, last_seen_at, verified_at, active)
               SELECT 'B-' || i, 'Stelle ' || (i %% 50000), fs, fs + interval '1 hour',
                      fs + interval '2 days', random() > 0.1
                 FROM (SELECT i, now() - random() * interval '60 days' AS fs
                         FROM generate_series(1, %s) AS i) g""",
            (n,),
        )
    t["postings_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        # Finished history over the retention period, then the live rows.
        for stage, share, outcome in (
            ("embed", 0.97, "embedded"),
            ("verify", 0.95, "active"),
            ("description", 0.90, "fetched"),
            ("classify", 0.10, "matched"),
        ):
            conn.execute(
                """INSERT INTO queue (stage, subject, status, outcome, created_at, updated_at, finished_at,
                                      run_after)
                   SELECT %(stage)s, i, 'done', %(outcome)s, f - interval '1 minute', f, f, f
                     FROM (SELECT i, now() - random() * make_interval(days => %(days)s) AS f
                             FROM generate_series(1, %(m)s) AS i) g""",
                {"stage": stage, "outcome": outcome, "days": DAYS, "m": int(n * share)},
            )
        # Backlog: due now (oldest 3 h), waiting for a retry, in flight, given up.
        conn.execute(
            """INSERT INTO queue (stage, subject, status, created_at, run_after, attempts, last_error,
                                  lease_owner, lease_expires)
               SELECT st, %(n)s * (1 + k) + i, s, now() - random() * interval '3 hours',
                      CASE WHEN s = 'pending' AND i %% 5 = 0 THEN now() + interval '10 minutes'
                           ELSE now() - random() * interval '3 hours' END,
                      CASE WHEN s = 'given_up' THEN 5 ELSE 0 END,
                      CASE WHEN s = 'given_up' THEN 'http 404: gone' END,
                      CASE WHEN s = 'running' THEN 'bench' END,
                      CASE WHEN s = 'running' THEN now() + interval '5 minutes' END
                 FROM (VALUES (1, 'embed', 'pending', 0.03), (2, 'embed', 'running', 0.0005),
                              (3, 'description', 'pending', 0.02), (4, 'description', 'given_up', 0.002),
                              (5, 'verify', 'pending', 0.01), (6, 'classify', 'pending', 0.005),
                              (7, 'classify', 'given_up', 0.0005)) AS v(k, st, s, share),
                      LATERAL generate_series(1, greatest(1, (%(n)s * share)::int)) AS i""",
            {"n": n},
        )
        # The silent failure: 56 of 56 given up in no time two hours ago, nothing pending.
        conn.execute(
            """INSERT INTO queue (stage, subject, status, attempts, created_at, finished_at, last_error)
               SELECT 'summary', i, 'given_up', 1, now() - interval '2 hours', now() - interval '2 hours',
                      'bug: undefined function summarize_text' FROM generate_series(1, 56) AS i"""
        )
        # Per-minute counts for the retention period, roughly what the history above implies.
        conn.execute(
            """INSERT INTO stage_counts (stage, minute, outcome, n)
               SELECT st, m, o, c FROM (
               SELECT st, m, o,
                      floor(%(n)s * share / (%(days)s * 1440) * (0.5 + random()) + random())::int AS c
                 FROM (VALUES ('embed', 'embedded', 0.97), ('embed', 'failed', 0.001),
                              ('verify', 'active', 0.9), ('verify', 'gone', 0.05),
                              ('description', 'fetched', 0.9), ('description', 'failed', 0.01),
                              ('description', 'given_up', 0.002), ('classify', 'matched', 0.1))
                        AS v(st, o, share),
                      generate_series(date_trunc('minute', now() - make_interval(days => %(days)s)),
                                      date_trunc('minute', now()), interval '1 minute') AS m) x
                WHERE c > 0""",
            {"n": n, "days": DAYS},
        )
        conn.execute(
            """INSERT INTO stage_counts (stage, minute, outcome, n)
               VALUES ('summary', date_trunc('minute', now() - interval '2 hours'), 'given_up', 56)"""
        )
        conn.execute(
            """INSERT INTO daemon_status (daemon, instance, host, pid, started_at, status, dependencies)
               SELECT d, 'bench:' || d, 'bench', 1, now(), 'ok', '{"database": true}'
                 FROM unnest(%s::text[]) AS d""",
            (list(DAEMONS),),
        )
        conn.execute(
            """INSERT INTO alert_samples (stage, at, daemon, pending)
               SELECT st, now() - make_interval(secs => k * 30), d, 1000 + k
                 FROM (VALUES ('embed', 'embedder'), ('description', 'fetcher'), ('verify', 'verifier'),
                              ('classify', 'classifier')) AS v(st, d),
                      generate_series(1, 500) AS k"""
        )
        conn.execute(
            """INSERT INTO alerts (daemon, condition, firing, severity, summary, last_value)
               VALUES ('summary', 'failure_ratio:summary', true, 'fail', 'failure ratio on stage summary',
                       '56 of 56 processed failed')"""
        )
    t["queue_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    conn.execute("VACUUM ANALYZE queue")
    conn.execute("VACUUM ANALYZE stage_counts")
    conn.execute("ANALYZE postings")
    t["analyze_s"] = time.perf_counter() - t0
    return t


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = config.load(environ={})
    with db.connect(url) as conn:
        loads = populate(conn, args.postings)
        queue_rows = conn.execute("SELECT count(*) FROM queue").fetchone()[0]
        count_rows = conn.execute("SELECT count(*) FROM stage_counts").fetchone()[0]
        health.collect(conn, cfg)  # warm the cache as a second run by an operator would find it
        times = []
        h = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            h = health.collect(conn, cfg)
            times.append(time.perf_counter() - t0)
    assert h is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(PYTHONPATH=str(ROOT), JOBPIPE_DATABASE_URL=url)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", "health", "--json"], env=env, capture_output=True, text=True
    )
    cli_s = time.perf_counter() - t0
    cli = json.loads(proc.stdout)
    return {
        "postings": args.postings,
        "queue_rows": queue_rows,
        "stage_counts_rows": count_rows,
        "health_s": round(statistics.median(times), 4),
        "health_max_s": round(max(times), 4),
        "cli_s": round(cli_s, 3),
        "cli_exit": proc.returncode,
        "cli_collect_s": cli["elapsed_s"],
        "verdict": h.verdict,
        "stage_verdicts": {s.stage: s.verdict for s in h.stages},
        "goal_s": GOAL_S,
        **{k: round(v, 2) for k, v in loads.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 postings (CI); default 1,000,000")
    ap.add_argument("--postings", type=int)
    ap.add_argument("--repeat", type=int, default=5, help="runs of health.collect (median reported)")
    ap.add_argument(
        "--db-url",
        default=os.environ.get("DATABASE_URL"),
        help="admin URL of a server to create the bench database on (default: a temporary embedded server)",
    )
    args = ap.parse_args(argv)
    if args.postings is None:
        args.postings = 20_000 if args.quick else 1_000_000
    with (
        embedded.given_or_temporary(args.db_url, "jobpipe-bench-pg-") as admin,
        db.scratch_database(admin, "bench_health_") as url,
    ):
        res = run(url, args)
    res["mode"] = "quick" if args.quick else "full"
    res["ok"] = res["health_s"] <= GOAL_S
    print(f"{'measurement':<36}{'value':>14}  goal")
    print(f"{'postings':<36}{res['postings']:>14,}")
    print(f"{'queue rows (history + live)':<36}{res['queue_rows']:>14,}")
    print(f"{'stage_counts rows (14 days)':<36}{res['stage_counts_rows']:>14,}")
    print(f"{'health.collect (median)':<36}{res['health_s']:>13.3f}s  <= {GOAL_S:g}s")
    print(f"{'health.collect (max)':<36}{res['health_max_s']:>13.3f}s")
    print(f"{'jobpipe health --json (whole command)':<36}{res['cli_s']:>13.3f}s  (exit {res['cli_exit']})")
    print(f"{'verdict':<36}{res['verdict']:>14}  {res['stage_verdicts']}")
    print(
        f"{'(load: postings / queue / analyze)':<36}"
        f"{res['postings_s']:>7.1f}s / {res['queue_s']:.1f}s / {res['analyze_s']:.1f}s"
    )
    print("RESULT " + json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
