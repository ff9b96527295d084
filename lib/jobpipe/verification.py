"""Keeping every active posting verified: the background sweep, on-demand requests, staleness.

A posting is "unverified since" its verified_at, or its first_seen_at when it was never verified.
It is stale once that is older than `verifier.max_age_h`.

The sweep (called from the verifier's loop) enqueues stale postings for stage 'verify':
- order: never-verified first (least recently seen in a crawl first), then those not seen in a crawl
  within max_age either, then the rest; within each, longest unverified first. Each part is a
  range of the postings_verify index read in order, so a sweep costs O(its budget), not O(backlog);
- rate: a token bucket of `sweep_per_minute` shared by all instances through the one-row table
  verifier_sweep (row-locked; database clock), and at most `sweep_per_minute` background items
  live at once, so a large backlog is spread out instead of being dumped into the queue;
- never re-enqueues a posting that already has a live item (pending or running, on-demand
  included), nor one whose check was given up within `given_up_retry_h` (that cycle is over); after
  that, it is swept again and its given-up item is revived - nothing stays stuck forever.

On-demand: `request(conn, ids)` (the CLI `jobpipe verify`) and the SQL function
jobpipe_request_verify(id) enqueue with priority ON_DEMAND_PRIORITY, which the claim order serves
before any background item; the enqueue NOTIFYs the daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobpipe import db, queue
from jobpipe.db import Conn
from jobpipe.text import parse_int

STAGE = "verify"
ON_DEMAND_PRIORITY = 10  # the same as jobpipe_request_verify() in the schema
BACKGROUND_PRIORITY = 0

# ORDER BY spells out the index postings_verify (verified_at NULLS FIRST, last_seen_at) exactly:
# then every part is an ordered index scan that stops after LIMIT rows.
_CANDIDATES = """
WITH live AS (
    SELECT subject FROM queue WHERE stage = 'verify' AND status IN ('pending', 'running')
),
recently_given_up AS (
    SELECT subject FROM queue
     WHERE stage = 'verify' AND status = 'given_up'
       AND finished_at > now() - make_interval(secs => %(retry_s)s)
)
(SELECT p.id FROM postings p
  WHERE p.active AND p.verified_at IS NULL AND p.first_seen_at < now() - make_interval(secs => %(age_s)s)
    AND p.id NOT IN (SELECT subject FROM live)
    AND p.id NOT IN (SELECT subject FROM recently_given_up)
  ORDER BY p.verified_at NULLS FIRST, p.last_seen_at
  LIMIT %(n)s)
UNION ALL
(SELECT p.id FROM postings p
  WHERE p.active AND p.verified_at < now() - make_interval(secs => %(age_s)s)
    AND p.last_seen_at < now() - make_interval(secs => %(age_s)s)
    AND p.id NOT IN (SELECT subject FROM live)
    AND p.id NOT IN (SELECT subject FROM recently_given_up)
  ORDER BY p.verified_at NULLS FIRST, p.last_seen_at
  LIMIT %(n)s)
UNION ALL
(SELECT p.id FROM postings p
  WHERE p.active AND p.verified_at < now() - make_interval(secs => %(age_s)s)
    AND p.last_seen_at >= now() - make_interval(secs => %(age_s)s)
    AND p.id NOT IN (SELECT subject FROM live)
    AND p.id NOT IN (SELECT subject FROM recently_given_up)
  ORDER BY p.verified_at NULLS FIRST, p.last_seen_at
  LIMIT %(n)s)
LIMIT %(n)s
"""


@dataclass(frozen=True, slots=True)
class SweepResult:
    enqueued: int
    budget: int  # what the rate allowed this time (0: nothing due yet, or another instance sweeping)
    live_background: int


def sweep(conn: Conn, *, max_age_h: float, per_minute: int, given_up_retry_h: float) -> SweepResult:
    """Enqueue the next stale postings within the rate budget; one transaction.

    The budget is per_minute * (seconds since the last sweep) / 60, capped at one minute's worth,
    and further capped so that at most per_minute background items are live at once.
    `conn` must be in autocommit mode (the function owns the transaction).
    """
    with conn.transaction():
        row = conn.execute(
            """SELECT least(60.0, extract(epoch FROM now() - last_at)) FROM verifier_sweep
                FOR UPDATE SKIP LOCKED"""
        ).fetchone()
        if row is None:
            return SweepResult(0, 0, 0)  # another instance is sweeping right now
        tokens = int(per_minute * float(row[0]) / 60.0)
        live = db.one(
            conn,
            """SELECT count(*) FROM queue WHERE stage = %s AND status IN ('pending', 'running')
                 AND priority <= %s""",
            (STAGE, BACKGROUND_PRIORITY),
        )[0]
        budget = max(0, min(tokens, per_minute - live))
        if budget < 1:
            return SweepResult(0, 0, live)  # keep last_at: the tokens keep accumulating
        ids = [
            r[0]
            for r in conn.execute(
                _CANDIDATES, {"age_s": max_age_h * 3600.0, "retry_s": given_up_retry_h * 3600.0, "n": budget}
            ).fetchall()
        ]
        n = 0
        if ids:
            n = queue.enqueue(conn, STAGE, ids, priority=BACKGROUND_PRIORITY)
            # A posting given up in an earlier cycle gets a fresh item now: drop its given-up row,
            # so it counts as given up no longer (the queue keeps one live item per subject).
            queue.requeue_given_up(conn, STAGE, ids)
        conn.execute("UPDATE verifier_sweep SET last_at = now(), enqueued = enqueued + %s", (n,))
    return SweepResult(n, budget, live + n)


def stale_pending(conn: Conn, *, max_age_h: float, given_up_retry_h: float) -> int:
    """1 when the sweep has something left to enqueue, else 0 (for `--once`)."""
    row = db.one(
        conn,
        f"SELECT EXISTS ({_CANDIDATES})",
        {"age_s": max_age_h * 3600.0, "retry_s": given_up_retry_h * 3600.0, "n": 1},
    )
    return int(bool(row[0]))


def oldest_unverified_age(conn: Conn) -> float | None:
    """Seconds since the least recently verified active posting was last verified (or first seen,
    if never); None when there are no active postings. One index probe (postings_unverified_since)."""
    row = conn.execute(
        """SELECT extract(epoch FROM now() - min(coalesce(verified_at, first_seen_at)))
             FROM postings WHERE active"""
    ).fetchone()
    return max(0.0, float(row[0])) if row and row[0] is not None else None


def oldest_unverified_age_s(conn: Conn) -> float:
    """`oldest_unverified_age`, 0 when there are no active postings (for the gauge)."""
    return oldest_unverified_age(conn) or 0.0


@dataclass(frozen=True, slots=True)
class Staleness:
    """The alert condition "an active posting has gone unverified for too long"."""

    oldest_age_s: float
    limit_s: float  # (max_age_h + alert_margin_h) in seconds

    @property
    def firing(self) -> bool:
        return self.oldest_age_s > self.limit_s

    @property
    def message(self) -> str:
        return (
            f"the oldest unverified active posting is {self.oldest_age_s / 3600:.1f} h old "
            f"(alert beyond {self.limit_s / 3600:.1f} h = max_age + alert_margin)"
        )


def alert_limit_s(max_age_h: float, alert_margin_h: float) -> float:
    return (max_age_h + alert_margin_h) * 3600.0


def staleness(conn: Conn, max_age_h: float, alert_margin_h: float) -> Staleness:
    """Evaluate the staleness condition now (for the verifier's gauge and the alerting)."""
    return Staleness(oldest_unverified_age_s(conn), alert_limit_s(max_age_h, alert_margin_h))


def request(conn: Conn, refs: Sequence[str]) -> tuple[list[int], list[str]]:
    """Enqueue on-demand checks for postings given by id or referenznummer (external id).

    Returns (posting ids enqueued, refs that match no posting). One NOTIFY wakes the verifier.
    """
    # parse_int, not isdigit: "²" is a digit to Python and no number to int() or PostgreSQL.
    ids = [n for r in refs if (n := parse_int(r)) is not None]
    externals = [r for r in refs if parse_int(r) is None]
    rows = conn.execute(
        """SELECT id::text, id FROM postings WHERE id = ANY(%s)
           UNION ALL
           SELECT external_id, id FROM postings WHERE external_id = ANY(%s)""",
        (ids, externals),
    ).fetchall()
    found = dict(rows)
    unknown = [r for r in refs if r not in found]
    targets = list(dict.fromkeys(found[r] for r in refs if r in found))
    if targets:
        queue.enqueue(conn, STAGE, targets, priority=ON_DEMAND_PRIORITY)
    return targets, unknown


def outcomes(conn: Conn, posting_ids: Sequence[int], since: Any) -> dict[int, tuple[str, str | None]]:
    """Latest verify item per posting created at or after `since`: {id: (status, outcome or error)}."""
    rows = conn.execute(
        """SELECT DISTINCT ON (subject) subject, status, coalesce(outcome, last_error)
             FROM queue WHERE stage = %s AND subject = ANY(%s) AND updated_at >= %s
            ORDER BY subject, id DESC""",
        (STAGE, list(posting_ids), since),
    ).fetchall()
    return {s: (st, o) for s, st, o in rows}
