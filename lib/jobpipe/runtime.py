"""The work loop every daemon runs on.

A daemon (daemons/<name>.py) declares stages: what it claims (`load`), what it calls
(`call`, in worker threads, no database) and what it writes (`write`, one round trip per
batch, in the transaction that completes the queue items). This module does the rest:

- start-up: connect with backoff (a database that is down is a state, not a crash), refuse a
  schema that is behind; READY=1 once connected, or already at the first failed attempt (with
  STATUS "DOWN database"), so a database outage never holds systemd's start job (and the boot);
- the loop: wait for NOTIFY or the poll interval, claim batches, keep `workers` calls in flight
  with as many batches queued behind them, so the model server never idles while the loop
  claims or the database is written;
- writes: finished batches go to a writer thread with its own connection (jobpipe.writer), so
  claiming and writing overlap; the finished batches of a stage are written together, results
  and completion in one transaction;
- leases: every item held (call queued, in flight, or result waiting for the writer) has its
  lease extended every queue.lease_s / 3 (one UPDATE per stage), so only a dead or hung daemon
  loses items; a write checks in its own transaction that the leases are still ours and drops
  the results of any that are not (never written or counted twice);
- outcomes: results completed, ItemError charged (retry with backoff, then given up),
  DependencyDown deferred without charge while the whole daemon backs off; a write error that
  is not a lost connection charges only the items it is about (the batch is split to find them);
- the database going away mid-run: results are kept, both connections reconnect and the
  writer writes them;
- STATUS= (rate, pending, in flight, last error), WATCHDOG=1 from this loop only, metrics;
- SIGTERM: STOPPING=1, no new claims, in-flight calls get `drain_timeout_s`, leases of what is
  left are released, exit 0. A second signal exits at once (leases then expire).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import importlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg

from jobpipe import db, queue
from jobpipe.alerts.alerter import Alerter
from jobpipe.config import Config
from jobpipe.errors import DependencyDown, ItemError, UserError, first_line
from jobpipe.logs import log_event
from jobpipe.metrics import DaemonMetrics, serve_metrics
from jobpipe.notify import Notifier
from jobpipe.queue import Item, RetryPolicy
from jobpipe.settings import DAEMONS
from jobpipe.writer import BatchWriter

log = logging.getLogger("jobpipe.runtime")


@dataclass(frozen=True, slots=True)
class Skip:
    """A `load` result meaning: complete this item with `outcome`, call nothing."""

    outcome: str


@dataclass
class Stage:
    """`load(conn, items)` and `write(conn, results)` get a connection; `call(payloads)` none.
    `write` runs on the writer thread (its own connection), concurrently with the daemon's
    `load`/`tick` on the loop thread: it must not share unguarded state with them."""

    name: str
    load: Callable[[Any, list[Item]], dict[int, Any]]
    call: Callable[[list[Any]], list[Any]]
    write: Callable[[Any, list[tuple[Item, Any, Any]]], dict[int, str]]
    batch_size: int = 32
    workers: int = 1
    per_item: bool = False
    max_attempts: int = 5


@dataclass
class Context:
    cfg: Config
    metrics: DaemonMetrics
    owner: str
    url: str
    stop: threading.Event
    log: logging.Logger
    status_extra: str = ""
    # Dependencies a daemon's own background thread found down (name -> error); the loop shows
    # them like its own (STATUS, jobpipe_dependency_up, daemon_status -> dependency alert).
    background_down: dict[str, str] = field(default_factory=dict)

    def connect(self, purpose: str = "") -> Any:
        return db.connect(
            self.url,
            connect_timeout=self.cfg.database.connect_timeout_s,
            statement_timeout_s=self.cfg.database.statement_timeout_s,
            application_name=f"jobpipe-{self.metrics.daemon}" + (f"-{purpose}" if purpose else ""),
        )

    def set_status_extra(self, text: str) -> None:
        self.status_extra = text

    def dependency_state(self, name: str, up: bool, error: str = "") -> None:
        """From any thread: `name` is up, or down with `error`, as seen outside the stages' calls
        (e.g. the classifier's catalogue sync). Shown from the loop's next STATUS on."""
        if up:
            self.background_down.pop(name, None)
        else:
            self.background_down[name] = error


class Daemon:
    """Base class of the six daemons; see RUNTIME notes in the module docstring."""

    name: ClassVar[str] = ""
    dependencies: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def section(self) -> Any:
        return getattr(self.ctx.cfg, self.name)

    def stages(self) -> list[Stage]:
        return []

    def setup(self, conn: Any) -> None:
        """Once per connection, before READY (indexes, caches)."""

    def tick(self, conn: Any) -> None:
        """Periodic work on the loop thread (schedules, sweeps); called every loop turn."""

    def pending_work(self, conn: Any) -> int:
        """Work that is not in the queue (e.g. a crawl that is due); `--once` waits for 0."""
        return 0

    def close(self) -> None:
        """Release clients."""

    # -- alerting (jobpipe.alerts) ------------------------------------------------------------------
    def alert_conditions(self, conn: Any) -> list[Any]:
        """Daemon-specific alert conditions (`jobpipe.alerts.conditions.Condition`, e.g. built with
        `age_condition` / `count_condition`), evaluated every alerts.eval_interval_s next to
        the built-in ones. Runs on the alert thread with that thread's connection: read the
        database only, touch no state of the work loop."""
        return []


@dataclass
class _Batch:
    stage: Stage
    items: list[Item]
    payloads: dict[int, Any]
    futures: list[tuple[list[Item], cf.Future[list[Any]]]] = field(default_factory=list)
    results: list[tuple[Item, Any, Any]] = field(default_factory=list)
    skips: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    deferred: list[int] = field(default_factory=list)
    dependency_error: DependencyDown | None = None
    defer_until: float = 0.0  # monotonic time deferred items are due again: when the backoff ends
    started: float = field(default_factory=time.monotonic)
    parts: list[_Batch] = field(default_factory=list)  # the batches a merged write is made of

    def done(self) -> bool:
        return all(f.done() for _, f in self.futures)

    def halves(self) -> list[_Batch]:
        """This batch as two, by items (each keeps its items' results, skips, errors, deferrals),
        to find the items a failing write is about."""
        half = len(self.items) // 2
        return [self._subset(self.items[:half]), self._subset(self.items[half:])]

    def _subset(self, items: list[Item]) -> _Batch:
        ids = {it.id for it in items}
        return _Batch(
            self.stage,
            items,
            {k: v for k, v in self.payloads.items() if k in ids},
            results=[r for r in self.results if r[0].id in ids],
            skips={k: v for k, v in self.skips.items() if k in ids},
            errors={k: v for k, v in self.errors.items() if k in ids},
            deferred=[i for i in self.deferred if i in ids],
            dependency_error=self.dependency_error,
            defer_until=self.defer_until,
            started=self.started,
        )

    @classmethod
    def merged(cls, batches: list[_Batch]) -> _Batch:
        """Finished batches of one stage as one, to be written in one transaction."""
        if len(batches) == 1:
            return batches[0]
        m = cls(batches[0].stage, [], {}, started=min(b.started for b in batches), parts=batches)
        for b in batches:
            m.items += b.items
            m.payloads.update(b.payloads)
            m.results += b.results
            m.skips.update(b.skips)
            m.errors.update(b.errors)
            m.deferred += b.deferred
            m.dependency_error = m.dependency_error or b.dependency_error
            m.defer_until = max(m.defer_until, b.defer_until)
        return m


class _Rate:
    """Completed items per second over a sliding window, for STATUS."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window = window_s
        self.events: collections.deque[tuple[float, int]] = collections.deque()
        self.lock = threading.Lock()  # added to by the writer thread, read by the loop

    def add(self, n: int) -> None:
        if n:
            with self.lock:
                self.events.append((time.monotonic(), n))

    def per_second(self) -> float:
        now = time.monotonic()
        with self.lock:
            while self.events and self.events[0][0] < now - self.window:
                self.events.popleft()
            if not self.events:
                return 0.0
            span = max(1.0, now - self.events[0][0])
            return sum(n for _, n in self.events) / span


class Runner:
    """Runs one daemon until stopped (or drained, with `once`)."""

    def __init__(
        self,
        daemon_cls: type[Daemon],
        cfg: Config,
        *,
        db_url: str | None = None,
        once: bool = False,
        notifier: Notifier | None = None,
        metrics: DaemonMetrics | None = None,
        serve: bool = True,
        periodic: Sequence[tuple[float, Callable[[Any], None]]] = (),
        metrics_port: int | None = None,
    ) -> None:
        self.daemon_cls = daemon_cls
        self.cfg = cfg
        self.name = daemon_cls.name
        self.once = once
        self.notifier = notifier or Notifier()
        self.metrics = metrics or DaemonMetrics(self.name)
        self.serve = serve
        self.periodic = [[interval, fn, 0.0] for interval, fn in periodic]
        self.db_url = db_url
        self.metrics_port = metrics_port
        self.stop = threading.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.conn: Any = None
        self.listen_conn: Any = None
        self.waiter: queue.Waiter | None = None
        self.inflight: list[_Batch] = []  # claimed, calls not all finished
        self.writing: list[tuple[list[_Batch], cf.Future[None]]] = []  # handed to the writer
        self.writer: BatchWriter[_Batch] | None = None
        self.last_error = ""
        # The dependency last_error came from, if any: cleared when that dependency is back.
        self.last_error_dependency: str | None = None
        self.ready_sent = False
        self._background_marked: set[str] = set()  # dependencies marked down from ctx.background_down
        self.rate = _Rate()
        self.dep_down: dict[str, str] = {}
        self.backoff_until = 0.0
        self._dependency_failed_at = float("-inf")
        self.backoff_s = cfg.runtime.dependency_backoff_s
        self.signals = 0
        self.pool: cf.ThreadPoolExecutor | None = None
        self.daemon: Daemon | None = None
        self.stage_list: list[Stage] = []
        self.queue_stats: dict[str, queue.StageStats] = {}
        self._last_watchdog = 0.0
        self._last_status = 0.0
        self._rr = 0
        self._last_reclaim: dict[str, float] = {}
        self._last_heartbeat = time.monotonic()
        self.alerter: Any = None
        # A failing tick or periodic task backs off on its own; the queue work goes on meanwhile.
        self._tick_retry_at = 0.0
        self._tick_backoff_s = cfg.runtime.dependency_backoff_s

    # ------------------------------------------------------------------ signals
    def install_signals(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.signals += 1
            if self.signals > 1:
                log_event(log, "second_signal_exit", level="warning", signal=signum)
                os._exit(1)
            log_event(log, "stopping", signal=signal.Signals(signum).name)
            self.notifier.stopping("stopping: draining in-flight work")
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # ------------------------------------------------------------------ helpers
    def _ping(self, force: bool = False) -> None:
        self.metrics.heartbeat()
        interval = self.notifier.watchdog_interval()
        now = time.monotonic()
        if interval is not None and (force or now - self._last_watchdog >= interval * 0.9):
            self.notifier.watchdog()
            self._last_watchdog = now

    def _sleep(self, seconds: float) -> None:
        """Wait without starving the watchdog; returns early on stop."""
        end = time.monotonic() + seconds
        while not self.stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self._ping()
            self.stop.wait(min(left, self._tick_s()))

    def _tick_s(self) -> float:
        wd = self.notifier.watchdog_interval()
        # The loop also heartbeats the leases it holds: it must wake often enough for that.
        base = min(self.cfg.queue.poll_interval_s, self.cfg.runtime.status_interval_s, self._heartbeat_s())
        return max(0.01, min(base, wd / 2) if wd else base)

    def _set_dependency(self, name: str, up: bool, error: str = "") -> None:
        was_down = name in self.dep_down
        if up:
            if was_down:
                del self.dep_down[name]
                log_event(log, "dependency_up", dependency=name)
            if self.last_error_dependency == name:
                # The outage is over: STATUS must not keep saying it (the log has the history).
                self.last_error, self.last_error_dependency = "", None
        else:
            if not was_down:
                log_event(log, "dependency_down", level="warning", dependency=name, error=error)
            self.dep_down[name] = error
        self.metrics.dependency(name, up)

    def _connect(self) -> None:
        """Connect (and LISTEN) with backoff until it works or we are stopped."""
        delay = 0.5
        while not self.stop.is_set():
            try:
                url = self.db_url or db.resolve_url(self.cfg)
                self.ctx.url = url
                self.conn = self.ctx.connect()
                self.listen_conn = db.connect(url, connect_timeout=self.cfg.database.connect_timeout_s)
                stages = [s.name for s in self.stage_list] or [self.name]
                self.waiter = queue.Waiter(self.listen_conn, stages)
                self._set_dependency("database", True)
                return
            except db.UNREACHABLE as exc:
                self._close_db()
                if self.once:  # a one-off run must end, not wait for a database that may never come
                    if isinstance(exc, DependencyDown):
                        raise
                    raise DependencyDown("database", first_line(exc), "connection") from None
                msg = first_line(exc)
                self._set_dependency("database", False, msg)
                self._error(f"database: {msg}", "database")
                self._ready("waiting for the database")
                self._status(force=True)  # after READY's own STATUS: says "DOWN database" and why
                self._sleep(delay)
                delay = min(delay * 2, self.cfg.database.reconnect_max_s)

    def _error(self, text: str, dependency: str | None = None) -> None:
        """Set STATUS's last error; `dependency` when it is that dependency's outage (cleared when
        the dependency is up again)."""
        self.last_error, self.last_error_dependency = text[:200], dependency

    def _ready(self, text: str) -> None:
        """READY=1, once per process."""
        if not self.ready_sent:
            self.ready_sent = True
            self.notifier.ready(text)
            log_event(log, "ready", owner=self.owner, stages=[s.name for s in self.stage_list], status=text)

    def _close_db(self) -> None:
        db.close_quietly(self.conn)
        db.close_quietly(self.listen_conn)
        self.conn = self.listen_conn = None
        self.waiter = None

    def _apply_background_dependencies(self) -> None:
        """Take over what background threads reported (Context.dependency_state)."""
        reported = dict(self.ctx.background_down)
        for name, error in reported.items():
            if name not in self.dep_down:
                self._set_dependency(name, False, error)
                self._error(error, name)
            self._background_marked.add(name)
        for name in self._background_marked - reported.keys():
            self._background_marked.discard(name)
            self._set_dependency(name, True)

    def _status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.cfg.runtime.status_interval_s:
            return
        self._last_status = now
        self._apply_background_dependencies()
        if self.conn is not None and self.stage_list:
            self.queue_stats = queue.stats(self.conn, [s.name for s in self.stage_list])
            for st in self.queue_stats.values():
                running = sum(len(b.items) for b in self._held() if b.stage.name == st.stage)
                self.metrics.set_queue(
                    st.stage, st.pending + st.scheduled, running, st.given_up, st.oldest_pending_age_s
                )
            self._heartbeat_row()
        pending = sum(s.pending + s.scheduled for s in self.queue_stats.values())
        inflight = sum(len(b.items) for b in self._held())
        parts = [f"{self.rate.per_second():.1f} items/s", f"pending {pending}", f"in flight {inflight}"]
        if self.dep_down:
            parts.append("DOWN " + ",".join(sorted(self.dep_down)))
        if self.ctx.status_extra:
            parts.append(self.ctx.status_extra)
        if self.last_error:
            parts.append(f"last error: {self.last_error[:120]}")
        self.notifier.status("; ".join(parts))

    def _heartbeat_row(self) -> None:
        self.conn.execute(
            """INSERT INTO daemon_status (daemon, instance, host, pid, started_at, status, dependencies)
               VALUES (%s, %s, %s, %s, now(), %s, %s)
               ON CONFLICT (daemon, instance) DO UPDATE SET seen_at = now(), status = excluded.status,
                      dependencies = excluded.dependencies""",
            (
                self.name,
                self.owner,
                socket.gethostname(),
                os.getpid(),
                self.last_error[:200] or "ok",
                psycopg.types.json.Jsonb(
                    {d: d not in self.dep_down for d in ("database", *self.daemon_cls.dependencies)}
                ),
            ),
        )

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        self.ctx = Context(self.cfg, self.metrics, self.owner, self.db_url or "", self.stop, log)
        server = None
        if self.serve:
            port = self.metrics_port
            if port is None:
                port = getattr(self.cfg, self.name).metrics_port if hasattr(self.cfg, self.name) else 0
            server = serve_metrics(
                self.metrics.registry,
                port=port,
                bind=self.cfg.metrics.bind,
                setting=f"{self.name}.metrics_port",
            )
            log_event(log, "metrics_serving", url=server.url)
        try:
            return self._run()
        finally:
            if self.alerter is not None:
                self.alerter.close()
            if server is not None:
                server.shutdown()

    def _run(self) -> int:
        self.daemon = self.daemon_cls(self.ctx)
        self.stage_list = self.daemon.stages()
        self._start_alerter()
        workers = max([s.workers for s in self.stage_list] or [1])
        self.pool = cf.ThreadPoolExecutor(
            max_workers=max(1, sum(s.workers for s in self.stage_list)),
            thread_name_prefix=f"{self.name}-call",
        )
        for dep in ("database", *self.daemon_cls.dependencies):
            self.metrics.dependency(dep, dep != "database")
        self._connect()
        if self.stop.is_set():
            return 0
        db.check_schema(self.conn)  # UserError: exit 2 with what to run
        self.daemon.setup(self.conn)
        self.writer = BatchWriter(
            lambda: self.ctx.connect("writer"),
            self._write_batches,
            name=f"{self.name}-writer",
            log=log,
            reconnect_max_s=self.cfg.database.reconnect_max_s,
        ).start()
        self._status(force=True)
        self._ready(f"ready: {len(self.stage_list)} stage(s), {workers} worker(s)")
        try:
            while not self.stop.is_set():
                try:
                    if self._turn():
                        break
                except db.CONNECTION_ERRORS as exc:
                    # Only real connection loss is "database down" (reconnect); a statement the
                    # server refused (timeout, deadlock, disk full) on a healthy connection is a
                    # failed turn with backoff: reported as the database being away, it set the
                    # dependency down and reconnected forever while the database was fine. Other
                    # psycopg errors (a bug in a statement) still end the process, as before.
                    if db.connection_lost(exc) or self.conn is None or self.conn.closed:
                        self._database_lost(exc)
                    else:
                        self._turn_failed("loop", exc)
        finally:
            self._shutdown()
        return 0

    def _start_alerter(self) -> None:
        """Alert evaluation and delivery run on their own thread (jobpipe.alerts.alerter.Alerter): they
        must go on while this loop waits for a database that is down, and a slow gateway must
        never delay a claim. Not in --once runs (they end before an evaluation would matter)."""
        if self.once:
            return
        def connect() -> Any:
            url = self.ctx.url or db.resolve_url(self.cfg, start_embedded=False)
            return db.connect(
                url,
                connect_timeout=self.cfg.database.connect_timeout_s,
                statement_timeout_s=self.cfg.database.statement_timeout_s,
                application_name=f"jobpipe-{self.name}-alerts",
            )

        self.alerter = Alerter(
            self.name,
            self.cfg,
            connect=connect,
            stages=[s.name for s in self.stage_list],
            dependencies=("database", *self.daemon_cls.dependencies),
            hooks=self.daemon.alert_conditions,
            metrics=self.metrics,
        )
        self.alerter.start()

    def _database_lost(self, exc: BaseException) -> None:
        msg = first_line(exc)
        log_event(log, "database_lost", level="warning", error=msg)
        self._error(f"database: {msg}", "database")
        self._set_dependency("database", False, msg)
        self._close_db()
        # Said now, not only if the first reconnect fails: a restart that is over before we notice
        # would otherwise leave no trace of the outage in systemctl status.
        self._status(force=True)
        self._connect()
        if self.conn is not None:
            self.daemon.setup(self.conn)

    def _isolated(self, what: str, fn: Callable[[Any], None]) -> None:
        """Run the daemon's periodic work (`tick`, history pruning) so that its failure never stops
        the queue work: a sweep or repair statement that always times out, or a bug in one, is
        logged and retried (a tick after a backoff, dependency_backoff_s doubling up to its max;
        a periodic task at its next interval) while claims go on. Connection loss and
        DependencyDown still go to the loop's handlers."""
        try:
            fn(self.conn)
        except Exception as exc:
            if isinstance(exc, DependencyDown) or db.connection_lost(exc) or self.conn.closed:
                raise
            log.error(
                "%s failed", what, exc_info=exc, extra={"event": f"{what}_failed", "error": first_line(exc)}
            )
            self._error(f"{what} failed: {first_line(exc)}")
            if what == "tick":  # a periodic task waits for its own interval
                self._tick_retry_at = time.monotonic() + self._tick_backoff_s
                cap = self.cfg.runtime.dependency_backoff_max_s
                self._tick_backoff_s = min(2 * self._tick_backoff_s, cap)
        else:
            if what == "tick":
                self._tick_backoff_s = self.cfg.runtime.dependency_backoff_s

    def _turn_failed(self, where: str, exc: psycopg.Error) -> None:  # an OperationalError
        """A statement of the loop (claim, stats, load) refused on a live connection: one log line,
        STATUS, and a backoff like a dependency's, without calling the database down."""
        msg = first_line(exc)
        log_event(log, "turn_failed", level="warning", where=where, sqlstate=exc.sqlstate, error=msg)
        self._error(f"database statement failed: {msg}")
        self.backoff_until = time.monotonic() + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.cfg.runtime.dependency_backoff_max_s)

    def _heartbeat_s(self) -> float:
        return self.cfg.queue.lease_s / 3

    def _heartbeat(self) -> None:
        """Extend the leases of every item this daemon holds (calls queued or in flight, results
        waiting for the writer), so a slow model call or a long queue never loses a lease while
        the daemon is alive: one UPDATE per stage every lease_s / 3, not one per item."""
        now = time.monotonic()
        if now - self._last_heartbeat < self._heartbeat_s():
            return
        self._last_heartbeat = now
        by_stage: dict[str, list[int]] = {}
        for b in self._held():
            by_stage.setdefault(b.stage.name, []).extend(it.id for it in b.items)
        for ids in by_stage.values():
            queue.extend_lease(self.conn, self.owner, ids, self.cfg.queue.lease_s)

    def _turn(self) -> bool:
        """One loop turn; True when `once` and everything is drained."""
        self._ping()
        self._hand_off_finished()
        self._heartbeat()
        self._status()
        now = time.monotonic()
        for entry in self.periodic:
            interval, fn, last = entry
            if now - last >= interval:
                entry[2] = now
                self._isolated("periodic", fn)
        backing_off = now < self.backoff_until
        claimed = 0
        if not backing_off:
            try:
                if now >= self._tick_retry_at:
                    self._isolated("tick", self.daemon.tick)
                claimed = self._claim_more()
            except DependencyDown as exc:
                self._dependency_failed(exc)
        if self.inflight or self.writing:
            # Only futures still running: a per-item batch is handed off when all its items are
            # done, and one finished item of it would end every wait at once (a busy loop that
            # took a core from the workers while the batch's other calls ran).
            futures = [f for b in self.inflight for _, f in b.futures if not f.done()]
            futures += [f for _, f in self.writing if not f.done()]
            if futures:
                cf.wait(futures, timeout=self._tick_s(), return_when=cf.FIRST_COMPLETED)
            return False
        if claimed:
            return False
        if self.once and not backing_off:
            st = queue.stats(self.conn, [s.name for s in self.stage_list])
            due = sum(s.pending for s in st.values())
            if due == 0 and self.daemon.pending_work(self.conn) == 0:
                log_event(log, "drained")
                return True
        wait = self._tick_s()
        if backing_off:
            wait = min(wait, max(0.01, self.backoff_until - now))
        if self.waiter is not None:
            self.waiter.wait(wait)
        return False

    def _claim_more(self) -> int:
        """Claim and dispatch batches while there is room for them; return items claimed."""
        total = 0
        n = len(self.stage_list)
        for k in range(n):
            stage = self.stage_list[(self._rr + k) % n]
            while not self.stop.is_set() and time.monotonic() >= self.backoff_until:
                # Batches whose calls are not finished: `workers` being called and as many queued
                # behind them, so a worker never waits for the loop's next claim (`workers` is
                # still the number of requests in flight). Batches still to be written count
                # towards a second bound, so a slow database holds back claims (and memory).
                mine = [b for b in self.inflight if b.stage is stage]
                held = sum(1 for b in self._held() if b.stage is stage)
                if stage.per_item:
                    busy = sum(1 for b in mine for _, f in b.futures if not f.done())
                    room = 1 if busy < stage.workers and len(mine) < 2 and held < 4 else 0
                else:
                    room = min(2 * stage.workers - len(mine), 4 * stage.workers - held)
                if room <= 0:
                    break
                # All the batches there is room for in one claim and one load: with a fast model
                # server several finish per turn, and round trips are then what the loop waits on.
                got = self._claim_batches(stage, room)
                total += got
                if got < room * stage.batch_size:
                    break
        self._rr += 1
        return total

    def _policy(self, stage: Stage) -> RetryPolicy:
        return RetryPolicy(stage.max_attempts, self.cfg.queue.backoff_base_s, self.cfg.queue.backoff_max_s)

    def _claim_batches(self, stage: Stage, n_batches: int) -> int:
        """Claim up to `n_batches` batches of `stage`, load them at once, dispatch their calls."""
        policy = self._policy(stage)
        now = time.monotonic()
        # Expired leases are rare; looking for them once per status interval keeps claims cheap.
        if now - self._last_reclaim.get(stage.name, 0.0) >= self.cfg.runtime.status_interval_s:
            self._last_reclaim[stage.name] = now
            reclaimed = queue.reclaim_expired(self.conn, stage.name, policy)
            if reclaimed:
                log_event(log, "leases_reclaimed", stage=stage.name, n=reclaimed)
        items = queue.claim(
            self.conn, stage.name, self.owner, stage.batch_size * n_batches, self.cfg.queue.lease_s
        )
        if not items:
            return 0
        try:
            payloads = stage.load(self.conn, items)
        except Exception as exc:
            if db.connection_lost(exc):
                raise
            log.exception("load failed", extra={"event": "load_failed"})
            with self.conn.transaction():
                queue.fail(
                    self.conn, stage.name, self.owner, {i.id: f"load failed: {exc}" for i in items}, policy
                )
            return len(items)
        for k in range(0, len(items), stage.batch_size):
            chunk = items[k : k + stage.batch_size]
            batch = _Batch(stage, chunk, {it.id: payloads[it.id] for it in chunk if it.id in payloads})
            callable_items: list[Item] = []
            for it in chunk:
                p = payloads.get(it.id, Skip("missing"))
                if isinstance(p, Skip):
                    batch.skips[it.id] = p.outcome
                else:
                    callable_items.append(it)
            if callable_items:
                groups = [[it] for it in callable_items] if stage.per_item else [callable_items]
                for g in groups:
                    fut = self.pool.submit(stage.call, [payloads[it.id] for it in g])
                    batch.futures.append((g, fut))
            self.inflight.append(batch)
        return len(items)

    def _collect(self, batch: _Batch) -> None:
        for group, fut in batch.futures:
            try:
                results = fut.result()
                if len(results) != len(group):
                    raise RuntimeError(f"call returned {len(results)} results for {len(group)} items")
            except DependencyDown as exc:
                batch.deferred.extend(it.id for it in group)
                batch.dependency_error = exc
                continue
            except Exception as exc:
                log.exception("call failed", extra={"event": "call_failed", "stage": batch.stage.name})
                for it in group:
                    batch.errors[it.id] = f"{type(exc).__name__}: {exc}"
                continue
            for it, res in zip(group, results, strict=True):
                if isinstance(res, ItemError):
                    batch.errors[it.id] = f"{res.kind}: {res}"
                elif isinstance(res, DependencyDown):
                    batch.deferred.append(it.id)
                    batch.dependency_error = res
                else:
                    batch.results.append((it, batch.payloads[it.id], res))

    def _held(self) -> list[_Batch]:
        """Batches claimed and not yet written: calls in flight, and those with the writer."""
        return self.inflight + [b for bs, _ in self.writing for b in bs]

    def _hand_off_finished(self) -> None:
        """Batches whose calls are all done go to the writer; written ones are forgotten."""
        for _, fut in self.writing:
            if fut.done() and (exc := fut.exception()) is not None:
                self._error(f"write: {exc}")
        self.writing = [(bs, f) for bs, f in self.writing if not f.done()]
        finished: list[_Batch] = []
        running: list[_Batch] = []
        for b in self.inflight:
            (finished if b.done() else running).append(b)
        if not finished:
            return
        self.inflight = running
        for b in finished:
            self._collect(b)
            if b.dependency_error is not None:
                # Batches claimed before the last failure are the same outage seen again: they
                # wait for the current backoff instead of doubling it once per batch.
                if b.started > self._dependency_failed_at:
                    self._dependency_failed(b.dependency_error)
                b.defer_until = self.backoff_until
            elif b.results:
                for dep in self.daemon_cls.dependencies:
                    # A background thread that still sees it down keeps it down (no up/down flapping).
                    if dep in self.dep_down and dep not in self.ctx.background_down:
                        self._set_dependency(dep, True)
                self.backoff_s = self.cfg.runtime.dependency_backoff_s
        assert self.writer is not None
        self.writing.append((finished, self.writer.submit(finished)))

    def _write_batches(self, conn: Any, batches: list[_Batch]) -> None:
        """On the writer thread: the finished batches of each stage in one transaction (a merged
        write that fails is redone batch by batch, so one bad batch costs only its own items)."""
        for stage in dict.fromkeys(b.stage.name for b in batches):
            self._write(conn, _Batch.merged([b for b in batches if b.stage.name == stage]))

    def _write(self, conn: Any, b: _Batch) -> None:
        """Write one (merged) batch: results and queue outcomes in one transaction.

        Only results of items whose lease this daemon still holds are written (checked and locked
        in the same transaction): an item taken over by another worker after its lease ran out
        is that worker's now. A lost connection is raised (the writer reconnects and writes the
        same batch again). Any other database error (statement timeout, oversized row, disk full,
        deadlock...) or a bug in `write` rolls back and the batch is written again in halves,
        down to single items, so only the items the write fails on are charged an attempt."""
        stage = b.stage
        policy = self._policy(stage)
        lost: list[int] = []
        with self.metrics.batch_timer(stage.name):
            try:
                with conn.transaction():
                    held = queue.held(conn, self.owner, [it.id for it in b.items])
                    lost = [it.id for it in b.items if it.id not in held]
                    outcomes = {k: v for k, v in b.skips.items() if k in held}
                    results = [r for r in b.results if r[0].id in held]
                    if results:
                        outcomes.update(stage.write(conn, results))
                    done = queue.complete(conn, stage.name, self.owner, outcomes)
                    failed = queue.fail(conn, stage.name, self.owner, b.errors, policy)
                    queue.defer(
                        conn,
                        self.owner,
                        b.deferred,
                        max(0.0, b.defer_until - time.monotonic()),  # due when the backoff ends
                        str(b.dependency_error) if b.dependency_error else None,
                    )
            except Exception as exc:
                if db.connection_lost(exc) or conn.closed:
                    raise
                # Rolled back: find the items the write fails on, keep the others' results.
                parts = b.parts or (b.halves() if len(b.items) > 1 else [])
                if parts:
                    for part in parts:
                        self._write(conn, part)
                    return
                log.exception("write failed", extra={"event": "write_failed", "stage": stage.name})
                self._error(f"{stage.name} write: {exc}")
                with conn.transaction():
                    failed = queue.fail(
                        conn,
                        stage.name,
                        self.owner,
                        {i.id: f"write failed: {type(exc).__name__}: {exc}" for i in b.items},
                        policy,
                    )
                outcomes, done = {}, 0
        if lost:
            # Another worker holds these now (our lease ran out): their results are not ours to
            # write, and their completion is not ours to count.
            log_event(log, "lease_lost", level="warning", stage=stage.name, n=len(lost))
        counts = collections.Counter(outcomes.values())
        counts["failed"] += failed["failed"]
        counts["given_up"] += failed["given_up"]
        counts["deferred"] += len(b.deferred)
        counts["lease_lost"] += len(lost)
        self.metrics.item_outcomes(stage.name, {k: v for k, v in counts.items() if v})
        self.rate.add(done)
        if done:
            self.metrics.success(stage.name)
        if b.errors:
            first = next(iter(b.errors.values()))
            self._error(f"{stage.name}: {first}")
            log_event(
                log, "items_failed", level="warning", stage=stage.name, n=len(b.errors), example=first[:300]
            )
        log_event(
            log,
            "batch_done",
            level="debug",
            stage=stage.name,
            done=done,
            failed=len(b.errors),
            deferred=len(b.deferred),
            seconds=round(time.monotonic() - b.started, 3),
        )

    def _dependency_failed(self, exc: DependencyDown) -> None:
        """Back the whole daemon off (until `backoff_until`)."""
        self._set_dependency(exc.dependency, False, str(exc))
        self._error(str(exc), exc.dependency)
        delay = exc.retry_after if exc.retry_after else self.backoff_s
        self._dependency_failed_at = time.monotonic()
        self.backoff_until = self._dependency_failed_at + delay
        self.backoff_s = min(self.backoff_s * 2, self.cfg.runtime.dependency_backoff_max_s)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + (self.cfg.runtime.drain_timeout_s if self.stop.is_set() else 0)
        while self.inflight and time.monotonic() < deadline:
            self._ping()
            try:
                self._heartbeat()
            except db.CONNECTION_ERRORS:
                pass  # the database is away: the leases run out, the items come back later
            futures = [f for b in self.inflight for _, f in b.futures]
            cf.wait(
                futures,
                timeout=min(0.2, max(0.0, deadline - time.monotonic())),
                return_when=cf.FIRST_COMPLETED,
            )
            self._hand_off_finished()
        self._hand_off_finished()
        not_written = 0
        if self.writer is not None:
            # What has finished is written (a few seconds at most while the database is up);
            # the leases are released only then, or the writer could complete released items.
            not_written = self.writer.close(timeout=max(2.0, deadline - time.monotonic()))
        released = 0
        if self.conn is not None:
            try:
                released = queue.release(self.conn, self.owner)
                self.conn.execute(
                    "DELETE FROM daemon_status WHERE daemon = %s AND instance = %s", (self.name, self.owner)
                )
            except db.CONNECTION_ERRORS:
                pass  # leases will expire on their own
        abandoned = sum(len(b.items) for b in self.inflight)
        log_event(log, "stopped", released=released, abandoned=abandoned, not_written=not_written)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.daemon is not None:
            self.daemon.close()
        self._close_db()


def resolve_daemon(name: str) -> type[Daemon]:
    """`embedder` -> jobpipe.daemons.embedder.DAEMON; `pkg.mod:Class` for tests and plugins."""
    if ":" in name:
        mod_name, attr = name.split(":", 1)
    else:
        mod_name, attr = f"jobpipe.daemons.{name}", "DAEMON"
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name == mod_name:
            raise UserError(f"unknown daemon {name!r} (known: {', '.join(DAEMONS)})") from None
        raise
    return getattr(mod, attr)


def run_daemon(
    daemon_cls: type[Daemon],
    cfg: Config,
    *,
    once: bool = False,
    db_url: str | None = None,
    serve: bool = False,
    notifier: Notifier | None = None,
    metrics: DaemonMetrics | None = None,
    install_signals: bool = False,
    metrics_port: int | None = None,
) -> int:
    """Run a daemon in this process (the CLI's `jobpipe run` and in-process tests)."""
    runner = Runner(
        daemon_cls,
        cfg,
        db_url=db_url,
        once=once,
        notifier=notifier,
        metrics=metrics,
        serve=serve,
        periodic=default_periodic(cfg),
        metrics_port=metrics_port,
    )
    if install_signals:
        runner.install_signals()
    return runner.run()


def default_periodic(cfg: Config) -> list[tuple[float, Callable[[Any], None]]]:
    """Loop-thread tasks every daemon runs besides its own work (history pruning; alerting adds here)."""
    return [(3600.0, lambda conn: queue.prune(conn, cfg.queue.done_retention_days))]
