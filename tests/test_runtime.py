"""The runtime as users meet it: real daemon processes, a real notify socket, real /metrics,
a real PostgreSQL that goes away, and a fake Ollama that fails in the ways real ones do."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from jobpipe import config, db, embedded, queue, runtime
from jobpipe.metrics import DaemonMetrics
from jobpipe.sim.ollama import FakeOllama
from tests.sample_daemon import SampleDaemon
from tests.typecheck import mypy_errors
from tests.waiting import in_thread, wait_until

ROOT = Path(__file__).resolve().parent.parent


class NotifySocket:
    """A SOCK_DGRAM unix socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, str, str]] = []
        self.cond = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                data = self.sock.recv(65536).decode()
            except (TimeoutError, OSError):
                continue
            with self.cond:
                for line in data.splitlines():
                    k, _, v = line.partition("=")
                    self.messages.append((time.monotonic(), k, v))
                self.cond.notify_all()

    def wait_for(
        self, key: str, value: str | None = None, timeout: float = 30.0, after: float = 0.0
    ) -> float:
        def found() -> float | None:
            for t, k, v in self.messages:
                if t >= after and k == key and (value is None or value in v):
                    return t
            return None

        with self.cond:
            assert self.cond.wait_for(lambda: found() is not None, timeout), (
                f"no {key}={value or ''} within {timeout}s; got {self.messages[-10:]}"
            )
            return found()  # type: ignore[return-value]

    def count(self, key: str, since: float, until: float) -> int:
        with self.cond:
            return sum(1 for t, k, _ in self.messages if k == key and since <= t <= until)

    def close(self) -> None:
        self._stop = True
        self.thread.join(1)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


@pytest.fixture
def ollama():
    with FakeOllama() as f:
        yield f


def daemon_env(pg_url: str, ollama_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        JOBPIPE_DATABASE_URL=pg_url,
        JOBPIPE_OLLAMA_URLS=f"[{ollama_url}]",
        JOBPIPE_OLLAMA_READ_TIMEOUT_S="0.5",
        JOBPIPE_OLLAMA_CONNECT_TIMEOUT_S="0.5",
        JOBPIPE_QUEUE_POLL_INTERVAL_S="0.2",
        JOBPIPE_QUEUE_BACKOFF_BASE_S="0",
        JOBPIPE_RUNTIME_STATUS_INTERVAL_S="0.2",
        JOBPIPE_RUNTIME_DEPENDENCY_BACKOFF_S="0.1",
        JOBPIPE_RUNTIME_DEPENDENCY_BACKOFF_MAX_S="0.5",
        JOBPIPE_RUNTIME_DRAIN_TIMEOUT_S="3",
        JOBPIPE_LOGGING_FORMAT="json",
    )
    env.update(extra)
    return env


def start_daemon(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobpipe.cli",
            "run",
            "tests.sample_daemon:SampleDaemon",
            "--metrics-port",
            "0",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def count(conn, sql: str) -> int:
    return conn.execute(sql).fetchone()[0]


def test_in_process_once_drains_and_skips(pg_url, db_conn, ollama):
    queue.enqueue(db_conn, "sample", [*range(1, 51), -1, -2])
    cfg = config.load(environ={}).with_overrides(ollama__urls=[ollama.url], queue__poll_interval_s=0.1)
    assert runtime.run_daemon(SampleDaemon, cfg, once=True, db_url=pg_url) == 0
    assert count(db_conn, "SELECT count(*) FROM sample_results WHERE dims = 768") == 50
    outcomes = dict(db_conn.execute("SELECT outcome, count(*) FROM queue GROUP BY outcome").fetchall())
    assert outcomes == {"embedded": 50, "empty": 2}
    # batches of 8 texts: far fewer requests than texts
    assert ollama.counters()["requests"] <= 10


@pytest.mark.system
def test_notify_ready_while_database_down_then_watchdog_and_sigterm(
    pg_home, pg_url, db_conn, ollama, notify
):
    # A database that is down at start: READY at the first failed attempt (a database outage must
    # not hold systemd's start job, and with it the machine's boot: issue 20 item 1), and the
    # STATUS after it says why. Once the database is up, STATUS drops the outage and its error
    # (item 4: "last error: database: ... Connection refused" used to stay).
    data_dir = pg_home / "pg"
    data_dir.mkdir()
    url = embedded.start(data_dir)
    embedded.stop(data_dir)
    env = daemon_env(url, ollama.url, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="200000")
    proc = start_daemon(env)
    try:
        t_first = notify.wait_for("READY", timeout=30)
        notify.wait_for("STATUS", "DOWN database", timeout=30, after=t_first)
        notify.wait_for("STATUS", "last error: database", timeout=30, after=t_first)
        embedded.start(data_dir)
        db.migrate(url)

        def connected() -> tuple[float, str] | None:
            with notify.cond:
                return next(
                    ((t, v) for t, k, v in notify.messages if k == "STATUS" and t > t_first and "items/s" in v
                     and "DOWN database" not in v),
                    None,
                )  # fmt: skip

        t_ready, status = wait_until(connected, timeout=60, what="a STATUS once connected")
        assert "last error" not in status, status
        assert sum(1 for _, k, _ in notify.messages if k == "READY") == 1
        # Watchdog pings every WATCHDOG_USEC/2 = 0.1 s from the loop.
        time.sleep(1.0)  # measuring a rate over a wall-clock window, not synchronising
        n = notify.count("WATCHDOG", t_ready, t_ready + 1.0)
        assert 4 <= n <= 25, n
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", timeout=10)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        embedded.stop(data_dir)


@pytest.mark.system
def test_hung_loop_stops_watchdog_pings(tmp_path, pg_url, ollama, notify):
    hang = tmp_path / "hang"
    env = daemon_env(
        pg_url,
        ollama.url,
        NOTIFY_SOCKET=notify.path,
        WATCHDOG_USEC="200000",
        SAMPLE_DAEMON_HANG_FILE=str(hang),
    )
    proc = start_daemon(env)
    try:
        t_ready = notify.wait_for("READY", timeout=30)
        notify.wait_for("WATCHDOG", after=t_ready, timeout=5)
        hang.touch()
        t_hang = time.monotonic()
        time.sleep(1.5)  # observing the absence of pings over a window
        # at most one ping may have been on its way when the loop entered the hang
        assert notify.count("WATCHDOG", t_hang + 0.3, t_hang + 1.5) == 0
        hang.unlink()
        notify.wait_for("WATCHDOG", after=time.monotonic(), timeout=5)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.system
def test_sigterm_drains_and_releases_leases(pg_url, db_conn, notify):
    with FakeOllama(capacity=1, latency_per_request=0.4) as slow:
        queue.enqueue(db_conn, "sample", range(1, 200))
        env = daemon_env(
            pg_url,
            slow.url,
            NOTIFY_SOCKET=notify.path,
            JOBPIPE_OLLAMA_READ_TIMEOUT_S="10",
            JOBPIPE_RUNTIME_DRAIN_TIMEOUT_S="1",
        )
        proc = start_daemon(env)
        try:
            notify.wait_for("READY", timeout=30)
            wait_until(lambda: count(db_conn, "SELECT count(*) FROM queue WHERE status='running'") > 0)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert time.monotonic() - t0 < 1 + 5  # drain timeout plus shutdown slack
            notify.wait_for("STOPPING", timeout=1)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert count(db_conn, "SELECT count(*) FROM queue WHERE status='running'") == 0
        assert count(db_conn, "SELECT count(*) FROM queue WHERE attempts > 0") == 0
        done = count(db_conn, "SELECT count(*) FROM queue WHERE status='done'")
        assert count(db_conn, "SELECT count(*) FROM sample_results") == done


@pytest.mark.system
def test_metrics_endpoint_passes_promtool(pg_url, db_conn, ollama):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    queue.enqueue(db_conn, "sample", range(1, 20))
    cfg = config.load(environ={}).with_overrides(ollama__urls=[ollama.url], queue__poll_interval_s=0.1)
    metrics = DaemonMetrics("sample")
    runtime.run_daemon(SampleDaemon, cfg, once=True, db_url=pg_url, metrics=metrics)
    text = metrics.exposition()
    assert b'jobpipe_items_processed_total{daemon="sample",outcome="embedded",stage="sample"} 19.0' in text
    assert b"jobpipe_model_call_duration_seconds_count" in text
    assert b"_created" not in text
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.system
def test_served_metrics_scraped_over_http(pg_url, ollama, notify):
    env = daemon_env(pg_url, ollama.url, NOTIFY_SOCKET=notify.path)
    proc = start_daemon(env)
    try:
        notify.wait_for("READY", timeout=30)
        port = None

        def find_port() -> bool:
            nonlocal port
            for line in proc.stderr:
                if "metrics_serving" in line:
                    port = int(line.split("/metrics")[0].rsplit(":", 1)[1])
                    return True
            return False

        assert find_port()
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'jobpipe_dependency_up{daemon="sample",dependency="database"} 1.0' in body
        assert "process_resident_memory_bytes" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


@pytest.mark.system
@pytest.mark.parametrize("mode", ["503", "hang", "refuse"])
def test_ollama_outage_keeps_daemon_up_and_charges_nothing(pg_url, db_conn, notify, mode):
    with FakeOllama(hang_max=5) as fake:
        fake.fail_mode = mode
        queue.enqueue(db_conn, "sample", range(1, 41))
        env = daemon_env(pg_url, fake.url, NOTIFY_SOCKET=notify.path)
        proc = start_daemon(env)
        try:
            notify.wait_for("READY", timeout=30)
            notify.wait_for("STATUS", "DOWN ollama", timeout=20)
            assert proc.poll() is None
            assert count(db_conn, "SELECT count(*) FROM queue WHERE attempts > 0") == 0
            assert count(db_conn, "SELECT count(*) FROM queue WHERE status='given_up'") == 0
            fake.fail_mode = None
            wait_until(
                lambda: count(db_conn, "SELECT count(*) FROM queue WHERE status='done'") == 40, timeout=60
            )
            assert count(db_conn, "SELECT max(attempts) FROM queue") == 0
            # The outage is over: STATUS says neither DOWN nor its stale "last error: ollama: ...".
            t_done = time.monotonic()
            t_status = notify.wait_for("STATUS", "pending 0", timeout=20, after=t_done)
            with notify.cond:
                status = next(v for tm, k, v in notify.messages if k == "STATUS" and tm == t_status)
            assert "DOWN" not in status and "last error" not in status, status
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


@pytest.mark.system
def test_database_restart_under_running_daemon(pg_home, ollama, notify):
    data_dir = pg_home / "pg"
    data_dir.mkdir()
    url = embedded.start(data_dir)
    try:
        db.migrate(url)
        conn = db.connect(url)
        queue.enqueue(conn, "sample", range(1, 101))
        conn.close()
        env = daemon_env(url, ollama.url, NOTIFY_SOCKET=notify.path)
        proc = start_daemon(env)
        try:
            notify.wait_for("READY", timeout=30)
            embedded.pg_ctl(data_dir, "-w", "-m", "fast", "restart", timeout=60)
            with db.connect(url) as c:
                queue.enqueue(c, "sample", range(101, 201))
            notify.wait_for("STATUS", "DOWN database", timeout=20)

            def all_done() -> bool:
                try:
                    with db.connect(url) as c:
                        return count(c, "SELECT count(*) FROM queue WHERE status='done'") == 200
                except Exception:
                    return False

            wait_until(all_done, timeout=60)
            assert proc.poll() is None
            with db.connect(url) as c:
                assert count(c, "SELECT count(*) FROM sample_results") == 200
                assert count(c, "SELECT count(*) FROM sample_results WHERE n > 1") == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    finally:
        embedded.stop(data_dir)


@pytest.mark.system
def test_lost_connection_is_reported_even_if_reconnecting_works_at_once(pg_url, db_conn, ollama, notify):
    """A restart that is over before the daemon notices still shows up as DOWN database."""
    queue.enqueue(db_conn, "sample", range(1, 51))
    proc = start_daemon(daemon_env(pg_url, ollama.url, NOTIFY_SOCKET=notify.path))
    try:
        notify.wait_for("READY", timeout=30)
        wait_until(lambda: count(db_conn, "SELECT count(*) FROM queue WHERE status='done'") == 50)
        killed = count(
            db_conn,
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'jobpipe-sample'""",
        )
        assert killed == 1
        t = notify.wait_for("STATUS", "DOWN database", timeout=20)
        queue.enqueue(db_conn, "sample", range(51, 61))
        wait_until(lambda: count(db_conn, "SELECT count(*) FROM queue WHERE status='done'") == 60)
        assert proc.poll() is None
        t_up = notify.wait_for("STATUS", "pending 0", timeout=20, after=t + 1e-6)
        with notify.cond:
            after_up = [v for tm, k, v in notify.messages if k == "STATUS" and tm >= t_up]
        assert after_up and all("DOWN" not in v and "last error: database" not in v for v in after_up)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


@pytest.mark.system
def test_schema_behind_refuses_to_start(pg_server, ollama):
    import uuid

    import psycopg

    from tests.conftest import url_for

    name = "e_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server["url"], autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    env = daemon_env(url_for(pg_server["url"], name), ollama.url)
    proc = start_daemon(env)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "run `jobpipe migrate`" in err
    assert "Traceback" not in err


def test_merged_write_that_fails_charges_only_the_failing_item(pg_url, db_conn, ollama):
    """Batches that finish together are written in one transaction; when that write fails, each
    batch is written on its own, and a failing batch in halves, so only the bad item is charged."""
    written: list[int] = []

    class Poisoned(SampleDaemon):
        def write(self, conn: Any, done: list[tuple[Any, Any, Any]]) -> dict[int, str]:
            written.append(len(done))
            if any(it.subject == 13 for it, _, _ in done):
                raise ValueError("cannot store subject 13")
            return super().write(conn, done)

    cfg = config.load(environ={}).with_overrides(ollama__urls=[ollama.url], queue__backoff_base_s=3600)
    runner = runtime.Runner(Poisoned, cfg, db_url=pg_url, serve=False)
    daemon = Poisoned(runtime.Context(cfg, runner.metrics, runner.owner, pg_url, runner.stop, runtime.log))
    daemon.setup(db_conn)
    (stage,) = daemon.stages()
    queue.enqueue(db_conn, "sample", range(1, 17))
    items = queue.claim(db_conn, "sample", runner.owner, 16, 60)
    batches = [
        runtime._Batch(stage, part, {}, results=[(it, "text", [0.1, 0.2]) for it in part])
        for part in (items[:8], items[8:])
    ]
    runner._write_batches(db_conn, batches)
    # merged first, then batch by batch, then the failing batch in halves down to the bad item
    assert written == [16, 8, 8, 4, 4, 2, 1, 1, 2]
    rows = db_conn.execute("SELECT subject, status, attempts, last_error FROM queue").fetchall()
    failed = {s for s, status, _, _ in rows if status != "done"}
    assert failed == {13}  # only the bad item is charged, not its batch
    assert all("write failed: ValueError: cannot store subject 13" in e for s, _, _, e in rows if s in failed)
    assert count(db_conn, "SELECT count(*) FROM sample_results") == 15


def test_one_outage_doubles_the_backoff_once_not_once_per_batch(pg_url, db_conn):
    """All batches in flight fail when the model server goes down; that is one failure: the
    backoff doubles once, and every deferred item is due when that backoff ends."""
    with FakeOllama() as fake:
        fake.fail_mode = "503"
        queue.enqueue(db_conn, "sample", range(1, 33))  # 4 batches of 8, all claimed at once
        cfg = config.load(environ={}).with_overrides(
            ollama__urls=[fake.url],
            queue__poll_interval_s=0.1,
            runtime__dependency_backoff_s=30,
            runtime__dependency_backoff_max_s=3600,
        )
        runner = runtime.Runner(SampleDaemon, cfg, db_url=pg_url, serve=False)
        thread, _ = in_thread(runner.run)
        try:
            deferred = "SELECT count(*) FROM queue WHERE status = 'pending' AND run_after > now()"
            wait_until(lambda: count(db_conn, deferred) == 32, timeout=30)
            assert runner.dependency_retry.next_delay == 60  # doubled once
            late = "SELECT count(*) FROM queue WHERE run_after > now() + interval '31 seconds'"
            assert count(db_conn, late) == 0
            assert count(db_conn, "SELECT max(attempts) FROM queue") == 0
        finally:
            runner.stop.set()
            thread.join(20)


class _SlowItemDaemon(runtime.Daemon):
    """A per-item stage whose item with subject 2 takes one second (its "model time"); every other
    item is done at once. Counts the loop's turns (tick is called once per turn)."""

    name = "sample"

    def __init__(self, ctx: runtime.Context) -> None:
        super().__init__(ctx)
        self.turns = 0
        self.slow_running = threading.Event()
        self.turns_while_slow = 0

    def stages(self) -> list[runtime.Stage]:
        return [runtime.Stage("sample", self.load, self.call, self.write, batch_size=8, workers=2,
                              per_item=True)]  # fmt: skip

    def tick(self, conn: Any) -> None:
        self.turns += 1
        if self.slow_running.is_set():
            self.turns_while_slow += 1

    def load(self, conn: Any, items: list[Any]) -> dict[int, Any]:
        return {i.id: i.subject for i in items}

    def call(self, subjects: list[int]) -> list[Any]:
        if subjects == [2]:
            self.slow_running.set()
            threading.Event().wait(1.0)  # the model's time for this item, not synchronisation
            self.slow_running.clear()
        return ["ok" for _ in subjects]

    def write(self, conn: Any, done: list[tuple[Any, Any, Any]]) -> dict[int, str]:
        return {item.id: "done" for item, _, _ in done}


def test_loop_does_not_spin_while_a_per_item_batch_is_partly_done(pg_url, db_conn):
    """Regression: the loop waited on every future of the batches in flight, done ones included, so
    one finished item of a per-item batch ended each wait at once and the loop spun (a core taken
    from the workers) until the batch's slowest item was done."""
    queue.enqueue(db_conn, "sample", [1, 2, 3])
    cfg = config.load(environ={}).with_overrides(queue__poll_interval_s=0.1, runtime__status_interval_s=0.1)
    daemons: list[_SlowItemDaemon] = []

    class Daemon(_SlowItemDaemon):
        def __init__(self, ctx: runtime.Context) -> None:
            super().__init__(ctx)
            daemons.append(self)

    assert runtime.run_daemon(Daemon, cfg, once=True, db_url=pg_url) == 0
    (d,) = daemons
    assert count(db_conn, "SELECT count(*) FROM queue WHERE status = 'done'") == 3
    # One second of waiting at a 0.1 s tick is about 10 turns; the spinning loop made thousands.
    assert 0 < d.turns_while_slow <= 40, d.turns_while_slow


@pytest.mark.system  # runs mypy in a process (tests/tiers.py)
def test_a_stage_whose_callables_disagree_is_a_type_error(tmp_path):
    """Stage[P, R]: what `load` makes is what `call` takes, what `call` returns is what `write`
    gets. The agreeing stage passes, the two mismatches fail."""
    errors = mypy_errors(
        tmp_path,
        "from jobpipe.db import Conn\n"
        "from jobpipe.queue import Item\n"
        "from jobpipe.runtime import Skip, Stage\n\n"
        "def load(conn: Conn, items: list[Item]) -> dict[int, str | Skip]:\n    return {}\n"
        "def call(texts: list[str]) -> list[int]:\n    return []\n"
        "def write(conn: Conn, done: list[tuple[Item, str, int]]) -> dict[int, str]:\n    return {}\n"
        "def call_bytes(blobs: list[bytes]) -> list[int]:\n    return []\n"
        "def write_str(conn: Conn, done: list[tuple[Item, str, str]]) -> dict[int, str]:\n    return {}\n\n"
        "ok: Stage[str, int] = Stage('s', load, call, write)\n"
        "bad_call: Stage[str, int] = Stage('s', load, call_bytes, write)\n"
        "bad_write: Stage[str, int] = Stage('s', load, call, write_str)\n",
    )
    assert [e.split(":")[0] for e in errors] == ["17", "18"], errors
