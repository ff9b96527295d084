"""Alerting as the operator meets it: a real daemon process whose handler fails every item at once
(the predecessor's "0 success, 56 failed in 0.0 s"), a real PostgreSQL holding the alert state, and
a fake Signal gateway that follows docs/contracts/signal.md and misbehaves like real ones.

Intervals are shortened through the environment (alerts.eval_interval_s 0.3 s, resolve after 0.6 s);
"the alerter evaluated again" is observed through its pending-count samples in alert_samples (one
per evaluation), never through sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobpipe import config, db, queue, runtime
from jobpipe.alerts.alerter import Alerter
from jobpipe.alerts.conditions import (
    Condition,
    StageFacts,
    Thresholds,
    backlog_condition,
    count_condition,
    stage_conditions,
    thresholds,
)
from jobpipe.alerts.delivery import DatabaseWatch, Deliverer, Latch, gateway_from_config, record_unit_failed
from jobpipe.alerts.message import render_message
from jobpipe.alerts.state import apply
from jobpipe.errors import ConfigError, DependencyDown
from jobpipe.metrics import DaemonMetrics
from jobpipe.sim.signal import DEFAULT_ACCOUNT, FakeSignalGateway
from tests.alert_daemon import FailingDaemon
from tests.waiting import in_thread, wait_until

ROOT = Path(__file__).resolve().parent.parent
SENDER = DEFAULT_ACCOUNT
RECIPIENTS = ["+4917612345678", "+4916098765432"]
STAGE = "summarise"
EVAL_S = 0.3
HOST = socket.gethostname()


# ---------------------------------------------------------------------------------------- helpers


def one(conn: Any, sql: str, params: Any = None) -> Any:
    return conn.execute(sql, params).fetchone()[0]


def samples(conn: Any) -> int:
    return one(conn, "SELECT count(*) FROM alert_samples WHERE stage = %s", (STAGE,))


def wait_evaluations(conn: Any, n: int = 5, timeout: float = 30.0) -> None:
    """Let the running alerter(s) evaluate `n` more times (each leaves one sample)."""
    start = samples(conn)
    wait_until(lambda: samples(conn) >= start + n, timeout, what=f"{n} more evaluations")


def failures(conn: Any) -> int:
    return one(
        conn,
        "SELECT coalesce(sum(n), 0) FROM stage_counts WHERE stage = %s AND outcome IN ('failed', 'given_up')",
        (STAGE,),
    )


def done(conn: Any) -> int:
    return one(conn, "SELECT count(*) FROM queue WHERE stage = %s AND status = 'done'", (STAGE,))


def alert_env(pg_url: str, gw: FakeSignalGateway, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        JOBPIPE_DATABASE_URL=pg_url,
        JOBPIPE_QUEUE_POLL_INTERVAL_S="0.1",
        JOBPIPE_QUEUE_BACKOFF_BASE_S="0",
        JOBPIPE_RUNTIME_STATUS_INTERVAL_S="0.2",
        JOBPIPE_RUNTIME_DEPENDENCY_BACKOFF_S="0.1",
        JOBPIPE_RUNTIME_DEPENDENCY_BACKOFF_MAX_S="0.3",
        JOBPIPE_RUNTIME_DRAIN_TIMEOUT_S="2",
        JOBPIPE_LOGGING_FORMAT="json",
        JOBPIPE_ALERTS_CHANNEL="signal-rest",
        JOBPIPE_ALERTS_GATEWAY_URL=gw.url,
        JOBPIPE_ALERTS_SENDER=SENDER,
        JOBPIPE_ALERTS_RECIPIENTS=json.dumps(RECIPIENTS),
        JOBPIPE_ALERTS_EVAL_INTERVAL_S=str(EVAL_S),
        JOBPIPE_ALERTS_RESOLVE_MINUTES="0.01",
        JOBPIPE_ALERTS_GIVEN_UP_MIN="100000",
        JOBPIPE_ALERTS_RETRY_BASE_S="0.2",
        JOBPIPE_ALERTS_RETRY_MAX_S="0.5",
        JOBPIPE_ALERTS_TIMEOUT_S="2",
        ALERT_DAEMON_FIXED_FILE=str(tmp_path / "fixed"),
        ALERT_DAEMON_DOWN_FILE=str(tmp_path / "down"),
        STATE_DIRECTORY=str(tmp_path),
    )
    env.update(extra)
    return env


def start_daemon(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_file = open(log_path, "ab")  # noqa: SIM115  # the child writes it; closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobpipe.cli",
            "run",
            "tests.alert_daemon:FailingDaemon",
            "--metrics-port",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        cwd=ROOT,
    )
    log_file.close()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_config(gw: FakeSignalGateway, **overrides: Any) -> config.Config:
    base = dict(
        alerts__channel="signal-rest",
        alerts__gateway_url=gw.url,
        alerts__sender=SENDER,
        alerts__recipients=list(RECIPIENTS),
        alerts__eval_interval_s=EVAL_S,
        alerts__resolve_minutes=0.01,
        alerts__given_up_min=100000,
        alerts__retry_base_s=0.2,
        alerts__retry_max_s=0.5,
        alerts__timeout_s=2.0,
        queue__poll_interval_s=0.1,
        queue__backoff_base_s=0,
        runtime__status_interval_s=0.2,
        runtime__dependency_backoff_s=0.1,
        runtime__dependency_backoff_max_s=0.3,
    )
    base.update(overrides)
    return config.load(environ={}).with_overrides(**base)


test_config.__test__ = False  # a helper, not a test


class InProcess:
    """A FailingDaemon runner on a thread, with its metrics and alerter at hand."""

    def __init__(self, cfg: config.Config, url: str, tmp_path: Path) -> None:
        attrs = {"fixed_file": str(tmp_path / "fixed"), "down_file": str(tmp_path / "down")}
        self.cls = type("Daemon", (FailingDaemon,), attrs)
        self.metrics = DaemonMetrics("summary")
        self.runner = runtime.Runner(self.cls, cfg, db_url=url, serve=False, metrics=self.metrics)
        self.thread, _ = in_thread(self.runner.run)
        wait_until(lambda: self.runner.alerter is not None, 10, what="alerter started")

    @property
    def alerter(self) -> Alerter:
        return self.runner.alerter

    def evaluations(self, n: int) -> None:
        target = self.alerter.evaluations + n
        assert self.alerter.wait_for_evaluations(target, timeout=30), "alerter stopped evaluating"

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"daemon": "summary", **labels})

    def close(self) -> None:
        self.runner.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def gw():
    with FakeSignalGateway() as g:
        yield g


# ---------------------------------------------------------------------------------------- the 56 of 56


@pytest.mark.system
def test_instant_failures_one_alert_health_fail_then_one_resolved(pg_url, db_conn, gw, tmp_path):
    env = alert_env(pg_url, gw, tmp_path)
    queue.enqueue(db_conn, STAGE, range(1, 57))
    proc = start_daemon(env, tmp_path / "daemon.log")
    try:
        wait_until(lambda: failures(db_conn) == 56, what="56 failures")
        t_failed = time.monotonic()
        msgs = gw.wait_for_messages(1, timeout=10)
        assert len(msgs) == 1, "no alert for 56 of 56 failed"
        # Within one evaluation interval (plus the delivery round trip and scheduling slack).
        assert time.monotonic() - t_failed <= EVAL_S + 2.0
        text = msgs[0].message
        lines = text.splitlines()
        assert lines[0].startswith(f"{HOST} summary: FIRING failure ratio on stage summarise")
        assert "56 of 56 processed failed" in lines[1]
        assert "undefined function summarize_text" in text  # the last error, so nobody has to dig
        assert "jobpipe health" in text and "journalctl -u jobpipe@summary" in text
        assert msgs[0].recipients == tuple(RECIPIENTS)

        res = run_cli(env, "health")
        assert res.returncode == 2, res.stdout + res.stderr
        assert "stage summarise (summary): FAIL" in res.stdout
        assert "0 due, 0 scheduled" in res.stdout  # FAIL although nothing is pending

        wait_evaluations(db_conn, 5)
        assert len(gw.messages) == 1, "the firing alert was repeated"

        (tmp_path / "fixed").touch()
        queue.enqueue(db_conn, STAGE, range(100, 200))
        msgs = gw.wait_for_messages(2, timeout=20)
        assert len(msgs) == 2
        assert (
            msgs[1]
            .message.splitlines()[0]
            .startswith(f"{HOST} summary: RESOLVED failure ratio on stage summarise (was firing")
        )
        wait_until(lambda: done(db_conn) == 100)
        wait_evaluations(db_conn, 5)
        assert len(gw.messages) == 2, "more than one resolved message"
        res = run_cli(env, "health")
        assert res.returncode == 0, res.stdout
        assert proc.poll() is None
    finally:
        stop(proc)
    logs = (tmp_path / "daemon.log").read_text()
    assert logs.count('"event":"alert_fired"') == 1
    assert logs.count('"event":"alert_resolved"') == 1


@pytest.mark.system
def test_restart_while_firing_sends_nothing_more(pg_url, db_conn, gw, tmp_path):
    env = alert_env(pg_url, gw, tmp_path)
    queue.enqueue(db_conn, STAGE, range(1, 57))
    proc = start_daemon(env, tmp_path / "first.log")
    try:
        assert len(gw.wait_for_messages(1, timeout=20)) == 1
        wait_until(lambda: one(db_conn, "SELECT count(*) FROM alerts WHERE delivery = 'sent'") == 1)
    finally:
        proc.kill()  # no goodbye: as after a crash
        proc.wait()
    proc = start_daemon(env, tmp_path / "second.log")
    try:
        wait_evaluations(db_conn, 6)
        assert len(gw.messages) == 1
        assert len(gw.requests) == 1
        assert one(db_conn, "SELECT firing FROM alerts WHERE condition = 'failure_ratio:summarise'") is True
    finally:
        stop(proc)


@pytest.mark.system
def test_two_instances_send_one_message(pg_url, db_conn, gw, tmp_path):
    env = alert_env(pg_url, gw, tmp_path)
    procs = [start_daemon(env, tmp_path / f"i{k}.log") for k in range(2)]
    try:
        wait_until(lambda: one(db_conn, "SELECT count(*) FROM daemon_status") == 2, what="both instances up")
        # Both evaluate against this database (each alerter has its own connection).
        wait_until(
            lambda: (
                one(
                    db_conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobpipe-summary-alerts'",
                )
                == 2
            ),
            what="two alerters connected",
        )
        queue.enqueue(db_conn, STAGE, range(1, 57))
        assert len(gw.wait_for_messages(1, timeout=20)) == 1
        wait_evaluations(db_conn, 8)
        assert len(gw.messages) == 1
        assert len(gw.requests) == 1
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            stop(p)
    fired = sum((tmp_path / f"i{k}.log").read_text().count('"event":"alert_fired"') for k in range(2))
    assert fired == 1


@pytest.mark.system
def test_gateway_down_daemon_unaffected_delivered_once_when_back(pg_url, db_conn, gw, tmp_path):
    gw.go_down()
    env = alert_env(pg_url, gw, tmp_path)
    queue.enqueue(db_conn, STAGE, range(1, 57))
    proc = start_daemon(env, tmp_path / "daemon.log")
    try:
        wait_until(
            lambda: one(db_conn, "SELECT count(*) FROM alert_log WHERE status = 'unreachable'") >= 2,
            what="delivery retried while the gateway is down",
        )
        # The work loop goes on: fixed items complete while the alert waits for the gateway.
        (tmp_path / "fixed").touch()
        t0 = time.monotonic()
        queue.enqueue(db_conn, STAGE, range(100, 140))
        wait_until(lambda: done(db_conn) == 40, timeout=10)
        assert time.monotonic() - t0 < 5
        assert proc.poll() is None
        assert gw.messages == []
        gw.come_up()
        msgs = gw.wait_for_messages(1, timeout=20)
        assert len(msgs) == 1 and "FIRING failure ratio" in msgs[0].message
        wait_evaluations(db_conn, 6)
        assert len(gw.messages) == 1
    finally:
        stop(proc)


@pytest.mark.system
def test_secrets_never_in_logs(pg_url, db_conn, tmp_path):
    group = "group.c2VjcmV0LWdyb3VwLWlkLTEyMzQ="
    with FakeSignalGateway(unregistered={RECIPIENTS[1]}) as gw:
        env = alert_env(
            pg_url,
            gw,
            tmp_path,
            JOBPIPE_LOGGING_LEVEL="DEBUG",
            JOBPIPE_ALERTS_GROUP_ID=group,
            JOBPIPE_ALERTS_RETRY_MAX_S="0.3",
        )
        queue.enqueue(db_conn, STAGE, range(1, 57))
        proc = start_daemon(env, tmp_path / "daemon.log")
        try:
            # An unregistered recipient: the gateway's error text names the number.
            wait_until(
                lambda: one(db_conn, "SELECT count(*) FROM alert_log WHERE status = 'failed'") >= 1,
                what="a failed delivery",
            )
            # A captcha: the error text carries the number and a challenge token.
            gw.unregistered.clear()
            gw.set_fault("captcha")
            wait_until(
                lambda: one(db_conn, "SELECT count(*) FROM alert_log WHERE status = 'rate_limited'") >= 1,
                timeout=20,
                what="a rate-limited delivery",
            )
        finally:
            stop(proc)
        logs = (tmp_path / "daemon.log").read_text()
    assert '"event":"alert_delivery_failed"' in logs and '"event":"signal_degraded"' in logs
    secrets = [SENDER, *RECIPIENTS, group, group.removeprefix("group.")]
    secrets += [s.lstrip("+") for s in (SENDER, *RECIPIENTS)]
    for s in secrets:
        assert s not in logs, f"{s[:4]}… leaked into the log"
    # The message stored for `jobpipe alerts` carries no numbers either.
    for (detail,) in db_conn.execute("SELECT detail FROM alert_log").fetchall():
        for s in secrets:
            assert s not in (detail or "")


# ---------------------------------------------------------------------------------------- in process


@pytest.mark.parametrize(
    ("mode", "fault"), [("rest", "rate_limit_429"), ("rest", "captcha"), ("jsonrpc", "captcha")]
)
def test_rate_limit_and_captcha_back_off_without_storm(pg_url, db_conn, tmp_path, caplog, mode, fault):
    caplog.set_level("INFO")
    with FakeSignalGateway(mode) as gw:
        gw.set_fault(fault)
        channel = "signal-rest" if mode == "rest" else "signal-jsonrpc"
        cfg = test_config(gw, alerts__channel=channel, alerts__dependency_down_minutes=0.01)
        d = InProcess(cfg, pg_url, tmp_path)
        try:
            queue.enqueue(db_conn, STAGE, range(1, 57))
            assert len(gw.wait_for_requests(1, timeout=20)) == 1
            wait_until(lambda: d.gauge("jobpipe_signal_degraded") == 1.0, 10, what="degraded metric")
            assert (
                one(db_conn, "SELECT count(*) FROM alert_channel WHERE degraded_until > now() + '5 h'") == 1
            )
            # A second alert while degraded (the dependency goes down): it waits as well.
            (tmp_path / "down").touch()
            queue.enqueue(db_conn, STAGE, range(100, 110))
            wait_until(
                lambda: (
                    one(
                        db_conn,
                        "SELECT count(*) FROM alerts WHERE condition = 'dependency:ollama' AND firing",
                    )
                    == 1
                ),
                what="dependency alert firing",
            )
            d.evaluations(6)
            assert len(gw.requests) == 1, "resend storm"
            assert gw.messages == []
            assert d.gauge("jobpipe_signal_degraded") == 1.0
            pending = one(
                db_conn,
                "SELECT count(*) FROM alerts WHERE delivery = 'pending' AND next_delivery_at > now() + '5 h'",
            )
            assert pending == 1  # the first message, held back for hours
        finally:
            d.close()
    degraded = [r for r in caplog.records if r.getMessage() == "signal_degraded"]
    assert len(degraded) == 1
    explained = degraded[0].jobpipe_fields["explain"]
    assert explained.startswith("RATE LIMITED")
    assert "signalcaptchas.org" in explained  # 429 with challenge tokens is a captcha as well


def test_ambiguous_answer_is_not_resent(pg_url, db_conn, gw, tmp_path):
    gw.set_fault("killed_timeout", times=1)  # delivered, then "process killed as timeout reached"
    d = InProcess(test_config(gw), pg_url, tmp_path)
    try:
        queue.enqueue(db_conn, STAGE, range(1, 57))
        wait_until(lambda: one(db_conn, "SELECT count(*) FROM alerts WHERE delivery = 'ambiguous'") == 1)
        d.evaluations(6)
        assert len(gw.requests) == 1 and len(gw.messages) == 1
        assert one(db_conn, "SELECT status FROM alert_log") == "ambiguous"
        # The next transition is a new message and goes out normally.
        (tmp_path / "fixed").touch()
        queue.enqueue(db_conn, STAGE, range(100, 200))
        msgs = gw.wait_for_messages(2, timeout=20)
        assert "RESOLVED failure ratio" in msgs[1].message
        assert "was firing" in msgs[1].message  # an ambiguous start counts as announced
    finally:
        d.close()


def test_hung_gateway_never_blocks_the_work_loop(pg_url, db_conn, tmp_path):
    with FakeSignalGateway() as gw:
        gw.set_fault("hang", hang_max=10)
        d = InProcess(test_config(gw, alerts__timeout_s=3.0), pg_url, tmp_path)
        try:
            queue.enqueue(db_conn, STAGE, range(1, 57))
            gw.wait_for_requests(1, timeout=20)
            # The alert thread now waits for an answer that does not come; the loop does not.
            (tmp_path / "fixed").touch()
            t0 = time.monotonic()
            queue.enqueue(db_conn, STAGE, range(100, 130))
            wait_until(lambda: done(db_conn) == 30, timeout=10)
            assert time.monotonic() - t0 < 2.0  # well inside the gateway's 3 s timeout
            wait_until(lambda: one(db_conn, "SELECT count(*) FROM alerts WHERE delivery = 'ambiguous'") == 1)
            gw.release()
            d.evaluations(4)
            # A timed-out send may have gone out: only the resolved message may follow, never a resend.
            starts = [r for r in gw.requests if b"FIRING" in r.body]
            assert len(starts) == 1
        finally:
            d.close()


def test_dependency_down_alert_and_resolution(pg_url, db_conn, gw, tmp_path):
    (tmp_path / "down").touch()
    (tmp_path / "fixed").touch()
    d = InProcess(test_config(gw, alerts__dependency_down_minutes=0.01), pg_url, tmp_path)
    try:
        queue.enqueue(db_conn, STAGE, range(1, 11))
        msgs = gw.wait_for_messages(1, timeout=20)
        assert msgs[0].message.splitlines()[0].startswith(f"{HOST} summary: FIRING ollama unreachable")
        assert "reported down by 1 of 1 instance" in msgs[0].message
        assert one(db_conn, "SELECT count(*) FROM queue WHERE attempts > 0") == 0  # nothing charged
        assert d.gauge("jobpipe_alerts_firing", condition="dependency:ollama") == 1.0
        (tmp_path / "down").unlink()
        msgs = gw.wait_for_messages(2, timeout=20)
        assert "RESOLVED ollama unreachable" in msgs[1].message
        wait_until(lambda: done(db_conn) == 10)
        # The gateway records the message before it answers; the counter follows the answer.
        wait_until(lambda: d.gauge("jobpipe_alerts_sent_total", kind="resolved") == 1.0, 10)
        assert d.gauge("jobpipe_alerts_sent_total", kind="firing") == 1.0
        assert d.gauge("jobpipe_alerts_firing", condition="dependency:ollama") == 0.0
    finally:
        d.close()


def test_daemon_hook_conditions(pg_url, db_conn, gw, tmp_path):
    class Hooked(FailingDaemon):
        def alert_conditions(self, conn: Any) -> list[Condition]:
            n = conn.execute("SELECT count(*) FROM queue WHERE stage = 'hooked'").fetchone()[0]
            return [count_condition("truncated", "truncated partitions", n, 3, what="partitions")]

    cfg = test_config(gw)
    queue.enqueue(db_conn, "hooked", [1, 2, 3])
    runner = runtime.Runner(Hooked, cfg, db_url=pg_url, serve=False)
    t, _ = in_thread(runner.run)
    try:
        msgs = gw.wait_for_messages(1, timeout=20)
        assert "FIRING truncated partitions" in msgs[0].message
        assert "3 partitions (threshold 3)" in msgs[0].message
    finally:
        runner.stop.set()
        t.join(30)


def test_unit_failed_alert_resolves_when_the_daemon_runs_again(pg_url, db_conn, gw, tmp_path):
    record_unit_failed(
        db_conn, "summary", HOST, "unit jobpipe@summary.service", "exit-code", "", "systemctl status"
    )
    db_conn.execute("UPDATE alerts SET delivery = 'sent', notified_at = now()")  # sent by the hook
    d = InProcess(test_config(gw), pg_url, tmp_path)
    try:
        msgs = gw.wait_for_messages(1, timeout=20)
        assert (
            msgs[0]
            .message.splitlines()[0]
            .startswith(f"{HOST} summary: RESOLVED unit jobpipe@summary.service (was firing")
        )
    finally:
        d.close()


# ---------------------------------------------------------------------------------------- units


def shipped_thresholds(**alerts: Any) -> Thresholds:
    """The shipped thresholds with some `alerts.*` settings changed (validated like a config)."""
    cfg = config.load(environ={}).with_overrides(**{f"alerts__{k}": v for k, v in alerts.items()})
    return thresholds(cfg)


def facts(**kw: Any) -> StageFacts:
    return StageFacts(STAGE, **kw)


def cond(conds: list[Condition], prefix: str) -> Condition:
    return next(c for c in conds if c.key.startswith(prefix))


def test_failure_ratio_needs_the_minimum_count():
    th = shipped_thresholds()
    assert cond(stage_conditions(facts(failed_window=56), th), "failure_ratio").active
    assert not cond(stage_conditions(facts(failed_window=1), th), "failure_ratio").active
    assert not cond(stage_conditions(facts(failed_window=19), th), "failure_ratio").active
    assert not cond(
        stage_conditions(facts(failed_window=56, done_window=100), th), "failure_ratio"
    ).active
    c = cond(stage_conditions(facts(failed_window=30, done_window=10), th), "failure_ratio")
    assert c.active and "30 of 40 processed failed" in c.numbers and "75%" in c.numbers


def test_stall_needs_due_work_waiting_and_no_completion():
    th = shipped_thresholds(stall_minutes=30)
    assert cond(stage_conditions(facts(due=5, due_waiting_long=True), th), "stall").active
    assert not cond(stage_conditions(facts(due=5, due_waiting_long=False), th), "stall").active
    assert not cond(
        stage_conditions(facts(due=5, due_waiting_long=True, done_stall=1), th), "stall"
    ).active
    assert not cond(stage_conditions(facts(due=0, due_waiting_long=True), th), "stall").active


def _samples(values: list[int], minutes: float) -> list[tuple[Any, int]]:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    step = minutes / (len(values) - 1)
    return [(t0 + timedelta(minutes=i * step), v) for i, v in enumerate(values)]


def test_backlog_growing_versus_a_burst_being_worked_off():
    th = shipped_thresholds(backlog_growing_minutes=120, backlog_min_growth=100)
    rising = facts(samples=_samples([1000 + 30 * i for i in range(41)], 120))
    assert backlog_condition(rising, th).active
    burst = facts(samples=_samples([0, 16000, 14000, 11000, 8000, 5000, 3000], 120))
    assert not backlog_condition(burst, th).active
    small = facts(samples=_samples([10, 20, 30, 40, 50], 120))
    assert not backlog_condition(small, th).active  # grew by 40 < 100
    young = facts(samples=_samples([1000, 2000, 3000], 30))  # 30 min of history for a 120 min rule
    assert not backlog_condition(young, th).active


def test_overrides_per_daemon_and_their_errors():
    cfg = config.load(environ={}).with_overrides(
        alerts__overrides={"embedder": {"failure_ratio": 0.2, "stall_minutes": 5}}
    )
    assert thresholds(cfg, "embedder").failure_ratio == 0.2
    assert thresholds(cfg, "embedder").stall_minutes == 5.0
    assert thresholds(cfg, "fetcher").failure_ratio == 0.5
    bad = config.load(environ={}).with_overrides(alerts__overrides={"embedder": {"failure_ration": 0.2}})
    with pytest.raises(ConfigError, match=r"alerts\.overrides\.embedder\.failure_ration"):
        thresholds(bad, "embedder")
    bad = config.load(environ={}).with_overrides(alerts__overrides={"embedder": {"failure_ratio": 2}})
    with pytest.raises(ConfigError, match="above the maximum"):
        thresholds(bad, "embedder")


def test_two_evaluators_at_the_same_moment_fire_once(pg_url):
    c = Condition("failure_ratio:x", "failure ratio on stage x", True, "56 of 56")
    th = shipped_thresholds()
    barrier = threading.Barrier(8)
    fired: list[str] = []

    def evaluate() -> None:
        with db.connect(pg_url) as conn:
            barrier.wait()
            fired.extend(t.event for t in apply(conn, "d", "h", [c], th, deliver=True))

    threads = [threading.Thread(target=evaluate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert fired == ["fired"]


def test_two_deliverers_at_the_same_moment_send_once(pg_url, db_conn, gw):
    cfg = test_config(gw)
    c = Condition("failure_ratio:x", "failure ratio on stage x", True, "56 of 56")
    apply(db_conn, "d", "h", [c], shipped_thresholds(), deliver=True)
    gw.set_fault("slow", delay=0.5)  # the first send is in flight while the second looks
    barrier = threading.Barrier(4)

    def deliver() -> None:
        with db.connect(pg_url) as conn:
            g = gateway_from_config(cfg)
            barrier.wait()
            Deliverer(g, cfg).deliver_due(conn)
            g.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(gw.requests) == 1 and len(gw.messages) == 1
    assert one(db_conn, "SELECT delivery FROM alerts") == "sent"


def test_a_send_cut_short_by_a_crash_is_ambiguous_not_resent(db_conn, gw):
    cfg = test_config(gw)
    c = Condition("stall:x", "no progress on stage x", True, "5 due")
    apply(db_conn, "d", "h", [c], shipped_thresholds(), deliver=True)
    # As a process that claimed it and died before the answer leaves it:
    db_conn.execute("UPDATE alerts SET delivery = 'sending', next_delivery_at = now() - interval '1 s'")
    g = gateway_from_config(cfg)
    assert Deliverer(g, cfg).deliver_due(db_conn) == []
    assert gw.requests == []
    assert one(db_conn, "SELECT delivery FROM alerts") == "ambiguous"
    assert one(db_conn, "SELECT status FROM alert_log") == "ambiguous"


def test_reminder_after_renotify_hours(db_conn, gw):
    cfg = test_config(gw)
    th = shipped_thresholds(renotify_hours=1.0)
    c = Condition("stall:x", "no progress on stage x", True, "5 due")
    assert [t.event for t in apply(db_conn, "d", "h", [c], th, deliver=True)] == ["fired"]
    g = gateway_from_config(cfg)
    Deliverer(g, cfg).deliver_due(db_conn)
    assert apply(db_conn, "d", "h", [c], th, deliver=True) == []  # persists: silent
    db_conn.execute("UPDATE alerts SET notified_at = now() - interval '61 minutes'")
    assert [t.event for t in apply(db_conn, "d", "h", [c], th, deliver=True)] == ["reminder"]
    Deliverer(g, cfg).deliver_due(db_conn)
    msgs = gw.wait_for_messages(2)
    assert msgs[1].message.splitlines()[0].startswith("h d: STILL FIRING no progress on stage x")
    assert apply(db_conn, "d", "h", [c], th, deliver=True) == []


def test_hold_and_resolve_times_come_from_the_database(db_conn):
    th = shipped_thresholds(resolve_minutes=10)
    held = Condition("dependency:ollama", "ollama unreachable", True, "down", hold_s=300)
    assert apply(db_conn, "d", "h", [held], th, deliver=False) == []  # not yet 5 min
    db_conn.execute("UPDATE alerts SET active_since = now() - interval '6 minutes'")
    assert [t.event for t in apply(db_conn, "d", "h", [held], th, deliver=False)] == ["fired"]
    clear = Condition("dependency:ollama", "ollama unreachable", False, "up")
    assert apply(db_conn, "d", "h", [clear], th, deliver=False) == []  # clear < 10 min
    db_conn.execute("UPDATE alerts SET clear_since = now() - interval '11 minutes'")
    assert [t.event for t in apply(db_conn, "d", "h", [clear], th, deliver=False)] == ["resolved"]
    # alerts.channel none: state is kept, nothing is queued for delivery.
    assert one(db_conn, "SELECT delivery FROM alerts") == "disabled"


def test_messages_combine_changes_of_one_daemon():
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    rows = [
        {
            "daemon": "embedder",
            "host": "box",
            "condition": "failure_ratio:embed",
            "msg_kind": "start",
            "summary": "failure ratio on stage embed",
            "last_value": "56 of 56 processed failed",
            "since": now,
            "detail": "last error: boom",
            "hint": "jobpipe queue stats",
        },
        {
            "daemon": "embedder",
            "host": "box",
            "condition": "stall:embed",
            "msg_kind": "resolved",
            "summary": "no progress on stage embed",
            "last_value": "0 due",
            "since": now,
            "resolved_at": now,
            "notified_at": now,
        },
    ]
    text = render_message(rows)
    lines = text.splitlines()
    assert lines[0] == "box embedder: 2 alerts"
    assert lines[1].startswith("FIRING failure ratio on stage embed") and "56 of 56" in lines[1]
    assert lines[2].startswith("RESOLVED no progress on stage embed (was firing")
    assert "last error: boom" in text and "journalctl -u jobpipe@embedder" in text
    assert lines[-2].startswith("Run: jobpipe health")


def test_database_down_one_message_per_host_and_one_resolved(db_conn, gw, tmp_path):
    cfg = test_config(gw)
    latch = tmp_path / "latch.json"

    shipped = config.load(environ={}).alerts  # the shipped retry pauses, not test_config's short ones

    def watch(daemon: str) -> DatabaseWatch:
        return DatabaseWatch(
            daemon,
            "box",
            gateway_from_config(cfg),
            0.0,
            Latch(latch),
            retry_base_s=shipped.retry_base_s,
            retry_max_s=shipped.retry_max_s,
        )

    a, b = watch("embedder"), watch("fetcher")
    a.down("connection refused")
    b.down("connection refused")
    assert len(gw.messages) == 1
    assert gw.messages[0].message.startswith("box embedder: FIRING database unreachable")
    restarted = watch("embedder")  # a daemon restarted during the outage
    restarted.down("connection refused")
    assert len(gw.messages) == 1
    b.up(db_conn)
    a.up(db_conn)
    restarted.up(db_conn)
    assert len(gw.messages) == 2
    assert "RESOLVED database unreachable" in gw.messages[1].message
    # What happened while the database was away is in alert_log now.
    kinds = [r[0] for r in db_conn.execute("SELECT kind FROM alert_log ORDER BY id").fetchall()]
    assert sorted(kinds) == ["resolved", "start"]  # each written by the process that sent it


def test_alerter_raises_the_database_alert_when_it_cannot_connect(gw, tmp_path):
    # Attempts come at the database's reconnect backoff: short here, five of them in seconds.
    cfg = test_config(gw, alerts__dependency_down_minutes=0.01, database__reconnect_max_s=0.2)

    def refuse() -> Any:
        raise DependencyDown("database", "connection refused", "connection")

    al = Alerter("embedder", cfg, connect=refuse, latch_path=tmp_path / "latch.json")
    try:
        al.start()
        msgs = gw.wait_for_messages(1, timeout=10)
        assert "FIRING database unreachable" in msgs[0].message
        target = al.evaluations + 5
        assert al.wait_for_evaluations(target, timeout=10)
        assert len(gw.messages) == 1
    finally:
        al.close()


def test_stall_waits_for_a_restarted_daemon_to_have_its_chance(pg_url, db_conn, gw):
    cfg = test_config(gw, alerts__stall_minutes=30.0)
    db_conn.execute(
        """INSERT INTO queue (stage, subject, run_after, created_at)
           SELECT 'verify', s, now() - interval '2 hours', now() - interval '2 hours'
             FROM generate_series(1, 40) AS s"""
    )
    al = Alerter("verifier", cfg, connect=lambda: db.connect(pg_url), stages=["verify"])
    try:
        al.run_once()  # just started: two hours of due work are not its fault yet
        assert one(db_conn, "SELECT count(*) FROM alerts WHERE condition = 'stall:verify'") == 0
        al.started -= 31 * 60  # as if it had been running for 31 minutes without progress
        al.run_once()
        assert one(db_conn, "SELECT firing FROM alerts WHERE condition = 'stall:verify'") is True
        msgs = gw.wait_for_messages(1)
        assert (
            msgs[0].message.splitlines()[0].startswith(f"{HOST} verifier: FIRING no progress on stage verify")
        )
        assert "40 due, 0 in flight, 0 completed in the last 30 min" in msgs[0].message
    finally:
        al.close()
