"""The bounded re-queue sweep: walks postings by id and queues those a stage has not (or no longer
validly) processed, e.g. after a model or schema change.

Shared by the embedder (postings without a vector of the current model) and the extractor
(postings without a summary of the current model and schema version); each says only *which*
postings need work, as an SQL predicate over `postings p`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobpipe import db, queue
from jobpipe.db import Conn


@dataclass
class Sweep:
    """Walks postings by id, queueing those matching `predicate` for `stage`.

    Run a bounded step per loop turn; each posting is queued at most once per sweep (so a
    posting that is empty, or given up, does not come back every turn). Queued at `priority`
    (below new postings), and only while that low-priority backlog is below `backlog`, so new
    postings are never held up. `predicate` is SQL over `postings p` with %(name)s placeholders
    filled from `params`.
    """

    stage: str
    predicate: str
    backlog: int
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = -1
    window: int = 20_000  # posting ids examined per step (bounds the step's cost)
    cursor: int = 0
    end: int | None = None  # max(postings.id) when the sweep started
    queued: int = 0

    @property
    def done(self) -> bool:
        return self.end is not None and self.cursor >= self.end

    def step(self, conn: Conn) -> int:
        """One bounded step; returns how many postings it queued."""
        if self.end is None:
            self.end = db.one(conn, "SELECT coalesce(max(id), 0) FROM postings")[0]
        if self.done:
            return 0
        waiting = db.one(
            conn,
            """SELECT count(*) FROM queue
                WHERE stage = %s AND status = 'pending' AND priority <= %s""",
            (self.stage, self.priority),
        )[0]
        room = self.backlog - waiting
        if room < max(1, self.backlog // 2):  # top up in chunks, not one row per turn
            return 0
        hi = min(self.end, self.cursor + self.window)
        ids = [
            r[0]
            for r in conn.execute(
                f"""
                SELECT p.id FROM postings p
                 WHERE p.id > %(lo)s AND p.id <= %(hi)s
                   AND ({self.predicate})
                   AND NOT EXISTS (SELECT 1 FROM queue q
                                    WHERE q.stage = %(stage)s AND q.subject = p.id
                                      AND q.status IN ('pending', 'running', 'given_up'))
                 ORDER BY p.id LIMIT %(room)s
                """,  # the predicate is code of ours, never input
                {**self.params, "lo": self.cursor, "hi": hi, "stage": self.stage, "room": room},
            )
        ]
        self.cursor = ids[-1] if len(ids) == room else hi
        if not ids:
            return 0
        n = queue.enqueue(conn, self.stage, ids, priority=self.priority)
        self.queued += n
        return n
