"""The Alerter thread: evaluates a daemon's conditions and delivers the queued messages, on its own
thread and connection, never on the daemon's work loop."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from jobpipe import db
from jobpipe.alerts.channels.signal import explain
from jobpipe.alerts.conditions import (
    FAIL,
    Condition,
    Thresholds,
    dependency_conditions,
    gather,
    instances,
    last_error,
    record_samples,
    stage_conditions,
)
from jobpipe.alerts.delivery import (
    DatabaseWatch,
    Deliverer,
    Latch,
    default_latch_path,
    gateway_from_config,
    register_secrets,
)
from jobpipe.alerts.state import Transition, apply
from jobpipe.config import Config
from jobpipe.errors import first_line
from jobpipe.logs import log_event

log = logging.getLogger("jobpipe.alerting")  # the name operators filter the journal by


class Alerter:
    """Evaluates a daemon's conditions and delivers queued messages, on its own thread and
    connection, every `alerts.eval_interval_s`. Never blocks or crashes the work loop: every
    problem here is logged and retried on the next turn.

    Inputs are arguments (connect, gateway, hooks, clock-free: the database's now() is the clock)
    so tests can run it directly. `hooks(conn)` returns the daemon's own conditions; it runs on
    this thread with this thread's connection and must only read the database.
    """

    def __init__(
        self,
        daemon: str,
        cfg: Config,
        *,
        connect: Callable[[], Any],
        stages: Sequence[str] = (),
        dependencies: Sequence[str] = (),
        hooks: Callable[[Any], list[Condition]] | None = None,
        metrics: Any = None,
        gateway: Any = None,
        host: str | None = None,
        latch_path: Any = None,
    ) -> None:
        self.daemon = daemon
        self.cfg = cfg
        self.th = Thresholds.from_config(cfg, daemon)
        self.connect = connect
        self.stages = list(stages)
        self.dependencies = list(dependencies)
        self.hooks = hooks
        self.metrics = metrics
        self.host = host or socket.gethostname()
        register_secrets(cfg)
        if gateway is None and cfg.alerts.channel != "none":
            gateway = gateway_from_config(cfg)
        self.gateway = gateway
        self.deliverer = Deliverer(gateway, cfg, metrics=metrics)
        self.db_watch = DatabaseWatch(
            daemon,
            self.host,
            gateway,
            self.th.dependency_down_minutes * 60,
            Latch(
                latch_path if latch_path is not None else default_latch_path(cfg)
            ),
            retry_base_s=cfg.alerts.retry_base_s,
            retry_max_s=cfg.alerts.retry_max_s,
        )
        self.conn: Any = None
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.evaluations = 0  # completed evaluation turns (tests wait on it)
        self.started = time.monotonic()
        self.cond = threading.Condition()
        self._last_check = 0.0
        self._schema_warned = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"{self.daemon}-alerts", daemon=True)
        self.thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread. A send still in flight after `timeout` is abandoned (the thread is a
        daemon thread): its claim expires into "ambiguous", so shutdown never waits on a gateway."""
        self.stop.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                return  # it still uses the connection and the gateway; the process exit ends it
        self._drop_conn()
        if self.gateway is not None:
            try:
                self.gateway.close()
            except Exception:
                pass

    def wait_for_evaluations(self, n: int, timeout: float = 30.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.evaluations >= n, timeout)

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.cfg.alerts.eval_interval_s
        next_eval = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            wait = interval
            try:
                if now >= next_eval:
                    next_eval = now + interval
                    self.run_once()
                else:
                    self._deliver()
                due = self._next_delivery_in()
                wait = min(max(0.0, next_eval - time.monotonic()), due if due is not None else interval)
            except db.UNREACHABLE as exc:
                self._db_failed(exc)
            except Exception:
                # The alert thread must survive anything; the next turn retries.
                log.exception("alert evaluation failed", extra={"event": "alert_eval_failed"})
                self._drop_conn()
            self.wake.wait(max(0.01, wait))
            self.wake.clear()

    def run_once(self) -> None:
        """One evaluation and delivery pass (the thread's turn; tests may call it directly)."""
        conn = self._conn()
        if conn is None:
            self._count_evaluation()
            return
        try:
            self.db_watch.up(conn)
            self.evaluate(conn)
            self._deliver()
            self._check_gateway()
        except db.UNREACHABLE as exc:
            self._db_failed(exc)
        self._count_evaluation()

    def _count_evaluation(self) -> None:
        with self.cond:
            self.evaluations += 1
            self.cond.notify_all()

    def _conn(self) -> Any:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        try:
            conn = self.connect()
        except db.UNREACHABLE as exc:
            self._db_failed(exc)
            return None
        try:
            behind = [m.version for m in db.pending_migrations(conn)]
        except db.UNREACHABLE as exc:
            conn.close()
            self._db_failed(exc)
            return None
        if behind:
            # The work loop refuses to start and says what to run; the alerts wait for the schema.
            conn.close()
            if not self._schema_warned:
                log_event(log, "alerting_waits_for_schema", level="warning", pending=behind)
                self._schema_warned = True
            return None
        self.conn = conn
        return conn

    def _db_failed(self, exc: BaseException) -> None:
        self._drop_conn()
        self.db_watch.down(first_line(exc))

    def _drop_conn(self) -> None:
        db.close_quietly(self.conn)
        self.conn = None

    def evaluate(self, conn: Any) -> list[Transition]:
        facts = gather(conn, self.stages, self.th) if self.stages else {}
        interval = self.cfg.alerts.eval_interval_s
        record_samples(
            conn,
            self.daemon,
            facts,
            min_gap_s=interval / 2,
            keep_s=self.th.backlog_growing_minutes * 60 * 2 + 3600,
        )
        insts = instances(conn, self.daemon)
        # A daemon that was stopped for a while finds old due work: give it stall_minutes to make
        # progress before calling it stalled (skipped, not "clear": a firing stall stays firing).
        warm = time.monotonic() - self.started >= self.th.stall_minutes * 60
        conds: list[Condition] = []
        for f in facts.values():
            for c in stage_conditions(f, self.th):
                if not warm and c.key.startswith("stall:"):
                    continue
                if c.active and c.key.startswith(("failure_ratio:", "failure_streak:", "stall:")):
                    err = last_error(conn, f.stage, insts)
                    c = replace(c, detail=f"last error: {err}") if err else c
                conds.append(c)
        conds += dependency_conditions(insts, self.dependencies, self.th)
        # The OnFailure hook's alert resolves once the daemon runs again (for resolve_minutes).
        conds.append(Condition("unit_failed", f"unit jobpipe@{self.daemon}", False, "running again", FAIL))
        if self.hooks is not None:
            try:
                extra = list(self.hooks(conn) or [])
            except db.UNREACHABLE:
                raise
            except Exception:
                log.exception("alert hook failed", extra={"event": "alert_hook_failed"})
                extra = []
            conds += extra
        transitions = apply(conn, self.daemon, self.host, conds, self.th, deliver=self.gateway is not None)
        if self.metrics is not None:
            rows = conn.execute(
                "SELECT condition, firing FROM alerts WHERE daemon = %s", (self.daemon,)
            ).fetchall()
            for cond, firing in rows:
                self.metrics.set_alert_firing(cond, bool(firing))
        return transitions

    def _deliver(self) -> None:
        conn = self.conn
        if conn is None or self.gateway is None:
            return
        self.deliverer.deliver_due(conn)

    def _next_delivery_in(self) -> float | None:
        if self.conn is None or self.gateway is None:
            return None
        return self.deliverer.next_due_in(self.conn)

    def _check_gateway(self) -> None:
        if self.gateway is None or self.metrics is None:
            return
        now = time.monotonic()
        if self._last_check and now - self._last_check < self.cfg.alerts.gateway_check_interval_s:
            return
        self._last_check = now
        res = self.gateway.check()
        self.metrics.dependency("signal", res.ok)
        if not res.ok:
            log_event(log, "signal_gateway_check_failed", level="warning", explain=explain(res))
