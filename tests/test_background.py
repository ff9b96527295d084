"""jobpipe.background: a daemon's job on its own thread and connection, against a real PostgreSQL.

A killed connection is replaced and the work goes on; a stop cancels the statement that runs
(pg_stat_activity shows it gone); outcomes reach take(), STATUS and the metrics registry."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import psycopg
import pytest

from jobpipe import background, config, db, runtime
from jobpipe.errors import DependencyDown
from jobpipe.metrics import DaemonMetrics
from tests.waiting import wait_until


def _ctx(pg_url: str) -> runtime.Context:
    cfg = config.load(environ={}).with_overrides(
        database__reconnect_max_s=0.2, runtime__dependency_backoff_max_s=0.2
    )
    return runtime.Context(
        cfg, DaemonMetrics("sample"), "me", pg_url, threading.Event(), logging.getLogger("t")
    )


def _runs(ctx: background.Context, job: str, outcome: str) -> float:
    v = ctx.metrics.registry.get_sample_value(
        "jobpipe_background_runs_total", {"daemon": "sample", "job": job, "outcome": outcome}
    )
    return v or 0.0


def _activity(conn: Any, app: str) -> list[tuple[int, str, str]]:
    return conn.execute(
        "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchall()


def _sleeping(pg_url: str, db_conn: Any) -> tuple[runtime.Context, Any]:
    """A started job whose statement (pg_sleep(60)) is running, as pg_stat_activity shows."""
    ctx = _ctx(pg_url)
    job = ctx.job("sleeper", lambda conn: conn.execute("SELECT pg_sleep(60)").fetchone())
    job.start()
    wait_until(
        lambda: any(
            "pg_sleep" in q and s == "active" for _, s, q in _activity(db_conn, "jobpipe-sample-sleeper")
        ),
        timeout=15,
        what="pg_sleep running on the job's connection",
    )
    return ctx, job


def test_a_killed_connection_is_replaced_and_the_job_goes_on(pg_url: str, db_conn: Any) -> None:
    ctx = _ctx(pg_url)
    pids: list[int] = []
    first_run = threading.Event()

    def step(conn: Any) -> bool:
        pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        first_run.set()
        return False  # idle: the next step after repeat_s

    job = ctx.job("probe", step, repeat_s=0.05)
    job.start()
    try:
        assert first_run.wait(10)
        victim = pids[0]
        db_conn.execute("SELECT pg_terminate_backend(%s)", (victim,))
        wait_until(lambda: any(p != victim for p in pids), timeout=15, what="a step on a new connection")
        assert _runs(ctx, "probe", "connection_lost") >= 1
        assert _runs(ctx, "probe", "ok") >= 2
        assert job.conn.info.backend_pid != victim
    finally:
        job.stop(10)
    assert not job.running and job.conn is None  # stopped: thread ended, connection closed


def test_a_one_shot_run_is_redone_on_a_new_connection_after_it_was_killed(pg_url: str, db_conn: Any) -> None:
    ctx = _ctx(pg_url)
    attempts: list[int] = []

    def work(conn: Any, n: int) -> int:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        attempts.append(pid)
        if len(attempts) == 1:  # the first attempt loses its connection mid-run
            db_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute("SELECT 1")
        return n * 2

    job = ctx.job("once", work)
    job.start(21)
    job.join(15)
    outcome = job.take()
    assert outcome is not None and outcome.result() == 42
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert _runs(ctx, "once", "connection_lost") == 1 and _runs(ctx, "once", "ok") == 1
    assert job.take() is None  # handed over once


def test_stop_cancels_the_running_statement_and_returns_promptly(pg_url: str, db_conn: Any) -> None:
    ctx, job = _sleeping(pg_url, db_conn)
    t0 = time.monotonic()
    job.stop(10)
    assert time.monotonic() - t0 < 5, "stop waited for the statement instead of cancelling it"
    assert not job.running
    wait_until(
        lambda: not _activity(db_conn, "jobpipe-sample-sleeper"), timeout=10, what="the connection gone"
    )
    outcome = job.take()
    assert outcome is not None and isinstance(outcome.error, psycopg.errors.QueryCanceled)
    assert _runs(ctx, "sleeper", "stopped") == 1


def test_context_stop_jobs_signals_every_job_without_waiting(pg_url: str, db_conn: Any) -> None:
    ctx, job = _sleeping(pg_url, db_conn)
    ctx.stop_jobs()
    assert job.stopping.is_set()
    job.join(10)  # the statement was cancelled by stop_jobs itself: no stop() needed to end it
    assert not job.running


def test_outcome_status_and_metrics_of_a_failing_and_a_reporting_job(pg_url: str) -> None:
    ctx = _ctx(pg_url)

    def fails(conn: Any) -> None:
        raise ValueError("bad input")

    bad = ctx.job("bad", fails)
    bad.start()
    bad.join(10)
    outcome = bad.take()
    assert outcome is not None and isinstance(outcome.error, ValueError)
    with pytest.raises(ValueError, match="bad input"):
        outcome.result()
    assert _runs(ctx, "bad", "failed") == 1

    def reporting(conn: Any) -> str:
        ctx.jobs[-1].report("page 3/7")
        return "done"

    good = ctx.job("crawl", reporting)
    good.start()
    good.join(10)
    assert good.take().result() == "done"
    assert "crawl: page 3/7" in ctx.jobs_status()
    assert _runs(ctx, "crawl", "ok") == 1


def test_a_repeating_job_shows_its_dependency_down_until_a_step_succeeds(pg_url: str) -> None:
    ctx = _ctx(pg_url)
    failures = [3]
    recovered = threading.Event()

    def step(conn: Any) -> bool:
        if failures[0]:
            failures[0] -= 1
            raise DependencyDown("ollama", "connection refused", kind="connection")
        recovered.set()
        return False

    seen_down = []

    job = ctx.job("catalogue_sync", step, repeat_s=0.05)
    job.start()
    try:
        wait_until(lambda: seen_down.append(dict(ctx.background_down)) or "ollama" in ctx.background_down,
                   timeout=10, what="ollama reported down")  # fmt: skip
        assert recovered.wait(15)
        wait_until(lambda: "ollama" not in ctx.background_down, timeout=10, what="ollama reported up again")
        assert _runs(ctx, "catalogue_sync", "failed") == 3
        assert not job.status  # the failure's STATUS text is gone once a step succeeded
    finally:
        job.stop(10)


def test_stop_right_after_start_never_waits_for_the_statement(pg_url: str, db_conn: Any) -> None:
    """Whether the stop comes before the work's statement starts or while it runs, the statement
    never runs its 60 s (a cancel that went out too early is sent again)."""
    ctx = _ctx(pg_url)
    job = ctx.job("sleeper", lambda conn: conn.execute("SELECT pg_sleep(60)").fetchone())
    for _ in range(3):
        job.take()
        job.start()
        t0 = time.monotonic()
        job.stop(30)
        assert time.monotonic() - t0 < 12 and not job.running
    # Cancelled, not running on: the backend goes (the client closed it) and never ran its 60 s.
    wait_until(
        lambda: not _activity(db_conn, "jobpipe-sample-sleeper"), timeout=10, what="the connection gone"
    )


def test_a_float_from_work_is_the_pause_before_the_next_run(pg_url: str) -> None:
    """repeat_s is an hour: only the seconds `work` returns can bring the next runs (a bool still
    means at once / after repeat_s); stop ends a long pause at once."""
    ctx = _ctx(pg_url)
    runs: list[float] = []

    def step(conn: Any) -> float:
        runs.append(time.monotonic())
        return 0.05 if len(runs) < 4 else 3600.0

    job = ctx.job("paced", step, repeat_s=3600)
    job.start()
    try:
        wait_until(lambda: len(runs) >= 4, timeout=10, what="four runs")
        gaps = [b - a for a, b in itertools.pairwise(runs)]
        assert all(0.04 <= g < 5 for g in gaps), gaps
    finally:
        t0 = time.monotonic()
        job.stop(10)
    assert time.monotonic() - t0 < 5 and not job.running  # the hour's pause did not hold it
    assert len(runs) == 4


def test_on_connect_checks_every_new_connection_and_a_refusal_closes_it(pg_url: str, db_conn: Any) -> None:
    """The first two connections are refused by on_connect (closed: pg_stat_activity shows only
    the third); work runs on the checked one; a killed connection's successor is checked too."""
    ctx = _ctx(pg_url)
    checked: list[int] = []
    worked: list[int] = []

    def check(conn: Any) -> None:
        checked.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        if len(checked) <= 2:
            raise DependencyDown("schema", "waiting for migrations", "schema")

    def step(conn: Any) -> bool:
        worked.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        return False

    job = ctx.job("checked", step, repeat_s=0.05, on_connect=check)
    job.start()
    try:
        wait_until(lambda: worked, timeout=15, what="a run after the check passed")
        assert len(set(checked)) == 3 and set(worked) == {checked[2]}
        assert [pid for pid, _, _ in _activity(db_conn, "jobpipe-sample-checked")] == [checked[2]]
        assert _runs(ctx, "checked", "failed") == 2  # the refusals count as the runs' failures
        db_conn.execute("SELECT pg_terminate_backend(%s)", (checked[2],))
        wait_until(lambda: len(checked) == 4 and worked[-1] == checked[3], timeout=15,
                   what="the new connection checked, then used")  # fmt: skip
    finally:
        job.stop(10)


def test_on_connection_lost_hears_every_refused_and_lost_connection(pg_url: str, db_conn: Any) -> None:
    """A Standalone job (no daemon Context): while its connect is refused the hook hears every
    attempt, at the reconnect backoff; a hook that raises does not end the job; a killed
    connection is heard too, and the job goes on."""
    cfg = config.load(environ={}).with_overrides(database__reconnect_max_s=0.1)
    refusing = threading.Event()
    refusing.set()

    def opener() -> Any:
        if refusing.is_set():
            raise DependencyDown("database", "connection refused", "connection")
        return db.connect(pg_url, application_name="jobpipe-standalone")

    heard: list[Exception] = []

    def lost(exc: Exception) -> None:
        heard.append(exc)
        if len(heard) == 2:
            raise RuntimeError("a hook that fails")

    pids: list[int] = []

    def step(conn: Any) -> bool:
        pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        return False

    ctx = background.Standalone(cfg, DaemonMetrics("sample"), logging.getLogger("t"), opener)
    job = background.BackgroundJob(ctx, "standalone", step, repeat_s=0.05, on_connection_lost=lost)
    job.start()
    try:
        wait_until(lambda: len(heard) >= 4, timeout=10, what="four refused attempts heard")
        assert all(isinstance(e, DependencyDown) and e.dependency == "database" for e in heard)
        assert not pids
        refusing.clear()
        wait_until(lambda: pids, timeout=10, what="a run once connect works")
        refused = len(heard)
        db_conn.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        wait_until(lambda: any(p != pids[0] for p in pids), timeout=15, what="a run on a new connection")
        assert len(heard) == refused + 1 and isinstance(heard[-1], psycopg.OperationalError)
        assert _runs(ctx, "standalone", "connection_lost") == len(heard)
    finally:
        job.stop(10)
    assert not job.running and job.conn is None


def test_run_once_runs_on_the_callers_thread_and_handles_a_lost_connection(pg_url: str, db_conn: Any) -> None:
    ctx = _ctx(pg_url)
    heard: list[Exception] = []
    threads: list[str] = []

    def work(conn: Any, n: int) -> int:
        threads.append(threading.current_thread().name)
        if n < 0:
            raise ValueError("negative")
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    job = ctx.job("inline", work, keep_connection=True, on_connection_lost=heard.append)
    first = job.run_once(1)
    assert job.run_once(2) == first  # the connection is kept between calls
    assert threads == [threading.current_thread().name] * 2
    db_conn.execute("SELECT pg_terminate_backend(%s)", (first,))
    assert job.run_once(3) is None  # lost: reported, not raised, no reconnect pause
    assert len(heard) == 1 and job.conn is None
    second = job.run_once(4)
    assert second is not None and second != first
    with pytest.raises(ValueError, match="negative"):
        job.run_once(-1)
    assert [_runs(ctx, "inline", o) for o in ("ok", "connection_lost", "failed")] == [3, 1, 1]
    job.stop(10)
    assert job.conn is None


def test_the_outcome_can_be_taken_when_the_wake_up_arrives(pg_url: str, db_conn: Any) -> None:
    """The loop collects on the wake-up: an outcome not yet takeable then waited for its next poll
    (seen in 7 of 40 runs). A connection slow to close holds the job between its wake-up and its end."""
    closing = threading.Event()

    class SlowClose(psycopg.Connection[Any]):
        def close(self) -> None:
            closing.wait(10)
            super().close()

    def opener() -> Any:
        return SlowClose.connect(pg_url, autocommit=True)

    ctx = background.Standalone(_ctx(pg_url).cfg, DaemonMetrics("sample"), logging.getLogger("t"), opener)
    job = background.BackgroundJob(ctx, "quick", lambda conn: 42, wake_channel="jobpipe_test_wake")
    db_conn.execute("LISTEN jobpipe_test_wake")
    try:
        job.start()
        woken = list(db_conn.notifies(timeout=10, stop_after=1))
        assert woken, "no wake-up"
        outcome = job.take()
    finally:
        closing.set()
        job.stop(10)
    assert outcome is not None and outcome.result() == 42


def test_no_stale_waiting_for_the_database_in_status_after_the_run_ends(pg_url: str, db_conn: Any) -> None:
    """A run that lost its connection and then failed otherwise ended with "waiting for the
    database" in STATUS, and kept it through later successful runs (the snapshot and index
    jobs set no STATUS of their own to replace it)."""
    ctx = _ctx(pg_url)
    calls: list[str] = []

    def work(conn: Any, plan: list[str]) -> str:
        step = plan[len(calls)]
        calls.append(step)
        if step == "lose":
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            db_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute("SELECT 1")
        if step == "fail":
            raise ValueError("not the database")
        return step

    job = ctx.job("snapshot", work)
    job.start(["lose", "fail"])
    job.join(15)
    outcome = job.take()
    assert outcome is not None and isinstance(outcome.error, ValueError)
    assert not any("waiting for the database" in s for s in ctx.jobs_status()), ctx.jobs_status()
    job.start(["lose", "fail", "ok"])
    job.join(15)
    assert job.take().result() == "ok"
    assert ctx.jobs_status() == []
