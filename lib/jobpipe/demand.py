"""Daily demand snapshots: postings per (day, occupation, region), computed in one SQL statement.

What a row of day D says (D is a calendar day in the database session's time zone):
- active_postings: postings open at some time during D, i.e. first seen before D ended and not
  inactive before D began. Reconstructed from first_seen_at and inactive_since, so any past day can
  be (re)computed later (`jobpipe snapshot --since`); an inactive posting without inactive_since
  counts as ended when it was last seen.
- new_postings: of those, first seen during D;
- with_salary: of those, with salary information (the posting's current has_salary);
- ended_postings: of those, gone inactive during D.
Postings without an occupation count under occupation_id 0, without a region under 'UNKNOWN': they
are never dropped. A day without postings writes no rows (no invented zeros) but still records its
run in snapshot_runs with rows = 0.

Why it looks like this:
- Idempotent: a day is replaced (DELETE + INSERT) in one transaction; readers see the old day or
  the new one, never half or twice.
- Several instances: the work runs under a transaction-level advisory lock. The daemon *tries* it
  and skips when another instance holds it, then re-checks inside the lock whether the day was done
  meanwhile, so exactly one instance computes a day. The CLI waits for the lock instead.
- "Due" is decided by the database clock (localtimestamp), never the daemon host's: a host clock
  that jumps cannot skip or repeat a day. The day D is computed at `run_at` on D + 1 (a day is
  complete only once it is over); a run that started before D ended (a manual partial one) does
  not count as done, so the scheduled run replaces it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import date, timedelta
from datetime import time as dtime

from jobpipe import db
from jobpipe.db import Conn
from jobpipe.errors import ConfigError, UserError

# Advisory lock key (one for all demand snapshot work): "jp" + 0x0040 (the migration range).
SNAPSHOT_LOCK = 0x6A700040
UNKNOWN_OCCUPATION = 0
UNKNOWN_REGION = "UNKNOWN"

DONE = "done"
SKIPPED_LOCKED = "skipped_locked"  # another instance holds the lock
SKIPPED_PRESENT = "skipped_present"  # the day was completed meanwhile (by another instance)

_RUN_AT = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    day: date
    status: str  # done, skipped_locked, skipped_present
    rows: int = 0
    active_postings: int = 0
    seconds: float = 0.0


def parse_run_at(value: str, key: str = "snapshotter.run_at") -> dtime:
    """'HH:MM' -> time; ConfigError naming the key otherwise."""
    m = _RUN_AT.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{key} = {value!r} is not a time of day HH:MM (e.g. '03:00')")
    return dtime(int(m.group(1)), int(m.group(2)))


def db_today(conn: Conn) -> date:
    """Today by the database clock (session time zone)."""
    return db.one(conn, "SELECT localtimestamp::date")[0]


def latest_due_day(conn: Conn, run_at: dtime) -> date:
    """The newest day whose snapshot time has come: yesterday once `run_at` passed today (database
    clock), else the day before yesterday."""
    today, passed = db.one(conn, "SELECT localtimestamp::date, localtimestamp::time >= %s::time", (run_at,))
    return today - timedelta(days=1 if passed else 2)


def missing_days(conn: Conn, first: date, last: date) -> list[date]:
    """Days in [first, last] without a complete run (none, or one that started before the day ended)."""
    if last < first:
        return []
    rows = conn.execute(
        """
        SELECT d::date FROM generate_series(%s::date, %s::date, interval '1 day') AS d
         WHERE NOT EXISTS (SELECT 1 FROM snapshot_runs r
                            WHERE r.day = d::date AND r.started_at >= (d::date + 1)::timestamptz)
         ORDER BY 1
        """,
        (first, last),
    ).fetchall()
    return [r[0] for r in rows]


def due_days(conn: Conn, run_at: dtime, catch_up_days: int) -> list[date]:
    """Days the scheduler should compute now, oldest first: the latest due day and up to
    `catch_up_days - 1` days before it that were missed (daemon down), but none before the first
    posting was seen (there is nothing to reconstruct there)."""
    last = latest_due_day(conn, run_at)
    first = last - timedelta(days=max(1, catch_up_days) - 1)
    earliest = db.one(conn, "SELECT min(first_seen_at)::date FROM postings")[0]
    if earliest is None or earliest > first:
        first = last if earliest is None else min(earliest, last)
    return missing_days(conn, first, last)


_SNAPSHOT_SQL = """
WITH b AS (SELECT %(day)s::date::timestamptz AS d0, (%(day)s::date + 1)::timestamptz AS d1),
live AS (
    SELECT coalesce(p.occupation_id, 0) AS occupation_id,
           coalesce(nullif(btrim(p.region), ''), 'UNKNOWN') AS region,
           p.first_seen_at >= b.d0 AS is_new,
           p.has_salary,
           CASE WHEN NOT p.active THEN coalesce(p.inactive_since, p.last_seen_at) END AS ended_at,
           b.d1
      FROM postings p CROSS JOIN b
     WHERE p.first_seen_at < b.d1
       AND (p.active OR coalesce(p.inactive_since, p.last_seen_at) >= b.d0)
),
ins AS (
    INSERT INTO demand_snapshots (day, occupation_id, region, active_postings, new_postings, with_salary,
                                  ended_postings)
    SELECT %(day)s::date, occupation_id, region, count(*), count(*) FILTER (WHERE is_new),
           count(*) FILTER (WHERE has_salary), count(*) FILTER (WHERE ended_at < d1)
      FROM live GROUP BY occupation_id, region
    RETURNING active_postings
)
SELECT count(*), coalesce(sum(active_postings), 0) FROM ins
"""


def snapshot_day(
    conn: Conn,
    day: date,
    *,
    only_if_missing: bool = False,
    wait: bool = False,
    statement_timeout_s: float | None = None,
) -> SnapshotResult:
    """Compute (or recompute) day `day` in one transaction.

    `only_if_missing`: skip when a complete run of the day exists (checked inside the lock).
    `wait`: wait for the lock (CLI) instead of skipping when another instance holds it (daemon).
    `conn` must be in autocommit mode (the function owns the transaction).
    """
    started = time.perf_counter()
    with conn.transaction():
        if wait:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SNAPSHOT_LOCK,))
        elif not db.one(conn, "SELECT pg_try_advisory_xact_lock(%s)", (SNAPSHOT_LOCK,))[0]:
            return SnapshotResult(day, SKIPPED_LOCKED)
        if only_if_missing and not missing_days(conn, day, day):
            return SnapshotResult(day, SKIPPED_PRESENT)
        if statement_timeout_s:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", (f"{int(statement_timeout_s * 1000)}",)
            )
        conn.execute("DELETE FROM demand_snapshots WHERE day = %s", (day,))
        rows, active = db.one(conn, _SNAPSHOT_SQL, {"day": day})
        seconds = time.perf_counter() - started
        conn.execute(
            """INSERT INTO snapshot_runs (day, rows, started_at, finished_at, active_postings, seconds)
               VALUES (%s, %s, now(), clock_timestamp(), %s, %s)
               ON CONFLICT (day) DO UPDATE SET rows = excluded.rows, started_at = excluded.started_at,
                      finished_at = excluded.finished_at, active_postings = excluded.active_postings,
                      seconds = excluded.seconds""",
            (day, rows, active, seconds),
        )
    return SnapshotResult(day, DONE, int(rows), int(active), time.perf_counter() - started)


def check_day(conn: Conn, day: date) -> None:
    """Refuse a day that has not begun yet (database clock): there is nothing to count."""
    today = db_today(conn)
    if day > today:
        raise UserError(f"{day} is in the future (today is {today} by the database clock)")


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def last_complete_day(conn: Conn) -> tuple[date, int] | None:
    """The newest day with a complete run and its row count (for metrics and STATUS)."""
    row = conn.execute(
        """SELECT day, rows FROM snapshot_runs WHERE started_at >= (day + 1)::timestamptz
            ORDER BY day DESC LIMIT 1"""
    ).fetchone()
    return (row[0], row[1]) if row else None
