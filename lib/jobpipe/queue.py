"""The PostgreSQL work queue: enqueue, claim with leases, complete, fail with backoff, give up.

Guarantees (each tested against a real PostgreSQL):
- at most one live (pending or running) item per (stage, subject): enqueue is idempotent;
- claims use FOR UPDATE SKIP LOCKED in one short statement, with an owner and a lease expiry,
  so any number of processes on any number of hosts can share one database;
- a worker that dies loses nothing: expired leases are taken back automatically by the next
  claim (and charged one attempt, so an item that kills its worker cannot loop forever); a live
  worker heartbeats its leases (extend_lease) and completes only what it still holds (held);
- failures are charged an attempt and retried with exponential backoff and jitter, up to
  max_attempts, then kept as `given_up` with their last error (requeue by command);
- "dependency down" (defer) and shutdown (release) put items back without charging them.

Every function takes a connection; callers decide the transaction (results and completion can
be written in one). Counts per outcome go to stage_counts, per minute, for rates and alerts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypedDict

from jobpipe.backoff import Backoff, Jitter
from jobpipe.logs import redact
from jobpipe.text import clean_text

if TYPE_CHECKING:  # for annotations only: jobpipe.db at run time would load pgvector and more
    from jobpipe.db import Conn

FAILED: Final = "failed"
GIVEN_UP: Final = "given_up"
LEASE_EXPIRED = "lease expired: the worker holding it stopped or hung"


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    subject: int
    attempts: int
    priority: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed item is retried, and when given up. No defaults: the values come from the
    settings (queue.backoff_*_s, <daemon>.max_attempts) or the caller."""

    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Backoff before retry number `attempts` (1 = after the first failure): exponential,
        capped, with "equal jitter" (half fixed, half random) so retries of a batch spread out."""
        return Backoff(self.backoff_base_s, self.backoff_max_s, Jitter.EQUAL).delay(attempts, rng)


def channel(stage: str) -> str:
    return f"jobpipe_{stage}"


def enqueue(conn: Conn, stage: str, subjects: Iterable[int], priority: int = 0, delay_s: float = 0.0) -> int:
    """Add work (idempotent); return how many new live items were created."""
    ids = list(dict.fromkeys(int(s) for s in subjects))
    if not ids:
        return 0
    cur = conn.execute(
        """
        INSERT INTO queue (stage, subject, priority, run_after)
        SELECT %(stage)s, s, %(prio)s, now() + make_interval(secs => %(delay)s)
          FROM unnest(%(ids)s::bigint[]) AS s
        ON CONFLICT (stage, subject) WHERE status IN ('pending', 'running') DO UPDATE
            SET priority = greatest(queue.priority, excluded.priority),
                run_after = CASE WHEN queue.status = 'pending'
                                 THEN least(queue.run_after, excluded.run_after) ELSE queue.run_after END,
                rerun = queue.rerun OR queue.status = 'running',
                updated_at = now()
            WHERE excluded.priority > queue.priority OR queue.status = 'running'
        RETURNING (xmax = 0) AS inserted
        """,
        {"stage": stage, "prio": priority, "delay": delay_s, "ids": ids},
    )
    inserted = sum(1 for (new,) in cur.fetchall() if new)
    conn.execute("SELECT pg_notify(%s, '')", (channel(stage),))
    return inserted


def reclaim_expired(conn: Conn, stage: str, policy: RetryPolicy) -> int:
    """Take back items whose lease expired; charge an attempt; give up at max_attempts."""
    cur = conn.execute(
        """
        UPDATE queue SET
            attempts = attempts + 1,
            status = CASE WHEN attempts + 1 >= %(max)s THEN 'given_up' ELSE 'pending' END,
            finished_at = CASE WHEN attempts + 1 >= %(max)s THEN now() END,
            run_after = now(), lease_owner = NULL, lease_expires = NULL, rerun = false,
            last_error = %(err)s, updated_at = now()
         WHERE stage = %(stage)s AND status = 'running' AND lease_expires < now()
        RETURNING status
        """,
        {"stage": stage, "max": policy.max_attempts, "err": LEASE_EXPIRED},
    )
    rows = cur.fetchall()
    _count(conn, stage, Counter(FAILED if s == "pending" else GIVEN_UP for (s,) in rows))
    return len(rows)


def claim(
    conn: Conn, stage: str, owner: str, limit: int, lease_s: float, policy: RetryPolicy | None = None
) -> list[Item]:
    """Claim up to `limit` due items, highest priority first, then oldest due."""
    if policy is not None:
        reclaim_expired(conn, stage, policy)
    cur = conn.execute(
        """
        WITH c AS (
            SELECT id FROM queue
             WHERE stage = %(stage)s AND status = 'pending' AND run_after <= now()
             ORDER BY priority DESC, run_after, id
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED
        )
        UPDATE queue q SET status = 'running', lease_owner = %(owner)s,
               lease_expires = now() + make_interval(secs => %(lease)s), updated_at = now()
          FROM c WHERE q.id = c.id
        RETURNING q.id, q.subject, q.attempts, q.priority
        """,
        {"stage": stage, "limit": limit, "owner": owner, "lease": lease_s},
    )
    items = [Item(*row) for row in cur.fetchall()]
    items.sort(key=lambda i: (-i.priority, i.id))
    return items


def extend_lease(conn: Conn, owner: str, item_ids: Sequence[int], lease_s: float) -> int:
    """Heartbeat: push the lease of those of `item_ids` this owner still holds to now + lease_s,
    in one statement; returns how many were extended. Rows locked right now (the writer is
    completing them) are skipped rather than waited for: they are being finished anyway."""
    if not item_ids:
        return 0
    cur = conn.execute(
        """UPDATE queue SET lease_expires = now() + make_interval(secs => %s)
            WHERE id IN (SELECT id FROM queue WHERE id = ANY(%s) AND status = 'running'
                           AND lease_owner = %s FOR UPDATE SKIP LOCKED)""",
        (lease_s, list(item_ids), owner),
    )
    return cur.rowcount


def held(conn: Conn, owner: str, item_ids: Sequence[int]) -> set[int]:
    """Those of `item_ids` whose lease `owner` holds, locked until the end of the transaction (so
    no reclaim can take them between this check and their completion). A write checks this in
    its own transaction: results of items whose lease was lost are never written."""
    if not item_ids:
        return set()
    rows = conn.execute(
        """SELECT id FROM queue WHERE id = ANY(%s) AND status = 'running' AND lease_owner = %s
             ORDER BY id FOR UPDATE""",
        (list(item_ids), owner),
    ).fetchall()
    return {r[0] for r in rows}


def complete(conn: Conn, stage: str, owner: str, outcomes: dict[int, str]) -> int:
    """Mark items done with their outcome. Only the lease owner completes (a worker whose lease
    expired and was taken over must not finish the item twice); returns how many were done."""
    if not outcomes:
        return 0
    ids = list(outcomes)
    cur = conn.execute(
        """
        UPDATE queue q SET status = 'done', outcome = o.outcome, finished_at = now(),
               lease_owner = NULL, lease_expires = NULL, updated_at = now()
          FROM unnest(%s::bigint[], %s::text[]) AS o(id, outcome)
         WHERE q.id = o.id AND q.status = 'running' AND q.lease_owner = %s
        RETURNING q.outcome, q.subject, q.priority, q.rerun
        """,
        (ids, [outcomes[i] for i in ids], owner),
    )
    rows = cur.fetchall()
    done = Counter(o for o, _, _, _ in rows)
    _count(conn, stage, done)
    again = [(subj, prio) for _, subj, prio, rerun in rows if rerun]
    if again:
        # The subject changed while it was being worked on: its work is due again.
        conn.execute(
            """INSERT INTO queue (stage, subject, priority)
               SELECT %s, s, p FROM unnest(%s::bigint[], %s::smallint[]) AS t(s, p)
               ON CONFLICT (stage, subject) WHERE status IN ('pending', 'running') DO NOTHING""",
            (stage, [a for a, _ in again], [b for _, b in again]),
        )
        conn.execute("SELECT pg_notify(%s, '')", (channel(stage),))
    return sum(done.values())


def _error_text(text: str) -> str:
    """What goes into queue.last_error (shown by the CLI, health and alerts): cleaned, capped, and
    with credentials redacted, whatever exception produced it."""
    return clean_text(redact(text), 2000) or ""


class Failed(TypedDict):
    """What `fail` did: items to retry, items given up, and the subjects of those."""

    failed: int
    given_up: int
    given_up_subjects: list[int]


def fail(
    conn: Conn,
    stage: str,
    owner: str,
    errors: dict[int, str],
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Failed:
    """Charge each item an attempt: retry later with backoff, or give up at max_attempts.
    Returns {"failed": n, "given_up": m, "given_up_subjects": [...]}."""
    if not errors:
        return {FAILED: 0, GIVEN_UP: 0, "given_up_subjects": []}
    ids = list(errors)
    rows = conn.execute(
        "SELECT id, attempts FROM queue WHERE id = ANY(%s) AND status = 'running' AND lease_owner = %s",
        (ids, owner),
    ).fetchall()
    delays = [policy.delay(att + 1, rng) for _, att in rows]
    cur = conn.execute(
        """
        UPDATE queue q SET
            attempts = q.attempts + 1,
            status = CASE WHEN q.attempts + 1 >= %(max)s THEN 'given_up' ELSE 'pending' END,
            finished_at = CASE WHEN q.attempts + 1 >= %(max)s THEN now() END,
            run_after = now() + make_interval(secs => f.delay),
            last_error = f.err, lease_owner = NULL, lease_expires = NULL, rerun = false, updated_at = now()
          FROM unnest(%(ids)s::bigint[], %(errs)s::text[], %(delays)s::float8[]) AS f(id, err, delay)
         WHERE q.id = f.id AND q.status = 'running' AND q.lease_owner = %(owner)s
        RETURNING q.status, q.subject
        """,
        {
            "max": policy.max_attempts,
            "ids": [r[0] for r in rows],
            "errs": [_error_text(errors[r[0]]) for r in rows],
            "delays": delays,
            "owner": owner,
        },
    )
    rows = cur.fetchall()
    counts = Counter(FAILED if s == "pending" else GIVEN_UP for s, _ in rows)
    _count(conn, stage, counts)
    return {
        FAILED: counts.get(FAILED, 0),
        GIVEN_UP: counts.get(GIVEN_UP, 0),
        "given_up_subjects": [subj for s, subj in rows if s == GIVEN_UP],
    }


def defer(conn: Conn, owner: str, item_ids: Sequence[int], delay_s: float, reason: str | None = None) -> int:
    """Put items back without charging an attempt (their dependency is down, not their fault)."""
    if not item_ids:
        return 0
    cur = conn.execute(
        """UPDATE queue SET status = 'pending', run_after = now() + make_interval(secs => %s),
                  lease_owner = NULL, lease_expires = NULL, rerun = false, updated_at = now(),
                  last_error = coalesce(%s, last_error)
            WHERE id = ANY(%s) AND status = 'running' AND lease_owner = %s""",
        (delay_s, _error_text(reason) if reason is not None else None, list(item_ids), owner),
    )
    return cur.rowcount


def release(conn: Conn, owner: str, item_ids: Sequence[int] | None = None) -> int:
    """Give claimed items back at once (graceful shutdown): claimable immediately, no charge."""
    if item_ids is None:
        cur = conn.execute(
            """UPDATE queue SET status = 'pending', lease_owner = NULL, lease_expires = NULL,
                      rerun = false, run_after = now(), updated_at = now()
                WHERE status = 'running' AND lease_owner = %s""",
            (owner,),
        )
    else:
        cur = conn.execute(
            """UPDATE queue SET status = 'pending', lease_owner = NULL, lease_expires = NULL,
                      rerun = false, run_after = now(), updated_at = now()
                WHERE id = ANY(%s) AND status = 'running' AND lease_owner = %s""",
            (list(item_ids), owner),
        )
    return cur.rowcount


def requeue_given_up(conn: Conn, stage: str, subjects: Sequence[int] | None = None) -> int:
    """Give given-up items a fresh start (attempts reset). An item whose subject already has a
    live item is dropped instead, keeping one live item per subject."""
    with conn.transaction():
        filt = "" if subjects is None else " AND subject = ANY(%(subjects)s)"
        params: dict[str, Any] = {"stage": stage, "subjects": list(subjects or [])}
        conn.execute(
            f"""DELETE FROM queue g WHERE g.stage = %(stage)s AND g.status = 'given_up'{filt}
                  AND EXISTS (SELECT 1 FROM queue l WHERE l.stage = g.stage AND l.subject = g.subject
                                AND l.status IN ('pending', 'running'))""",
            params,
        )
        # Several given-up rows of one subject: revive the newest only.
        cur = conn.execute(
            f"""UPDATE queue SET status = 'pending', attempts = 0, run_after = now(), finished_at = NULL,
                       updated_at = now()
                 WHERE id IN (SELECT DISTINCT ON (subject) id FROM queue
                               WHERE stage = %(stage)s AND status = 'given_up'{filt}
                               ORDER BY subject, id DESC)""",
            params,
        )
        conn.execute(f"DELETE FROM queue WHERE stage = %(stage)s AND status = 'given_up'{filt}", params)
        conn.execute("SELECT pg_notify(%s, '')", (channel(stage),))
    return cur.rowcount


@dataclass(frozen=True, slots=True)
class StageStats:
    stage: str
    pending: int  # due now
    scheduled: int  # waiting for a retry time
    running: int
    given_up: int
    oldest_pending_age_s: float | None


def stats(conn: Conn, stages: Sequence[str] | None = None) -> dict[str, StageStats]:
    """Live counts per stage, from the partial indexes only (cheap with any amount of history)."""
    rows = conn.execute(
        """
        SELECT stage,
               count(*) FILTER (WHERE status = 'pending' AND run_after <= now()),
               count(*) FILTER (WHERE status = 'pending' AND run_after > now()),
               count(*) FILTER (WHERE status = 'running'),
               0,
               extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'))
          FROM queue WHERE status IN ('pending', 'running') GROUP BY stage
        UNION ALL
        SELECT stage, 0, 0, 0, count(*), NULL FROM queue WHERE status = 'given_up' GROUP BY stage
        """
    ).fetchall()
    out: dict[str, list[Any]] = {}
    for stage, pend, sched, run, gup, age in rows:
        acc = out.setdefault(stage, [0, 0, 0, 0, None])
        acc[0] += pend
        acc[1] += sched
        acc[2] += run
        acc[3] += gup
        if age is not None:
            acc[4] = float(age)
    for s in stages or ():
        out.setdefault(s, [0, 0, 0, 0, None])
    return {s: StageStats(s, *v) for s, v in sorted(out.items()) if stages is None or s in stages}


def prune(conn: Conn, retention_days: int) -> int:
    """Drop finished history older than the retention period (done items and minute counts)."""
    cur = conn.execute(
        "DELETE FROM queue WHERE status = 'done' AND finished_at < now() - make_interval(days => %s)",
        (retention_days,),
    )
    conn.execute(
        "DELETE FROM stage_counts WHERE minute < now() - make_interval(days => %s)", (retention_days,)
    )
    return cur.rowcount


def _count(conn: Conn, stage: str, counts: Counter[str]) -> None:
    counts = Counter({k: v for k, v in counts.items() if v})
    if not counts:
        return
    conn.execute(
        """
        INSERT INTO stage_counts (stage, minute, outcome, n)
        SELECT %s, date_trunc('minute', now()), o, n FROM unnest(%s::text[], %s::int[]) AS t(o, n)
        ON CONFLICT (stage, minute, outcome) DO UPDATE SET n = stage_counts.n + excluded.n
        """,
        (stage, list(counts), list(counts.values())),
    )


def count_outcomes(conn: Conn, stage: str, counts: dict[str, int]) -> None:
    """Record outcomes of work that does not go through queue items (e.g. a crawl's pages)."""
    _count(conn, stage, Counter(counts))


class Waiter:
    """Wakes a worker on NOTIFY for its stage, with the poll interval as the fallback.

    Uses its own autocommit connection (LISTEN needs one that is not inside transactions)."""

    def __init__(self, conn: Conn, stages: Sequence[str]) -> None:
        self.conn = conn
        for s in stages:
            conn.execute(f"LISTEN {channel(s)}")

    def wait(self, timeout: float) -> bool:
        """Block until a notification arrives or `timeout` passes; True when notified.
        Drains notifications that piled up so one wake-up serves them all."""
        got = False
        for _ in self.conn.notifies(timeout=timeout, stop_after=1):
            got = True
        if got:
            for _ in self.conn.notifies(timeout=0.0):
                pass
        return got
