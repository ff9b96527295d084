"""How close does the extractor get to the LLM's capacity, and how many LLM calls does it need?

N postings (default 2,000) with descriptions built from the labelled set
(bench/data/labelled_descriptions.jsonl): D distinct texts (default 60 % of N, each a labelled
description with its own reference line), spread over the postings with a skewed distribution
(one employer's text at many places, most texts once), plus 5 % partner postings (external) and
2 % with an empty description. They are inserted the way the fetcher writes them (the trigger
queues each). The fake Ollama runs in this process with a capacity of C concurrent chat calls
(default 4) that take L ms each (default 200); its simulated LLM answers the summary schema. The
extractor runs as its own process, `jobpipe run extractor --once`, with extractor.workers = C.

Reported:
- LLM calls per posting, against the floor distinct descriptions / postings (goal: equal: every
  distinct text once, external and empty ones never);
- capacity_ratio = calls per second (first call's start to last call's end) / (C * 1000 / L);
  goal >= 0.90;
- postings per second end to end (process wall time, start-up included), outcomes.

Usage: python bench/extractor.py [--quick] [--postings N] [--distinct-share S] [--capacity C]
                                 [--latency-ms L] [--workers W] [--db-url ADMIN_URL]
Prints a table, then one last line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import TimedLLM  # noqa: E402

from jobpipe import db, embedded, extraction  # noqa: E402
from jobpipe.sim.ollama import FakeOllama  # noqa: E402

LLM = "qwen2.5:7b"
GOAL_CAPACITY = 0.90
LABELLED = ROOT / "bench" / "data" / "labelled_descriptions.jsonl"


def postings(n: int, distinct_share: float, seed: int) -> tuple[list[tuple[str, str | None]], int]:
    """[(state, description)] for n postings and the number of distinct non-empty descriptions."""
    base = [r.description for r in extraction.read_labelled(str(LABELLED))]
    rng = random.Random(seed)
    n_external, n_empty = n * 5 // 100, n * 2 // 100
    n_text = n - n_external - n_empty
    d = max(1, min(n_text, round(n_text * distinct_share)))
    texts = [f"{base[k % len(base)]}\nReferenz: {k:06d}" for k in range(d)]
    # Every text at least once, the rest of the postings go to a few texts (one employer, many cities).
    extra = [texts[min(d - 1, int(rng.paretovariate(1.2)) - 1)] for _ in range(n_text - d)]
    rows: list[tuple[str, str | None]] = [("fetched", t) for t in [*texts, *extra]]
    rows += [("external", None)] * n_external + [("fetched", "  ")] * n_empty
    rng.shuffle(rows)
    return rows, d


def write_config(path: Path, db_url: str, fake_url: str, workers: int, batch_size: int | None) -> None:
    doc = {
        "database": {"url": db_url},
        "ollama": {"urls": [fake_url]},
        "extractor": {"model": LLM, "workers": workers, "metrics_port": 0, "read_timeout_s": 60.0},
        "queue": {"poll_interval_s": 0.05},
        "logging": {"level": "WARNING", "format": "json"},
    }
    if batch_size is not None:
        doc["extractor"]["batch_size"] = batch_size
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML


def run_daemon(cfg: Path, log: Path) -> tuple[float, float]:
    """Run `jobpipe run extractor --once`; (wall seconds, the process's CPU seconds)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("ab") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "jobpipe.cli", "-c", str(cfg), "run", "extractor", "--once"],
            stdout=fh,
            stderr=fh,
            cwd=ROOT,
            timeout=3600,
        )
    if proc.returncode != 0:
        raise SystemExit(f"the extractor exited with {proc.returncode}; see {log}")
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return time.perf_counter() - t0, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 postings, 100 ms per call (CI)")
    ap.add_argument("--postings", type=int, default=None)
    ap.add_argument("--distinct-share", type=float, default=0.6, help="distinct texts / texted postings")
    ap.add_argument("--capacity", type=int, default=4, help="chat calls the fake computes at once")
    ap.add_argument("--latency-ms", type=float, default=None, help="time per chat call (default 200)")
    ap.add_argument("--workers", type=int, default=None, help="extractor.workers (default: = capacity)")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="extractor.batch_size (default: the setting's)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--db-url", help="admin URL of a PostgreSQL with pgvector (default: a throw-away embedded one)"
    )
    a = ap.parse_args(argv)
    n = a.postings or (300 if a.quick else 2000)
    latency = (a.latency_ms or (100.0 if a.quick else 200.0)) / 1000.0
    workers = a.workers or a.capacity
    rows, distinct = postings(n, a.distinct_share, a.seed)

    tmp = Path(tempfile.mkdtemp(prefix="bench-extractor-"))
    admin = a.db_url or embedded.start(tmp / "pgdata")
    try:
        with (
            db.scratch_database(admin, "bench_ext_") as db_url,
            db.connect(db_url) as conn,
            FakeOllama(capacity=a.capacity) as fake,
        ):
            rec = TimedLLM(fake.extraction.answer, latency)
            fake.extraction.answer = rec  # type: ignore[method-assign]  # the timed wrapper
            with conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO postings (external_id, title, description, description_state)
                       VALUES (%s, 'Stelle', %s, %s)""",
                    [(f"bench-{i}", d, state) for i, (state, d) in enumerate(rows)],
                )
            cfg = tmp / "jobpipe.yaml"
            write_config(cfg, db_url, fake.url, workers, a.batch_size)
            fake_cpu0 = time.process_time()
            seconds, daemon_cpu = run_daemon(cfg, tmp / "extractor.log")
            fake_cpu = time.process_time() - fake_cpu0
            outcomes = dict(
                conn.execute(
                    """SELECT coalesce(outcome, status), count(*) FROM queue
                        WHERE stage = 'extract' GROUP BY 1"""
                ).fetchall()
            )
            summarised = conn.execute("SELECT count(*) FROM postings WHERE summary IS NOT NULL").fetchone()[0]
            http_calls = fake.counters()["chat_calls"]
    finally:
        if a.db_url is None:
            embedded.stop(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)

    window = rec.window_s
    limit = a.capacity / latency
    llm_rate = rec.calls / window if window > 0 else 0.0
    ratio = llm_rate / limit if limit else 0.0
    result = {
        "postings": n,
        "distinct_descriptions": distinct,
        "summarised": summarised,
        "llm_calls": rec.calls,
        "http_chat_calls": http_calls,
        "llm_calls_per_posting": round(rec.calls / n, 4),
        "floor_calls_per_posting": round(distinct / n, 4),
        "capacity": a.capacity,
        "latency_ms": latency * 1000,
        "workers": workers,
        "max_concurrent_llm_calls": rec.max_concurrent,
        "capacity_limit_per_s": round(limit, 3),
        "llm_calls_per_s": round(llm_rate, 3),
        "capacity_ratio": round(ratio, 4),
        "goal_capacity_ratio": GOAL_CAPACITY,
        "seconds": round(seconds, 2),
        "postings_per_s": round(n / seconds, 2),
        "outcomes": outcomes,
        # CPU per LLM call of the daemon process and of this process (fake server + simulated LLM):
        # on a machine with little CPU to spare, these delay the next request and lower the ratio.
        "daemon_cpu_ms_per_call": round(1000 * daemon_cpu / max(1, rec.calls), 2),
        "fake_cpu_ms_per_call": round(1000 * fake_cpu / max(1, rec.calls), 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(
        f"extractor benchmark: {n} postings, {distinct} distinct descriptions; fake LLM capacity "
        f"{a.capacity} x {latency * 1000:.0f} ms = {limit:.2f} calls/s, extractor.workers {workers}"
    )
    print(
        f"{'LLM calls per posting':<32} {rec.calls / n:>7.3f}   floor (distinct/postings) {distinct / n:.3f}"
    )
    print(f"{'LLM calls/s (capacity_ratio)':<32} {llm_rate:>7.2f} ({ratio:.2f})   goal >= {GOAL_CAPACITY}")
    print(f"{'postings/s end to end':<32} {n / seconds:>7.1f}   ({seconds:.1f} s with start-up)")
    print(f"{'max LLM calls at once':<32} {rec.max_concurrent:>7}")
    print(
        f"{'CPU ms per call':<32} daemon {result['daemon_cpu_ms_per_call']}, "
        f"fake {result['fake_cpu_ms_per_call']}"
        f" (load average {result['load_average_1m']} on {result['cpus']} CPUs)"
    )
    print(f"{'outcomes':<32} {json.dumps(outcomes)}")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
