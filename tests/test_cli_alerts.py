"""The alert commands as an operator (or systemd's OnFailure unit) runs them: real `jobpipe`
processes against a real database and a fake Signal gateway that follows docs/contracts/signal.md."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobpipe import config
from jobpipe.alerts.delivery import Deliverer, gateway_from_config
from jobpipe.sim.signal import DEFAULT_ACCOUNT, FakeSignalGateway

ROOT = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()
RECIPIENTS = ["+4917612345678", "+4916098765432"]
SECRETS = [DEFAULT_ACCOUNT, *RECIPIENTS, *(r.lstrip("+") for r in (DEFAULT_ACCOUNT, *RECIPIENTS))]


def env_for(db_url: str, gw: FakeSignalGateway | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBPIPE_", "MONITOR_"))}
    env.update(PYTHONPATH=str(ROOT), JOBPIPE_DATABASE_URL=db_url, JOBPIPE_ALERTS_TIMEOUT_S="2")
    if gw is not None:
        env.update(
            JOBPIPE_ALERTS_CHANNEL="signal-rest" if gw.mode == "rest" else "signal-jsonrpc",
            JOBPIPE_ALERTS_GATEWAY_URL=gw.url,
            JOBPIPE_ALERTS_SENDER=DEFAULT_ACCOUNT,
            JOBPIPE_ALERTS_RECIPIENTS=json.dumps(RECIPIENTS),
            JOBPIPE_ALERTS_RETRY_BASE_S="0.1",
        )
    env.update(extra)
    return env


def jobpipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    for s in SECRETS:
        assert s not in res.stdout and s not in res.stderr, f"{s[:4]}… printed"
    assert "Traceback" not in res.stderr, res.stderr
    return res


def no_database(tmp_path: Path) -> str:
    return f"postgresql:///jobpipe?host={tmp_path}&connect_timeout=1"


@pytest.fixture
def gw():
    with FakeSignalGateway() as g:
        yield g


# ---------------------------------------------------------------------------------------- alert test


@pytest.mark.system
def test_alert_test_delivers_and_is_logged(pg_url, db_conn, gw):
    res = jobpipe(env_for(pg_url, gw), "alert", "test")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "gateway check: OK" in res.stdout and "send: OK: delivered" in res.stdout
    msgs = gw.wait_for_messages(1)
    assert msgs[0].message.startswith(f"{HOST} jobpipe: test message")
    assert msgs[0].recipients == tuple(RECIPIENTS)
    assert db_conn.execute("SELECT kind, status FROM alert_log").fetchall() == [("test", "delivered")]


@pytest.mark.system
def test_alert_test_jsonrpc(pg_url):
    with FakeSignalGateway("jsonrpc") as g:
        res = jobpipe(env_for(pg_url, g), "alert", "test")
        assert res.returncode == 0, res.stdout
        assert len(g.wait_for_messages(1)) == 1


@pytest.mark.system
def test_alert_test_explains_an_unreachable_gateway(tmp_path, gw):
    gw.go_down()
    res = jobpipe(env_for(no_database(tmp_path), gw), "alert", "test")
    assert res.returncode == 1
    assert "UNREACHABLE (connection_refused)" in res.stdout and "nothing listens at" in res.stdout
    assert "nothing sent" in res.stdout


@pytest.mark.system
def test_alert_test_explains_an_unregistered_sender(tmp_path):
    with FakeSignalGateway(account="+4915199999999") as g:  # the gateway knows another number
        res = jobpipe(env_for(no_database(tmp_path), g), "alert", "test")
    assert res.returncode == 1
    assert "FAILED (sender_unregistered)" in res.stdout
    assert "is not registered with the gateway: register and verify it" in res.stdout


@pytest.mark.system
def test_alert_test_explains_an_unregistered_recipient(tmp_path):
    with FakeSignalGateway(unregistered={RECIPIENTS[1]}) as g:
        res = jobpipe(env_for(no_database(tmp_path), g), "alert", "test")
    assert res.returncode == 1
    assert "has no Signal account: fix alerts.recipients" in res.stdout
    assert "+49…432" in res.stdout  # named, but cut


@pytest.mark.system
def test_alert_test_explains_a_captcha_and_shows_the_token(tmp_path, gw):
    gw.set_fault("captcha")
    res = jobpipe(env_for(no_database(tmp_path), gw), "alert", "test")
    assert res.returncode == 1
    assert "RATE LIMITED (captcha)" in res.stdout and "signalcaptchas.org" in res.stdout
    assert "challenge token: " in res.stdout
    assert gw.messages == []


@pytest.mark.system
def test_alert_test_without_a_channel_says_what_to_set(tmp_path):
    res = jobpipe(env_for(no_database(tmp_path), None), "alert", "test")
    assert res.returncode == 2
    assert "alerts.channel is none" in res.stderr and "alerts.gateway_url" in res.stderr


@pytest.mark.system
def test_alert_test_success_lifts_a_rate_limit_pause(pg_url, db_conn, gw):
    db_conn.execute(
        """INSERT INTO alert_channel (channel, degraded_until, reason)
           VALUES ('signal', now() + '6 h', 'captcha')"""
    )
    db_conn.execute(
        """INSERT INTO alerts (daemon, condition, firing, delivery, next_delivery_at, msg_kind)
           VALUES ('embedder', 'stall:embed', true, 'pending', now() + interval '6 hours', 'start')"""
    )
    res = jobpipe(env_for(pg_url, gw), "alert", "test")
    assert res.returncode == 0
    assert "1 waiting alert message(s)" in res.stdout
    assert db_conn.execute("SELECT degraded_until FROM alert_channel").fetchone()[0] is None
    assert db_conn.execute("SELECT next_delivery_at <= now() FROM alerts").fetchone()[0] is True


# ---------------------------------------------------------------------------------------- unit failed


MONITOR = {
    "MONITOR_SERVICE_RESULT": "exit-code",
    "MONITOR_EXIT_CODE": "exited",
    "MONITOR_EXIT_STATUS": "2",
    "MONITOR_UNIT": "jobpipe@embedder.service",
}


@pytest.mark.system
def test_unit_failed_names_systemds_values(pg_url, db_conn, gw):
    res = jobpipe(env_for(pg_url, gw, **MONITOR), "alert", "unit-failed", "jobpipe@embedder.service")
    assert res.returncode == 0, res.stdout + res.stderr
    text = gw.wait_for_messages(1)[0].message
    lines = text.splitlines()
    assert lines[0] == f"{HOST} embedder: FAILED unit jobpipe@embedder.service"
    assert "MONITOR_SERVICE_RESULT=exit-code (the main process exited with a non-zero status)" in lines[1]
    assert "MONITOR_EXIT_CODE=exited" in lines[1] and "MONITOR_EXIT_STATUS=2" in lines[1]
    assert "exit status 2: a user error" in text
    assert "journalctl -u jobpipe@embedder" in text and "systemctl status jobpipe@embedder.service" in text
    row = db_conn.execute(
        """SELECT firing, delivery, msg_kind FROM alerts
            WHERE daemon = 'embedder' AND condition = 'unit_failed'"""
    ).fetchone()
    assert row == (True, "sent", "unit_failed")


@pytest.mark.system
def test_unit_failed_without_database_sends_directly(tmp_path, gw):
    env = env_for(
        no_database(tmp_path),
        gw,
        MONITOR_SERVICE_RESULT="watchdog",
        MONITOR_EXIT_CODE="killed",
        MONITOR_EXIT_STATUS="ABRT",
        MONITOR_UNIT="jobpipe@verifier.service",
    )
    res = jobpipe(env, "alert", "unit-failed")  # the unit from $MONITOR_UNIT
    assert res.returncode == 0, res.stdout
    assert "database unreachable: sending directly" in res.stdout
    text = gw.wait_for_messages(1)[0].message
    assert text.startswith(f"{HOST} verifier: FAILED unit jobpipe@verifier.service")
    assert "the watchdog fired: the work loop stopped pinging" in text
    assert "killed by signal ABRT" in text


@pytest.mark.system
def test_unit_failed_on_an_unmigrated_database_sends_directly(unmigrated_url, gw):
    """No alerts table to record in and no daemon running to deliver: send now, like without a
    database, instead of a traceback and no message."""
    res = jobpipe(env_for(unmigrated_url, gw, **MONITOR), "alert", "unit-failed", "jobpipe@embedder.service")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "database schema behind (run `jobpipe migrate`): sending directly" in res.stdout
    assert "Traceback" not in res.stderr
    text = gw.wait_for_messages(1)[0].message
    assert text.startswith(f"{HOST} embedder: FAILED unit jobpipe@embedder.service")


@pytest.mark.system
def test_unit_failed_with_gateway_down_waits_for_the_daemons(pg_url, db_conn, gw):
    gw.go_down()
    res = jobpipe(env_for(pg_url, gw, **MONITOR), "alert", "unit-failed", "jobpipe@embedder.service")
    assert res.returncode == 0
    assert "waits in the database" in res.stdout
    # A running daemon's delivery pass picks it up once the gateway is back, once.
    gw.come_up()
    db_conn.execute("UPDATE alerts SET next_delivery_at = now()")
    cfg = config.load(environ=env_for(pg_url, gw))
    g = gateway_from_config(cfg)
    results = Deliverer(g, cfg).deliver_due(db_conn)
    results += Deliverer(g, cfg).deliver_due(db_conn)
    assert [r.status for r in results] == ["delivered"]
    assert len(gw.messages) == 1 and "FAILED unit jobpipe@embedder.service" in gw.messages[0].message


@pytest.mark.system
def test_unit_failed_needs_a_unit(tmp_path):
    res = jobpipe(env_for(no_database(tmp_path), None), "alert", "unit-failed")
    assert res.returncode == 2 and "name the failed unit" in res.stderr


# ---------------------------------------------------------------------------------------- listing


def _seed(conn: Any) -> None:
    conn.execute(
        """INSERT INTO alerts (daemon, condition, firing, since, severity, summary, last_value, delivery)
           VALUES ('embedder', 'failure_ratio:embed', true, now() - interval '10 minutes', 'fail',
                   'failure ratio on stage embed', '56 of 56 processed failed', 'sent'),
                  ('fetcher', 'stall:description', false, now() - interval '2 hours', 'fail',
                   'no progress on stage description', '0 due', 'sent')"""
    )
    conn.execute("UPDATE alerts SET resolved_at = now() - interval '1 hour' WHERE NOT firing")
    conn.execute(
        """INSERT INTO alert_log (daemon, condition, kind, message, status)
           VALUES ('embedder', 'failure_ratio:embed', 'start', 'x', 'delivered')"""
    )


@pytest.mark.system
def test_alerts_lists_firing_resolved_and_sent(pg_url, db_conn):
    _seed(db_conn)
    res = jobpipe(env_for(pg_url, None), "alerts")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "firing (1)" in out and "embedder/failure_ratio:embed: failure ratio on stage embed" in out
    assert "resolved in the last 24 h (1)" in out and "fetcher/stall:description" in out
    assert "messages in the last 24 h (1)" in out and "embedder/failure_ratio:embed start: delivered" in out
    data = json.loads(jobpipe(env_for(pg_url, None), "alerts", "--json").stdout)
    assert [a["condition"] for a in data["firing"]] == ["failure_ratio:embed"]
    assert data["log"][0]["status"] == "delivered"
