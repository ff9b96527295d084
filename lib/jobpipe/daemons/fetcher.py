"""The fetcher daemon: keeps the postings table complete from the BA Jobsuche API.

Two kinds of work:
- crawls of the configured sources (`fetcher.sources`), full and incremental on their schedule
  (jobpipe.crawl). A crawl streams for minutes, writing page by page, so it runs in a thread of
  its own with its own connection; the loop thread only starts it when a source is due (tick) and
  collects its outcome. A source is leased in fetch_sources, so any number of fetcher instances
  can run without crawling the same source twice.
- the `description` queue stage (subject = posting id), queued by the postings trigger for every
  new or changed posting: the details endpoint gives the description (stored as plain text,
  whitespace-normalised, NUL-free, cut to fetcher.description_max_chars), says the posting is
  gone (-> inactive), or that it is a partner posting without text (-> 'external', terminal).
  Other errors are item errors (retried with backoff by the runtime); once
  fetcher.description_max_attempts are used up, the posting's description_state becomes
  'given_up' (a trigger of migration 0010), counted apart from failures.

One BAClient is shared by the crawl thread and the description workers, so the request-rate
limit and the concurrency cap (fetcher.rate_limit_per_s, fetcher.max_concurrency) hold for the
daemon as a whole. A BA that stays down (403 forever, 5xx) is DependencyDown: no attempts are
charged, the runtime backs off and reports it; a failed crawl is retried with its own backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from jobpipe import crawl, runtime
from jobpipe.alerts.conditions import FAIL, Condition, count_condition
from jobpipe.ba.client import BAClient, Gone
from jobpipe.ba.wire import SchemaError
from jobpipe.errors import DependencyDown, ItemError
from jobpipe.logs import log_event
from jobpipe.postings import EXTERNAL, FETCHED, GONE, PENDING, DescriptionResult, store_descriptions
from jobpipe.queue import Item

log = logging.getLogger("jobpipe.fetcher")

EMPTY = "empty"  # outcome of a posting whose details have no text and no partner link (terminal)
_DUE_CHECK_S = 5.0  # how often the loop asks the database whether a source is due


class FetcherDaemon(runtime.Daemon):
    name = "fetcher"
    dependencies = ("ba_api",)

    def __init__(self, ctx: runtime.Context, client: BAClient | None = None) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg.fetcher
        self.cfg = cfg
        self.sources = crawl.parse_sources(cfg.sources)  # ConfigError before READY

        def observe(op: str, seconds: float, outcome: str) -> None:
            ctx.metrics.observe_model_call(f"ba_{op}", cfg.base_url, seconds, outcome)

        self.client = client or crawl.make_client(ctx.cfg, observe)
        self.metrics = crawl.FetcherMetrics(ctx.metrics)
        self._crawl_stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outcome: BaseException | crawl.CrawlResult | None = None
        self._next_due_check = 0.0
        self._listen_channel = "jobpipe_description"  # wakes the loop when a crawl ends
        self._running: str | None = None  # the source the crawl thread holds the lease of
        self._lease_extended = 0.0

    # ------------------------------------------------------------ runtime hooks

    def stages(self) -> list[runtime.Stage]:
        return [
            runtime.Stage(
                name="description",
                load=self.load,
                call=self.call,
                write=self.write,
                batch_size=self.cfg.batch_size,
                workers=self.cfg.workers,
                per_item=True,  # one details request per posting; `workers` of them in flight
                max_attempts=self.cfg.description_max_attempts,
            )
        ]

    def setup(self, conn: Any) -> None:
        crawl.sync_sources(conn, self.sources)
        self.metrics.set_truncated(crawl.truncated_counts(conn))

    def tick(self, conn: Any) -> None:
        self._collect()
        self._keep_crawl_lease(conn)
        if self._thread is not None or self.ctx.stop.is_set():
            return
        now = time.monotonic()
        if now < self._next_due_check:
            return
        self._next_due_check = now + _DUE_CHECK_S
        runs = crawl.due_runs(conn, self.cfg.incremental_interval_s, self.cfg.full_crawl_interval_s)
        if runs:
            self._start(runs[0])

    def pending_work(self, conn: Any) -> int:
        # A finished crawl not yet collected still counts: the next tick collects it (and may
        # raise its DependencyDown there, where the runtime handles it).
        running = 1 if self._thread is not None else 0
        due = crawl.due_runs(conn, self.cfg.incremental_interval_s, self.cfg.full_crawl_interval_s)
        return running + len(due)

    def close(self) -> None:
        self._crawl_stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(self.ctx.cfg.runtime.drain_timeout_s + self.cfg.timeout_s)
        self.client.close()

    def alert_conditions(self, conn: Any) -> list[Condition]:
        """Alert-worthy, from fetch_sources (shared by every instance): partitions still truncated
        at the result cap, a source whose last run hit schema drift, a source failing repeatedly."""
        rows = conn.execute(
            """SELECT name, truncated, jsonb_array_length(truncated_parts), last_error, failures
                 FROM fetch_sources WHERE enabled ORDER BY name"""
        ).fetchall()
        truncated = {name: n for name, flag, n, _, _ in rows if flag and n}
        drift = [name for name, _, _, err, _ in rows if err and err.startswith("schema error")]
        failing = {name: f for name, _, _, err, f in rows if f >= 3 and not (err or "").startswith("schema")}
        return [
            count_condition(
                "truncated_partitions",
                "crawl partitions above the 10,000-result cap",
                sum(truncated.values()),
                1,
                what="query parts not fully crawled"
                + (f" ({', '.join(sorted(truncated))})" if truncated else ""),
                hint="`jobpipe fetch sources` lists them; narrow those sources (e.g. add `was` or "
                "`umkreis`) or split them into several sources",
            ),
            Condition(
                "schema_drift",
                "BA answers no longer match the v6 format",
                bool(drift),
                f"last run failed on the answer's shape: {', '.join(drift)}" if drift else "no source",
                FAIL,
                hint="the BA changed its API: see the schema_error log lines (with a sample of the "
                "body) and update jobpipe/ba/wire.py; nothing was stored from those pages",
            ),
            count_condition(
                "crawl_failing",
                "crawls failing again and again",
                len(failing),
                1,
                what="source(s) with 3+ failed runs in a row"
                + (f" ({', '.join(f'{n}: {f}' for n, f in sorted(failing.items()))})" if failing else ""),
                severity=FAIL,
                hint="`jobpipe fetch sources` shows the last error of each source",
            ),
        ]

    # ------------------------------------------------------------ crawls

    def _keep_crawl_lease(self, conn: Any) -> None:
        """Extend the running crawl's source lease from the loop, every lease_s / 3.

        Why here and not only in the crawl: the crawl extends it after each page, but one page can
        take longer than the lease while the BA is slow (up to fetcher.max_retries + 1 attempts of
        fetcher.deadline_s each, plus backoff: 14 minutes with the defaults against a 5-minute
        lease), and another fetcher then takes the source and crawls it a second time alongside.
        The loop stays responsive during a crawl, so it heartbeats as it does for queue items."""
        if self._running is None or self._thread is None or not self._thread.is_alive():
            return
        lease_s = self.ctx.cfg.queue.lease_s
        now = time.monotonic()
        if now - self._lease_extended >= lease_s / 3:
            self._lease_extended = now
            crawl.extend_lease(conn, self._running, self.ctx.owner, lease_s)

    def _start(self, run: crawl.DueRun) -> None:
        self._outcome = None
        self._running, self._lease_extended = run.name, time.monotonic()
        self._thread = threading.Thread(
            target=self._crawl, args=(run,), name=f"crawl-{run.name}", daemon=True
        )
        self.ctx.set_status_extra(f"crawl {run.name} ({run.kind}) starting")
        self._thread.start()

    def _crawl(self, run: crawl.DueRun) -> None:
        """The crawl thread: its own connection; the outcome is picked up by `_collect`."""
        stop = _AnyEvent(self.ctx.stop, self._crawl_stop)
        conn = None
        try:
            conn = self.ctx.connect()

            def progress(ev: crawl.PageEvent) -> None:
                r = ev.result
                self.ctx.set_status_extra(
                    f"crawl {ev.source} ({r.kind}) page {ev.page}/{ev.pages} of part {r.parts}, "
                    f"{r.stats.inserted} new {r.stats.updated} changed {r.stats.unchanged} seen"
                )

            result = crawl.run_source(
                self.client,
                conn,
                run,
                self.ctx.owner,
                crawl.CrawlSettings.from_config(self.ctx.cfg),
                metrics=self.metrics,
                on_page=progress,
                stop=stop,
                logger=log,
            )
            self._outcome = result
        except BaseException as exc:
            self._outcome = exc
            if not isinstance(exc, DependencyDown):
                log.exception("crawl crashed", extra={"event": "crawl_crashed", "source": run.name})
        finally:
            if conn is not None:
                try:
                    # Wake the loop at once (it listens on the description channel) to collect us.
                    conn.execute("SELECT pg_notify(%s, '')", (self._listen_channel,))
                    conn.close()
                except Exception:
                    pass

    def _collect(self) -> None:
        """Pick up a finished crawl; DependencyDown goes to the runtime (backoff, STATUS, gauge)."""
        thread = self._thread
        if thread is None or thread.is_alive():
            return
        self._thread, self._running = None, None
        self._next_due_check = 0.0  # another source may be due right away
        outcome, self._outcome = self._outcome, None
        if isinstance(outcome, crawl.CrawlResult):
            r = outcome
            state = "stopped" if r.stopped else ("failed: " + r.error if r.error else "done")
            self.ctx.set_status_extra(f"last crawl {r.source} ({r.kind}) {state}"[:160])
            if r.error is None and not r.stopped:
                self.ctx.metrics.dependency("ba_api", True)
        elif isinstance(outcome, DependencyDown):
            self.ctx.set_status_extra(f"crawl failed: {outcome}"[:160])
            raise outcome
        elif outcome is not None:
            self.ctx.set_status_extra(f"crawl crashed: {outcome}"[:160])

    # ------------------------------------------------------------ the description stage

    def load(self, conn: Any, items: list[Item]) -> dict[int, Any]:
        rows = conn.execute(
            "SELECT id, external_id, description_state, external_url FROM postings WHERE id = ANY(%s)",
            ([i.subject for i in items],),
        ).fetchall()
        by_id = {r[0]: r for r in rows}
        out: dict[int, Any] = {}
        for item in items:
            row = by_id.get(item.subject)
            if row is None:
                continue  # posting deleted: the runtime completes it as "missing"
            pid, refnr, state, external_url = row
            if state != PENDING:
                out[item.id] = runtime.Skip(f"already_{state}")
            else:
                out[item.id] = (pid, refnr, external_url)
        return out

    def call(self, payloads: list[tuple[int, str, str | None]]) -> list[Any]:
        out: list[Any] = []
        for pid, refnr, known_external_url in payloads:
            try:
                details = self.client.details(refnr)
            except SchemaError as exc:
                self.metrics.schema_error("details")
                log_event(
                    log,
                    "schema_error",
                    level="error",
                    operation="details",
                    refnr=refnr,
                    reason=exc.reason,
                    sample=exc.sample,
                )
                out.append(ItemError(f"details of {refnr}: {exc.reason}", kind="schema_error"))
                continue
            except ItemError as exc:  # a 400 for this posting (BAQueryError)
                out.append(exc)
                continue
            if isinstance(details, Gone):
                out.append(DescriptionResult(pid, GONE))
            elif details.description is not None:
                out.append(DescriptionResult(pid, FETCHED, details.description))
            elif details.external_url or known_external_url:
                out.append(DescriptionResult(pid, EXTERNAL))
            else:
                # The BA answered, but the posting has no text and no partner link: nothing to retry.
                out.append(DescriptionResult(pid, FETCHED, None))
        return out

    def write(self, conn: Any, done: list[tuple[Item, Any, DescriptionResult]]) -> dict[int, str]:
        stored = store_descriptions(conn, [r for _, _, r in done])
        outcomes: dict[int, str] = {}
        for item, _, r in done:
            if r.posting_id not in stored:
                outcomes[item.id] = "missing"
            elif r.state == FETCHED and r.description is None:
                outcomes[item.id] = EMPTY
            else:
                outcomes[item.id] = r.state
        return outcomes


class _AnyEvent(threading.Event):
    """Set when either of two events is (the runtime's stop, or this daemon's close)."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        super().__init__()
        self._a, self._b = a, b

    def is_set(self) -> bool:
        return self._a.is_set() or self._b.is_set()


DAEMON = FetcherDaemon
