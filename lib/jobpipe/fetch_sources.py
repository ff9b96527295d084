"""The crawl's sources in the database: config -> fetch_sources, the schedule, the lease, the record.

A *source* is one configured query partition (`fetcher.sources`: a name plus search parameters).
Its fetch_sources row holds its schedule (last full / incremental / successful run), its lease
(one crawler per source across all fetcher instances: claim, extend, release), and the outcome
of its last runs (written by jobpipe.crawl, which records what a run found: last_error, failures
and next_attempt_at after a capped exponential backoff, which the `crawl_failing` alert reads;
truncated parts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from jobpipe.db import Conn
from jobpipe.errors import ConfigError

FULL = "full"
INCREMENTAL = "incremental"
MAX_SINCE_DAYS = 100  # veroeffentlichtseit accepts 0..100; larger values are silently ignored

# Search parameters a source may set (the list in docs/contracts/ba-jobsuche.md); page and size
# belong to the crawler.
SEARCH_PARAMS = frozenset(
    {
        "was",
        "wo",
        "umkreis",
        "berufsfeld",
        "arbeitgeber",
        "angebotsart",
        "veroeffentlichtseit",
        "arbeitszeit",
        "befristung",
        "zeitarbeit",
        "pav",
        "homeoffice",
    }
)


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    params: dict[str, Any]


def parse_sources(entries: Sequence[Mapping[str, Any]]) -> list[Source]:
    """Validate `fetcher.sources`: each a mapping with a unique `name` and known search params."""
    out: list[Source] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"fetcher.sources[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a mapping with a name and search parameters")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where} needs a non-empty `name`")
        if name in seen:
            raise ConfigError(f"{where}: duplicate source name {name!r}")
        seen.add(name)
        params = {k: v for k, v in entry.items() if k != "name"}
        unknown = sorted(set(params) - SEARCH_PARAMS)
        if unknown:
            raise ConfigError(
                f"{where} ({name}): unknown search parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(SEARCH_PARAMS))} (page and size are set by the crawler)"
            )
        for k, v in params.items():
            if not isinstance(v, str | int) or isinstance(v, bool):
                raise ConfigError(f"{where} ({name}): {k} must be a string or an integer, got {v!r}")
        out.append(Source(name, params))
    return out


def sync_sources(conn: Conn, sources: Sequence[Source]) -> None:
    """Make fetch_sources match the config: new rows, changed params, removed ones disabled.

    A source whose parameters changed starts over with a full crawl (its history was about
    another query)."""
    names = [s.name for s in sources]
    with conn.transaction():
        for s in sources:
            conn.execute(
                """INSERT INTO fetch_sources (name, params) VALUES (%s, %s)
                   ON CONFLICT (name) DO UPDATE SET params = excluded.params, enabled = true,
                          last_full_at = CASE WHEN fetch_sources.params IS DISTINCT FROM excluded.params
                                              THEN NULL ELSE fetch_sources.last_full_at END,
                          truncated = fetch_sources.truncated
                                      AND fetch_sources.params IS NOT DISTINCT FROM excluded.params,
                          updated_at = now()
                    WHERE fetch_sources.params IS DISTINCT FROM excluded.params
                       OR NOT fetch_sources.enabled""",
                (s.name, Jsonb(s.params)),
            )
        conn.execute(
            "UPDATE fetch_sources SET enabled = false, updated_at = now() "
            "WHERE enabled AND NOT (name = ANY(%s))",
            (names,),
        )


@dataclass(frozen=True, slots=True)
class DueRun:
    name: str
    params: dict[str, Any]
    kind: str  # full or incremental
    since_days: int | None  # veroeffentlichtseit of an incremental run


def plan(
    now: datetime,
    last_full_at: datetime | None,
    last_incremental_at: datetime | None,
    last_success_at: datetime | None,
    incremental_interval_s: float,
    full_interval_s: float,
) -> tuple[str, int | None] | None:
    """Which run a source needs now: (kind, since_days) or None.

    Full when there was never one, when the full interval passed, or when the last success is
    older than an incremental window can reach (100 days). Incremental when the incremental
    interval passed since the last run: published since (days since the last success, rounded
    up, plus one day of margin for the BA's local dates), at most 100.
    """
    if last_full_at is None or last_success_at is None:
        return FULL, None
    if (now - last_full_at).total_seconds() >= full_interval_s:
        return FULL, None
    since = math.ceil((now - last_success_at).total_seconds() / 86400.0) + 1
    if since > MAX_SINCE_DAYS:
        return FULL, None
    last_run = max(t for t in (last_full_at, last_incremental_at) if t is not None)
    if (now - last_run).total_seconds() >= incremental_interval_s:
        return INCREMENTAL, max(1, since)
    return None


def due_runs(conn: Conn, incremental_interval_s: float, full_interval_s: float) -> list[DueRun]:
    """Sources that need a run now and are not leased or backing off; full runs first."""
    rows = conn.execute(
        """SELECT name, params, now(), last_full_at, last_incremental_at, last_success_at FROM fetch_sources
            WHERE enabled AND (lease_expires IS NULL OR lease_expires < now())
              AND (next_attempt_at IS NULL OR next_attempt_at <= now())
            ORDER BY name"""
    ).fetchall()
    out = []
    for name, params, now, full_at, inc_at, ok_at in rows:
        p = plan(now, full_at, inc_at, ok_at, incremental_interval_s, full_interval_s)
        if p is not None:
            out.append(DueRun(name, dict(params), p[0], p[1]))
    out.sort(key=lambda r: (r.kind != FULL, r.name))
    return out


def claim_source(conn: Conn, name: str, owner: str, lease_s: float) -> datetime | None:
    """Take the source's lease; returns the database time the run starts, None if taken."""
    row = conn.execute(
        """UPDATE fetch_sources SET lease_owner = %s, lease_expires = now() + make_interval(secs => %s)
            WHERE name = %s AND enabled AND (lease_expires IS NULL OR lease_expires < now())
           RETURNING now()""",
        (owner, lease_s, name),
    ).fetchone()
    return row[0] if row else None


def extend_lease(conn: Conn, name: str, owner: str, lease_s: float) -> bool:
    cur = conn.execute(
        """UPDATE fetch_sources SET lease_expires = now() + make_interval(secs => %s)
            WHERE name = %s AND lease_owner = %s""",
        (lease_s, name, owner),
    )
    return cur.rowcount == 1


def release_source(conn: Conn, name: str, owner: str) -> None:
    """Give the lease back without recording a run (shutdown)."""
    conn.execute(
        "UPDATE fetch_sources SET lease_owner = NULL, lease_expires = NULL "
        "WHERE name = %s AND lease_owner = %s",
        (name, owner),
    )


def truncated_counts(conn: Conn) -> dict[str, int]:
    """Parts still truncated per enabled source (as recorded by its runs)."""
    rows = conn.execute(
        "SELECT name, CASE WHEN truncated THEN jsonb_array_length(truncated_parts) ELSE 0 END "
        "FROM fetch_sources WHERE enabled"
    ).fetchall()
    return dict(rows)


def next_due_in(conn: Conn, incremental_interval_s: float, full_interval_s: float) -> float | None:
    """Seconds until the next source is due (for status lines); None without sources."""
    rows = conn.execute(
        """SELECT now(), last_full_at, last_incremental_at, last_success_at, next_attempt_at, lease_expires
             FROM fetch_sources WHERE enabled"""
    ).fetchall()
    best: float | None = None
    for now, full_at, inc_at, ok_at, next_at, lease in rows:
        if full_at is None or ok_at is None:
            wait = 0.0
        else:
            last_run = max(t for t in (full_at, inc_at) if t is not None)
            wait = min(
                (last_run + timedelta(seconds=incremental_interval_s) - now).total_seconds(),
                (full_at + timedelta(seconds=full_interval_s) - now).total_seconds(),
            )
        for t in (next_at, lease):
            if t is not None:
                wait = max(wait, (t - now).total_seconds())
        best = wait if best is None else min(best, wait)
    return None if best is None else max(0.0, best)
