"""Issue 15 (items 1, 2, 3, 7): hostile postings, database errors that are not an outage, leases
held while work waits or runs, and the size of postings.raw - against the fake BA and a real
PostgreSQL."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import orjson
import psycopg
import pytest

from jobpipe import config, crawl, db, postings, queue, runtime
from jobpipe.alerts.conditions import FAIL
from jobpipe.ba import wire
from jobpipe.ba.wire import (
    MAX_RAW_DEPTH,
    MAX_RAW_TEXT_CHARS,
    MAX_TITLE_CHARS,
    SchemaError,
    _int,
    parse_details,
    parse_search_page,
)
from jobpipe.daemons.fetcher import FetcherDaemon
from jobpipe.metrics import DaemonMetrics
from jobpipe.runtime import Context
from jobpipe.sim.ba import FakeBA
from jobpipe.sim.ba_data import HOSTILE_KINDS
from jobpipe.sim.ollama import FakeOllama
from tests.sample_daemon import SampleDaemon
from tests.test_fetcher import client_for, daemon_cfg, live_refnrs, population, run_fetcher, stored
from tests.waiting import in_thread, wait_until

# ---------------------------------------------------------------- item 1: hostile postings


def test_hostile_items_among_2000_postings_cost_only_themselves(pg_url, db_conn):
    """4 hostile postings among 2,000: the fetcher's --once run returns, every other posting is
    stored, the bad ones are counted as problems, and the source's run is a success."""
    pop = population(2000, seed=15, partner_share=1.0)  # partners: no description text to fetch
    hostile = {kind: pop.postings[300 + 450 * k].refnr for k, kind in enumerate(HOSTILE_KINDS)}
    for kind, refnr in hostile.items():
        pop.make_dirty(refnr, kind)
    with FakeBA(pop) as f:
        want = live_refnrs(f)
        t, box = in_thread(lambda: run_fetcher(daemon_cfg(f), pg_url))
        t.join(180)
        assert not t.is_alive(), "jobpipe run fetcher --once did not return"
        assert "error" not in box, box.get("error")
    # everything but the posting whose id cannot be stored; nothing lost besides it
    assert stored(db_conn) == want - {hostile["long_refnr"]}
    assert len(want) == 2000
    row = db_conn.execute(
        "SELECT last_success_at IS NOT NULL, last_error, failures FROM fetch_sources"
    ).fetchone()
    assert row == (True, None, 0)
    text = box["result"].exposition().decode()
    problems = float(text.split('jobpipe_fetcher_item_problems_total{daemon="fetcher"} ')[1].split()[0])
    assert problems >= 3  # the dropped id, the cut raw, the cut title
    title, employer = db_conn.execute(
        "SELECT title, employer FROM postings WHERE external_id = %s", (hostile["control_title"],)
    ).fetchone()
    assert "\x1b" not in title + employer and "\x07" not in title + employer and "Koch" in title
    (title_len,) = db_conn.execute(
        "SELECT length(title) FROM postings WHERE external_id = %s", (hostile["long_title"],)
    ).fetchone()
    assert title_len == MAX_TITLE_CHARS
    (raw,) = db_conn.execute(
        "SELECT raw FROM postings WHERE external_id = %s", (hostile["deep_nesting"],)
    ).fetchone()
    assert "nested deeper than" in json.dumps(raw) and raw["referenznummer"] == hostile["deep_nesting"]


def test_a_page_whose_write_fails_is_written_in_halves(db_conn, monkeypatch):
    """With the parser's id cap lifted, the 4,000-character id reaches the database and fails the
    page's INSERT (index row too large): the page is written again in halves, only that posting
    is left out, counted and logged with a sample."""
    monkeypatch.setattr(wire, "MAX_ID_CHARS", 100_000)
    pop = population(250, seed=3)
    bad = pop.postings[120].refnr
    pop.make_dirty(bad, "long_refnr")
    with FakeBA(pop) as f, crawl.Crawler(client_for(f), db_conn, page_size=100) as c:
        result = c.crawl("test", {})
        want = live_refnrs(f)
    assert result.error is None
    assert stored(db_conn) == want - {bad}
    assert result.problems == 1 and result.stats.inserted == len(want) - 1


def test_too_many_failing_postings_fail_the_run_instead(db_conn, monkeypatch):
    """Beyond MAX_DROPPED_PER_PAGE postings failing one by one, the database is the problem: the
    run fails (and is retried later) instead of dropping a whole page."""
    monkeypatch.setattr(wire, "MAX_ID_CHARS", 100_000)
    monkeypatch.setattr(crawl, "MAX_DROPPED_PER_PAGE", 2)
    pop = population(100, seed=4)
    for p in pop.postings[10:14]:
        pop.make_dirty(p.refnr, "long_refnr")
    with FakeBA(pop) as f, crawl.Crawler(client_for(f), db_conn, page_size=100) as c:
        result = c.crawl("test", {})
    assert result.error is not None and "fail to write one by one" in result.error


class Exploding:
    """A search client with a bug: every call raises."""

    def search(self, params: Any, page: int, size: int) -> Any:
        raise RuntimeError("boom in the parser")


def test_a_crashing_crawl_is_a_recorded_failure_with_backoff(pg_url, db_conn):
    """Any exception of a run records a failure (last_error, failures, next_attempt_at): the source
    is not due again at once, and three in a row fire `crawl_failing`."""
    crawl.sync_sources(db_conn, crawl.parse_sources([{"name": "de"}]))
    settings = crawl.CrawlSettings(page_size=50, retry_s=30, retry_max_s=60)
    for n in range(1, 4):
        (run,) = crawl.due_runs(db_conn, 3600, 86400)
        result = crawl.run_source(Exploding(), db_conn, run, "me", settings)
        assert result is not None and result.error is not None and "boom in the parser" in result.error
        err, failures, backing_off, lease = db_conn.execute(
            "SELECT last_error, failures, next_attempt_at > now(), lease_owner FROM fetch_sources"
        ).fetchone()
        assert err.startswith("crashed: RuntimeError") and failures == n and backing_off and lease is None
        assert crawl.due_runs(db_conn, 3600, 86400) == []  # no hot loop
        db_conn.execute("UPDATE fetch_sources SET next_attempt_at = now() - interval '1 s'")
    with FakeBA(population(10)) as f:
        cfg = daemon_cfg(f)
        ctx = Context(cfg, DaemonMetrics("fetcher"), "me", pg_url, threading.Event(), logging.getLogger())
        daemon = FetcherDaemon(ctx)
        try:
            conditions = {c.key: c for c in daemon.alert_conditions(db_conn)}
        finally:
            daemon.close()
    assert conditions["crawl_failing"].active and conditions["crawl_failing"].severity == FAIL


def test_the_fetcher_once_returns_when_every_crawl_crashes(pg_url, db_conn, monkeypatch):
    """`jobpipe run fetcher --once` with a crawl that raises: one recorded failure, then it exits."""
    monkeypatch.setattr(crawl.Crawler, "crawl", lambda *a, **k: (_ for _ in ()).throw(ValueError("bug")))
    with FakeBA(population(10)) as f:
        t, box = in_thread(lambda: run_fetcher(daemon_cfg(f), pg_url))
        t.join(60)
        assert not t.is_alive(), "--once did not return"
    assert "error" not in box, box.get("error")
    assert db_conn.execute("SELECT failures, last_error FROM fetch_sources").fetchone() == (
        1,
        "crashed: ValueError: bug",
    )


# ---------------------------------------------------------------- nesting, numbers, raw


def nested(depth: int, leaf: Any = "x") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_is_bounded_without_recursion():
    """No depth raises RecursionError: orjson's 1,024 levels are parsed and the raw item is cut to
    MAX_RAW_DEPTH; beyond orjson's limit (the review: a SchemaError that lost the whole page, and so
    the partition's every run, for one posting) the deep value is cut before parsing, also in a
    body with invalid UTF-8, and the page's postings are kept."""
    deep = b"[" * 1000 + b'"x"' + b"]" * 1000  # orjson parses 1,000 levels (it cannot write them)
    page = parse_search_page(
        b'{"maxErgebnisse":1,"ergebnisliste":[{"referenznummer":"a-1","stellenangebotsTitel":"Koch","x":'
        + deep
        + b"}]}"
    )
    (rec,) = page.items
    assert "nested deeper than" in json.dumps(rec.raw) and any("raw item cut" in p for p in page.problems)
    for bad_byte in (b"", b"\xff"):
        body = (
            b'{"maxErgebnisse":2,"ergebnisliste":[{"referenznummer":"a","x":' + b"[" * 5000 + b'"]\\\\{\\""'
            + b"]" * 5000 + b'},{"referenznummer":"b","stellenangebotsTitel":"Koch' + bad_byte + b'"}]}'
        )
        got = parse_search_page(body)
        assert [r.external_id for r in got.items] == ["a", "b"], got.problems
        assert "nested deeper than" in json.dumps(got.items[0].raw)
    with pytest.raises(SchemaError, match=r"malformed JSON|nested too deeply"):  # unbalanced
        parse_search_page(b'{"maxErgebnisse":1,"ergebnisliste":[' + b"[" * 5000 + b"]}")
    # postings' own cleaner (raw built elsewhere) is iterative too
    cleaned = postings._deep_clean({"a": nested(50_000, "\x00")})
    assert json.dumps(cleaned).count("[") <= MAX_RAW_DEPTH + 1


def test_unicode_digits_are_not_numbers():
    body = orjson.dumps({"ergebnisliste": [], "maxErgebnisse": "²", "page": 1, "size": 1})
    with pytest.raises(SchemaError, match="maxErgebnisse"):
        parse_search_page(body)
    assert _int("1" * 5000) is None and _int(2**70) is None and _int("42") == 42


# ---------------------------------------------------------------- item 7: postings.raw is capped


def test_details_raw_is_capped_like_the_description(db_conn):
    """A 2,000,000-character description is stored as at most description_max_chars, in the
    column and in raw alike; other oversize text in raw is cut too."""
    body = orjson.dumps(
        {
            "referenznummer": "r-1",
            "stellenangebotsTitel": "Koch",
            "stellenangebotsBeschreibung": "Wir suchen. " * 200_000,
            "arbeitgeberdarstellung": "y" * 300_000,
        }
    )
    details = parse_details(body, 100_000)
    assert details.record is not None and len(details.description or "") <= 100_000
    assert details.record.raw["stellenangebotsBeschreibung"] == details.description
    assert len(details.record.raw["arbeitgeberdarstellung"]) == MAX_RAW_TEXT_CHARS
    postings.upsert_postings(db_conn, [details.record])
    desc_len, other_len, size = db_conn.execute(
        "SELECT length(raw->>'stellenangebotsBeschreibung'), length(raw->>'arbeitgeberdarstellung'), "
        "pg_column_size(raw::text) FROM postings"
    ).fetchone()
    assert desc_len <= 100_000 and other_len == MAX_RAW_TEXT_CHARS and size < 200_000


# ---------------------------------------------------------------- item 2: errors that are not an outage

# Each makes the write of one item fail on the real server, in the way the named error happens.
_FAILING_WRITES = {
    # a statement that runs past statement_timeout (57014, an OperationalError)
    "statement_timeout": "SET LOCAL statement_timeout = '50ms'; SELECT pg_sleep(2)",
    # an index row above the btree limit (54000, an OperationalError), from incompressible text
    "oversized_index_row": "CREATE TEMP TABLE IF NOT EXISTS big (t text); CREATE INDEX IF NOT EXISTS big_t "
    "ON big (t); INSERT INTO big SELECT string_agg(md5(g::text || random()::text), '') "
    "FROM generate_series(1, 400) g",
    # what the server says when it cannot write, or picks this transaction as a deadlock's victim
    "disk_full": "DO $$ BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$",
    "deadlock": "DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = 'deadlock_detected'; END $$",
}


def failing_daemon(kind: str, bad: int) -> type[SampleDaemon]:
    class Failing(SampleDaemon):
        def write(self, conn: Any, done: list[tuple[Any, Any, Any]]) -> dict[int, str]:
            if any(it.subject == bad for it, _, _ in done):
                for statement in _FAILING_WRITES[kind].split("; "):
                    conn.execute(statement)
            return super().write(conn, done)

    return Failing


@pytest.mark.parametrize("kind", sorted(_FAILING_WRITES))
def test_a_write_error_that_is_not_connection_loss_charges_the_offending_item(pg_url, db_conn, kind):
    """A database error that is not a lost connection is no outage: the batch is split, the item
    it is about is charged an attempt (with the error), the others are written, and --once ends."""
    with FakeOllama() as ollama:
        cls = failing_daemon(kind, bad=13)
        queue.enqueue(db_conn, "sample", range(1, 17))
        cfg = config.load(environ={}).with_overrides(
            ollama__urls=[ollama.url], queue__poll_interval_s=0.1, queue__backoff_base_s=3600
        )
        t, box = in_thread(lambda: runtime.run_daemon(cls, cfg, once=True, db_url=pg_url))
        t.join(90)
        assert not t.is_alive(), "--once did not end: the write is retried as 'database down'"
    assert box.get("result") == 0, box
    rows = db_conn.execute(
        "SELECT subject, status, attempts, last_error FROM queue ORDER BY subject"
    ).fetchall()
    assert [(s, st, a) for s, st, a, _ in rows if s == 13] == [(13, "pending", 1)]
    assert all(st == "done" and a == 0 for s, st, a, _ in rows if s != 13)
    assert "write failed" in rows[12][3]
    assert db_conn.execute("SELECT count(*) FROM sample_results").fetchone()[0] == 15


@pytest.mark.parametrize(
    ("errcode", "lost"),
    [("admin_shutdown", True), ("crash_shutdown", True), ("cannot_connect_now", True),
     ("connection_failure", True), ("query_canceled", False), ("disk_full", False),
     ("deadlock_detected", False), ("program_limit_exceeded", False)],
)  # fmt: skip
def test_only_connection_loss_is_connection_loss(db_conn, errcode, lost):
    with pytest.raises(psycopg.Error) as info:
        db_conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '{errcode}'; END $$")
    assert db.connection_lost(info.value) is lost


def test_a_broken_connection_is_connection_loss(pg_url, db_conn):
    victim = db.connect(pg_url)
    pid = victim.info.backend_pid
    db_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.Error) as info:
        victim.execute("SELECT 1")
    assert db.connection_lost(info.value)
    victim.close()


# ---------------------------------------------------------------- item 3: leases are heartbeated


def test_a_model_call_slower_than_the_lease_keeps_its_lease(pg_url, db_conn, monkeypatch):
    """lease_s = 1 and a 4 s model call: the leases are extended while the call runs (and while
    the third batch waits for a worker), so nothing expires, nothing is charged or written twice.
    The heartbeat is one statement for all held items of the stage, every lease_s / 3."""
    beats: list[tuple[float, int]] = []
    extend = queue.extend_lease

    def counting(conn: Any, owner: str, ids: Any, lease_s: float) -> int:
        beats.append((time.monotonic(), len(ids)))
        return extend(conn, owner, ids, lease_s)

    monkeypatch.setattr(queue, "extend_lease", counting)
    t0 = time.monotonic()
    with FakeOllama(latency_per_request=4.0) as slow:
        queue.enqueue(db_conn, "sample", range(1, 25))  # 3 batches of 8, 2 workers: one waits
        cfg = config.load(environ={}).with_overrides(
            ollama__urls=[slow.url],
            ollama__read_timeout_s=30.0,
            queue__lease_s=1.0,
            queue__poll_interval_s=0.1,
            runtime__status_interval_s=0.1,
        )
        assert runtime.run_daemon(SampleDaemon, cfg, once=True, db_url=pg_url) == 0
    elapsed = time.monotonic() - t0
    assert beats and max(n for _, n in beats) == 24  # every held item in one statement
    assert len(beats) <= elapsed / (1.0 / 3) + 2  # at most one per interval (one stage)
    rows = db_conn.execute("SELECT status, attempts, last_error FROM queue").fetchall()
    assert rows and all(r == ("done", 0, None) for r in rows), rows
    assert db_conn.execute("SELECT count(*), max(n) FROM sample_results").fetchone() == (24, 1)


def test_a_write_whose_lease_was_lost_is_dropped(pg_url, db_conn):
    """A batch whose lease another worker took over meanwhile: its result is not written and its
    completion not counted; the other items of the batch are written as usual."""
    with FakeOllama() as ollama:
        cfg = config.load(environ={}).with_overrides(ollama__urls=[ollama.url])
        runner = runtime.Runner(SampleDaemon, cfg, db_url=pg_url, serve=False)
        daemon = SampleDaemon(
            runtime.Context(cfg, runner.metrics, runner.owner, pg_url, runner.stop, runtime.log)
        )
        daemon.setup(db_conn)
        (stage,) = daemon.stages()
        queue.enqueue(db_conn, "sample", range(1, 9))
        items = queue.claim(db_conn, "sample", runner.owner, 8, 60)
        taken = items[3]
        db_conn.execute("UPDATE queue SET lease_owner = 'someone-else' WHERE id = %s", (taken.id,))
        batch = runtime._Batch(stage, items, {}, results=[(it, "text", [0.1, 0.2]) for it in items])
        runner._write_batches(db_conn, [batch])
    written = {r[0] for r in db_conn.execute("SELECT subject FROM sample_results").fetchall()}
    assert written == {it.subject for it in items} - {taken.subject}
    status = db_conn.execute("SELECT status, lease_owner FROM queue WHERE id = %s", (taken.id,)).fetchone()
    assert status == ("running", "someone-else")
    text = runner.metrics.exposition().decode()
    assert 'outcome="lease_lost",stage="sample"} 1.0' in text


# ------------------------------------------ review: errors that are not an outage, outside writes


def failing_tick_daemon(kind: str) -> type[SampleDaemon]:
    class FailingTick(SampleDaemon):
        def tick(self, conn: Any) -> None:  # e.g. a sweep or repair statement that always fails
            with conn.transaction():
                for statement in _FAILING_WRITES[kind].split("; "):
                    conn.execute(statement)

    return FailingTick


@pytest.mark.parametrize("kind", ["statement_timeout", "disk_full"])
def test_a_tick_whose_statement_fails_never_stops_the_queue_work(pg_url, db_conn, kind, caplog):
    """The writer told connection loss from other errors, the loop did not: a periodic statement
    (tick) that timed out was "database_lost" - the database reported down, a reconnect, the same
    tick again - and no item was ever claimed (--once never ended). Now the tick is logged and
    backed off, and the queue work goes on."""
    with FakeOllama() as ollama:
        queue.enqueue(db_conn, "sample", range(1, 17))
        cfg = config.load(environ={}).with_overrides(
            ollama__urls=[ollama.url], queue__poll_interval_s=0.1, runtime__dependency_backoff_s=0.2
        )
        runner = runtime.Runner(failing_tick_daemon(kind), cfg, db_url=pg_url, once=True, serve=False)
        with caplog.at_level(logging.INFO):
            t, box = in_thread(runner.run)
            t.join(45)
            assert not t.is_alive(), "--once did not end: the tick's error stops every claim"
    assert box.get("result") == 0, box
    assert db_conn.execute("SELECT count(*) FROM sample_results").fetchone()[0] == 16
    events = [getattr(r, "event", None) or r.getMessage() for r in caplog.records]
    assert "tick_failed" in events and "database_lost" not in events, events
    assert "tick failed" in runner.last_error


def test_a_claim_refused_by_the_server_is_no_database_outage(pg_url, db_conn, caplog, monkeypatch):
    """A claim statement the server refuses on a live connection (here a statement timeout) backs
    the loop off; it does not set the database down or reconnect, and the work resumes."""
    real_claim = queue.claim
    failures = [2]

    def claim(conn: Any, *args: Any, **kw: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = '50ms'")
                conn.execute("SELECT pg_sleep(2)")
        return real_claim(conn, *args, **kw)

    monkeypatch.setattr(queue, "claim", claim)
    with FakeOllama() as ollama:
        queue.enqueue(db_conn, "sample", range(1, 9))
        cfg = config.load(environ={}).with_overrides(
            ollama__urls=[ollama.url], queue__poll_interval_s=0.1, runtime__dependency_backoff_s=0.2
        )
        runner = runtime.Runner(SampleDaemon, cfg, db_url=pg_url, once=True, serve=False)
        with caplog.at_level(logging.INFO):
            t, box = in_thread(runner.run)
            t.join(45)
            assert not t.is_alive()
    assert box.get("result") == 0, box
    assert db_conn.execute("SELECT count(*) FROM sample_results").fetchone()[0] == 8
    events = [getattr(r, "event", None) or r.getMessage() for r in caplog.records]
    assert events.count("turn_failed") == 2 and "database_lost" not in events, events


class _BlockingSearch:
    """A BA search client whose first call takes as long as the test says (a slow BA: retries of
    a call that times out), then answers an empty result."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def search(self, params: Any, page: int, size: int) -> Any:
        self.calls += 1
        self.release.wait(60)
        return parse_search_page(b'{"maxErgebnisse": 0, "ergebnisliste": [], "page": 1, "size": 100}')

    def close(self) -> None:
        self.release.set()


def test_a_crawl_page_slower_than_the_lease_keeps_the_source_lease(pg_url, db_conn):
    """The review: the crawl extended its source's lease only between pages, and one page may take
    (max_retries + 1) x deadline_s plus backoff (14 min by default) against a 5 min lease; another
    fetcher then crawled the same source alongside. The loop now heartbeats the running crawl's
    lease like queue items'."""
    client = _BlockingSearch()

    class Fetcher(FetcherDaemon):
        def __init__(self, ctx: Context) -> None:
            super().__init__(ctx, client=client)  # type: ignore[arg-type]

    cfg = config.load(environ={}).with_overrides(
        fetcher__sources=[{"name": "de"}], queue__lease_s=1.0, queue__poll_interval_s=0.05
    )
    runner = runtime.Runner(Fetcher, cfg, db_url=pg_url, serve=False)
    t, box = in_thread(runner.run)
    lease = "SELECT lease_owner, lease_expires, lease_expires > now() FROM fetch_sources WHERE name = 'de'"
    try:
        owner, _, _ = wait_until(
            lambda: (r := db_conn.execute(lease).fetchone()) and r[0] and r, timeout=30, what="the claim"
        )
        assert client.calls == 1 or wait_until(lambda: client.calls == 1, timeout=10)
        # Three lease lengths later the call still runs and the lease has moved on, never lapsed.
        for _ in range(3):
            before = db_conn.execute(lease).fetchone()[1]
            wait_until(lambda b=before: db_conn.execute(lease).fetchone()[1] > b, timeout=10, what="extended")
            held_by, _, alive = db_conn.execute(lease).fetchone()
            assert held_by == owner and alive
        assert client.calls == 1  # still the first, slow call
    finally:
        client.release.set()
        runner.stop.set()
        t.join(30)
    assert "error" not in box, box.get("error")
