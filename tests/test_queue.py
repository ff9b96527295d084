"""The work queue's guarantees, against a real PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from jobpipe import db, queue
from jobpipe.queue import RetryPolicy

POLICY = RetryPolicy(max_attempts=3, backoff_base_s=0.0, backoff_max_s=0.0)


def test_enqueue_twice_gives_one_pending_item(db_conn):
    assert queue.enqueue(db_conn, "embed", [1, 2, 3]) == 3
    assert queue.enqueue(db_conn, "embed", [1, 2, 3]) == 0
    assert queue.enqueue(db_conn, "embed", [3, 3, 4]) == 1
    n = db_conn.execute("SELECT count(*) FROM queue WHERE stage='embed' AND status='pending'").fetchone()[0]
    assert n == 4


def test_enqueue_is_atomic_with_the_posting_insert(db_conn):
    # A rolled-back insert leaves no work behind; a committed one always has its work.
    with pytest.raises(RuntimeError), db_conn.transaction():
        db_conn.execute("INSERT INTO postings (external_id, title, title_norm) VALUES ('a', 'Koch', 'koch')")
        raise RuntimeError("abort")
    assert db_conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0
    pid = db_conn.execute(
        "INSERT INTO postings (external_id, title, title_norm) VALUES ('b', 'Koch', 'koch') RETURNING id"
    ).fetchone()[0]
    stages = {r[0] for r in db_conn.execute("SELECT stage FROM queue WHERE subject=%s", (pid,))}
    assert {"description", "embed"} <= stages
    tid = db_conn.execute("SELECT title_id FROM postings WHERE id=%s", (pid,)).fetchone()[0]
    assert (
        db_conn.execute(
            "SELECT count(*) FROM queue WHERE stage='classify' AND subject=%s", (tid,)
        ).fetchone()[0]
        == 1
    )


def test_claim_sets_lease_and_priority_first(db_conn):
    queue.enqueue(db_conn, "verify", range(1, 11))
    queue.enqueue(db_conn, "verify", [99], priority=10)
    items = queue.claim(db_conn, "verify", "w1", 3, lease_s=60, policy=POLICY)
    assert items[0].subject == 99
    assert len(items) == 3
    owners = db_conn.execute("SELECT DISTINCT lease_owner FROM queue WHERE status='running'").fetchall()
    assert owners == [("w1",)]
    assert queue.claim(db_conn, "verify", "w2", 100, lease_s=60, policy=POLICY).__len__() == 8


def test_fail_backs_off_then_gives_up_and_requeue(db_conn):
    queue.enqueue(db_conn, "embed", [7])
    for attempt in range(1, 4):
        (item,) = queue.claim(db_conn, "embed", "w", 1, 60, POLICY)
        r = queue.fail(db_conn, "embed", "w", {item.id: f"boom {attempt}"}, POLICY)
        expect = (
            {"failed": 1, "given_up": 0, "given_up_subjects": []}
            if attempt < 3
            else {"failed": 0, "given_up": 1, "given_up_subjects": [7]}
        )
        assert r == expect
    row = db_conn.execute("SELECT status, attempts, last_error FROM queue").fetchone()
    assert row == ("given_up", 3, "boom 3")
    assert queue.stats(db_conn)["embed"].given_up == 1
    assert queue.requeue_given_up(db_conn, "embed") == 1
    assert db_conn.execute("SELECT status, attempts FROM queue").fetchone() == ("pending", 0)


def test_backoff_grows_exponentially_with_jitter():
    p = RetryPolicy(max_attempts=10, backoff_base_s=10, backoff_max_s=100)
    rng = random.Random(1)
    d = [p.delay(a, rng) for a in (1, 2, 3, 4, 5, 6)]
    assert 5 <= d[0] <= 10 and 10 <= d[1] <= 20 and 20 <= d[2] <= 40 and 40 <= d[3] <= 80
    assert all(50 <= x <= 100 for x in d[4:])
    assert len({round(p.delay(3, rng), 6) for _ in range(20)}) > 1  # jittered


def test_failed_item_waits_for_its_backoff(db_conn):
    policy = RetryPolicy(max_attempts=5, backoff_base_s=3600, backoff_max_s=3600)
    queue.enqueue(db_conn, "embed", [1])
    (item,) = queue.claim(db_conn, "embed", "w", 1, 60, policy)
    queue.fail(db_conn, "embed", "w", {item.id: "x"}, policy)
    assert queue.claim(db_conn, "embed", "w", 1, 60, policy) == []
    st = queue.stats(db_conn)["embed"]
    assert (st.pending, st.scheduled) == (0, 1)


def test_defer_and_release_do_not_charge_attempts(db_conn):
    queue.enqueue(db_conn, "embed", [1, 2])
    items = queue.claim(db_conn, "embed", "w", 2, 60, POLICY)
    assert queue.defer(db_conn, "w", [items[0].id], 0.0, "ollama down") == 1
    assert queue.release(db_conn, "w") == 1
    rows = db_conn.execute("SELECT status, attempts FROM queue ORDER BY id").fetchall()
    assert rows == [("pending", 0), ("pending", 0)]


def test_complete_only_by_lease_owner_and_idempotent(db_conn):
    queue.enqueue(db_conn, "embed", [1])
    (item,) = queue.claim(db_conn, "embed", "w1", 1, 60, POLICY)
    assert queue.complete(db_conn, "embed", "w2", {item.id: "ok"}) == 0
    assert queue.complete(db_conn, "embed", "w1", {item.id: "ok"}) == 1
    assert queue.complete(db_conn, "embed", "w1", {item.id: "ok"}) == 0
    n = db_conn.execute("SELECT sum(n) FROM stage_counts WHERE stage='embed' AND outcome='ok'").fetchone()[0]
    assert n == 1


def test_expired_lease_is_reclaimed_automatically_and_charged(db_conn):
    queue.enqueue(db_conn, "embed", [1])
    (item,) = queue.claim(db_conn, "embed", "dead", 1, lease_s=0.001, policy=POLICY)
    db_conn.execute("SELECT pg_sleep(0.01)")
    (again,) = queue.claim(db_conn, "embed", "alive", 1, lease_s=60, policy=POLICY)
    assert again.id == item.id and again.attempts == 1
    assert queue.complete(db_conn, "embed", "dead", {item.id: "late"}) == 0


def test_waiter_wakes_on_enqueue(pg_url):
    listen = db.connect(pg_url)
    other = db.connect(pg_url)
    try:
        w = queue.Waiter(listen, ["embed"])
        assert w.wait(0.05) is False
        queue.enqueue(other, "embed", [1])
        t0 = time.monotonic()
        assert w.wait(5.0) is True
        assert time.monotonic() - t0 < 2.0
    finally:
        listen.close()
        other.close()


def test_stats_and_prune(db_conn):
    queue.enqueue(db_conn, "embed", range(5))
    items = queue.claim(db_conn, "embed", "w", 2, 60, POLICY)
    queue.complete(db_conn, "embed", "w", {i.id: "ok" for i in items})
    st = queue.stats(db_conn, ["embed", "verify"])
    assert st["embed"].pending == 3 and st["embed"].running == 0
    assert st["verify"].pending == 0
    db_conn.execute("UPDATE queue SET finished_at = now() - interval '30 days' WHERE status='done'")
    assert queue.prune(db_conn, 14) == 2


WORKER = textwrap.dedent(
    """
    import sys, time
    from jobpipe import db, queue
    url, owner, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    policy = queue.RetryPolicy(max_attempts=5, backoff_base_s=0, backoff_max_s=0)
    conn = db.connect(url)
    lease = 0.5 if mode == "hold" else 60
    while True:
        items = queue.claim(conn, "work", owner, 50, lease, policy)
        if not items:
            break
        if mode == "hold":
            print("claimed", len(items), flush=True)
            time.sleep(3600)
        with conn.transaction():
            conn.execute(
                "INSERT INTO done_log (subject, owner) SELECT unnest(%s::bigint[]), %s",
                ([i.subject for i in items], owner),
            )
            queue.complete(conn, "work", owner, {i.id: "ok" for i in items})
    """
)


def _spawn(pg_url: str, owner: str, mode: str = "run") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "lib"))
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, pg_url, owner, mode], env=env, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.system
def test_four_processes_share_10000_items_exactly_once(db_conn, pg_url):
    db_conn.execute("CREATE TABLE done_log (subject bigint, owner text)")
    queue.enqueue(db_conn, "work", range(10_000))
    procs = [_spawn(pg_url, f"p{i}") for i in range(4)]
    for p in procs:
        assert p.wait(timeout=240) == 0
    total, distinct, owners = db_conn.execute(
        "SELECT count(*), count(DISTINCT subject), count(DISTINCT owner) FROM done_log"
    ).fetchone()
    assert (total, distinct) == (10_000, 10_000)
    assert owners >= 2  # the work really was shared
    assert db_conn.execute("SELECT count(*) FROM queue WHERE status <> 'done'").fetchone()[0] == 0


@pytest.mark.system
def test_sigkilled_worker_items_are_done_by_another_after_lease_expiry(db_conn, pg_url):
    db_conn.execute("CREATE TABLE done_log (subject bigint, owner text)")
    queue.enqueue(db_conn, "work", range(100))
    holder = _spawn(pg_url, "victim", "hold")
    assert holder.stdout.readline().startswith("claimed 50")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    # Wait (on the database clock) for the victim's lease to lapse before starting the rescuer.
    db_conn.execute("SELECT pg_sleep(greatest(0, extract(epoch FROM max(lease_expires) - now()))) FROM queue")
    rescuer = _spawn(pg_url, "rescuer")
    assert rescuer.wait(timeout=60) == 0
    rows = db_conn.execute("SELECT count(*), count(DISTINCT subject) FROM done_log").fetchone()
    assert rows == (100, 100)
    assert db_conn.execute("SELECT count(*) FROM done_log WHERE owner='victim'").fetchone()[0] == 0


def test_migrations_recorded_and_idempotent(pg_url):
    assert db.migrate(pg_url) == []
    with db.connect(pg_url) as conn:
        db.check_schema(conn)
        versions = db.applied_versions(conn)
    assert "0001_schema" in versions


@pytest.mark.system
def test_concurrent_migrate_serialised(pg_server):
    import uuid

    from tests.conftest import url_for

    name = "m_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server["url"], autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    url = url_for(pg_server["url"], name)
    code = "import sys; from jobpipe import db; print(len(db.migrate(sys.argv[1])))"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "lib"))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = sorted(int(p.communicate(timeout=60)[0].strip()) for p in procs)
    total = len(db.available_migrations())
    assert outs == [0, 0, total]


def test_change_while_running_is_not_lost(db_conn):
    queue.enqueue(db_conn, "embed", [5])
    (item,) = queue.claim(db_conn, "embed", "w", 1, 60, POLICY)
    # The subject changes while its item runs (from Python and from SQL/trigger alike).
    assert queue.enqueue(db_conn, "embed", [5]) == 0
    db_conn.execute("SELECT jobpipe_enqueue('embed', 5)")
    assert queue.complete(db_conn, "embed", "w", {item.id: "ok"}) == 1
    rows = db_conn.execute("SELECT status FROM queue WHERE subject = 5 ORDER BY id").fetchall()
    assert rows == [("done",), ("pending",)]
    # Without a change, completing does not re-enqueue.
    (again,) = queue.claim(db_conn, "embed", "w", 1, 60, POLICY)
    queue.complete(db_conn, "embed", "w", {again.id: "ok"})
    assert db_conn.execute("SELECT count(*) FROM queue WHERE status = 'pending'").fetchone()[0] == 0
