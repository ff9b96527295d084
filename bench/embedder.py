"""How close does the embedder get to the model server's capacity, and what does it cost?

1. Capacity-bound: the fake Ollama (its own process) computes C requests at once and spends a
   fixed time per input (default C = 1, 4 ms: 250 inputs/s, the shape of a real Ollama, which
   embeds one input at a time per model). N postings (default 20,000) are pending; the embedder
   runs as `jobpipe run embedder --once` in its own process. capacity_ratio = postings/s (wall
   time of the process, start-up included) / the fake's limit; goal >= 0.90. The predecessor's
   pattern (one text per request, 8 threads, row-by-row INSERTs) runs against the same fake, in
   its own process, so the gain is visible side by side. The fake's default shape has no cost per
   request, which flatters one-text-per-request clients; scenario 1b adds `--request-ms` (default
   10 ms, as HTTP + JSON + scheduling cost a real server) to both, on the predecessor's sample size.
2. Overhead-bound: the fake answers at once. postings/s end-to-end for jobpipe, and for the pgai
   vectorizer worker (PyPI `pgai` 0.12.x, `pgai vectorizer worker --once`) against the same fake
   and a database with the same postings, same batch size and concurrency. pgai_ratio = jobpipe /
   pgai; goal >= 5. pgai lives only in the benchmark's own virtual environment (bench/.venv,
   created on first use; `--pgai-venv` to point elsewhere). Without it the benchmark says so and
   reports the rest.
3. Peak RSS of the embedder process (goal <= 150 MB), from wait4() of each run.

The fake derives its vectors from each input's first 256 characters (`feature_chars`): nothing
here looks at them, and the fake shares this machine with the client it measures, so its own CPU
must stay small; both tools get the same fake. jobpipe's modules are byte-compiled before the
runs, as pip does for an installed package (and did for pgai's venv), so that start-up, which
counts in every rate, is not compilation.

Each scenario gets a fresh database: on the server given by --db-url / $DATABASE_URL (an admin
URL; databases are created and dropped), else on a throw-away embedded server. Prints a table,
then one last line `RESULT {json}`. `--quick` is the small CI variant (no pgai).

Usage: python bench/embedder.py [--quick] [--postings N] [--capacity C] [--latency-ms MS] [--request-ms MS]
                                [--batch-size B] [--workers W] [--no-pgai] [--pgai-venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import requests  # noqa: E402

from jobpipe import db, embedded  # noqa: E402

MODEL, DIM = "nomic-embed-text", 768
FEATURE_CHARS = 256  # the fake derives vectors from each input's first 256 characters (see Fake)
GOAL_CAPACITY, GOAL_PGAI, GOAL_RSS_MB = 0.90, 5.0, 150.0
PGAI_SPEC = "pgai>=0.12,<0.13"
# pgai's `vectorizer-worker` extra pulls docling and torch (gigabytes); the Ollama path needs only these.
PGAI_WORKER_DEPS = (
    "ollama>=0.4.5,<0.6", "openai>=1.44,<2", "pgvector>=0.3,<1", "tiktoken>=0.7,<1",
    "langchain-text-splitters>=0.2,<1", "exceptiongroup", "filetype==1.2.0", "ijson>=3.3",
    "smart-open==7.1.0", "litellm>=1.65,<1.73", "boto3>=1.35,<2", "mistral-common>=1,<2",
)  # fmt: skip
TITLES = (
    "Koch (m/w/d)", "Pflegefachkraft Intensivstation", "Berufskraftfahrer CE", "Softwareentwickler Java",
    "Steuerfachangestellte (m/w/d)", "Elektroniker für Betriebstechnik", "Erzieher (m/w/d) Kita",
    "Verkäufer Einzelhandel", "Fachkraft Lagerlogistik", "Medizinische Fachangestellte",
    "Industriemechaniker Instandhaltung", "Kaufmann für Büromanagement", "Maler und Lackierer",
    "Zahnmedizinische Fachangestellte", "Altenpflegehelfer", "Bauleiter Tiefbau",
)  # fmt: skip
SENTENCES = (
    "Wir sind ein mittelständisches Familienunternehmen mit über 200 Mitarbeitenden in der Region.",
    "Zu Ihren Aufgaben gehören die selbstständige Planung und Durchführung der täglichen Arbeiten.",
    "Sie verfügen über eine abgeschlossene Ausbildung und erste Berufserfahrung in diesem Bereich.",
    "Wir bieten einen unbefristeten Arbeitsvertrag, 30 Tage Urlaub und betriebliche Altersvorsorge.",
    "Flexible Arbeitszeiten, Weiterbildungsmöglichkeiten und ein kollegiales Team erwarten Sie.",
    "Bitte senden Sie Ihre Bewerbung mit Gehaltsvorstellung und frühestem Eintrittstermin.",
)
DESCRIPTION_SENTENCES = (
    16  # about 1,500 characters: under embedder.max_chars, so both tools send the same text
)


# ------------------------------------------------------------------ databases


@contextmanager
def fresh_database(admin_url: str, n: int) -> Iterator[str]:
    """A new migrated database with `n` pending postings (queued for 'embed' by the real triggers),
    dropped on exit."""
    with db.scratch_database(admin_url, "bench_emb_") as url:
        populate(url, n)
        yield url


def populate(url: str, n: int) -> None:
    with db.connect(url) as conn:
        conn.execute(
            """
            INSERT INTO postings (external_id, title, description, description_state)
            SELECT 'B-' || g,
                   (%(titles)s::text[])[1 + g %% cardinality(%(titles)s::text[])] || ' ' || g,
                   (SELECT string_agg((%(sent)s::text[])[1 + (g + k) %% cardinality(%(sent)s::text[])], ' ')
                      FROM generate_series(1, %(k)s) AS k) || ' Referenz ' || g || '.',
                   'fetched'
              FROM generate_series(1, %(n)s) AS g
            """,
            {"titles": list(TITLES), "sent": list(SENTENCES), "k": DESCRIPTION_SENTENCES, "n": n},
        )
        conn.execute("ANALYZE")
        # Every run starts from clean buffers: a checkpoint falling into a timed run (the one the
        # earlier scenarios' writes make due) doubles its WAL with full-page images.
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass  # --db-url without the right to: runs are then noisier


# ------------------------------------------------------------------ the fake, as its own process


class Fake:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobpipe.sim.ollama", "--port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise SystemExit(f"fake Ollama did not start: {self.url!r}")

    def configure(self, **switches: Any) -> None:
        # Vectors are not looked at here: features from each input's first 256 characters keep
        # the fake's own CPU (it shares this machine with the client it measures) small.
        # Every shape switch is set each time: a switch left over from an earlier scenario (the
        # 10 ms per request of 1b) must not carry into the next (the "instant" fake of 2).
        base = {"capacity": None, "latency_per_input": 0.0, "latency_per_request": 0.0}
        switches = {**base, "feature_chars": FEATURE_CHARS, **switches}
        requests.post(self.url + "/_fake/reset", timeout=10).raise_for_status()
        requests.post(self.url + "/_fake/configure", json=switches, timeout=10).raise_for_status()

    def counters(self) -> dict[str, Any]:
        return requests.get(self.url + "/_fake/state", timeout=10).json()["counters"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ------------------------------------------------------------------ runs


@dataclass
class Run:
    name: str
    postings: int
    seconds: float  # wall time of the process, start-up to exit
    embed_seconds: float  # process start to the last vector written (exit may add an index build)
    vectors: int
    peak_rss_mb: float | None = None
    requests: int | None = None

    @property
    def rate(self) -> float:
        """Postings embedded and stored per second (process start to the last vector)."""
        return self.vectors / self.embed_seconds if self.embed_seconds > 0 else 0.0

    @property
    def wall_rate(self) -> float:
        return self.vectors / self.seconds if self.seconds > 0 else 0.0


def timed_process(cmd: list[str], env: dict[str, str], log_path: Path) -> tuple[float, float, float, int]:
    """Run to completion; (Unix start time, wall seconds, peak RSS MB from wait4, exit code)."""
    with open(log_path, "w") as log:
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return started, seconds, usage.ru_maxrss / 1024.0, proc.returncode


def vectors_written(url: str, started: float, table: str = "posting_embeddings") -> tuple[int, float]:
    """(rows, seconds from `started` to the last row's created_at): same clock, same machine."""
    with db.connect(url) as conn:
        n, last = conn.execute(
            f"SELECT count(*), extract(epoch FROM max(created_at)) FROM {table}"
        ).fetchone()
    return n, (float(last) - started) if last is not None else 0.0


def jobpipe_env(url: str, fake: Fake, batch: int, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        JOBPIPE_DATABASE_URL=url,
        JOBPIPE_OLLAMA_URLS=f"[{fake.url}]",
        JOBPIPE_EMBEDDER_MODEL=MODEL,
        JOBPIPE_EMBEDDER_DIMENSIONS=str(DIM),
        JOBPIPE_EMBEDDER_BATCH_SIZE=str(batch),
        JOBPIPE_EMBEDDER_WORKERS=str(workers),
        JOBPIPE_LOGGING_LEVEL="WARNING",
        JOBPIPE_LOGGING_FORMAT="text",
    )
    return env


def run_jobpipe(name: str, admin: str, fake: Fake, n: int, batch: int, workers: int, logs: Path) -> Run:
    with fresh_database(admin, n) as url:
        cmd = [sys.executable, "-m", "jobpipe.cli", "run", "embedder", "--once", "--metrics-port", "0"]
        started, seconds, rss, code = timed_process(
            cmd, jobpipe_env(url, fake, batch, workers), logs / f"{name}.log"
        )
        if code != 0:
            raise SystemExit(f"{name}: the embedder exited {code}; see {logs / f'{name}.log'}")
        vectors, embed_s = vectors_written(url, started)
        return Run(name, n, seconds, embed_s, vectors, rss, fake.counters()["embed_requests"])


def run_predecessor(name: str, admin: str, fake: Fake, n: int, logs: Path) -> Run:
    with fresh_database(admin, n) as url:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--predecessor", url, fake.url]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        started, seconds, rss, code = timed_process(cmd, env, logs / f"{name}.log")
        if code != 0:
            raise SystemExit(f"{name}: exited {code}; see {logs / f'{name}.log'}")
        vectors, embed_s = vectors_written(url, started)
        return Run(name, n, seconds, embed_s, vectors, rss, fake.counters()["embed_requests"])


def predecessor_main(url: str, ollama_url: str, threads: int = 8) -> int:
    """The predecessor's pattern: one text per request, 8 threads, one INSERT (and commit) per row."""
    from pgvector import Vector

    with db.connect(url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM postings ORDER BY id")]
    lock = threading.Lock()
    it = iter(ids)
    errors: list[BaseException] = []

    def worker() -> None:
        session = requests.Session()
        try:
            with db.connect(url) as conn:
                while True:
                    with lock:
                        pid = next(it, None)
                    if pid is None:
                        return
                    title, desc = conn.execute(
                        "SELECT title, description FROM postings WHERE id = %s", (pid,)
                    ).fetchone()
                    text = f"{title}\n{desc}"[:2000]
                    r = session.post(
                        ollama_url + "/api/embed", json={"model": MODEL, "input": text}, timeout=60
                    )
                    r.raise_for_status()
                    vec = r.json()["embeddings"][0]
                    conn.execute(
                        """INSERT INTO posting_embeddings
                                  (posting_id, model, text_hash, dimensions, embedding)
                           VALUES (%s, %s, md5(%s), %s, %s)""",
                        (pid, MODEL, text, DIM, Vector(vec)),
                    )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        print(f"predecessor failed: {errors[0]!r}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ pgai


def pgai_python(venv: Path, logs: Path) -> tuple[Path | None, str]:
    """The venv's python with pgai importable (creating the venv on first use), or (None, why)."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import pgai, ollama; print(pgai.__version__)"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py, "ok"
    log = logs / "pgai-install.log"
    with open(log, "w") as out:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(py), "-m", "pip", "install", "-q", PGAI_SPEC, *PGAI_WORKER_DEPS],
        ]
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                return None, f"could not install {PGAI_SPEC} into {venv} (see {log})"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, f"pgai installed into {venv} but does not import (see {log})"
    return py, "ok"


def run_pgai(name: str, admin: str, fake: Fake, n: int, batch: int, workers: int, py: Path,
             logs: Path) -> Run:  # fmt: skip
    with fresh_database(admin, n) as url:
        r = subprocess.run(
            [str(py), "-c", f"import pgai; pgai.install({url!r})"], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise RuntimeError(f"pgai.install failed: {r.stderr.strip()[-400:]}")
        with db.connect(url) as conn:
            # The same text as jobpipe's (title + description; descriptions are under the budget),
            # no chunking, same batch size and concurrency; pgai's own table as destination.
            conn.execute(
                """SELECT ai.create_vectorizer('public.postings'::regclass, name => 'bench',
                       loading => ai.loading_column('description'),
                       embedding => ai.embedding_ollama(%s, %s, base_url => %s),
                       chunking => ai.chunking_none(),
                       formatting => ai.formatting_python_template(E'$title\\n$chunk'),
                       indexing => ai.indexing_none(),
                       processing => ai.processing_default(batch_size => %s, concurrency => %s),
                       destination => ai.destination_table(target_table => 'pgai_embeddings'))""",
                (MODEL, DIM, fake.url, batch, workers),
            )
            # A timestamp per stored vector, as posting_embeddings has, to time the last one.
            conn.execute(
                "ALTER TABLE pgai_embeddings ADD COLUMN created_at timestamptz DEFAULT clock_timestamp()"
            )
        bin_pgai = py.parent / "pgai"
        cmd = [str(bin_pgai), "vectorizer", "worker", "-d", url, "--once", "-c", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBPIPE_", "PYTHON"))}
        started, seconds, rss, code = timed_process(cmd, env, logs / f"{name}.log")
        if code != 0:
            raise RuntimeError(f"pgai worker exited {code}; see {logs / f'{name}.log'}")
        vectors, embed_s = vectors_written(url, started, "pgai_embeddings")
        return Run(name, n, seconds, embed_s, vectors, rss, fake.counters()["embed_requests"])


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small numbers, no pgai (CI)")
    ap.add_argument("--postings", type=int, help="pending postings per scenario (default 20,000; quick 600)")
    ap.add_argument(
        "--predecessor-postings",
        type=int,
        help="postings for the predecessor's run (default 5,000; quick 200): its rate is what counts",
    )
    ap.add_argument("--capacity", type=int, default=1, help="fake: requests computed at once")
    ap.add_argument("--latency-ms", type=float, default=4.0, help="fake: milliseconds per input")
    ap.add_argument("--request-ms", type=float, default=10.0,
                    help="fake: milliseconds per request in scenario 1b (0 = skip 1b)")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--no-pgai", action="store_true")
    ap.add_argument(
        "--pgai-venv",
        default=str(ROOT / "bench" / ".venv"),
        help="virtual environment for pgai (created on first use)",
    )
    ap.add_argument(
        "--db-url",
        default=os.environ.get("DATABASE_URL"),
        help="admin URL of a PostgreSQL with pgvector (default: a throw-away embedded server)",
    )
    ap.add_argument("--predecessor", nargs=2, metavar=("DB_URL", "OLLAMA_URL"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)  # fmt: skip
    if a.predecessor:
        return predecessor_main(*a.predecessor)

    n = a.postings or (600 if a.quick else 20_000)
    n_pred = a.predecessor_postings or (200 if a.quick else 5_000)
    use_pgai = not (a.quick or a.no_pgai)
    limit = a.capacity / (a.latency_ms / 1000.0)
    logs = Path(tempfile.mkdtemp(prefix="bench-embedder-"))

    # Byte-compiled first, as an installed package is (pip compiles it, and pgai's venv was
    # installed by pip): with PYTHONDONTWRITEBYTECODE set, a source checkout would otherwise be
    # compiled again at every start, and start-up counts in the rate.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "lib")],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    tmp = None
    admin = a.db_url
    if not admin:
        tmp = embedded.temporary_parent("bench-embedder-pg-")
        admin = embedded.start(tmp / "pgdata")
    fake = Fake()
    result: dict[str, Any] = {
        "postings": n,
        "batch_size": a.batch_size,
        "workers": a.workers,
        "quick": a.quick,
    }
    try:
        # 1. capacity-bound
        fake.configure(capacity=a.capacity, latency_per_input=a.latency_ms / 1000.0)
        cap = run_jobpipe("jobpipe-capacity", admin, fake, n, a.batch_size, a.workers, logs)
        fake.configure(capacity=a.capacity, latency_per_input=a.latency_ms / 1000.0)
        pred = run_predecessor("predecessor-capacity", admin, fake, n_pred, logs)
        # 1b. the same with a fixed cost per request, as a real server has (HTTP, JSON, scheduling):
        # what batching saves. Both on the predecessor's smaller number of postings.
        cap_req = pred_req = None
        if a.request_ms > 0:
            shape = dict(capacity=a.capacity, latency_per_input=a.latency_ms / 1000.0,
                         latency_per_request=a.request_ms / 1000.0)  # fmt: skip
            fake.configure(**shape)
            cap_req = run_jobpipe("jobpipe-request-cost", admin, fake, n_pred, a.batch_size, a.workers, logs)
            fake.configure(**shape)
            pred_req = run_predecessor("predecessor-request-cost", admin, fake, n_pred, logs)
        # 2. overhead-bound
        fake.configure(capacity=None, latency_per_input=0.0)
        over = run_jobpipe("jobpipe-overhead", admin, fake, n, a.batch_size, a.workers, logs)
        pg: Run | None = None
        pgai_note = "skipped (--quick)" if a.quick else "skipped (--no-pgai)"
        if use_pgai:
            py, pgai_note = pgai_python(Path(a.pgai_venv), logs)
            if py is not None:
                try:
                    fake.configure(capacity=None, latency_per_input=0.0)
                    pg = run_pgai("pgai-overhead", admin, fake, n, a.batch_size, a.workers, py, logs)
                except (RuntimeError, psycopg.Error) as exc:
                    pgai_note = f"could not run: {exc}"
    finally:
        fake.close()
        if tmp is not None:
            embedded.stop(tmp / "pgdata")
            shutil.rmtree(tmp, ignore_errors=True)

    peak_rss = max(r.peak_rss_mb or 0.0 for r in (cap, over, cap_req) if r is not None)
    result.update(
        capacity_limit_per_s=round(limit, 1),
        capacity_postings_per_s=round(cap.rate, 1),
        capacity_ratio=round(cap.rate / limit, 3),
        capacity_ratio_wall=round(cap.wall_rate / limit, 3),
        capacity_requests=cap.requests,
        predecessor_postings=n_pred,
        predecessor_postings_per_s=round(pred.rate, 1),
        predecessor_ratio=round(pred.rate / limit, 3),
        request_ms=a.request_ms,
        request_cost_postings_per_s=round(cap_req.rate, 1) if cap_req else None,
        request_cost_predecessor_postings_per_s=round(pred_req.rate, 1) if pred_req else None,
        request_cost_gain=round(cap_req.rate / pred_req.rate, 2) if cap_req and pred_req else None,
        overhead_postings_per_s=round(over.rate, 1),
        overhead_postings_per_s_wall=round(over.wall_rate, 1),
        index_build_s=round(over.seconds - over.embed_seconds, 1),
        pgai_postings_per_s=round(pg.rate, 1) if pg else None,
        pgai_ratio=round(over.rate / pg.rate, 2) if pg and pg.rate else None,
        pgai_ratio_wall=round(over.wall_rate / pg.wall_rate, 2) if pg and pg.wall_rate else None,
        pgai=pgai_note if pg is None else "ok",
        peak_rss_mb=round(peak_rss, 1),
        all_embedded=cap.vectors == n and over.vectors == n and pred.vectors == n_pred,
        goals={"capacity_ratio": GOAL_CAPACITY, "pgai_ratio": GOAL_PGAI, "peak_rss_mb": GOAL_RSS_MB},
        logs=str(logs),
    )

    print(
        f"embedder benchmark: model {MODEL} ({DIM}d), batch {a.batch_size}, workers {a.workers}; "
        f"rate = postings / (process start .. last vector stored); wall = process start .. exit"
    )
    print(f"{'run':<46}{'vectors':>8}{'rate':>11}{'wall':>8}{'wall rate':>11}{'RSS':>8}")
    runs = [
        (f"1. jobpipe, fake C={a.capacity} x {a.latency_ms:g} ms/input", cap),
        ("1. predecessor (1 text/request, 8 threads, rows)", pred),
        (f"1b. jobpipe, + {a.request_ms:g} ms per request", cap_req),
        (f"1b. predecessor, + {a.request_ms:g} ms per request", pred_req),
        ("2. jobpipe, instant fake", over),
        ("2. pgai vectorizer worker, instant fake", pg),
    ]
    for label, run in runs:
        if run is None:
            print(f"{label:<46}{'-':>8}  {'pgai: ' + pgai_note if 'pgai' in label else 'skipped'}")
            continue
        rss = f"{run.peak_rss_mb:.0f}MB" if run.peak_rss_mb else "-"
        print(
            f"{label:<46}{run.vectors:>8,}{run.rate:>9.1f}/s{run.seconds:>7.1f}s"
            f"{run.wall_rate:>9.1f}/s{rss:>8}"
        )
    r = result
    print(
        f"capacity_ratio {r['capacity_ratio']:.3f} of {limit:.0f}/s (goal >= {GOAL_CAPACITY}; "
        f"wall incl. start-up and index build: {r['capacity_ratio_wall']:.3f}); "
        f"predecessor {r['predecessor_ratio']:.3f}"
    )
    if cap_req is not None:
        print(
            f"with {a.request_ms:g} ms per request: jobpipe {r['request_cost_gain']}x the predecessor's rate"
        )
    if pg is not None:
        print(
            f"pgai_ratio {r['pgai_ratio']} (goal >= {GOAL_PGAI}; wall: {r['pgai_ratio_wall']}); jobpipe's "
            f"HNSW bulk build after the last vector: {r['index_build_s']} s (pgai builds none)"
        )
    else:
        print(f"pgai_ratio: n/a ({pgai_note}); jobpipe's HNSW bulk build: {r['index_build_s']} s")
    print(f"peak RSS of the embedder process: {peak_rss:.1f} MB (goal <= {GOAL_RSS_MB:g} MB)")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
