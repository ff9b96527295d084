"""`jobpipe health`: verdicts from the database as an operator would find it, the exit codes scripts
rely on, and the speed goal (bench/health.py --quick)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobpipe import config, health
from tests.bench_run import run_bench

ROOT = Path(__file__).resolve().parent.parent
CFG = config.load(environ={})


def counts(conn: Any, stage: str, minutes_ago: float, outcome: str, n: int) -> None:
    conn.execute(
        """INSERT INTO stage_counts (stage, minute, outcome, n)
           VALUES (%s, date_trunc('minute', now() - make_interval(secs => %s)), %s, %s)
           ON CONFLICT (stage, minute, outcome) DO UPDATE SET n = stage_counts.n + excluded.n""",
        (stage, minutes_ago * 60, outcome, n),
    )


def items(
    conn: Any,
    stage: str,
    n: int,
    status: str,
    *,
    age_min: float = 0,
    due_min: float = 0,
    first: int = 1,
    error: str | None = None,
) -> None:
    """Queue rows created `age_min` ago, due since `due_min` (negative: in the future)."""
    conn.execute(
        """INSERT INTO queue (stage, subject, status, created_at, run_after, finished_at, last_error,
                              attempts)
           SELECT %(stage)s, s, %(status)s, now() - make_interval(secs => %(age)s),
                  now() - make_interval(secs => %(due)s),
                  CASE WHEN %(status)s IN ('done', 'given_up')
                       THEN now() - make_interval(secs => %(age)s) END,
                  %(error)s, CASE WHEN %(status)s = 'given_up' THEN 5 ELSE 0 END
             FROM generate_series(%(first)s, %(first)s + %(n)s - 1) AS s""",
        {
            "stage": stage,
            "status": status,
            "age": age_min * 60,
            "due": due_min * 60,
            "first": first,
            "n": n,
            "error": error,
        },
    )


def stage(h: health.Health, name: str) -> health.StageHealth:
    return next(s for s in h.stages if s.stage == name)


def env_for(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(PYTHONPATH=str(ROOT), JOBPIPE_DATABASE_URL=url)
    return env


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", "health", *args],
        env=env_for(url),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


# ---------------------------------------------------------------------------------------- verdicts


def test_nightly_56_of_56_is_fail_with_nothing_pending(db_conn):
    # The predecessor's pattern: one run three hours ago, everything failed in no time, then quiet.
    counts(db_conn, "summary", 180, "failed", 56)
    items(db_conn, "summary", 56, "given_up", age_min=180, error="bug: undefined function summarize_text")
    h = health.collect(db_conn, CFG)
    st = stage(h, "summary")
    assert st.facts.pending == 0 and st.facts.running == 0
    assert st.verdict == "FAIL" and h.verdict == "FAIL" and h.exit_code == 2
    assert "56 of 56 processed failed in the last 24 h (100%): nothing succeeded" in st.reasons[0]
    assert st.last_error == "bug: undefined function summarize_text"
    text = health.render_text(h)
    assert "stage summary: FAIL" in text and "0 due, 0 scheduled" in text
    assert "given up        56" in text and "last success    never" in text


def test_failures_right_now_fail_through_the_alert_window(db_conn):
    counts(db_conn, "embed", 2, "failed", 56)
    st = stage(health.collect(db_conn, CFG), "embed")
    assert st.verdict == "FAIL"
    assert st.reasons[0].startswith(
        "failure ratio on stage embed: 56 of 56 processed failed in the last 15 min"
    )


def test_one_of_one_warns_but_does_not_fail(db_conn):
    counts(db_conn, "classify", 3, "failed", 1)
    h = health.collect(db_conn, CFG)
    st = stage(h, "classify")
    assert st.verdict == "WARN" and h.exit_code == 1
    assert "too few to alert" in st.reasons[0]


def test_given_up_items_alone_never_make_a_stage_red(db_conn):
    # 539 descriptions given up long ago (dead weight), steady work since.
    counts(db_conn, "description", 3 * 1440, "given_up", 539)
    items(db_conn, "description", 539, "given_up", age_min=3 * 1440)
    counts(db_conn, "description", 5, "fetched", 300)
    st = stage(health.collect(db_conn, CFG), "description")
    assert st.facts.given_up == 539
    assert st.verdict == "OK", st.reasons
    # Given up *now* (a wave in the last hour) is worth a look, still not a failure verdict.
    counts(db_conn, "description", 10, "given_up", 30)
    counts(db_conn, "description", 10, "fetched", 500)
    st = stage(health.collect(db_conn, CFG), "description")
    assert st.verdict == "WARN"
    assert st.reasons[0].startswith("given-up items on stage description: 30 given up in the last 60 min")


def test_recovered_stage_warns_about_the_last_24_hours(db_conn):
    counts(db_conn, "embed", 300, "failed", 100)
    counts(db_conn, "embed", 20, "embedded", 50)
    st = stage(health.collect(db_conn, CFG), "embed")
    assert st.verdict == "WARN"
    assert (
        "100 of 150 processed failed in the last 24 h" in st.reasons[0]
        and "last hour is better" in st.reasons[0]
    )


def test_stalled_stage_fails(db_conn):
    items(db_conn, "verify", 40, "pending", age_min=120, due_min=90)
    counts(db_conn, "verify", 200, "verified", 10)
    st = stage(health.collect(db_conn, CFG), "verify")
    assert st.verdict == "FAIL"
    assert st.reasons[0].startswith("no progress on stage verify: 40 due, 0 in flight, 0 completed")
    # Work waiting for a retry time is not a stall.
    db_conn.execute("UPDATE queue SET run_after = now() + interval '1 hour'")
    st = stage(health.collect(db_conn, CFG), "verify")
    assert st.verdict == "OK" and st.facts.scheduled == 40


def test_old_pending_work_and_missing_daemon_warn(db_conn):
    items(db_conn, "embed", 10, "pending", age_min=2 * 1440, due_min=-10)
    counts(db_conn, "embed", 1, "embedded", 20)
    st = stage(health.collect(db_conn, CFG), "embed")
    assert st.verdict == "WARN"
    assert st.reasons[0].startswith("old pending work on stage embed: oldest pending item is 2.0 d old")
    # Due work whose daemon (known from the alert samples) has no live instance.
    db_conn.execute("UPDATE queue SET run_after = now()")
    db_conn.execute("INSERT INTO alert_samples (stage, daemon, pending) VALUES ('embed', 'embedder', 10)")
    st = stage(health.collect(db_conn, CFG), "embed")
    assert st.daemon == "embedder"
    assert any("no live instance of embedder" in r for r in st.reasons)


def test_firing_dependency_alert_and_held_back_signal_show_up(db_conn):
    counts(db_conn, "embed", 1, "embedded", 20)
    db_conn.execute(
        """INSERT INTO alerts (daemon, condition, firing, severity, summary, last_value)
           VALUES ('embedder', 'dependency:ollama', true, 'fail', 'ollama unreachable', 'down for 6 min')"""
    )
    db_conn.execute(
        """INSERT INTO alert_channel (channel, degraded_until, reason)
           VALUES ('signal', now() + '6 h', 'captcha')"""
    )
    h = health.collect(db_conn, CFG)
    assert stage(h, "embed").verdict == "OK"
    assert h.verdict == "FAIL"
    assert "embedder: ollama unreachable: down for 6 min" in h.problems
    assert any("Signal alerts held back" in p for p in h.problems)


# ---------------------------------------------------------------------------------------- the command


@pytest.mark.system
def test_exit_codes_and_json(pg_url, db_conn):
    res = cli(pg_url)
    assert res.returncode == 0, res.stderr
    assert "no stage has work or history yet" in res.stdout
    counts(db_conn, "classify", 3, "failed", 1)
    res = cli(pg_url)
    assert res.returncode == 1 and "stage classify: WARN" in res.stdout
    counts(db_conn, "summary", 2, "failed", 56)
    res = cli(pg_url, "--json")
    assert res.returncode == 2
    data = json.loads(res.stdout)
    assert data["verdict"] == "FAIL" and data["exit_code"] == 2
    by = {s["stage"]: s for s in data["stages"]}
    assert by["summary"]["verdict"] == "FAIL" and by["summary"]["failed_1h"] == 56
    assert by["classify"]["verdict"] == "WARN"
    assert data["elapsed_s"] < 1.0


@pytest.mark.system
def test_database_down_is_fail(tmp_path):
    url = f"postgresql:///jobpipe?host={tmp_path}&connect_timeout=1"
    res = cli(url)
    assert res.returncode == 2
    assert "FAIL" in res.stdout and "database unreachable" in res.stdout
    assert "Traceback" not in res.stderr


@pytest.mark.system
def test_an_unmigrated_database_is_fail_with_what_to_run(unmigrated_url):
    res = cli(unmigrated_url)
    assert res.returncode == 2, res.stderr
    assert "database schema behind" in res.stdout and "run `jobpipe migrate`" in res.stdout
    assert "Traceback" not in res.stderr


def test_a_schema_one_release_behind_is_fail_naming_the_migration(db_conn):
    """After an upgrade, before `jobpipe migrate`: the newest migration is missing."""
    newest = db_conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    db_conn.execute("DELETE FROM schema_migrations WHERE version = %s", (newest,))
    h = health.collect(db_conn, config.load(environ={}))
    assert h.verdict == "FAIL" and h.exit_code == 2
    assert h.problems == [
        f"database schema behind: 1 migration(s) pending ({newest}); run `jobpipe migrate` "
        "(the daemons refuse to start until then)"
    ]


@pytest.mark.system
@pytest.mark.timeout(600)
def test_bench_quick(pg_server):
    result, _ = run_bench("health.py", "--quick", "--db-url", pg_server["url"], timeout=600)
    assert result["verdict"] == "FAIL"  # the data set contains a 56-of-56 stage
    assert result["health_s"] <= 1.0, result
