"""Daemon work on a thread of its own, with a database connection of its own.

A crawl, the catalogue sync, an index build or a snapshot runs for seconds to hours: on the loop
thread it would stall claims, lease heartbeats and watchdog pings. `BackgroundJob` (made with
`Context.job`) is the one way a daemon runs such work. Guarantees:

- connection: `work(conn, *args)` runs on the job's thread with a connection from
  `Context.connect(<job name>)`, never the loop's; closed when the run ends (with
  `keep_connection`: kept for the next run, closed on `stop`). `on_connect(conn)` runs once on
  every new connection before `work` uses it; if it raises, that connection is closed (the next
  one is checked again) and the exception counts as the run's;
- a lost connection (`db.connection_lost`, or no connection to be had): the job logs it, says
  "waiting for the database" in STATUS, calls `on_connection_lost(exc)` (every time, on the
  job's thread, before the pause; its own exception is logged, never ends the job), reconnects
  after the reconnect backoff (jobpipe.backoff.reconnect, database.reconnect_max_s) and runs
  `work` again with the new connection, until it returns or the job is stopped. `work` must be
  safe to run again;
- stop (`stop()`, and for every job of the context when the runtime begins a graceful stop):
  `stopping` is set at once, the statement running on the job's connection is cancelled (its
  transaction rolls back: nothing half-written) unless the job was made with
  `cancel_on_stop=False` (work that stops by itself between short statements), and `stop`
  waits for the thread;
- outcome: a one-shot job (`repeat_s` None) ends with `work`'s value or exception, which `take()`
  hands over once, on the loop thread. A repeating job calls `work` again and again (at once
  while it returns True, after the seconds it returns as a float, after `repeat_s` otherwise;
  `stop` ends every pause at once); its failures are retried after `retry`
  (a doubling Backoff): DependencyDown marks the dependency down (Context.dependency_state, so
  STATUS, jobpipe_dependency_up and the dependency alert show it) until a run succeeds;
- reporting: every run's outcome is counted in jobpipe_background_runs_total{job, outcome}
  (ok, failed, stopped, connection_lost); `report(text)` (from `work`) and the outcome are the
  job's part of the daemon's STATUS line; when the job ends, `pg_notify(wake_channel)` wakes the
  loop to collect it (sent once `take()` has the outcome). The job's own STATUS ("waiting for
  the database", "failing: ...") lasts until a run succeeds or the run ends;
- `run_once(*args)`: one run of `work` on the caller's thread (no thread started), with the
  job's connection and its `on_connect`; a lost connection is handled as above (counted,
  dropped, `on_connection_lost`) and the call returns None at once, without the reconnect
  pause; any other exception is raised to the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from jobpipe import backoff, db
from jobpipe.backoff import Backoff, Streak
from jobpipe.config import Config
from jobpipe.errors import DependencyDown, first_line
from jobpipe.logs import log_event
from jobpipe.metrics import DaemonMetrics

T = TypeVar("T")


class Context(Protocol):
    """What a job needs of the daemon's context (jobpipe.runtime.Context, which makes the jobs)."""

    cfg: Config
    metrics: DaemonMetrics
    log: logging.Logger

    def connect(self, purpose: str = "") -> Any: ...
    def dependency_state(self, name: str, up: bool, error: str = "") -> None: ...


@dataclass
class Standalone:
    """The Context of a job outside a daemon's runtime (jobpipe.alerts.alerter.Alerter, which
    tests build without one): the pieces as arguments. `opener` names its connections itself;
    a dependency the job finds down is only logged by the job (no work loop here shows it)."""

    cfg: Config
    metrics: DaemonMetrics
    log: logging.Logger
    opener: Callable[[], db.Conn]

    def connect(self, purpose: str = "") -> db.Conn:
        return self.opener()

    def dependency_state(self, name: str, up: bool, error: str = "") -> None:
        pass


OK, FAILED, STOPPED, CONNECTION_LOST = "ok", "failed", "stopped", "connection_lost"
CANCEL_TIMEOUT_S = 5.0  # how long stop() waits for the server to take a cancel request
RECANCEL_S = 0.5  # stop() sends the cancel again this often while the thread runs on


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What a one-shot run ended with: `value`, or the exception it raised (`error`)."""

    value: T | None = None
    error: BaseException | None = None

    def result(self) -> T | None:
        """The value, or raise the run's exception."""
        if self.error is not None:
            raise self.error
        return self.value


class BackgroundJob(Generic[T]):
    """See the module docstring. Start, take and stop it from the loop thread (or `close`)."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        work: Callable[..., T],
        *,
        repeat_s: float | None = None,
        retry: Backoff | None = None,
        cancel_on_stop: bool = True,
        wake_channel: str | None = None,
        keep_connection: bool = False,
        on_connect: Callable[[db.Conn], object] | None = None,
        on_connection_lost: Callable[[Exception], object] | None = None,
    ) -> None:
        self.ctx, self.name, self.work = ctx, name, work
        self.on_connect, self.on_connection_lost = on_connect, on_connection_lost
        self.repeat_s = repeat_s
        self.retry = retry or Backoff(1.0, ctx.cfg.runtime.dependency_backoff_max_s)
        self.cancel_on_stop = cancel_on_stop
        self.wake_channel = wake_channel
        self.keep_connection = keep_connection
        self.stopping = threading.Event()
        self.conn: db.Conn | None = None
        self.status = ""
        self._said = ""  # the STATUS this job put there itself (waiting, failing): cleared when over
        self._thread: threading.Thread | None = None
        self._outcome: Outcome[T] | None = None
        self._finished = threading.Event()  # set once the run's outcome can be taken
        self._lock = threading.Lock()  # conn: replaced by the job thread, cancelled from stop()
        self._down: set[str] = set()  # dependencies this job reported down

    # -- the loop thread's side -------------------------------------------------------------------

    def start(self, *args: Any) -> None:
        """Run `work(conn, *args)` on a new thread (the previous run must be taken)."""
        if self.busy:
            raise RuntimeError(f"background job {self.name} is still running or not collected")
        self.join()  # the previous run's thread is past its end already: never two at once
        self.stopping.clear()
        self._finished.clear()
        self._outcome = None
        self._thread = threading.Thread(target=self._run, args=args, name=f"{self.name}-job", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._finished.is_set()

    @property
    def busy(self) -> bool:
        """Running, or finished with an outcome nobody has taken yet."""
        return self.running or self._outcome is not None

    def take(self) -> Outcome[T] | None:
        """The finished run's outcome, once; None while it runs (or when there is none)."""
        if self.running:
            return None
        outcome, self._outcome = self._outcome, None
        return outcome

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float | None = None, *, wait: bool = True, cancel: bool | None = None) -> None:
        """Stop: `stopping` set, the running statement cancelled (`cancel`, by default the job's
        cancel_on_stop), then (with `wait`) the thread joined and the connection closed."""
        self.stopping.set()
        cancel = self.cancel_on_stop if cancel is None else cancel
        if cancel:
            self._cancel()
        if not wait:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            # A statement the work started just after the cancel went out is cancelled too.
            self._thread.join(RECANCEL_S if left is None else min(left, RECANCEL_S))
            if cancel:
                self._cancel()
        if self._thread is None or not self._thread.is_alive():
            self._set_conn(None)

    def _cancel(self) -> None:
        if not self.running:
            return
        with self._lock:
            conn = self.conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
            except Exception:  # best effort: the server ends the statement with the connection
                pass

    def report(self, text: str) -> None:
        """From `work`: the job's part of STATUS (e.g. progress)."""
        self.status = text

    def run_once(self, *args: Any) -> T | None:
        """One run of `work(conn, *args)` on the caller's thread (see the module docstring)."""
        if self.running:
            raise RuntimeError(f"background job {self.name} is running on its thread")
        self.join()  # a finished run's thread may still be sending its wake-up on the connection
        try:
            value = self.work(self._connection(), *args)
        except Exception as exc:
            if self._lost(exc):
                return None
            self._count(FAILED)
            raise
        self._count(OK)
        return value

    # -- the job thread ---------------------------------------------------------------------------

    def _set_conn(self, conn: db.Conn | None) -> None:
        with self._lock:
            old, self.conn = self.conn, conn
        if old is not None and old is not conn:
            db.close_quietly(old)

    def _connection(self) -> db.Conn:
        conn = self.conn
        if conn is None or conn.closed:
            conn = self.ctx.connect(self.name)
            self._set_conn(conn)  # before on_connect: stop() cancels its statement too
            if self.on_connect is not None:
                try:
                    self.on_connect(conn)
                except BaseException:
                    self._set_conn(None)  # the next connection is checked again
                    raise
        return conn

    def _lost(self, exc: Exception) -> bool:
        """True when `exc` means the connection is gone (or none could be had): then it is
        counted, dropped and reported to on_connection_lost."""
        if not (db.connection_lost(exc) or (self.conn is not None and self.conn.closed)):
            return False
        self._count(CONNECTION_LOST)
        self._set_conn(None)
        if self.on_connection_lost is not None:
            try:
                self.on_connection_lost(exc)
            except Exception as hook_exc:  # the job must outlive its hook
                self.ctx.log.error(
                    f"{self.name} on_connection_lost failed",
                    exc_info=hook_exc,
                    extra={"event": f"{self.name}_hook_failed"},
                )
        return True

    def _run(self, *args: Any) -> None:
        reconnect = Streak(backoff.reconnect(self.ctx.cfg.database.reconnect_max_s))
        failing = Streak(self.retry)
        last_error = ""
        try:
            while not self.stopping.is_set():
                try:
                    value = self.work(self._connection(), *args)
                except BaseException as exc:
                    if self.stopping.is_set():
                        self._count(STOPPED)
                        self._outcome = Outcome(error=exc)
                        return
                    if isinstance(exc, Exception) and self._lost(exc):
                        error = f"database: {first_line(exc)}"
                        if error != last_error:
                            log_event(self.ctx.log, f"{self.name}_reconnecting", level="warning", error=error)
                        last_error = error
                        self._say(f"waiting for the database ({first_line(exc)[:60]})")
                        self.stopping.wait(reconnect.failed())
                        continue
                    self._count(FAILED)
                    if self.repeat_s is None or not isinstance(exc, Exception):
                        self._outcome = Outcome(error=exc)
                        return
                    last_error = self._failed(exc, last_error)
                    self.stopping.wait(failing.failed())
                    continue
                self._count(OK)
                if last_error:
                    log_event(self.ctx.log, f"{self.name}_resumed")
                    last_error = ""
                self._say("")
                reconnect.reset()
                failing.reset()
                for dep in self._down:
                    self.ctx.dependency_state(dep, True)
                self._down.clear()
                if self.repeat_s is None:
                    self._outcome = Outcome(value=value)
                    return
                if isinstance(value, float):  # the work says when it wants to run again
                    self.stopping.wait(value)
                elif not value:
                    self.stopping.wait(self.repeat_s)
            self._outcome = Outcome()
        finally:
            self._say("")  # the run is over: what it waited for is no longer true
            # Takeable before the wake-up goes out: a loop woken earlier found nothing to take
            # and slept until its next poll. start() and stop() join this thread, so the
            # connection below is still this thread's alone.
            self._finished.set()
            self._wake()
            if not self.keep_connection or (self._outcome is not None and self._outcome.error is not None):
                self._set_conn(None)  # a failed run's connection is not reused

    def _failed(self, exc: Exception, last_error: str) -> str:
        """A repeating run failed (not the connection): say so once per new error."""
        if isinstance(exc, DependencyDown):
            error = str(exc)
            # Not only a log line: STATUS, jobpipe_dependency_up and the dependency alert must
            # show what this job is waiting for.
            self.ctx.dependency_state(exc.dependency, False, error)
            self._down.add(exc.dependency)
        else:  # a bug must not end the thread silently: log it, retry later
            error = f"{type(exc).__name__}: {exc}"
            self.ctx.log.error(f"{self.name} failed", exc_info=exc, extra={"event": f"{self.name}_failed"})
        if error != last_error:
            log_event(self.ctx.log, f"{self.name}_waiting", level="warning", error=error[:300])
        self._say(f"failing: {error[:80]}")
        return error

    def _say(self, text: str) -> None:
        """The job's own STATUS; "" clears it unless `work` has reported since."""
        if text or self.status == self._said:
            self.status = text
        self._said = text

    def _count(self, outcome: str) -> None:
        self.ctx.metrics.background_run(self.name, outcome)

    def _wake(self) -> None:
        if self.wake_channel is None or self.conn is None or self.conn.closed:
            return
        try:  # the loop LISTENs on this channel: it collects the outcome at once
            self.conn.execute("SELECT pg_notify(%s, '')", (self.wake_channel,))
        except Exception:  # the loop also polls
            pass
