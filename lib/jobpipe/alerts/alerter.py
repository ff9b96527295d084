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
from jobpipe.alerts.channels.signal import SignalGateway, explain
from jobpipe.alerts.conditions import (
    FAIL,
    Condition,
    dependency_conditions,
    gather,
    instances,
    last_error,
    record_samples,
    stage_conditions,
    thresholds,
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
from jobpipe.background import BackgroundJob, Standalone
from jobpipe.config import Config
from jobpipe.db import Conn
from jobpipe.errors import DependencyDown, first_line
from jobpipe.logs import log_event
from jobpipe.metrics import DaemonMetrics

log = logging.getLogger("jobpipe.alerting")  # the name operators filter the journal by


class Alerter:
    """Evaluates a daemon's conditions and delivers queued messages, on its own thread and
    connection, every `alerts.eval_interval_s`. Never blocks or crashes the work loop: every
    problem here is logged and retried.

    Inputs are arguments (connect, gateway, hooks, clock-free: the database's now() is the clock)
    so tests can run it directly. `hooks(conn)` returns the daemon's own conditions; it runs on
    this thread with this thread's connection and must only read the database.

    The thread and its connection are a jobpipe.background job ("alerts"): it waits for pending
    migrations before it uses a connection (on_connect), reconnects with the database's backoff
    and, on every connection lost or refused, feeds the database alert, which is sent while the
    database is away (on_connection_lost). No cancel on stop: `close` gives up on a slow gateway.
    """

    def __init__(
        self,
        daemon: str,
        cfg: Config,
        *,
        connect: Callable[[], Conn],
        stages: Sequence[str] = (),
        dependencies: Sequence[str] = (),
        hooks: Callable[[Any], list[Condition]] | None = None,
        metrics: DaemonMetrics | None = None,
        gateway: SignalGateway | None = None,
        host: str | None = None,
        latch_path: Any = None,
    ) -> None:
        self.daemon = daemon
        self.cfg = cfg
        self.th = thresholds(cfg, daemon)
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
        self.evaluations = 0  # completed evaluation turns (tests wait on it)
        self.started = time.monotonic()
        self.cond = threading.Condition()
        self._next_eval = 0.0
        self._last_check = 0.0
        # Without a daemon's metrics (tests) the job's run counts go to a registry of their own.
        ctx = Standalone(cfg, metrics or DaemonMetrics(daemon), log, connect)
        self.job: BackgroundJob[float] = BackgroundJob(
            ctx,
            "alerts",
            self._turn,
            repeat_s=cfg.alerts.eval_interval_s,
            cancel_on_stop=False,
            keep_connection=True,
            on_connect=self._schema_ready,
            on_connection_lost=self._db_failed,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.job.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread. A send still in flight after `timeout` is abandoned (the thread is a
        daemon thread): its claim expires into "ambiguous", so shutdown never waits on a gateway."""
        self.job.stop(timeout)
        if self.job.running:
            return  # it still uses the connection and the gateway; the process exit ends it
        if self.gateway is not None:
            try:
                self.gateway.close()
            except Exception:
                pass

    def wait_for_evaluations(self, n: int, timeout: float = 30.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.evaluations >= n, timeout)

    # -- the job -----------------------------------------------------------------------------------

    def run_once(self) -> None:
        """One evaluation and delivery pass on the caller's thread (tests call it directly); a
        database that cannot be reached feeds the database alert, as on the thread."""
        self.job.run_once(True)

    def _turn(self, conn: Conn, evaluate: bool = False) -> float:
        """The job's work: an evaluation pass when one is due (or `evaluate`), else the deliveries
        that are due; returns the seconds until the next pass or due delivery."""
        now = time.monotonic()
        if evaluate or now >= self._next_eval:
            self._next_eval = now + self.cfg.alerts.eval_interval_s
            self.db_watch.up(conn)
            self.evaluate(conn)
            self._deliver(conn)
            self._check_gateway()
            self._count_evaluation()
        else:
            self._deliver(conn)
        wait = self._next_eval - time.monotonic()
        due = self.deliverer.next_due_in(conn) if self.gateway is not None else None
        return max(0.01, wait if due is None else min(wait, due))

    def _count_evaluation(self) -> None:
        with self.cond:
            self.evaluations += 1
            self.cond.notify_all()

    def _schema_ready(self, conn: Conn) -> None:
        """on_connect: the work loop refuses to start and says what to run; the alerts wait for
        the schema (DependencyDown: the job says so once and retries)."""
        behind = [m.version for m in db.pending_migrations(conn)]
        if behind:
            raise DependencyDown("schema", f"waiting for migrations {behind}", "schema")

    def _db_failed(self, exc: Exception) -> None:
        """on_connection_lost: a turn without the database still counts (tests wait on it)."""
        self.db_watch.down(first_line(exc))
        self._count_evaluation()

    def evaluate(self, conn: Conn) -> list[Transition]:
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

    def _deliver(self, conn: Conn) -> None:
        if self.gateway is not None:
            self.deliverer.deliver_due(conn)

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
