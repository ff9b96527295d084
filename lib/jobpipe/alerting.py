"""Alert conditions and their state machine, shared by every instance through PostgreSQL.

What is measured comes from the database, never from one process's memory, so that every
instance of a daemon sees the same numbers and a restarted one picks up where it left off:

- failure ratio per stage over a sliding window with a minimum count (56 of 56 fires, 1 of 1
  does not), from the per-minute outcome counts in `stage_counts`;
- stall: due work has waited `stall_minutes` and nothing completed in that time;
- backlog growing for `backlog_growing_minutes` (from `alert_samples`, written by the evaluators);
- given-up items growing; oldest pending item older than `oldest_pending_minutes`;
- a dependency reported down by a live instance (`daemon_status.dependencies`) for
  `dependency_down_minutes`; the database itself is watched by the process (see Alerter);
- whatever a daemon adds with `Daemon.alert_conditions(conn)` (a list of `Condition`).

State (table `alerts`, one row per daemon and condition): a condition that holds long enough
*starts* (one message), stays firing without messages (a reminder after `renotify_hours`), and
*resolves* after it has been clear for `resolve_minutes` (one message). Each transition happens
in one transaction holding the row lock (SELECT ... FOR UPDATE), so of two instances that see
the same thing at the same moment exactly one queues the message. Delivery is separate
(alert_delivery.py) and never runs on a daemon's work loop: the `Alerter` thread here evaluates
and delivers with its own connection and short timeouts.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from jobpipe import db, queue
from jobpipe.config import Config, check_value
from jobpipe.config_types import AlertsConfig
from jobpipe.errors import ConfigError, first_line
from jobpipe.logs import log_event
from jobpipe.logs import redact as redact_secrets
from jobpipe.settings import all_settings

log = logging.getLogger("jobpipe.alerting")

FAIL = "fail"
WARN = "warn"
FAILURE_OUTCOMES = (queue.FAILED, queue.GIVEN_UP)

# A daemon_status row older than this is a dead instance (it updates every status interval).
STALE_INSTANCE_S = 120.0


@dataclass(frozen=True)
class Condition:
    """One thing that can be wrong, evaluated now.

    `key` is unique within a daemon and stable ("failure_ratio:embed"); `title` names it for
    people ("failure ratio on stage embed"); `numbers` says what crossed which threshold, or the
    current value when it does not hold. `hold_s`: how long it must hold before it fires.
    """

    key: str
    title: str
    active: bool
    numbers: str
    severity: str = FAIL
    hold_s: float = 0.0
    detail: str = ""
    hint: str = ""
    stage: str | None = None


def age_condition(
    key: str, title: str, age_s: float | None, limit_s: float, *, what: str, hint: str = ""
) -> Condition:
    """A ready-made condition for daemon hooks: "the oldest X is older than Y" (e.g. the verifier's
    oldest unverified posting). `age_s` None means there is nothing to be old."""
    active = age_s is not None and age_s >= limit_s
    now_text = "none" if age_s is None else fmt_duration(age_s)
    return Condition(
        key,
        title,
        active,
        f"oldest {what} is {now_text} old (threshold {fmt_duration(limit_s)})",
        WARN,
        hint=hint,
    )


def count_condition(
    key: str, title: str, value: int, limit: int, *, what: str, severity: str = WARN, hint: str = ""
) -> Condition:
    """A ready-made condition for daemon hooks: "X is at least N" (e.g. truncated partitions)."""
    return Condition(
        key, title, value >= limit, f"{value:,} {what} (threshold {limit:,})", severity, hint=hint
    )


# ---------------------------------------------------------------------------------------- thresholds


# The tunables of the conditions are the alerts section itself (jobpipe.config_types), with a
# daemon's `alerts.overrides` applied by `thresholds`: no second copy of types or defaults.
Thresholds: TypeAlias = AlertsConfig

# The alerts.* settings `alerts.overrides.<daemon>` may change (the conditions' tunables; not
# the delivery settings, which are one per installation).
OVERRIDABLE = (
    "failure_ratio",
    "failure_min_count",
    "failure_window_s",
    "stall_minutes",
    "backlog_growing_minutes",
    "backlog_min_growth",
    "dependency_down_minutes",
    "given_up_min",
    "given_up_window_minutes",
    "oldest_pending_minutes",
    "renotify_hours",
    "resolve_minutes",
)


def thresholds(cfg: Config, daemon: str | None = None) -> Thresholds:
    """Thresholds for `daemon` (None: the global ones). Overrides are checked like settings:
    an unknown key or a bad value is a ConfigError naming `alerts.overrides.<daemon>.<key>`."""
    overrides = validate_overrides(cfg.alerts.overrides)
    return replace(cfg.alerts, **overrides.get(daemon or "", {}))


def validate_overrides(raw: Any) -> dict[str, dict[str, Any]]:
    """`alerts.overrides` as {daemon: {threshold: value}}, every value checked like its setting."""
    if not isinstance(raw, dict):
        raise ConfigError("alerts.overrides must be a mapping {daemon: {setting: value}}")
    registry = all_settings()
    out: dict[str, dict[str, Any]] = {}
    for daemon, body in raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"alerts.overrides.{daemon} must be a mapping of alert settings")
        out[str(daemon)] = {}
        for key, value in body.items():
            if key not in OVERRIDABLE:
                raise ConfigError(
                    f"alerts.overrides.{daemon}.{key}: not an overridable alert setting "
                    f"(one of {', '.join(OVERRIDABLE)})"
                )
            out[str(daemon)][key] = check_value(
                registry[f"alerts.{key}"], value, f"alerts.overrides.{daemon}"
            )
    return out


# ---------------------------------------------------------------------------------------- facts


@dataclass
class StageFacts:
    """What the database says about one stage now (one query per concern, for all stages)."""

    stage: str
    due: int = 0
    scheduled: int = 0
    running: int = 0
    given_up: int = 0
    oldest_pending_age_s: float | None = None
    due_waiting_long: bool = False  # some due item has waited stall_minutes
    done_window: int = 0  # completions in the failure window
    failed_window: int = 0  # failed attempts (failed + given_up) in the failure window
    done_stall: int = 0  # completions within stall_minutes
    given_up_recent: int = 0  # items given up within given_up_window_minutes
    done_10m: int = 0
    done_1h: int = 0
    failed_1h: int = 0
    given_up_1h: int = 0
    done_24h: int = 0
    failed_24h: int = 0
    given_up_24h: int = 0
    last_success: datetime | None = None
    # Failed attempts (failed + given up) in the minutes after the one of the last success (all
    # in the 24 h span when none succeeded): the run of failures nothing succeeded in between.
    # Minute buckets make it conservative: failures in the last success's own minute are left out.
    failed_since_success: int = 0
    samples: list[tuple[datetime, int]] = field(default_factory=list)  # backlog window, oldest first

    @property
    def pending(self) -> int:
        return self.due + self.scheduled


def gather(conn: Any, stages: Sequence[str] | None, th: Thresholds) -> dict[str, StageFacts]:
    """Facts for `stages` (None: every stage with live items, given-up items or recent counts).

    Cheap with any amount of history: live counts come from the partial indexes over live queue
    rows, outcome counts from `stage_counts` (one row per stage, minute and outcome), the last
    success from the index over finished rows.
    """
    live = queue.stats(conn, stages)
    span_s = max(86400.0, th.failure_window_s, th.stall_minutes * 60, th.given_up_window_minutes * 60)
    counts = _counts(conn, stages, th, span_s)
    names = sorted(set(live) | set(counts) | set(stages or ()))
    facts = {s: StageFacts(s) for s in names}
    for s, st in live.items():
        f = facts[s]
        f.due, f.scheduled, f.running, f.given_up = st.pending, st.scheduled, st.running, st.given_up
        f.oldest_pending_age_s = st.oldest_pending_age_s
    for s, row in counts.items():
        f = facts[s]
        (
            f.done_window,
            f.failed_window,
            f.done_stall,
            f.given_up_recent,
            f.done_10m,
            f.done_1h,
            f.failed_1h,
            f.given_up_1h,
            f.done_24h,
            f.failed_24h,
            f.given_up_24h,
        ) = (int(v) for v in row[:11])
        f.last_success = row[11]
    if names:
        # Exact last success from the finished-items index; stage_counts (minute precision) covers
        # work that is not queue items and history older than the queue's retention.
        for s, last in conn.execute(
            """SELECT s, (SELECT max(finished_at) FROM queue WHERE stage = s AND status = 'done')
                 FROM unnest(%s::text[]) AS s""",
            (names,),
        ).fetchall():
            if last is not None and (facts[s].last_success is None or last > facts[s].last_success):
                facts[s].last_success = last
        for s, streak in conn.execute(
            """SELECT t.s, coalesce((
                        SELECT sum(c.n) FROM stage_counts c
                         WHERE c.stage = t.s AND c.outcome IN ('failed', 'given_up')
                           AND c.minute >= date_trunc('minute', now() - make_interval(secs => %s))
                           AND (t.last IS NULL OR c.minute > date_trunc('minute', t.last))), 0)
                 FROM unnest(%s::text[], %s::timestamptz[]) AS t(s, last)""",
            (span_s, names, [facts[s].last_success for s in names]),
        ).fetchall():
            facts[s].failed_since_success = int(streak)
        waiting = [s for s in names if facts[s].due > 0 and facts[s].done_stall == 0]
        if waiting:
            for s, long_wait in conn.execute(
                """SELECT s, EXISTS (SELECT 1 FROM queue WHERE stage = s AND status = 'pending'
                                       AND run_after <= now() - make_interval(secs => %s))
                     FROM unnest(%s::text[]) AS s""",
                (th.stall_minutes * 60, waiting),
            ).fetchall():
                facts[s].due_waiting_long = bool(long_wait)
        window = th.backlog_growing_minutes * 60
        for s, at, pending in conn.execute(
            """SELECT stage, at, pending FROM alert_samples
                WHERE stage = ANY(%s) AND at >= now() - make_interval(secs => %s) ORDER BY stage, at""",
            (names, window * 1.1 + 60),
        ).fetchall():
            facts[s].samples.append((at, int(pending)))
    return facts


def _counts(
    conn: Any, stages: Sequence[str] | None, th: Thresholds, span_s: float
) -> dict[str, tuple[Any, ...]]:
    # Minute buckets: "the last N seconds" starts at the bucket containing now - N.
    def w(seconds: float) -> str:
        return f"date_trunc('minute', now() - make_interval(secs => {float(seconds)!r}))"

    sql = f"""
        SELECT stage,
               coalesce(sum(n) FILTER (WHERE NOT f AND minute >= {w(th.failure_window_s)}), 0),
               coalesce(sum(n) FILTER (WHERE f AND minute >= {w(th.failure_window_s)}), 0),
               coalesce(sum(n) FILTER (WHERE NOT f AND minute >= {w(th.stall_minutes * 60)}), 0),
               coalesce(sum(n) FILTER (WHERE outcome = 'given_up'
                                         AND minute >= {w(th.given_up_window_minutes * 60)}), 0),
               coalesce(sum(n) FILTER (WHERE NOT f AND minute >= {w(600)}), 0),
               coalesce(sum(n) FILTER (WHERE NOT f AND minute >= {w(3600)}), 0),
               coalesce(sum(n) FILTER (WHERE f AND minute >= {w(3600)}), 0),
               coalesce(sum(n) FILTER (WHERE outcome = 'given_up' AND minute >= {w(3600)}), 0),
               coalesce(sum(n) FILTER (WHERE NOT f AND minute >= {w(86400)}), 0),
               coalesce(sum(n) FILTER (WHERE f AND minute >= {w(86400)}), 0),
               coalesce(sum(n) FILTER (WHERE outcome = 'given_up' AND minute >= {w(86400)}), 0),
               max(minute) FILTER (WHERE NOT f)
          FROM (SELECT stage, minute, n, outcome, outcome IN ('failed', 'given_up') AS f
                  FROM stage_counts
                 WHERE minute >= {w(span_s)} AND (%(all)s OR stage = ANY(%(stages)s))) s
         GROUP BY stage
    """
    rows = conn.execute(sql, {"all": stages is None, "stages": list(stages or [])}).fetchall()  # type: ignore[arg-type]
    return {r[0]: tuple(r[1:]) for r in rows}


def record_samples(
    conn: Any, daemon: str, facts: dict[str, StageFacts], min_gap_s: float, keep_s: float
) -> None:
    """Add one pending-count sample per stage (skipped when another instance sampled within
    `min_gap_s`) and drop samples older than `keep_s`."""
    if not facts:
        return
    names = list(facts)
    conn.execute(
        """INSERT INTO alert_samples (stage, at, daemon, pending)
           SELECT s, clock_timestamp(), %s, p FROM unnest(%s::text[], %s::bigint[]) AS t(s, p)
            WHERE NOT EXISTS (SELECT 1 FROM alert_samples a WHERE a.stage = t.s
                                AND a.at > now() - make_interval(secs => %s))
           ON CONFLICT DO NOTHING""",
        (daemon, names, [facts[s].pending for s in names], min_gap_s),
    )
    conn.execute(
        "DELETE FROM alert_samples WHERE stage = ANY(%s) AND at < now() - make_interval(secs => %s)",
        (names, keep_s),
    )


# ---------------------------------------------------------------------------------------- conditions


def stage_conditions(f: StageFacts, th: Thresholds) -> list[Condition]:
    """The built-in conditions of one stage (also the basis of `jobpipe health`'s verdicts)."""
    s = f.stage
    out: list[Condition] = []
    total = f.done_window + f.failed_window
    ratio = f.failed_window / total if total else 0.0
    win = fmt_duration(th.failure_window_s)
    rule = f"fires at >= {th.failure_ratio:.0%} of at least {th.failure_min_count}"
    out.append(
        Condition(
            f"failure_ratio:{s}",
            f"failure ratio on stage {s}",
            total >= th.failure_min_count and total > 0 and ratio >= th.failure_ratio,
            f"{f.failed_window:,} of {total:,} processed failed in the last {win} ({ratio:.0%}; {rule})",
            FAIL,
            hint=f"jobpipe queue stats; once the cause is fixed: jobpipe queue requeue {s}",
            stage=s,
        )
    )
    streak = f.failed_since_success
    since = (
        f"since the last success at {fmt_time(f.last_success)}" if f.last_success else "and none succeeded"
    )
    out.append(
        Condition(
            f"failure_streak:{s}",
            f"every recent item fails on stage {s}",
            # The ratio over the window is diluted by successes that are over: a run of failures
            # with nothing succeeding in between is the stage failing now, whatever came before.
            # Not while the ratio fires: one alert for one cause.
            streak >= th.failure_min_count and not out[0].active,
            f"{streak:,} failed attempts in a row {since} (fires at {th.failure_min_count:,})",
            FAIL,
            hint=f"jobpipe queue stats; once the cause is fixed: jobpipe queue requeue {s}",
            stage=s,
        )
    )
    stall_m = th.stall_minutes
    stalled = f.due > 0 and f.done_stall == 0 and f.due_waiting_long
    out.append(
        Condition(
            f"stall:{s}",
            f"no progress on stage {s}",
            stalled,
            f"{f.due:,} due, {f.running:,} in flight, {f.done_stall:,} completed in the last "
            f"{fmt_duration(stall_m * 60)} (fires when due work waits {fmt_duration(stall_m * 60)} "
            "with none completed)",
            FAIL,
            hint="is the daemon running and its dependency up? systemctl status 'jobpipe@*'",
            stage=s,
        )
    )
    out.append(backlog_condition(f, th))
    out.append(
        Condition(
            f"given_up:{s}",
            f"given-up items on stage {s}",
            f.given_up_recent >= th.given_up_min,
            f"{f.given_up_recent:,} given up in the last {fmt_duration(th.given_up_window_minutes * 60)} "
            f"({f.given_up:,} in total; fires at {th.given_up_min:,})",
            WARN,
            hint=f"after fixing the cause: jobpipe queue requeue {s}",
            stage=s,
        )
    )
    age = f.oldest_pending_age_s
    limit = th.oldest_pending_minutes * 60
    out.append(
        Condition(
            f"oldest_pending:{s}",
            f"old pending work on stage {s}",
            age is not None and age >= limit,
            f"oldest pending item is {fmt_duration(age) if age is not None else 'none'} old "
            f"({f.pending:,} pending; fires at {fmt_duration(limit)})",
            WARN,
            stage=s,
        )
    )
    return out


def backlog_condition(f: StageFacts, th: Thresholds) -> Condition:
    """Growing = the pending count rose from each quarter of the window to the next, and by at
    least `backlog_min_growth` overall. A burst that is being worked off (16,000 postings after a
    weekend) rises once and then falls, so it does not count."""
    window = th.backlog_growing_minutes * 60
    key, title = f"backlog:{f.stage}", f"growing backlog on stage {f.stage}"
    rule = f"fires when rising for {fmt_duration(window)} by at least {th.backlog_min_growth:,}"
    samples = f.samples
    if len(samples) < 2:
        return Condition(key, title, False, f"{f.pending:,} pending ({rule})", WARN, stage=f.stage)
    end = samples[-1][0]
    start_at = end - timedelta(seconds=window)
    if samples[0][0] > start_at + timedelta(seconds=window * 0.1):
        # Not enough history yet (a fresh start): never guess.
        return Condition(key, title, False, f"{f.pending:,} pending ({rule})", WARN, stage=f.stage)
    marks = [start_at + timedelta(seconds=window * q / 4) for q in range(5)]
    points: list[int] = []
    for m in marks:
        # The sample closest to each quarter mark.
        points.append(min(samples, key=lambda s: abs((s[0] - m).total_seconds()))[1])
    rising = all(b > a for a, b in itertools.pairwise(points))
    grew = points[-1] - points[0]
    active = rising and grew >= th.backlog_min_growth
    numbers = f"pending {' -> '.join(f'{p:,}' for p in points)} over {fmt_duration(window)} ({rule})"
    return Condition(
        key,
        title,
        active,
        numbers,
        WARN,
        hint="more workers or instances? jobpipe health shows the rate",
        stage=f.stage,
    )


@dataclass(frozen=True)
class Instance:
    instance: str
    host: str
    seen_at: datetime
    status: str
    dependencies: dict[str, bool]


def instances(conn: Any, daemon: str | None = None) -> list[Instance]:
    """Live instances (heartbeat within STALE_INSTANCE_S) from daemon_status."""
    rows = conn.execute(
        """SELECT daemon, instance, host, seen_at, coalesce(status, ''), dependencies FROM daemon_status
            WHERE seen_at > now() - make_interval(secs => %s) AND (%s::text IS NULL OR daemon = %s)
            ORDER BY daemon, instance""",
        (STALE_INSTANCE_S, daemon, daemon),
    ).fetchall()
    return [Instance(r[1], r[2], r[3], r[4], dict(r[5] or {})) for r in rows]


def dependency_conditions(insts: Sequence[Instance], deps: Sequence[str], th: Thresholds) -> list[Condition]:
    """One condition per dependency (the database excepted: a process that cannot reach it cannot
    read this either; the Alerter watches it locally)."""
    out = []
    for dep in deps:
        if dep == "database":
            continue
        down = [i for i in insts if i.dependencies.get(dep) is False]
        hold = th.dependency_down_minutes * 60
        detail = ""
        if down:
            errs = [i.status for i in down if i.status and i.status != "ok"]
            if errs:
                detail = f"last error: {redact_secrets(errs[0])[:200]}"
        out.append(
            Condition(
                f"dependency:{dep}",
                f"{dep} unreachable",
                bool(down),
                f"reported down by {len(down)} of {len(insts)} instance(s) "
                f"(fires after {fmt_duration(hold)} down)",
                FAIL,
                hold_s=hold,
                detail=detail,
                hint=dependency_hint(dep),
            )
        )
    return out


def last_error(conn: Any, stage: str, insts: Sequence[Instance] = ()) -> str:
    """The first line of the latest error of a stage (what a phone shows of the cause): a live
    instance's (the runner keeps "<stage>: <error>" in daemon_status), else the newest failed or
    given-up item's. Credentials and registered secrets are cut out."""
    for i in insts:
        if i.status.startswith(f"{stage}: "):
            return _first_line(i.status[len(stage) + 2 :])
    row = conn.execute(
        """(SELECT last_error, updated_at FROM queue
             WHERE stage = %(s)s AND status = 'given_up' AND last_error IS NOT NULL
             ORDER BY updated_at DESC LIMIT 1)
           UNION ALL
           (SELECT last_error, updated_at FROM queue
             WHERE stage = %(s)s AND status = 'pending' AND attempts > 0 AND last_error IS NOT NULL
             ORDER BY updated_at DESC LIMIT 1)
           ORDER BY updated_at DESC LIMIT 1""",
        {"s": stage},
    ).fetchone()
    return _first_line(row[0]) if row else ""


def _first_line(text: str) -> str:
    lines = redact_secrets(text).strip().splitlines()
    return lines[0][:300] if lines else ""


def dependency_hint(dep: str) -> str:
    return {
        "ollama": "is the model server up? systemctl status ollama; curl <ollama url>/api/version",
        "ba_api": "is the BA API reachable from this host? jobpipe health",
        "database": "systemctl status postgresql (or jobpipe db status)",
    }.get(dep, f"is {dep} up?")


# ---------------------------------------------------------------------------------------- state


@dataclass
class Transition:
    key: str
    event: str  # fired, resolved, reminder
    numbers: str


def apply(
    conn: Any,
    daemon: str,
    host: str,
    conditions: Sequence[Condition],
    th: Thresholds,
    *,
    deliver: bool,
) -> list[Transition]:
    """Move each condition's row through pending -> firing -> resolved; queue the messages.

    `deliver` False (alerts.channel none): state is kept and shown, messages are marked disabled.
    One short transaction per condition that needs a change, each holding its row lock.
    """
    existing = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT condition, firing, active_since, clear_since FROM alerts WHERE daemon = %s", (daemon,)
        ).fetchall()
    }
    out: list[Transition] = []
    for c in conditions:
        row = existing.get(c.key)
        if not c.active and (row is None or (not row[0] and row[1] is None)):
            continue  # nothing holds and nothing was pending: no write
        t = _transition(conn, daemon, host, c, th, deliver)
        if t is not None:
            out.append(t)
            log_event(
                log,
                f"alert_{t.event}",
                level="warning" if t.event == "fired" else "info",
                alert_daemon=daemon,
                condition=c.key,
                numbers=c.numbers,
            )
    return out


def _transition(
    conn: Any, daemon: str, host: str, c: Condition, th: Thresholds, deliver: bool
) -> Transition | None:
    delivery = "pending" if deliver else "disabled"
    with conn.transaction():
        if c.active:
            conn.execute(
                """INSERT INTO alerts (daemon, condition, firing, since, severity, summary, host)
                   VALUES (%s, %s, false, now(), %s, %s, %s) ON CONFLICT DO NOTHING""",
                (daemon, c.key, c.severity, c.title, host),
            )
        row = conn.execute(
            """SELECT firing, active_since, clear_since, notified_at, delivery, since, now()
                 FROM alerts WHERE daemon = %s AND condition = %s FOR UPDATE""",
            (daemon, c.key),
        ).fetchone()
        if row is None:
            return None
        firing, active_since, clear_since, notified_at, cur_delivery, _since, now = row
        key = (daemon, c.key)
        if c.active:
            if not firing:
                active_since = active_since or now
                if (now - active_since).total_seconds() < c.hold_s:
                    conn.execute(
                        """UPDATE alerts SET active_since = %s, last_value = %s, updated_at = now()
                            WHERE daemon = %s AND condition = %s""",
                        (active_since, c.numbers, *key),
                    )
                    return None
                conn.execute(
                    """UPDATE alerts SET firing = true, since = %s, resolved_at = NULL, active_since = NULL,
                              clear_since = NULL, severity = %s, summary = %s, last_value = %s, detail = %s,
                              hint = %s, host = %s, notified_at = NULL,
                              msg_kind = 'start', msg_seq = msg_seq + 1, delivery = %s,
                              next_delivery_at = now(), delivery_attempts = 0, delivery_error = NULL,
                              updated_at = now()
                        WHERE daemon = %s AND condition = %s""",
                    (active_since, c.severity, c.title, c.numbers, c.detail, c.hint, host, delivery, *key),
                )
                return Transition(c.key, "fired", c.numbers)
            reminder = (
                cur_delivery in ("sent", "ambiguous")
                and notified_at is not None
                and (now - notified_at).total_seconds() >= th.renotify_hours * 3600
            )
            conn.execute(
                """UPDATE alerts SET clear_since = NULL, last_value = %s, detail = %s, updated_at = now()
                    WHERE daemon = %s AND condition = %s""",
                (c.numbers, c.detail or None, *key),
            )
            if reminder:
                _queue(conn, key, "reminder", delivery)
                return Transition(c.key, "reminder", c.numbers)
            return None
        # not active
        if not firing:
            conn.execute(
                """UPDATE alerts SET active_since = NULL, updated_at = now()
                    WHERE daemon = %s AND condition = %s""",
                key,
            )
            return None
        clear_since = clear_since or now
        if (now - clear_since).total_seconds() < th.resolve_minutes * 60:
            conn.execute(
                """UPDATE alerts SET clear_since = %s, last_value = %s, updated_at = now()
                    WHERE daemon = %s AND condition = %s""",
                (clear_since, c.numbers, *key),
            )
            return None
        # A start that never went out (gateway down, channel off) still gets its one message:
        # the resolved one says it fired, from when to when.
        new_delivery = delivery if cur_delivery != "disabled" else "disabled"
        conn.execute(
            """UPDATE alerts SET firing = false, resolved_at = now(), clear_since = NULL, active_since = NULL,
                      last_value = %s, msg_kind = 'resolved', msg_seq = msg_seq + 1, delivery = %s,
                      next_delivery_at = now(), delivery_attempts = 0, delivery_error = NULL,
                      updated_at = now()
                WHERE daemon = %s AND condition = %s""",
            (c.numbers, new_delivery, *key),
        )
        return Transition(c.key, "resolved", c.numbers)


def _queue(conn: Any, key: tuple[str, str], kind: str, delivery: str) -> None:
    conn.execute(
        """UPDATE alerts SET msg_kind = %s, msg_seq = msg_seq + 1, delivery = %s, next_delivery_at = now(),
                  delivery_attempts = 0, delivery_error = NULL, updated_at = now()
            WHERE daemon = %s AND condition = %s""",
        (kind, delivery, *key),
    )


# ---------------------------------------------------------------------------------------- messages


def render_message(rows: Sequence[dict[str, Any]]) -> str:
    """Plain text: host and daemon first, then what crossed which threshold, then what to run.

    `rows` are alert rows of one daemon with a message queued (see alert_delivery.claim); several
    rows (conditions that changed together) become one message.
    """
    first = rows[0]
    daemon, host = first["daemon"], first.get("host") or socket.gethostname()
    lines: list[str] = []
    if len(rows) == 1:
        lines.append(f"{host} {daemon}: {_headline(first)}")
        lines.append(first.get("last_value") or "")
    else:
        lines.append(f"{host} {daemon}: {len(rows)} alerts")
        for r in rows:
            lines.append(f"{_headline(r)}: {r.get('last_value') or ''}")
    for r in rows:
        if r.get("detail") and r["msg_kind"] != "resolved":
            lines.append(r["detail"])
    hints = list(dict.fromkeys(r["hint"] for r in rows if r.get("hint") and r["msg_kind"] != "resolved"))
    unit = f"jobpipe@{daemon}" if "@" not in daemon else daemon
    lines.append(f"Run: jobpipe health; journalctl -u {unit} --since -1h")
    lines += [f"Then: {h}" for h in hints]
    return "\n".join(line for line in lines if line)


def _headline(r: dict[str, Any]) -> str:
    kind, title = r["msg_kind"], r.get("summary") or r["condition"]
    since: datetime | None = r.get("since")
    if kind == "start":
        return f"FIRING {title} (since {fmt_time(since)})"
    if kind == "reminder":
        return f"STILL FIRING {title} (since {fmt_time(since)}, {fmt_duration(_age(since))})"
    if kind == "unit_failed":
        return f"FAILED {title}"
    ended: datetime | None = r.get("resolved_at")
    span = f"{fmt_time(since)} to {fmt_time(ended)}"
    announced = r.get("notified_at") is not None and since is not None and r["notified_at"] >= since
    if announced:
        return f"RESOLVED {title} (was firing {span})"
    return f"RESOLVED {title} (fired {span}; the start could not be delivered)"


def _age(at: datetime | None) -> float:
    return 0.0 if at is None else max(0.0, time.time() - at.timestamp())


def fmt_time(at: datetime | None) -> str:
    if at is None:
        return "?"
    local = at.astimezone()
    fmt = "%H:%M %Z" if abs(time.time() - at.timestamp()) < 20 * 3600 else "%Y-%m-%d %H:%M %Z"
    return local.strftime(fmt)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s" if s >= 1 or s == 0 else f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


# ---------------------------------------------------------------------------------------- the thread


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
        from jobpipe import alert_delivery

        self.daemon = daemon
        self.cfg = cfg
        self.th = thresholds(cfg, daemon)
        self.connect = connect
        self.stages = list(stages)
        self.dependencies = list(dependencies)
        self.hooks = hooks
        self.metrics = metrics
        self.host = host or socket.gethostname()
        alert_delivery.register_secrets(cfg)
        if gateway is None and cfg.alerts.channel != "none":
            gateway = alert_delivery.gateway_from_config(cfg)
        self.gateway = gateway
        self.deliverer = alert_delivery.Deliverer(gateway, cfg, metrics=metrics)
        self.db_watch = alert_delivery.DatabaseWatch(
            daemon,
            self.host,
            gateway,
            self.th.dependency_down_minutes * 60,
            alert_delivery.Latch(
                latch_path if latch_path is not None else alert_delivery.default_latch_path(cfg)
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
            from jobpipe.signal import explain

            log_event(log, "signal_gateway_check_failed", level="warning", explain=explain(res))
