"""`jobpipe up`'s supervisor: children report over their own notify sockets, a crashed child is
restarted with backoff, and a stop signal stops every child cleanly."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jobpipe import embedded
from jobpipe.sim.ollama import FakeOllama
from jobpipe.supervisor import Supervisor
from tests.test_runtime import ROOT, daemon_env
from tests.waiting import wait_until

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)

SAMPLE = "tests.sample_daemon:SampleDaemon"


def test_supervisor_restarts_a_killed_child_and_stops_all(pg_url):
    with FakeOllama() as fake:
        env = daemon_env(pg_url, fake.url)
        out = io.StringIO()
        sup = Supervisor([SAMPLE], [sys.executable, "-m", "jobpipe.cli"], env=env, out=out, max_backoff=0.5)
        errors: list[BaseException] = []

        def drive() -> None:  # run()'s loop without its signal handlers (those need the main thread)
            try:
                while not sup.stopping:
                    sup._reap()
                    sup._read_notifications()
                    time.sleep(0.05)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=drive, daemon=True)
        t.start()
        child = sup.children[0]
        wait_until(lambda: child.ready, timeout=30)
        first_pid = child.proc.pid
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: child.restarts == 1 and child.proc is not None and child.proc.pid != first_pid, 30)
        wait_until(lambda: child.ready, timeout=30)
        assert "exited with code -9" in out.getvalue()
        sup.stopping = True
        t.join(5)
        assert sup.shutdown(timeout=20) == 0
        assert child.exits[-1] == 0  # the restarted child stopped cleanly on SIGTERM
        assert not errors


def test_jobpipe_up_stops_cleanly_on_sigint(pg_url):
    with FakeOllama() as fake:
        env = daemon_env(pg_url, fake.url)
        for d in ("FETCHER", "CLASSIFIER", "EMBEDDER", "VERIFIER", "SNAPSHOTTER"):
            env[f"JOBPIPE_{d}_METRICS_PORT"] = "0"
        cmd = [sys.executable, "-m", "jobpipe.cli", "up", "--only", "snapshotter"]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        try:
            assert "starting snapshotter" in proc.stdout.readline()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
            assert "all daemons stopped" in out
        finally:
            if proc.poll() is None:
                proc.kill()


UP_SNAPSHOTTER = (sys.executable, "-m", "jobpipe.cli", "up", "--only", "snapshotter")


def _start_until(cmd: list[str], env: dict[str, str], marker: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`cmd` in its own process group (so a SIGINT to the group is a terminal's Ctrl-C), read until
    a line holds `marker`; returns the process and the lines read (killed if it ends first)."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        while not lines or marker not in lines[-1]:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc, lines


def _up_until_ctrl_c(env: dict[str, str]) -> str:
    """`jobpipe up --only snapshotter` in its own process group; once it runs, SIGINT to the whole
    group (what Ctrl-C in a terminal does); returns its output after a clean exit."""
    proc, first = _start_until(list(UP_SNAPSHOTTER), env, "starting snapshotter")
    try:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, "".join(first) + out
        return "".join(first) + out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_jobpipe_up_stops_the_embedded_database_only_when_it_started_it(tmp_path, pg_home):
    data_dir = pg_home / "pgdata"
    with FakeOllama() as fake:
        env = daemon_env("", fake.url, JOBPIPE_DATABASE_DATA_DIR=str(data_dir))
        env.pop("JOBPIPE_DATABASE_URL")  # the embedded server
        env["JOBPIPE_SNAPSHOTTER_METRICS_PORT"] = "0"
        try:
            out = _up_until_ctrl_c(env)
            assert "all daemons stopped" in out
            assert embedded.url_if_running(data_dir) is None, out  # Ctrl-C took the database down too
            assert "stopped the embedded PostgreSQL it had started" in out

            url = embedded.start(data_dir)  # an operator's `jobpipe db start` beforehand
            out = _up_until_ctrl_c(env)
            assert "keeps running: it was running before" in out
            assert embedded.url_if_running(data_dir) == url  # left alone
        finally:
            embedded.stop(data_dir)


def test_a_second_jobpipe_up_on_the_same_embedded_database_stops_at_once(tmp_path, pg_home):
    """While one `jobpipe up` runs, a second one on the same embedded data dir exits 2 with one
    line naming the first's pid, instead of supervising a second set of daemons on the first's
    server (which the first would stop under it on Ctrl-C). The first is unaffected, and its
    Ctrl-C still stops the server it started."""
    data_dir = pg_home / "pgdata"
    with FakeOllama() as fake:
        env = daemon_env("", fake.url, JOBPIPE_DATABASE_DATA_DIR=str(data_dir))
        env.pop("JOBPIPE_DATABASE_URL")  # the embedded server
        env["JOBPIPE_SNAPSHOTTER_METRICS_PORT"] = "0"
        cmd = list(UP_SNAPSHOTTER)
        first, lines = _start_until(cmd, env, "starting snapshotter")
        try:
            url = embedded.url_if_running(data_dir)
            assert url is not None

            second = subprocess.run(
                cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL
            )
            assert second.returncode == 2, second.stdout + second.stderr
            error = second.stderr.strip().splitlines()
            assert len(error) == 1 and "already running" in error[0], second.stderr
            assert f"(pid {first.pid})" in error[0], error[0]
            assert "starting snapshotter" not in second.stdout
            assert first.poll() is None  # the first keeps supervising
            assert embedded.url_if_running(data_dir) == url  # on its server

            os.killpg(first.pid, signal.SIGINT)
            out, _ = first.communicate(timeout=120)
            assert first.returncode == 0, "".join(lines) + out
            assert "stopped the embedded PostgreSQL it had started" in out
            assert embedded.url_if_running(data_dir) is None
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
            embedded.stop(data_dir)


def test_ctrl_c_while_the_embedded_database_starts_stops_it(tmp_path, pg_home, monkeypatch):
    """A Ctrl-C that lands while `jobpipe up` is still starting the server it needs (a first run's
    initdb takes seconds) stops the half-started server too, instead of leaving it running."""
    data_dir = pg_home / "pgdata"
    real_start = embedded.start

    def start_then_ctrl_c(d):
        real_start(d)  # the server is up, `running` has not handed it out yet
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "start", start_then_ctrl_c)
    said: list[str] = []
    try:
        try:
            with embedded.running(data_dir, on_stop=said.append):
                raise AssertionError("not reached: the start was interrupted")
        except KeyboardInterrupt:
            pass
        assert embedded.url_if_running(data_dir) is None
        assert said == [f"stopped the embedded PostgreSQL it had started ({data_dir})"]
    finally:
        embedded.stop(data_dir)


# `jobpipe up` with its migration held open, to signal it before the supervisor runs.
UP_HELD_IN_MIGRATE = """
import sys, threading
from jobpipe import cli, db

def held(url):
    print("MIGRATING", flush=True)
    threading.Event().wait()  # until a signal ends the process

db.migrate = held
sys.exit(cli.main(["up", "--only", "snapshotter"]))
"""


def test_sigterm_before_the_daemons_run_stops_the_database_up_started(tmp_path, pg_home):
    """SIGTERM while `jobpipe up` is still starting (here: migrating) unwinds like Ctrl-C: the
    embedded server it started is stopped, it exits 130, and no daemon was started."""
    data_dir = pg_home / "pgdata"
    with FakeOllama() as fake:
        env = daemon_env("", fake.url, JOBPIPE_DATABASE_DATA_DIR=str(data_dir))
        env.pop("JOBPIPE_DATABASE_URL")  # the embedded server
        proc, lines = _start_until([sys.executable, "-c", UP_HELD_IN_MIGRATE], env, "MIGRATING")
        try:
            assert embedded.url_if_running(data_dir) is not None  # up started it
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
            out = "".join(lines) + out
            assert proc.returncode == 130, out
            assert "stopped the embedded PostgreSQL it had started" in out
            assert "starting snapshotter" not in out
            assert embedded.url_if_running(data_dir) is None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            embedded.stop(data_dir)


@pytest.mark.parametrize("command", [["up"], ["db", "start"]])
def test_an_unusable_data_dir_is_one_line(tmp_path, command):
    """database.data_dir below a file: one line naming the setting, exit 2, no traceback."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = daemon_env("", "http://127.0.0.1:9", JOBPIPE_DATABASE_DATA_DIR=str(blocker / "pgdata"))
    env.pop("JOBPIPE_DATABASE_URL")
    r = subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "database.data_dir" in lines[0] and str(blocker) in lines[0], r.stderr
