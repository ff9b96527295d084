"""Alert conditions: what can be wrong with a daemon, measured in PostgreSQL.

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

What becomes of a condition over time is jobpipe.alerts.state's; the message text
jobpipe.alerts.message's; delivery jobpipe.alerts.delivery's; the `Alerter` thread
(jobpipe.alerts.alerter) evaluates and delivers with its own connection and short timeouts, never
on a daemon's work loop.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from jobpipe import queue
from jobpipe.alerts.message import fmt_time
from jobpipe.config import Config, check_value
from jobpipe.errors import ConfigError
from jobpipe.logs import redact as redact_secrets
from jobpipe.settings import all_settings
from jobpipe.text import fmt_duration

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


@dataclass(frozen=True)
class Thresholds:
    """The tunables of the conditions (`alerts.*`), with a daemon's `alerts.overrides` applied."""

    failure_ratio: float = 0.5
    failure_min_count: int = 20
    failure_window_s: float = 900.0
    stall_minutes: float = 30.0
    backlog_growing_minutes: float = 120.0
    backlog_min_growth: int = 100
    dependency_down_minutes: float = 5.0
    given_up_min: int = 20
    given_up_window_minutes: float = 60.0
    oldest_pending_minutes: float = 1440.0
    renotify_hours: float = 24.0
    resolve_minutes: float = 5.0

    @classmethod
    def from_config(cls, cfg: Config, daemon: str | None = None) -> Thresholds:
        """Thresholds for `daemon` (None: the global ones). Overrides are checked like settings:
        an unknown key or a bad value is a ConfigError naming `alerts.overrides.<daemon>.<key>`."""
        names = [f.name for f in fields(cls)]
        values = {n: getattr(cfg.alerts, n) for n in names}
        overrides = validate_overrides(cfg.alerts.overrides)
        values.update(overrides.get(daemon or "", {}))
        return cls(**values)


def validate_overrides(raw: Any) -> dict[str, dict[str, Any]]:
    """`alerts.overrides` as {daemon: {threshold: value}}, every value checked like its setting."""
    if not isinstance(raw, dict):
        raise ConfigError("alerts.overrides must be a mapping {daemon: {setting: value}}")
    names = [f.name for f in fields(Thresholds)]
    registry = all_settings()
    out: dict[str, dict[str, Any]] = {}
    for daemon, body in raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"alerts.overrides.{daemon} must be a mapping of alert settings")
        out[str(daemon)] = {}
        for key, value in body.items():
            if key not in names:
                raise ConfigError(
                    f"alerts.overrides.{daemon}.{key}: not an overridable alert setting "
                    f"(one of {', '.join(names)})"
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
