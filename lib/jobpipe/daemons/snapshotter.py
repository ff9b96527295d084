"""The snapshotter: the daily demand snapshot and the occupation similarity, when due.

It claims nothing from the queue and calls no external service: its work is two SQL computations
(jobpipe.demand, jobpipe.similarity) whose "due" logic reads the database clock. The loop thread
only decides what is due (every `check_interval_s`); the computation runs on one background
thread with its own connection, so a snapshot over a million postings never stalls the watchdog
pings or a graceful stop (on stop the running statement is cancelled and its transaction rolls
back: nothing half-written). Several instances may run: advisory locks let one compute a day (or
the similarity) while the others skip it.
"""

from __future__ import annotations

import calendar
import concurrent.futures as cf
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from prometheus_client import Counter, Gauge

from jobpipe import db, demand, queue, similarity
from jobpipe.alerts.conditions import Condition, age_condition, count_condition
from jobpipe.errors import first_line
from jobpipe.logs import log_event
from jobpipe.runtime import Context, Daemon

SNAPSHOT = "snapshot"
SIMILARITY = "similarity"
# Wake-up channel of the loop (the runtime LISTENs on jobpipe_<name> for a daemon without stages).
CHANNEL = "jobpipe_snapshotter"
FAILURE_BACKOFF_S = (30.0, 3600.0)  # first and longest pause after a failed job (doubles)


@dataclass
class _JobResult:
    snapshots: list[demand.SnapshotResult] = field(default_factory=list)
    similarity: similarity.SimilarityResult | None = None


class SnapshotterDaemon(Daemon):
    name = "snapshotter"
    dependencies = ()

    def __init__(self, ctx: Context, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ctx)
        sec = ctx.cfg.snapshotter
        self.run_at = demand.parse_run_at(sec.run_at)  # ConfigError at start-up, naming the key
        self.clock = clock
        self.pool = cf.ThreadPoolExecutor(1, thread_name_prefix="snapshotter-job")
        self.job: cf.Future[_JobResult] | None = None
        self.job_conn: Any = None
        self._job_stage = SNAPSHOT
        self.next_check = 0.0
        self.retry_at = 0.0
        self.failure_backoff = FAILURE_BACKOFF_S[0]
        reg, p, d = ctx.metrics.registry, ctx.metrics.prefix, ctx.metrics.daemon
        self.m_runs = Counter(
            f"{p}runs",
            "Snapshot and similarity runs by kind and result "
            "(done, skipped_locked, skipped_present, skipped_fresh, no_vectors, failed)",
            ["daemon", "kind", "result"],
            registry=reg,
        )
        self.m_missing = Gauge(
            f"{p}missing_snapshots",
            "Due days without a complete snapshot run (within catch_up_days)",
            ["daemon"],
            registry=reg,
        )
        self.m_rows = Gauge(
            f"{p}snapshot_rows", "Rows of the newest complete snapshot day", ["daemon"], registry=reg
        )
        self.m_day = Gauge(
            f"{p}snapshot_day_timestamp_seconds",
            "Start (Unix time, UTC midnight) of the newest complete snapshot day",
            ["daemon"],
            registry=reg,
        )
        self.m_pairs = Gauge(
            f"{p}similarity_pairs",
            "Occupation pairs of the current similarity result",
            ["daemon"],
            registry=reg,
        )
        self.m_sim_age = Gauge(
            f"{p}similarity_age_seconds",
            "Age of the current similarity result (0 before the first run)",
            ["daemon"],
            registry=reg,
        )
        for g in (self.m_missing, self.m_rows, self.m_day, self.m_pairs, self.m_sim_age):
            g.labels(d).set(0)

    # ------------------------------------------------------------------ what is due (loop thread)
    def due(self, conn: Any) -> tuple[list[date], bool]:
        sec = self.ctx.cfg.snapshotter
        days = demand.due_days(conn, self.run_at, sec.catch_up_days)
        return days, similarity.is_due(conn, sec.similarity_interval_h, self.ctx.cfg.embedder.model)

    def tick(self, conn: Any) -> None:
        if self.job is not None:
            if not self.job.done():
                return
            self._collect(conn)
        now = self.clock()
        if now < self.next_check:
            return
        self.next_check = now + self.ctx.cfg.snapshotter.check_interval_s
        days, sim_due = self.due(conn)
        self._publish(conn, len(days))
        if (days or sim_due) and now >= self.retry_at and not self.ctx.stop.is_set():
            self.job = self.pool.submit(self._work, days, sim_due)

    def pending_work(self, conn: Any) -> int:
        if self.job is not None:
            return 1  # running, or finished and not yet collected by tick
        if self.clock() < self.retry_at:
            return 0  # failed recently: `--once` does not spin on it
        days, sim_due = self.due(conn)
        return len(days) + int(sim_due)

    def alert_conditions(self, conn: Any) -> list[Condition]:
        """Alert-worthy: a due day still without its snapshot a day later (the newest due day may be
        computing right now, so it does not count), and a similarity result older than two
        intervals (plus an hour) while there is one."""
        sec = self.ctx.cfg.snapshotter
        latest = demand.latest_due_day(conn, self.run_at)
        overdue = [d for d in demand.due_days(conn, self.run_at, sec.catch_up_days) if d < latest]
        age = similarity.result_age_s(conn, self.ctx.cfg.embedder.model)
        first = min(overdue, default="-")
        return [
            count_condition(
                "snapshot_overdue",
                "daily demand snapshot overdue",
                len(overdue),
                1,
                what=f"day(s) without a snapshot a day after their run time (first {first})",
                hint="see the snapshotter's log; `jobpipe snapshot --since DAY` fills the gap by hand",
            ),
            age_condition(
                "similarity_stale",
                "occupation similarity not recomputed",
                age,
                (2 * sec.similarity_interval_h + 1) * 3600.0,
                what="similarity result",
                hint="see the snapshotter's log; `jobpipe snapshot --similarity` recomputes it by hand",
            ),
        ]

    # ------------------------------------------------------------------ the work (job thread)
    def _work(self, days: list[date], sim_due: bool) -> _JobResult:
        sec = self.ctx.cfg.snapshotter
        if self.job_conn is None or self.job_conn.closed:
            self.job_conn = self.ctx.connect()
        conn = self.job_conn
        out = _JobResult()
        self._job_stage = SNAPSHOT  # what a failure is counted against (read after the job is done)
        try:
            for day in days:
                if self.ctx.stop.is_set():
                    break
                with self.ctx.metrics.batch_timer(SNAPSHOT):
                    r = demand.snapshot_day(
                        conn, day, only_if_missing=True, statement_timeout_s=sec.statement_timeout_s
                    )
                out.snapshots.append(r)
                log_event(
                    self.ctx.log,
                    "snapshot",
                    day=str(day),
                    status=r.status,
                    rows=r.rows,
                    active_postings=r.active_postings,
                    seconds=round(r.seconds, 3),
                )
            if sim_due and not self.ctx.stop.is_set():
                self._job_stage = SIMILARITY
                with self.ctx.metrics.batch_timer(SIMILARITY):
                    out.similarity = similarity.compute_configured(
                        conn, self.ctx.cfg, only_if_due_h=sec.similarity_interval_h
                    )
                s = out.similarity
                log_event(
                    self.ctx.log,
                    "similarity",
                    status=s.status,
                    occupations=s.occupations,
                    from_postings=s.from_postings,
                    from_names=s.from_names,
                    pairs=s.pairs,
                    seconds=round(s.seconds, 3),
                )
        finally:
            try:
                conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))  # wake the loop to collect
            except Exception:  # the loop also polls
                pass
        return out

    def _collect(self, conn: Any) -> None:
        """Pick up a finished job. Its outcomes also go to stage_counts (as the crawl's do): a job
        that fails run after run is then a failure streak that `jobpipe health` shows as FAIL and
        alerts on within minutes, not only `snapshot_overdue` a day later."""
        job, self.job = self.job, None
        d = self.ctx.metrics.daemon
        try:
            res = job.result()
        except Exception as exc:  # a failed run is retried later, the daemon lives
            self.m_runs.labels(d, "job", "failed").inc()
            self.ctx.metrics.item_outcomes(self._job_stage, {"failed": 1})
            queue.count_outcomes(conn, self._job_stage, {queue.FAILED: 1})
            msg = first_line(exc)
            log_event(
                self.ctx.log,
                "snapshot_job_failed",
                level="warning",
                error=msg[:300],
                retry_in_s=self.failure_backoff,
            )
            self.ctx.set_status_extra(f"last run failed: {msg[:80]}")
            self.retry_at = self.clock() + self.failure_backoff
            self.failure_backoff = min(self.failure_backoff * 2, FAILURE_BACKOFF_S[1])
            self._drop_job_conn()
            return
        self.failure_backoff = FAILURE_BACKOFF_S[0]
        self.retry_at = 0.0
        locked = False
        for r in res.snapshots:
            self.m_runs.labels(d, SNAPSHOT, r.status).inc()
            self.ctx.metrics.item_outcomes(SNAPSHOT, {r.status: 1})
            if r.status == demand.DONE:
                self.ctx.metrics.success(SNAPSHOT)
            locked |= r.status == demand.SKIPPED_LOCKED
        done = sum(r.status == demand.DONE for r in res.snapshots)
        queue.count_outcomes(conn, SNAPSHOT, {demand.DONE: done})
        if res.similarity is not None:
            s = res.similarity
            queue.count_outcomes(conn, SIMILARITY, {similarity.DONE: int(s.status == similarity.DONE)})
            self.m_runs.labels(d, SIMILARITY, s.status).inc()
            self.ctx.metrics.item_outcomes(SIMILARITY, {s.status: 1})
            if s.status == similarity.DONE:
                self.ctx.metrics.success(SIMILARITY)
            locked |= s.status == similarity.SKIPPED_LOCKED
        if not locked:
            self.next_check = 0.0  # look again at once (e.g. to publish the new state)

    def _publish(self, conn: Any, missing: int) -> None:
        d = self.ctx.metrics.daemon
        self.m_missing.labels(d).set(missing)
        parts = []
        last = demand.last_complete_day(conn)
        if last is not None:
            day, rows = last
            self.m_rows.labels(d).set(rows)
            self.m_day.labels(d).set(calendar.timegm(day.timetuple()))
            parts.append(f"snapshot {day} ({rows} rows)")
        else:
            parts.append("no snapshot yet")
        if missing:
            parts.append(f"{missing} day(s) due")
        run = similarity.last_run(conn)
        if run is not None:
            self.m_sim_age.labels(d).set(max(0.0, float(run["age_s"])))
            if run["occupations"]:
                self.m_pairs.labels(d).set(run["pairs"])
            parts.append(f"similarity {run['pairs']} pairs {float(run['age_s']) / 3600:.1f}h ago")
        if self.job is None and self.clock() >= self.retry_at:
            self.ctx.set_status_extra("; ".join(parts))

    def _drop_job_conn(self) -> None:
        db.close_quietly(self.job_conn)
        self.job_conn = None

    def close(self) -> None:
        # A running statement is cancelled: its transaction rolls back, nothing is half-written.
        if self.job is not None and not self.job.done() and self.job_conn is not None:
            try:
                self.job_conn.cancel_safe(timeout=5.0)
            except Exception:  # best effort; the server ends it with the connection
                pass
            try:
                self.job.result(timeout=10.0)
            except Exception:  # cancelled or failed: rolled back either way
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._drop_job_conn()


DAEMON = SnapshotterDaemon
