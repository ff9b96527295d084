"""Crawling BA Jobsuche search partitions under the 10,000-result cap, and their schedule.

A *source* is one configured query partition (`fetcher.sources`: a name plus search parameters,
e.g. one per offer type or federal state). Each source has a row in fetch_sources holding its
schedule (last full / incremental / successful run), its lease (one crawler per source across
all fetcher instances) and what was still truncated.

The BA answers at most `page * size <= 10,000` results per query. When a (part of a) partition
reports more hits than that, it is split by one more search parameter - region (`wo` = federal
state), then working time, offer type, fixed-term, occupational field - using the facet counts of
its first page to skip empty values and to prefer a split that covers every hit. A part that is
still too large once every dimension is used is crawled as far as the cap allows and *recorded*
(fetch_sources.truncated / truncated_parts, metric jobpipe_fetcher_truncated_partitions, a
warning log line), never silently cut. A split whose parts add up to fewer hits than the whole
(e.g. postings abroad have no federal state) is recorded the same way.

Pages are written as they arrive (one upsert round trip per page, see jobpipe.postings) while
the next page is already being fetched, so memory stays at about two pages whatever the size
of the crawl. A page whose shape is not the v6 format (SchemaError) is retried a few times (a
truncated body is transient), then the run stops: nothing from that page is stored, the error
is counted and logged with a sample, and the source is retried later with backoff.

One bad posting never costs its page: jobpipe.ba.wire drops or cuts what cannot be stored (counted as a
problem), and a page whose write still fails is written again in halves down to single postings,
so only the postings that fail on their own are left out (counted, logged with a sample). More
than MAX_DROPPED_PER_PAGE of them means the database, not the postings, is the problem: the run
fails. Any exception of a run is a recorded failure (last_error, failures, next_attempt_at with
backoff, which the `crawl_failing` alert reads); a crawl never leaves its source due at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import psycopg
from prometheus_client import Counter, Gauge
from psycopg.types.json import Jsonb

from jobpipe import db, postings, queue
from jobpipe.ba.client import BAClient
from jobpipe.ba.wire import PostingRecord, SchemaError, SearchPage
from jobpipe.config import Config
from jobpipe.errors import ConfigError, DependencyDown, ItemError, first_line
from jobpipe.logs import log_event
from jobpipe.metrics import DaemonMetrics
from jobpipe.postings import UpsertStats

log = logging.getLogger("jobpipe.crawl")

Conn = psycopg.Connection[Any]

FULL = "full"
INCREMENTAL = "incremental"
MAX_RESULTS = 10_000  # the BA's page * size cap
MAX_SINCE_DAYS = 100  # veroeffentlichtseit accepts 0..100; larger values are silently ignored
CRAWL_STAGE = "crawl"  # stage name for the crawl's page outcomes in stage_counts
# Postings of one page that may fail to write one by one before the run fails instead: beyond a
# few, the cause is the database (disk full, timeouts), and dropping more would lose real data.
MAX_DROPPED_PER_PAGE = 10

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

FEDERAL_STATES = (
    "Baden-Württemberg",
    "Bayern",
    "Berlin",
    "Brandenburg",
    "Bremen",
    "Hamburg",
    "Hessen",
    "Mecklenburg-Vorpommern",
    "Niedersachsen",
    "Nordrhein-Westfalen",
    "Rheinland-Pfalz",
    "Saarland",
    "Sachsen",
    "Sachsen-Anhalt",
    "Schleswig-Holstein",
    "Thüringen",
)


@dataclass(frozen=True, slots=True)
class Dimension:
    """A search parameter a partition can be split by."""

    param: str
    facets: tuple[str, ...]  # facet names whose counts give the values (first one present wins)
    values: tuple[str, ...]  # fallback values when the answer has no such facet ((): facet only)


# In the order they are tried: region first (disjoint for single-location postings), then the rest.
SPLIT_DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("wo", ("bundesland", "region"), FEDERAL_STATES),
    Dimension("arbeitszeit", ("arbeitszeit",), ("vz", "tz", "snw", "ho", "mj")),
    Dimension("angebotsart", ("angebotsart",), ("1", "2", "4", "34")),
    Dimension("befristung", ("befristung",), ("1", "2")),
    Dimension("berufsfeld", ("berufsfeld",), ()),
)


def make_client(cfg: Config, observer: Any = None, **extra: Any) -> BAClient:
    """The BA client as configured in the fetcher section (also used by `jobpipe fetch` and
    `jobpipe occupations fetch`); `extra`: further BAClient arguments, e.g. the BERUFENET endpoint."""
    f = cfg.fetcher
    return BAClient(
        f.base_url,
        f.api_key,
        user_agent=f.user_agent,
        max_concurrency=f.max_concurrency,
        rate_limit_per_s=f.rate_limit_per_s,
        connect_timeout=min(10.0, f.timeout_s),
        read_timeout=f.timeout_s,
        deadline_s=f.deadline_s,
        max_response_bytes=f.max_response_bytes,
        max_retries=f.max_retries,
        backoff_base_s=f.backoff_base_s,
        backoff_max_s=f.backoff_max_s,
        max_description_chars=f.description_max_chars,
        observer=observer,
        **extra,
    )


# ---------------------------------------------------------------- sources (config -> table)


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


def record_success(conn: Conn, result: CrawlResult, owner: str) -> None:
    """A finished run: schedule timestamps, truncation, stats; the lease is released."""
    full = result.kind == FULL
    truncated = [t.as_json() for t in result.truncated]
    conn.execute(
        """UPDATE fetch_sources SET
               last_full_at = CASE WHEN %(full)s THEN %(started)s ELSE last_full_at END,
               last_incremental_at = CASE WHEN %(full)s THEN last_incremental_at ELSE %(started)s END,
               last_success_at = %(started)s,
               last_run_kind = %(kind)s, last_run_at = %(started)s, last_run_stats = %(stats)s,
               -- A full run states the truth; an incremental one can only add truncation (a small
               -- window fitting under the cap says nothing about the whole partition).
               truncated = CASE WHEN %(full)s THEN %(is_trunc)s ELSE truncated OR %(is_trunc)s END,
               truncated_parts = CASE WHEN %(full)s OR %(is_trunc)s THEN %(parts)s ELSE truncated_parts END,
               last_error = NULL, failures = 0, next_attempt_at = NULL,
               lease_owner = NULL, lease_expires = NULL, updated_at = now()
         WHERE name = %(name)s AND (lease_owner = %(owner)s OR lease_owner IS NULL)""",
        {
            "full": full,
            "started": result.started_at,
            "kind": result.kind,
            "stats": Jsonb(result.stats_json()),
            "is_trunc": bool(truncated),
            "parts": Jsonb(truncated),
            "name": result.source,
            "owner": owner,
        },
    )


def record_failure(
    conn: Conn, name: str, owner: str, error: str, retry_s: float, retry_max_s: float
) -> float:
    """A failed run: last_error, and the next attempt after an exponential backoff. Returns the delay."""
    row = conn.execute("SELECT failures FROM fetch_sources WHERE name = %s", (name,)).fetchone()
    failures = (row[0] if row else 0) + 1
    delay = min(retry_max_s, retry_s * 2 ** (failures - 1))
    conn.execute(
        """UPDATE fetch_sources SET last_error = left(%s, 2000), failures = %s,
                  next_attempt_at = now() + make_interval(secs => %s),
                  lease_owner = NULL, lease_expires = NULL, updated_at = now()
            WHERE name = %s AND (lease_owner = %s OR lease_owner IS NULL)""",
        (error, failures, delay, name, owner),
    )
    return delay


# ---------------------------------------------------------------- the crawl


class SearchClient(Protocol):
    def search(self, params: Mapping[str, Any], page: int, size: int) -> SearchPage: ...


@dataclass(frozen=True, slots=True)
class TruncatedPart:
    params: dict[str, Any]
    total: int  # hits the BA reported for the part
    covered: int  # hits we could reach (cap) or that the split's parts add up to
    reason: str  # "cap" (no dimension left to split by) or "split_gap" (parts miss hits)

    def as_json(self) -> dict[str, Any]:
        return {"params": self.params, "total": self.total, "covered": self.covered, "reason": self.reason}


@dataclass
class CrawlResult:
    source: str
    kind: str
    started_at: datetime | None
    pages: int = 0
    requests: int = 0
    parts: int = 0  # query parts crawled (1 when no split was needed)
    stats: UpsertStats = field(default_factory=UpsertStats)
    problems: int = 0  # item-level problems (skipped items, nulled fields)
    schema_errors: int = 0
    truncated: list[TruncatedPart] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # None: the run completed
    stopped: bool = False

    def stats_json(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "requests": self.requests,
            "parts": self.parts,
            "inserted": self.stats.inserted,
            "updated": self.stats.updated,
            "unchanged": self.stats.unchanged,
            "bumped": self.stats.bumped,
            "duplicates": self.stats.duplicates,
            "problems": self.problems,
            "schema_errors": self.schema_errors,
            "truncated_parts": len(self.truncated),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class PageEvent:
    """Progress of a crawl, after each stored page (for `jobpipe fetch run`)."""

    source: str
    params: dict[str, Any]
    page: int
    pages: int  # pages of this part
    total: int  # hits of this part
    result: CrawlResult


class CrawlAborted(Exception):
    """The run cannot continue (schema drift, a query the BA rejects, stopped)."""


class Crawler:
    """Crawls one source at a time: split under the cap, fetch, upsert page by page.

    `client` is a jobpipe.ba.client.BAClient (anything with `search(params, page, size)`); `conn` an
    autocommit connection this crawler owns while it runs (it turns synchronous_commit off).
    `metrics` (FetcherMetrics), `on_page`, `stop` and `keep_lease` are optional hooks; `logger`
    defaults to this module's logger.
    """

    def __init__(
        self,
        client: SearchClient,
        conn: Conn,
        *,
        page_size: int = 100,
        max_results: int = MAX_RESULTS,
        schema_retries: int = 2,
        seen_resolution_s: float = 0.0,
        dimensions: Sequence[Dimension] = SPLIT_DIMENSIONS,
        metrics: FetcherMetrics | None = None,
        on_page: Callable[[PageEvent], None] | None = None,
        stop: threading.Event | None = None,
        keep_lease: Callable[[], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not 1 <= page_size <= max_results:
            raise ValueError(f"page_size must be in 1..{max_results}")
        self.client = client
        self.conn = conn
        self.size = page_size
        # The deepest reachable result: page * size must not exceed the cap.
        self.reachable = (max_results // page_size) * page_size
        self.schema_retries = schema_retries
        self.seen_resolution_s = seen_resolution_s
        self.dimensions = tuple(dimensions)
        self.metrics = metrics
        self.on_page = on_page
        self.stop = stop or threading.Event()
        self.keep_lease = keep_lease
        self.log = logger or log
        # Every page commits on its own; waiting for each WAL flush would cost a disk sync per page.
        # Safe to skip here: a page lost to a crash is fetched and stored again by the next run.
        conn.execute("SET synchronous_commit = off")
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="crawl-fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Crawler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ one run

    def crawl(
        self,
        source: str,
        params: Mapping[str, Any],
        kind: str = FULL,
        since_days: int | None = None,
        started_at: datetime | None = None,
    ) -> CrawlResult:
        """Crawl a source; returns its result. DependencyDown propagates (pages stored so far stay).

        A schema error or a rejected query ends the run with `error` set; `stop` ends it with
        `stopped` (no error). Either way what was stored stays stored.
        """
        query = dict(params)
        if kind == INCREMENTAL:
            if since_days is None:
                raise ValueError("an incremental run needs since_days")
            days = min(MAX_SINCE_DAYS, since_days)
            own = query.get("veroeffentlichtseit")
            query["veroeffentlichtseit"] = min(days, int(own)) if own is not None else days
        result = CrawlResult(source, kind, started_at)
        t0 = time.perf_counter()
        try:
            self._part(result, query, None)
        except CrawlAborted as exc:
            if self.stop.is_set():
                result.stopped = True
            else:
                result.error = str(exc)
        finally:
            result.seconds = time.perf_counter() - t0
        for t in result.truncated:
            log_event(
                self.log,
                "partition_truncated",
                level="warning",
                source=source,
                kind=kind,
                params=t.params,
                total=t.total,
                covered=t.covered,
                reason=t.reason,
            )
        return result

    # ------------------------------------------------------------ internals

    def _search(self, result: CrawlResult, params: dict[str, Any], page: int) -> SearchPage:
        """One page, with retries of schema errors (a truncated body is transient; drift is not)."""
        for attempt in range(self.schema_retries + 1):
            if self.stop.is_set():
                raise CrawlAborted("stopped")
            result.requests += 1
            try:
                return self.client.search(params, page, self.size)
            except SchemaError as exc:
                result.schema_errors += 1
                if self.metrics is not None:
                    self.metrics.schema_error("search")
                log_event(
                    self.log,
                    "schema_error",
                    level="error",
                    source=result.source,
                    params=params,
                    page=page,
                    attempt=attempt + 1,
                    reason=exc.reason,
                    sample=exc.sample,
                )
                last = exc
            except ItemError as exc:  # a 400: our query is wrong; retrying cannot help
                raise CrawlAborted(f"query rejected for {params} page {page}: {exc}") from exc
        raise CrawlAborted(f"schema error (BA format changed?) for {params} page {page}: {last.reason}")

    def _part(self, result: CrawlResult, params: dict[str, Any], first: SearchPage | None) -> int:
        """Crawl (or split) one part of the partition; returns the hits the BA reported for it."""
        page1 = first or self._search(result, params, 1)
        total = page1.total
        if total > self.reachable:
            split = self._choose_split(params, page1)
            if split is not None:
                dim, values = split
                covered = 0
                for value in values:
                    covered += self._part(result, {**params, dim.param: value}, None)
                if covered < total:
                    result.truncated.append(TruncatedPart(params, total, covered, "split_gap"))
                return total
            result.truncated.append(TruncatedPart(params, total, self.reachable, "cap"))
        self._pages(result, params, page1, min(total, self.reachable))
        return total

    def _choose_split(self, params: dict[str, Any], page: SearchPage) -> tuple[Dimension, list[str]] | None:
        """The next dimension to split by and its values (empty ones left out).

        With facet counts: among the dimensions whose values cover every hit, the one with the
        least overlap (a posting with two locations or two working times is fetched once per
        part it is in: a smaller sum means fewer duplicate fetches), then the one leaving fewest
        parts above the cap, then the configured order. When none covers every hit: the one
        covering most (the gap is recorded). Without facets: the first dimension with known values.
        """
        covering: list[tuple[int, int, int, Dimension, list[str]]] = []
        best: tuple[int, Dimension, list[str]] | None = None
        fallback: tuple[Dimension, list[str]] | None = None
        for order, dim in enumerate(self.dimensions):
            if dim.param in params:
                continue
            counts = next((page.facets[f] for f in dim.facets if page.facets.get(f)), None)
            if counts:
                values = [v for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0]
                coverage = sum(counts[v] for v in values)
                if coverage >= page.total:
                    over_cap = sum(1 for v in values if counts[v] > self.reachable)
                    covering.append((coverage, over_cap, order, dim, values))
                elif best is None or coverage > best[0]:
                    best = (coverage, dim, values)
            elif dim.values and fallback is None:
                fallback = (dim, list(dim.values))
        if covering:
            _, _, _, dim, values = min(covering, key=lambda c: c[:3])
            return dim, values
        if best is not None:
            return best[1], best[2]
        return fallback

    def _pages(self, result: CrawlResult, params: dict[str, Any], page1: SearchPage, hits: int) -> None:
        """Store pages 1..n of a part that fits under the cap, fetching the next while writing."""
        result.parts += 1
        last = max(1, math.ceil(hits / self.size))
        page, n = page1, 1
        while True:
            nxt = self._pool.submit(self._search, result, params, n + 1) if n < last else None
            try:
                self._store(result, params, page, n, last)
            except BaseException:
                if nxt is not None:
                    nxt.cancel()
                    cf.wait([nxt])
                raise
            if nxt is None:
                return
            page = nxt.result()  # re-raises CrawlAborted / DependencyDown from the fetch thread
            n += 1
            if not page.items and not page.problems:
                return  # the result list ended early (postings expired while we paged)

    def _store(
        self, result: CrawlResult, params: dict[str, Any], page: SearchPage, n: int, last: int
    ) -> None:
        stats = UpsertStats()
        dropped: list[str] = []
        if page.items:
            stats = self._upsert(list(page.items), dropped, n)
        problems = page.problems + dropped
        result.pages += 1
        result.stats = result.stats + stats
        result.problems += len(problems)
        if problems:
            log_event(
                self.log,
                "page_problems",
                level="warning",
                source=result.source,
                params=params,
                page=n,
                n=len(problems),
                dropped=len(dropped),
                examples=(dropped + page.problems)[:5],
            )
        if self.metrics is not None:
            self.metrics.page(result.kind, stats, len(problems))
        if self.keep_lease is not None:
            self.keep_lease()
        if self.on_page is not None:
            self.on_page(PageEvent(result.source, params, n, last, page.total, result))

    def _upsert(self, records: list[PostingRecord], dropped: list[str], page: int) -> UpsertStats:
        """Write `records`; when the write fails (and the connection is fine), write each half on
        its own, down to single postings, which are dropped with a note in `dropped`."""
        try:
            return postings.upsert_postings(self.conn, records, seen_resolution_s=self.seen_resolution_s)
        except Exception as exc:
            if db.connection_lost(exc) or self.conn.closed:
                raise
            error = exc
        if len(records) == 1:
            ident = records[0].external_id
            why = f"{type(error).__name__}: {first_line(error)}"
            dropped.append(f"posting {ident[:60]!r} not stored: {why}"[:300])
            if len(dropped) > MAX_DROPPED_PER_PAGE:
                raise CrawlAborted(
                    f"page {page}: more than {MAX_DROPPED_PER_PAGE} postings fail to write one by one "
                    f"(the database, not the postings?): {first_line(error)}"
                )
            return UpsertStats()
        half = len(records) // 2
        return self._upsert(records[:half], dropped, page) + self._upsert(records[half:], dropped, page)


@dataclass(frozen=True, slots=True)
class CrawlSettings:
    """The crawl's tunables (fetcher section), in one place for the daemon, the CLI and the bench."""

    page_size: int = 100
    max_results: int = MAX_RESULTS
    lease_s: float = 300.0  # the source's lease, extended while pages arrive
    retry_s: float = 60.0  # first pause after a failed run (doubles)
    retry_max_s: float = 3600.0
    seen_resolution_s: float = 0.0

    @classmethod
    def from_config(cls, cfg: Config) -> CrawlSettings:
        f = cfg.fetcher
        return cls(
            page_size=f.page_size,
            max_results=f.max_results,
            lease_s=cfg.queue.lease_s,
            retry_s=f.crawl_retry_s,
            retry_max_s=max(f.crawl_retry_s, f.incremental_interval_s),
            seen_resolution_s=f.seen_resolution_s,
        )


def run_source(
    client: SearchClient,
    conn: Conn,
    run: DueRun,
    owner: str,
    settings: CrawlSettings,
    *,
    metrics: FetcherMetrics | None = None,
    on_page: Callable[[PageEvent], None] | None = None,
    stop: threading.Event | None = None,
    logger: logging.Logger | None = None,
) -> CrawlResult | None:
    """Claim a source, crawl it, record the outcome. None when another crawler holds it.

    DependencyDown is recorded as a failure (backoff) and re-raised for the caller's status.
    """
    logger = logger or log
    lease_s, retry_s, retry_max_s = settings.lease_s, settings.retry_s, settings.retry_max_s
    started = claim_source(conn, run.name, owner, lease_s)
    if started is None:
        return None
    last_extend = [time.monotonic()]

    def keep_lease() -> None:
        if time.monotonic() - last_extend[0] >= lease_s / 3:
            extend_lease(conn, run.name, owner, lease_s)
            last_extend[0] = time.monotonic()

    log_event(
        logger, "crawl_started", source=run.name, kind=run.kind, since_days=run.since_days, params=run.params
    )
    crawler: Crawler | None = None
    try:
        crawler = Crawler(
            client,
            conn,
            page_size=settings.page_size,
            max_results=settings.max_results,
            seen_resolution_s=settings.seen_resolution_s,
            metrics=metrics,
            on_page=on_page,
            stop=stop,
            keep_lease=keep_lease,
            logger=logger,
        )
        result = crawler.crawl(run.name, run.params, run.kind, run.since_days, started)
    except DependencyDown as exc:
        delay = record_failure(conn, run.name, owner, f"dependency down: {exc}", retry_s, retry_max_s)
        log_event(
            logger,
            "crawl_failed",
            level="warning",
            source=run.name,
            kind=run.kind,
            error=str(exc),
            retry_in_s=round(delay, 1),
        )
        if metrics is not None:
            metrics.crawl(run.kind, "dependency_down")
        raise
    except Exception as exc:
        # Whatever went wrong (a bug, a database error, a parser crash), the run is a failure
        # with backoff: releasing the lease alone made the source due again at once (a hot
        # loop that no failure count or alert ever saw).
        return _crashed(conn, run, owner, started, exc, settings, metrics, logger)
    except BaseException:
        release_source(conn, run.name, owner)
        raise
    finally:
        if crawler is not None:
            crawler.close()
    counts = {"done": result.pages, queue.FAILED: result.schema_errors}
    queue.count_outcomes(conn, CRAWL_STAGE, counts)
    if result.stopped:
        release_source(conn, run.name, owner)
        outcome = "stopped"
    elif result.error is not None:
        delay = record_failure(conn, run.name, owner, result.error, retry_s, retry_max_s)
        log_event(
            logger,
            "crawl_failed",
            level="error",
            source=run.name,
            kind=run.kind,
            error=result.error,
            retry_in_s=round(delay, 1),
            **result.stats_json(),
        )
        outcome = "schema_error" if result.schema_errors else "failed"
    else:
        record_success(conn, result, owner)
        outcome = "truncated" if result.truncated else "ok"
        log_event(logger, "crawl_done", source=run.name, kind=run.kind, **result.stats_json())
    if metrics is not None:
        metrics.crawl(run.kind, outcome)
        if outcome in ("ok", "truncated"):
            metrics.crawl_success(run.name)
        metrics.set_truncated(truncated_counts(conn))
    return result


def _crashed(
    conn: Conn,
    run: DueRun,
    owner: str,
    started: datetime,
    exc: Exception,
    settings: CrawlSettings,
    metrics: FetcherMetrics | None,
    logger: logging.Logger,
) -> CrawlResult:
    """Record a run that raised: last_error, failures + 1, next attempt after the backoff. When the
    database connection itself is gone, nothing can be recorded: the lease then runs out (lease_s)
    before the source is due again, which is backoff enough for a database that is away."""
    error = f"crashed: {type(exc).__name__}: {first_line(exc)}"[:500]
    logger.error(
        "crawl crashed",
        exc_info=exc,
        extra={"event": "crawl_crashed", "source": run.name, "kind": run.kind, "error": error},
    )
    retry_in: float | None = None
    try:
        retry_in = record_failure(conn, run.name, owner, error, settings.retry_s, settings.retry_max_s)
        queue.count_outcomes(conn, CRAWL_STAGE, {queue.FAILED: 1})
    except Exception as rec_exc:
        log_event(
            logger,
            "crawl_failure_not_recorded",
            level="warning",
            source=run.name,
            error=first_line(rec_exc),
            lease_expires_in_s=settings.lease_s,
        )
    log_event(
        logger,
        "crawl_failed",
        level="error",
        source=run.name,
        kind=run.kind,
        error=error,
        retry_in_s=None if retry_in is None else round(retry_in, 1),
    )
    if metrics is not None:
        metrics.crawl(run.kind, "crashed")
    return CrawlResult(run.name, run.kind, started, error=error)


def truncated_counts(conn: Conn) -> dict[str, int]:
    """Parts still truncated per enabled source (as recorded by its runs)."""
    rows = conn.execute(
        "SELECT name, CASE WHEN truncated THEN jsonb_array_length(truncated_parts) ELSE 0 END "
        "FROM fetch_sources WHERE enabled"
    ).fetchall()
    return dict(rows)


class FetcherMetrics:
    """The fetcher's own metrics, on the daemon's registry (names jobpipe_fetcher_*)."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self.daemon = metrics.daemon
        reg, prefix = metrics.registry, metrics.prefix
        self.schema_errors = Counter(
            f"{prefix}schema_errors",
            "Answers whose shape is not the BA v6 format (nothing stored from them)",
            ["daemon", "operation"],
            registry=reg,
        )
        self.truncated_partitions = Gauge(
            f"{prefix}truncated_partitions",
            "Query parts still above the 10,000-result cap (or not covered by their split) per source",
            ["daemon", "source"],
            registry=reg,
        )
        self.postings = Counter(
            f"{prefix}postings",
            "Postings seen by crawls: inserted, updated (changed) or unchanged",
            ["daemon", "result"],
            registry=reg,
        )
        self.pages = Counter(f"{prefix}pages", "Search pages stored", ["daemon", "kind"], registry=reg)
        self.item_problems = Counter(
            f"{prefix}item_problems",
            "Search items skipped or with fields dropped (null items, bad dates...)",
            ["daemon"],
            registry=reg,
        )
        self.crawls = Counter(
            f"{prefix}crawls",
            "Finished crawl runs by kind and outcome (ok, truncated, failed, "
            "schema_error, dependency_down, crashed, stopped)",
            ["daemon", "kind", "outcome"],
            registry=reg,
        )
        self.last_crawl_success = Gauge(
            f"{prefix}last_crawl_success_timestamp_seconds",
            "Unix time of the last completed run per source",
            ["daemon", "source"],
            registry=reg,
        )
        for op in ("search", "details"):
            self.schema_errors.labels(self.daemon, op)
        self.item_problems.labels(self.daemon)

    def schema_error(self, operation: str) -> None:
        self.schema_errors.labels(self.daemon, operation).inc()

    def page(self, kind: str, stats: UpsertStats, problems: int) -> None:
        self.pages.labels(self.daemon, kind).inc()
        for name in ("inserted", "updated", "unchanged"):
            n = getattr(stats, name)
            if n:
                self.postings.labels(self.daemon, name).inc(n)
        if problems:
            self.item_problems.labels(self.daemon).inc(problems)

    def crawl(self, kind: str, outcome: str) -> None:
        self.crawls.labels(self.daemon, kind, outcome).inc()

    def crawl_success(self, source: str) -> None:
        self.last_crawl_success.labels(self.daemon, source).set(time.time())

    def set_truncated(self, counts: Mapping[str, int]) -> None:
        for source, n in counts.items():
            self.truncated_partitions.labels(self.daemon, source).set(n)


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
