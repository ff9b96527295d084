"""How close does the classifier get to the LLM's capacity, and how many LLM calls does it need?

N postings (default 20,000) with a realistic title distribution (bench/titlegen.py: a few
occupations carry most postings; gender markers, employment type, places, seniority, typos,
trade names, 8 % titles without an occupation in the catalogue) are inserted the way the
fetcher writes them (the triggers create one `titles` row per normalised title and queue it).
The fake Ollama runs in this process with a capacity of C concurrent generate calls (default 2)
that take L ms each (default 300): the predecessor's shape. Its scripted LLM answers like a
good model (the right candidate, else "no"). The classifier runs as its own process,
`jobpipe run classifier --once`, on a catalogue embedded beforehand (a one-time cost, reported).

Reported, side by side with the predecessor's pattern (one posting at a time, no deduplication:
embed, search, ask the LLM, UPDATE the row; measured on a sample, its rate is what counts):
- LLM calls per posting;
- capacity_ratio = titles sent to the LLM per second (first call to last answer) / C*1000/L;
  goal >= 0.90;
- postings mapped per second end to end (process wall time, start-up included), and accuracy
  against the generator's truth.

The fake's embeddings are hashed trigrams, not semantics: classifier.min_similarity is set to
0.35 for them (bench/matching_quality.py measures a real model).

Usage: python bench/classifier.py [--quick] [--postings N] [--capacity C] [--latency-ms L]
                                  [--workers W] [--predecessor-postings P] [--db-url ADMIN_URL]
Prints a table, then one last line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import titlegen  # noqa: E402
from common import TimedLLM  # noqa: E402

from jobpipe import catalogue, classify, db, embedded  # noqa: E402
from jobpipe.embeddings import as_vector  # noqa: E402
from jobpipe.models import make_chat_client, make_embedding_client  # noqa: E402
from jobpipe.sim.ollama import FakeOllama  # noqa: E402
from jobpipe.titles import normalise  # noqa: E402

EMBED, DIM, LLM = "nomic-embed-text", 768, "qwen2.5:7b"
MIN_SIMILARITY, TOP_K = 0.35, 5
GOAL_CAPACITY = 0.90


def scripted_answer(truth: dict[str, int | None]) -> Callable[[dict[str, Any]], str]:
    """The fake's chat answers, like a good model: the right candidate if it is offered, else "no"."""

    def answer(view: dict[str, Any]) -> str:
        user = view["messages"][-1]["content"]
        norm = re.search(r'Normalised title: "(.*)"', user)
        cands = [int(x) for x in re.findall(r"^(\d+): ", user, re.M)]
        want = truth.get(norm.group(1)) if norm else None
        if want is not None and want in cands:
            return json.dumps({"occupation_id": want, "verdict": "yes"})
        return json.dumps({"occupation_id": None, "verdict": "no"})

    return answer


def write_config(path: Path, db_url: str, fake_url: str, workers: int, batch_size: int) -> None:
    doc = {
        "database": {"url": db_url},
        "ollama": {"urls": [fake_url], "read_timeout_s": 60.0},
        "embedder": {"model": EMBED, "dimensions": DIM},
        "classifier": {
            "model": LLM,
            "workers": workers,
            "batch_size": batch_size,
            "metrics_port": 0,
            "min_similarity": MIN_SIMILARITY,
            "top_k": TOP_K,
        },
        "queue": {"poll_interval_s": 0.05},
        "logging": {"level": "WARNING", "format": "json"},
    }
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML


def run_daemon(cfg: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("ab") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "jobpipe.cli", "-c", str(cfg), "run", "classifier", "--once"],
            stdout=fh,
            stderr=fh,
            cwd=ROOT,
            timeout=3600,
        )
    if proc.returncode != 0:
        raise SystemExit(f"the classifier exited with {proc.returncode}; see {log}")
    return time.perf_counter() - t0


def insert_postings(conn: Any, generated: list[titlegen.Generated], prefix: str) -> None:
    titles = [g.title for g in generated]
    conn.execute(
        """INSERT INTO postings (external_id, title, title_norm, description_state)
           SELECT %s || g.i, g.t, g.n, 'external'
             FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS g(t, n, i)""",
        (prefix, titles, [normalise(t) for t in titles]),
    )


def predecessor(
    conn: Any, fake_url: str, sample: list[titlegen.Generated], ids: dict[str, int]
) -> dict[str, Any]:
    """The old pattern: per posting embed, search, ask the LLM, write; one at a time, no dedup."""
    embed = make_embedding_client(
        "ollama", [fake_url], EMBED, concurrency=1, connect_timeout=3, read_timeout=60, dimensions=DIM
    )
    chat = make_chat_client("ollama", [fake_url], LLM, concurrency=1, connect_timeout=3, read_timeout=60)
    prompt = classify.load_prompt()
    names = dict(conn.execute("SELECT id, name FROM occupations").fetchall())
    rows = conn.execute(
        "SELECT id, title FROM postings WHERE external_id LIKE 'pred-%%' ORDER BY id"
    ).fetchall()
    calls = mapped = 0
    t0 = time.perf_counter()
    for pid, title in rows:
        norm = normalise(title)
        vec = as_vector(embed.embed([norm], role="query")[0], DIM)
        cands = classify.search_candidates(conn, {0: vec}, EMBED, DIM, TOP_K)[0]
        occ = None
        if cands and cands[0][1] >= MIN_SIMILARITY:
            job = classify.LLMJob(
                pid, norm, title, tuple(classify.Candidate(i, names[i], s) for i, s in cands)
            )
            calls += 1
            try:
                occ = classify.ask_llm(chat, prompt, job).occupation_id
            except Exception:
                occ = None
        conn.execute("UPDATE postings SET occupation_id = %s WHERE id = %s", (occ, pid))
        mapped += occ is not None
    seconds = time.perf_counter() - t0
    embed.close()
    chat.close()
    right = sum(
        ids.get(g.occupation or "") == occ
        for g, (occ,) in zip(
            sample,
            conn.execute(
                "SELECT occupation_id FROM postings WHERE external_id LIKE 'pred-%%' ORDER BY id"
            ).fetchall(),
            strict=True,
        )
    )
    return {"postings": len(rows), "seconds": seconds, "llm_calls": calls, "mapped": mapped, "right": right}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 postings, 10 for the predecessor (CI)")
    ap.add_argument("--postings", type=int, default=None)
    ap.add_argument("--capacity", type=int, default=2, help="generate calls the fake computes at once")
    ap.add_argument("--latency-ms", type=float, default=300.0, help="time per generate call")
    ap.add_argument("--workers", type=int, default=None, help="classifier.workers (default: = capacity)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--predecessor-postings", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--db-url", help="admin URL of a PostgreSQL with pgvector (default: a throw-away embedded one)"
    )
    a = ap.parse_args(argv)
    n = a.postings or (500 if a.quick else 20_000)
    n_pred = a.predecessor_postings or (10 if a.quick else 100)
    workers = a.workers or a.capacity
    latency = a.latency_ms / 1000.0

    occupations = catalogue.shipped_catalogue()
    ids = {o.name: o.id for o in occupations}
    rng = random.Random(a.seed)
    generated = titlegen.posting_titles(rng, [o.name for o in occupations], n)
    pred_sample = titlegen.posting_titles(random.Random(a.seed + 1), [o.name for o in occupations], n_pred)
    truth: dict[str, int | None] = {}
    for g in [*generated, *pred_sample]:
        truth.setdefault(normalise(g.title), ids[g.occupation] if g.occupation else None)

    tmp = embedded.temporary_parent("bench-classifier-")
    admin = a.db_url or embedded.start(tmp / "pgdata")
    llm = TimedLLM(scripted_answer(truth), latency)
    try:
        with (
            db.scratch_database(admin, "bench_cls_") as db_url,
            db.connect(db_url) as conn,
            FakeOllama(capacity=a.capacity, chat_handler=llm) as fake,
        ):
            catalogue.upsert(conn, occupations)
            cfg = tmp / "jobpipe.yaml"
            write_config(cfg, db_url, fake.url, workers, a.batch_size)
            log = tmp / "classifier.log"
            catalogue_s = run_daemon(cfg, log)  # nothing queued yet: embeds the catalogue and exits
            insert_postings(conn, generated, "bench-")
            titles_total = conn.execute("SELECT count(*) FROM titles").fetchone()[0]
            seconds = run_daemon(cfg, log)
            chat_calls = llm.calls
            window = llm.window_s
            outcomes = dict(
                conn.execute("SELECT coalesce(outcome, 'none'), count(*) FROM titles GROUP BY 1").fetchall()
            )
            decided, mapped = conn.execute(
                """SELECT count(*) FILTER (WHERE t.outcome IS NOT NULL), count(p.occupation_id)
                     FROM postings p JOIN titles t ON t.id = p.title_id WHERE p.external_id LIKE 'bench-%%'"""
            ).fetchone()
            got = dict(
                conn.execute("SELECT title, occupation_id FROM postings WHERE external_id LIKE 'bench-%%'")
            )
            right = sum(got.get(g.title) == (ids[g.occupation] if g.occupation else None) for g in generated)
            max_concurrent = llm.max_concurrent
            insert_postings(conn, pred_sample, "pred-")
            conn.execute("DELETE FROM queue")  # the predecessor needs no queue: keep the daemon's out of it
            pred = predecessor(conn, fake.url, pred_sample, ids)
    finally:
        if a.db_url is None:
            embedded.stop(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)

    limit = a.capacity / latency
    llm_rate = chat_calls / window if window > 0 else 0.0
    ratio = llm_rate / limit if limit else 0.0
    rate = n / seconds
    pred_rate = pred["postings"] / pred["seconds"]
    result = {
        "postings": n,
        "unique_titles": titles_total,
        "capacity": a.capacity,
        "latency_ms": a.latency_ms,
        "workers": workers,
        "llm_calls": chat_calls,
        "llm_calls_per_posting": round(chat_calls / n, 4),
        "llm_titles_per_s": round(llm_rate, 3),
        "capacity_limit_per_s": round(limit, 3),
        "capacity_ratio": round(ratio, 4),
        "goal_capacity_ratio": GOAL_CAPACITY,
        "max_concurrent_llm_calls": max_concurrent,
        "seconds": round(seconds, 2),
        "catalogue_embed_s": round(catalogue_s, 2),
        "postings_per_s": round(rate, 2),
        "postings_decided": decided,
        "postings_mapped": mapped,
        "postings_mapped_per_s": round(mapped / seconds, 2),
        "accuracy": round(right / n, 4),
        "outcomes": outcomes,
        "predecessor_postings": pred["postings"],
        "predecessor_postings_per_s": round(pred_rate, 3),
        "predecessor_llm_calls_per_posting": round(pred["llm_calls"] / pred["postings"], 4),
        "predecessor_accuracy": round(pred["right"] / pred["postings"], 4),
        "speedup": round(rate / pred_rate, 1) if pred_rate else None,
        "hours_for_27000_titles": round(27_000 / (llm_rate or 1) / 3600, 2),
        "quick": a.quick,
    }
    print(
        f"classifier benchmark: {n} postings ({titles_total} distinct normalised titles), fake LLM capacity "
        f"{a.capacity} x {a.latency_ms:.0f} ms = {limit:.2f} calls/s, classifier.workers {workers}"
    )
    print(f"{'':<32} {'jobpipe':>12} {'predecessor':>12}")
    print(
        f"{'LLM calls per posting':<32} {result['llm_calls_per_posting']:>12.3f} "
        f"{result['predecessor_llm_calls_per_posting']:>12.3f}"
    )
    print(f"{'postings per second':<32} {rate:>12.2f} {pred_rate:>12.2f}")
    acc, pred_acc = result["accuracy"], result["predecessor_accuracy"]
    print(f"{'accuracy vs generator truth':<32} {acc:>12.3f} {pred_acc:>12.3f}")
    print(f"{'LLM titles/s (capacity_ratio)':<32} {llm_rate:>7.2f} ({ratio:.2f})   goal >= {GOAL_CAPACITY}")
    print(
        f"postings mapped {mapped}/{n} in {seconds:.1f} s ({result['postings_mapped_per_s']}/s); catalogue "
        f"embedded beforehand in {catalogue_s:.1f} s; max LLM calls at once {max_concurrent}"
    )
    print("title outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"speedup over the predecessor's pattern: {result['speedup']}x")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
