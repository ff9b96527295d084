"""`jobpipe health`: one table per stage and a verdict that cannot be green while everything fails.

Per stage: pending (due and scheduled), in flight, done and failed in the last hour and 24 h,
given up (shown apart), rate, age of the oldest pending item, last success, and a verdict with
its reasons:

- FAIL: the failure ratio crossed alerts.failure_ratio with at least alerts.failure_min_count
  processed, in the alert window or the last hour; at least alerts.failure_min_count failures in a
  row with no success in between (older successes in the window do not dilute it); or in the
  last 24 h with nothing succeeding since (the predecessor's "0 success, 56 failed" nightly
  pattern, which is FAIL even when nothing is pending any more); or due work stalled.
- WARN: the same ratio over 24 h while the last hour is fine (recovered); failures too few to
  judge; a growing backlog; old pending work; items being given up; pending work and no live
  instance of the daemon that owns the stage.
- Given-up items alone never make a stage FAIL: they are finished work that needs a decision.

The same condition functions as the alerts (jobpipe.alerts.conditions) decide, so health and Signal agree.
Everything comes from live-row indexes and the per-minute counts: fast with any history (bench/health.py).
Exit code 0 / 1 / 2 for OK / WARN / FAIL.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from jobpipe import db
from jobpipe.alerts.conditions import (
    FAIL,
    STALE_INSTANCE_S,
    Instance,
    StageFacts,
    Thresholds,
    gather,
    last_error,
    stage_conditions,
    thresholds,
    validate_overrides,
)
from jobpipe.alerts.message import fmt_time
from jobpipe.config import Config
from jobpipe.db import Conn
from jobpipe.text import fmt_duration

OK_, WARN_, FAIL_ = "OK", "WARN", "FAIL"
_RANK = {OK_: 0, WARN_: 1, FAIL_: 2}
EXIT_CODES = {OK_: 0, WARN_: 1, FAIL_: 2}


@dataclass
class StageHealth:
    stage: str
    daemon: str | None
    verdict: str
    reasons: list[str]
    facts: StageFacts
    last_error: str = ""
    # Done outcomes (24 h) and failures by error kind (recent failed items), e.g. the extractor's
    # {"extracted": 40, "reused": 12, "invalid_json": 30}: what "done" and "failed" consist of.
    outcomes: dict[str, int] = field(default_factory=dict)


@dataclass
class Health:
    host: str
    generated_at: datetime
    verdict: str
    stages: list[StageHealth] = field(default_factory=list)
    daemons: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    channel: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # verdict reasons outside the stages
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def worst(*verdicts: str) -> str:
    return max(verdicts, key=lambda v: _RANK[v], default=OK_)


def stage_verdict(f: StageFacts, th: Thresholds) -> tuple[str, list[str]]:
    """OK / WARN / FAIL for one stage, with the reasons (worst first)."""
    fails: list[str] = []
    warns: list[str] = []
    streak: list[str] = []
    for c in stage_conditions(f, th):
        if c.active:
            target = streak if c.key.startswith("failure_streak:") else fails if c.severity == FAIL else warns
            target.append(f"{c.title}: {c.numbers}")
    ratio_hit = any(c.startswith("failure ratio") for c in fails)
    t1 = f.done_1h + f.failed_1h
    r1 = f.failed_1h / t1 if t1 else 0.0
    hour_bad = t1 >= th.failure_min_count and r1 >= th.failure_ratio
    if hour_bad and not ratio_hit:
        fails.append(
            f"{f.failed_1h:,} of {t1:,} processed failed in the last hour ({r1:.0%}; "
            f"fails at >= {th.failure_ratio:.0%} of at least {th.failure_min_count})"
        )
    t24 = f.done_24h + f.failed_24h
    r24 = f.failed_24h / t24 if t24 else 0.0
    if t24 >= th.failure_min_count and r24 >= th.failure_ratio and not hour_bad and not ratio_hit:
        text = f"{f.failed_24h:,} of {t24:,} processed failed in the last 24 h ({r24:.0%})"
        if f.done_1h > 0:
            warns.append(f"{text}; the last hour is better ({f.failed_1h:,} of {t1:,} failed)")
        elif f.done_24h == 0:
            fails.append(f"{text}: nothing succeeded")
        else:
            fails.append(f"{text}, and nothing succeeded in the last hour")
    if not hour_bad and f.failed_1h > 0 and t1 < th.failure_min_count and r1 >= th.failure_ratio:
        warns.append(
            f"{f.failed_1h:,} of {t1:,} processed failed in the last hour "
            f"(fewer than {th.failure_min_count} processed: too few to alert)"
        )
    # A failure streak is FAIL on its own; next to a reason that already says so it adds nothing.
    if streak and not fails:
        fails = streak
    if fails:
        return FAIL_, fails + warns
    if warns:
        return WARN_, warns
    return OK_, []


def collect(conn: Conn, cfg: Config, *, host: str | None = None) -> Health:
    """Everything `jobpipe health` shows, from one connection, in well under a second. A schema
    that is behind (the daemons refuse to run on it) is the verdict itself, not a traceback."""
    pending = [m.version for m in db.pending_migrations(conn)]
    if pending:
        return schema_behind(pending, host)
    t0 = time.perf_counter()
    base = thresholds(cfg)
    overrides = validate_overrides(cfg.alerts.overrides)
    owners: dict[str, str] = dict(
        conn.execute("SELECT DISTINCT ON (stage) stage, daemon FROM alert_samples ORDER BY stage, at DESC")
    )
    facts = gather(conn, None, base)
    # Stages of daemons with their own thresholds are measured again with those.
    by_daemon: dict[str, list[str]] = {}
    for s in facts:
        d = owners.get(s)
        if d is not None and overrides.get(d):
            by_daemon.setdefault(d, []).append(s)
    per_stage_th = dict.fromkeys(facts, base)
    for d, own_stages in by_daemon.items():
        th = thresholds(cfg, d)
        facts.update(gather(conn, own_stages, th))
        for s in own_stages:
            per_stage_th[s] = th

    now = db.one(conn, "SELECT now()")[0]
    status_rows = conn.execute(
        """SELECT daemon, instance, host, pid, started_at, seen_at, coalesce(status, ''), dependencies,
                  extract(epoch FROM now() - seen_at)
             FROM daemon_status ORDER BY daemon, instance"""
    ).fetchall()
    daemons: list[dict[str, Any]] = []
    live: set[str] = set()
    insts: list[Instance] = []
    for d, inst, h, pid, started, seen, status, deps, age in status_rows:
        alive = float(age) <= STALE_INSTANCE_S
        if alive:
            live.add(d)
            insts.append(Instance(inst, h, seen, status, dict(deps or {})))
        daemons.append(
            {
                "daemon": d,
                "instance": inst,
                "host": h,
                "pid": pid,
                "started_at": started,
                "seen_at": seen,
                "seen_s_ago": round(float(age), 1),
                "alive": alive,
                "status": status,
                "dependencies_down": sorted(k for k, v in (deps or {}).items() if v is False),
            }
        )

    stages: list[StageHealth] = []
    for s, f in facts.items():
        verdict, reasons = stage_verdict(f, per_stage_th[s])
        owner = owners.get(s)
        if owner and f.due > 0 and owner not in live:
            verdict = worst(verdict, WARN_)
            reasons.append(
                f"{f.due:,} due and no live instance of {owner} (systemctl status jobpipe@{owner})"
            )
        err = last_error(conn, s, insts) if f.failed_24h and verdict != OK_ else ""
        stages.append(StageHealth(s, owner, verdict, reasons, f, err, outcome_counts(conn, s, f)))

    alerts = [
        {
            "daemon": r[0],
            "condition": r[1],
            "severity": r[2],
            "title": r[3] or r[1],
            "value": r[4] or "",
            "since": r[5],
            "delivery": r[6],
            "delivery_error": r[7],
        }
        for r in conn.execute(
            """SELECT daemon, condition, severity, summary, last_value, since, delivery, delivery_error
                 FROM alerts WHERE firing ORDER BY since"""
        ).fetchall()
    ]
    problems: list[str] = []
    verdict = worst(*(st.verdict for st in stages))
    stage_keys = {
        f"{p}:{st.stage}"
        for st in stages
        for p in ("failure_ratio", "stall", "backlog", "given_up", "oldest_pending")
    }
    for a in alerts:
        if a["condition"] in stage_keys:
            continue  # the stage table already judges it from the same numbers
        level = FAIL_ if a["severity"] == FAIL else WARN_
        verdict = worst(verdict, level)
        problems.append(f"{a['daemon']}: {a['title']}: {a['value']}")
    channel = None
    row = conn.execute(
        "SELECT degraded_until, reason FROM alert_channel WHERE channel = 'signal' AND degraded_until > now()"
    ).fetchone()
    if row:
        channel = {"degraded_until": row[0], "reason": row[1]}
        verdict = worst(verdict, WARN_)
        problems.append(f"Signal alerts held back until {fmt_time(row[0])}: {row[1]}")
    return Health(
        host=host or socket.gethostname(),
        generated_at=now,
        verdict=verdict,
        stages=stages,
        daemons=daemons,
        alerts=alerts,
        channel=channel,
        problems=problems,
        elapsed_s=time.perf_counter() - t0,
    )


FAILURE_SAMPLE = 10_000  # failed items counted by kind at most (bounds the cost with a huge backlog)


def outcome_counts(conn: Conn, stage: str, f: StageFacts) -> dict[str, int]:
    """Done outcomes of the last 24 h from the per-minute counts, and, when something failed, the
    failures by kind: the runtime stores an item error as "<kind>: <message>", so the failed
    items (pending retry or given up; at most FAILURE_SAMPLE of them) say whether answers were
    invalid JSON, broke a schema, timed out... Nothing is asked when the stage did nothing."""
    out: dict[str, int] = {}
    if f.done_24h:
        for outcome, n in conn.execute(
            """SELECT outcome, sum(n)::bigint FROM stage_counts
                WHERE stage = %s AND minute >= now() - interval '24 hours'
                  AND outcome NOT IN ('failed', 'given_up') GROUP BY outcome ORDER BY 2 DESC""",
            (stage,),
        ):
            out[outcome] = int(n)
    if f.failed_24h or f.given_up:
        for kind, n in conn.execute(
            """SELECT split_part(last_error, ':', 1), count(*) FROM (
                   SELECT last_error FROM queue
                    WHERE stage = %s AND status IN ('pending', 'given_up') AND attempts > 0
                      AND last_error IS NOT NULL
                    LIMIT %s) AS failed
                GROUP BY 1 ORDER BY 2 DESC""",
            (stage, FAILURE_SAMPLE),
        ):
            if kind and len(kind) <= 40 and " " not in kind:  # a kind label, not a free-text error
                out[kind] = out.get(kind, 0) + int(n)
    return out


def database_down(error: str, host: str | None = None) -> Health:
    """The verdict when the database itself cannot be reached."""
    return Health(
        host=host or socket.gethostname(),
        generated_at=datetime.now().astimezone(),
        verdict=FAIL_,
        problems=[f"database unreachable: {error} (jobpipe db status; systemctl status postgresql)"],
    )


def schema_behind(pending: list[str], host: str | None = None) -> Health:
    """The verdict when the database answers but its schema is behind this release."""
    return Health(
        host=host or socket.gethostname(),
        generated_at=datetime.now().astimezone(),
        verdict=FAIL_,
        problems=[
            f"database schema behind: {len(pending)} migration(s) pending ({', '.join(pending)}); "
            "run `jobpipe migrate` (the daemons refuse to start until then)"
        ],
    )


# ---------------------------------------------------------------------------------------- output


def _n(v: int) -> str:
    return f"{v:,}"


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    return f"{fmt_time(at)} ({fmt_duration((now - at).total_seconds())} ago)"


def render_text(h: Health) -> str:
    out = [f"jobpipe health on {h.host} at {fmt_time(h.generated_at)}: {h.verdict}"]
    for p in h.problems:
        out.append(f"  ! {p}")
    if not h.stages and not h.problems:
        out.append("  no stage has work or history yet")
    for st in h.stages:
        f = st.facts
        owner = f" ({st.daemon})" if st.daemon else ""
        out.append("")
        out.append(f"stage {st.stage}{owner}: {st.verdict}")
        for r in st.reasons:
            out.append(f"  - {r}")
        rate = f.done_10m / 10.0
        rows = [
            ("pending", f"{_n(f.due)} due, {_n(f.scheduled)} scheduled for retry"),
            ("in flight", _n(f.running)),
            ("last 1 h", f"{_n(f.done_1h)} done, {_n(f.failed_1h)} failed"),
            ("last 24 h", f"{_n(f.done_24h)} done, {_n(f.failed_24h)} failed"),
            (
                "given up",
                f"{_n(f.given_up)} (+{_n(f.given_up_1h)} in 1 h, +{_n(f.given_up_24h)} in 24 h; "
                f"kept apart, `jobpipe queue requeue {st.stage}`)"
                if f.given_up
                else "0",
            ),
            ("rate", f"{rate:,.1f}/min (last 10 min)"),
            (
                "oldest pending",
                fmt_duration(f.oldest_pending_age_s) if f.oldest_pending_age_s is not None else "-",
            ),
            ("last success", _ago(f.last_success, h.generated_at)),
        ]
        if st.outcomes:
            rows.append(("outcomes", ", ".join(f"{k} {_n(v)}" for k, v in st.outcomes.items())))
        if st.last_error:
            rows.append(("last error", st.last_error))
        for k, v in rows:
            out.append(f"  {k:<15} {v}")
    if h.daemons:
        out.append("")
        out.append("daemons")
        for d in h.daemons:
            state = "alive" if d["alive"] else f"silent for {fmt_duration(d['seen_s_ago'])}"
            down = f", DOWN: {', '.join(d['dependencies_down'])}" if d["dependencies_down"] else ""
            status = f" - {d['status']}" if d["status"] and d["status"] != "ok" else ""
            out.append(f"  {d['daemon']:<12} {d['host']} pid {d['pid']}: {state}{down}{status}")
    if h.alerts:
        out.append("")
        out.append("alerts firing")
        for a in h.alerts:
            out.append(f"  {a['daemon']}/{a['condition']} since {fmt_time(a['since'])}: {a['value']}")
    out.append("")
    out.append(
        f"verdict {h.verdict} ({h.elapsed_s * 1000:.0f} ms); details: jobpipe alerts, jobpipe queue stats"
    )
    return "\n".join(out)


def to_json(h: Health) -> str:
    def conv(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    data = {
        "host": h.host,
        "generated_at": h.generated_at,
        "verdict": h.verdict,
        "exit_code": h.exit_code,
        "elapsed_s": round(h.elapsed_s, 4),
        "problems": h.problems,
        "stages": [
            {
                "stage": st.stage,
                "daemon": st.daemon,
                "verdict": st.verdict,
                "reasons": st.reasons,
                "last_error": st.last_error,
                "outcomes": st.outcomes,
                **{k: v for k, v in asdict(st.facts).items() if k not in ("stage", "samples")},
                "pending_total": st.facts.pending,
            }
            for st in h.stages
        ],
        "daemons": h.daemons,
        "alerts": h.alerts,
        "channel": h.channel,
    }
    return json.dumps(conv(data), indent=2, ensure_ascii=False)
