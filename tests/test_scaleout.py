"""Scale-out: two embedder processes on one database share the work — nothing embedded twice,
the same vectors as one process — and against a model server with spare capacity they are
≥ 1.7x as fast. The rate is measured from the database (first to last stored vector), so
process start-up does not blur it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobpipe import db
from jobpipe.sim.ollama import FakeOllama

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)

ROOT = Path(__file__).resolve().parent.parent
N = 480
BATCH = 16
LATENCY = 0.25  # seconds per request: one instance keeps one request in flight (workers=1)


def seed(url: str) -> None:
    with db.connect(url) as conn:
        conn.execute(
            """INSERT INTO postings (external_id, title, title_norm, description, description_state)
               SELECT 'ext-' || i, 'Koch (m/w/d) ' || i, 'koch ' || i, 'Beschreibung ' || i, 'fetched'
                 FROM generate_series(1, %s) AS i""",
            (N,),
        )


def run_embedders(url: str, fake: FakeOllama, instances: int) -> tuple[float, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        JOBPIPE_DATABASE_URL=url,
        JOBPIPE_OLLAMA_URLS=f"[{fake.url}]",
        JOBPIPE_EMBEDDER_WORKERS="1",
        JOBPIPE_EMBEDDER_BATCH_SIZE=str(BATCH),
        JOBPIPE_QUEUE_POLL_INTERVAL_S="0.2",
        JOBPIPE_LOGGING_FORMAT="json",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jobpipe.cli", "run", "embedder", "--once", "--metrics-port", "0"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(instances)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    with db.connect(url) as conn:
        first, last, n = conn.execute(
            """SELECT min(created_at), max(created_at), count(*) FROM posting_embeddings"""
        ).fetchone()
        owners = conn.execute(
            "SELECT count(DISTINCT split_part(lease_owner, ':', 2)) FROM queue WHERE stage = 'embed'"
        ).fetchone()
        vectors = dict(
            conn.execute(
                """SELECT p.external_id, md5(e.embedding::text) FROM posting_embeddings e
                 JOIN postings p ON p.id = e.posting_id"""
            ).fetchall()
        )
    assert n == N and owners is not None
    # Rate over the batches after the first one (the first completes one latency after the start).
    rate = (N - BATCH * instances) / max(1e-6, (last - first).total_seconds())
    return rate, vectors


@pytest.mark.slow
def test_two_embedder_instances_share_the_work(pg_url, pg_server, pg_template):
    import uuid

    import psycopg

    from tests.conftest import url_for

    second = "s_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_server["url"], autocommit=True) as c:
        c.execute(f"CREATE DATABASE {second} TEMPLATE {pg_template}")
    url2 = url_for(pg_server["url"], second)
    try:
        with FakeOllama(capacity=4, latency_per_request=LATENCY) as fake:
            seed(pg_url)
            one_rate, one_vectors = run_embedders(pg_url, fake, 1)
            one_inputs = fake.counters()["inputs_embedded"]
            fake.reset_counters()
            seed(url2)
            t0 = time.monotonic()
            two_rate, two_vectors = run_embedders(url2, fake, 2)
            assert time.monotonic() - t0 < 300
            two_inputs = fake.counters()["inputs_embedded"]
        assert one_inputs == N and two_inputs == N, "a posting was embedded twice"
        assert two_vectors == one_vectors, "two instances must produce what one produces"
        ratio = two_rate / one_rate
        print(f"\nscale-out: 1 instance {one_rate:.1f}/s, 2 instances {two_rate:.1f}/s, ratio {ratio:.2f}")
        assert ratio >= 1.7, f"two instances only {ratio:.2f}x one"
    finally:
        with psycopg.connect(pg_server["url"], autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {second} WITH (FORCE)")
