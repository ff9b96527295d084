"""The fetcher against the fake BA and a real PostgreSQL: partitioned crawls under the result cap,
incremental and full runs, schema drift, bad input, descriptions with give-up, dependency down,
the daemon on the real runtime, and the `jobpipe fetch` commands."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from jobpipe import config, crawl, fetch_sources, queue
from jobpipe.ba.client import BAClient
from jobpipe.ba.wire import SearchPage
from jobpipe.cli import main as cli_main
from jobpipe.daemons.fetcher import FetcherDaemon, FetcherMetrics
from jobpipe.errors import ConfigError, DependencyDown
from jobpipe.metrics import DaemonMetrics
from jobpipe.runtime import run_daemon
from jobpipe.sim.ba import FakeBA, Population
from tests.bench_run import run_bench
from tests.conftest import ROOT

TODAY = date(2026, 9, 14)


class Recording:
    """A search client that records every request (params, page, size) before passing it on."""

    def __init__(self, client: BAClient) -> None:
        self.client = client
        self.calls: list[tuple[dict[str, Any], int, int]] = []
        self.lock = threading.Lock()

    def search(self, params: Mapping[str, Any], page: int, size: int) -> SearchPage:
        with self.lock:
            self.calls.append((dict(params), page, size))
        return self.client.search(params, page, size)


def client_for(fake: FakeBA, **kw: Any) -> BAClient:
    opts: dict[str, Any] = {
        "rate_limit_per_s": None,
        "max_retries": 1,
        "backoff_base_s": 0.0,
        "sleep": lambda s: None,
    }
    opts.update(kw)
    return BAClient(fake.url, **opts)


def crawl_settings(**kw: Any) -> crawl.CrawlSettings:
    """The shipped crawl settings with `kw` changed, and every sighting written
    (seen_resolution_s 0) unless `kw` says otherwise."""
    shipped = crawl.CrawlSettings.from_config(config.load(environ={}))
    return dataclasses.replace(shipped, **{"seen_resolution_s": 0.0, **kw})


def population(n: int, seed: int = 1, **kw: Any) -> Population:
    kw.setdefault("occupations", 300)
    kw.setdefault("expired_share", 0.0)
    return Population.generate(n, seed, today=TODAY, **kw)


@pytest.fixture
def fake() -> Iterator[FakeBA]:
    with FakeBA(population(600)) as f:
        yield f


def stored(conn: Any) -> set[str]:
    return {r[0] for r in conn.execute("SELECT external_id FROM postings").fetchall()}


def live_refnrs(fake: FakeBA, **filters: Any) -> set[str]:
    return {fake.population.postings[i].refnr for i in fake.population.search(filters).indices}


def crawl_once(conn: Any, client: Any, params: dict[str, Any], **kw: Any) -> crawl.CrawlResult:
    with crawl.Crawler(client, conn, **kw) as c:
        return c.crawl("test", params)


# ---------------------------------------------------------------- crawling and splitting


def test_small_partition_crawled_completely(db_conn, fake):
    rec = Recording(client_for(fake))
    result = crawl_once(db_conn, rec, {"angebotsart": 1}, page_size=50)
    want = live_refnrs(fake, angebotsart=1)
    assert result.error is None and not result.truncated
    assert stored(db_conn) == want
    assert result.stats.inserted == len(want) and result.parts == 1
    assert [c[1] for c in rec.calls] == list(range(1, len(rec.calls) + 1))
    assert len(rec.calls) == -(-len(want) // 50)


def test_partition_split_under_the_cap(db_conn, fake):
    """A partition with more hits than the cap allows is split until every part fits: every posting
    is stored, and no request ever pages past the cap."""
    rec = Recording(client_for(fake))
    result = crawl_once(db_conn, rec, {}, page_size=25, max_results=100)
    assert len(fake.population.postings) > 100
    assert result.error is None
    assert result.truncated == []
    assert stored(db_conn) == live_refnrs(fake)
    assert all(page * size <= 100 for _, page, size in rec.calls)
    assert result.parts > 1
    # a posting listed in several parts (several locations) is stored once
    assert db_conn.execute("SELECT count(*) FROM postings").fetchone()[0] == len(live_refnrs(fake))


def test_split_uses_the_next_dimensions_when_a_region_is_still_too_big(db_conn):
    with FakeBA(population(400, seed=2)) as f:
        rec = Recording(client_for(f))
        result = crawl_once(db_conn, rec, {}, page_size=10, max_results=30)
        assert result.error is None and result.truncated == []
        assert max(len(p) for p, _, _ in rec.calls) >= 3  # wo, then more dimensions below it
        assert all(page * size <= 30 for _, page, size in rec.calls)
        assert stored(db_conn) == live_refnrs(f)
        assert result.stats.inserted == len(live_refnrs(f))


def test_still_truncated_partition_is_recorded(db_conn, fake, caplog):
    rec = Recording(client_for(fake))
    with crawl.Crawler(rec, db_conn, page_size=20, max_results=60, dimensions=()) as c:
        result = c.crawl("all", {"angebotsart": 1})
    total = len(live_refnrs(fake, angebotsart=1))
    assert len(result.truncated) == 1
    t = result.truncated[0]
    assert (t.params, t.total, t.covered, t.reason) == ({"angebotsart": 1}, total, 60, "cap")
    assert len(stored(db_conn)) == 60  # as far as the cap allows, not silently nothing
    assert any("partition_truncated" in r.getMessage() for r in caplog.records)


def test_split_gap_is_recorded(db_conn):
    """Postings abroad have no federal state: a split by region cannot reach them, and says so."""
    with FakeBA(population(300, seed=4, abroad_share=0.2)) as f:
        with crawl.Crawler(
            client_for(f), db_conn, page_size=20, max_results=100, dimensions=crawl.SPLIT_DIMENSIONS[:1]
        ) as c:
            result = c.crawl("all", {})
        total = len(live_refnrs(f))
    gaps = [t for t in result.truncated if t.reason == "split_gap"]
    assert len(gaps) == 1 and gaps[0].total == total and gaps[0].covered < total


def test_choose_split_prefers_a_covering_dimension_with_least_overlap():
    c = crawl.Crawler.__new__(crawl.Crawler)
    c.dimensions = crawl.SPLIT_DIMENSIONS
    c.reachable = 60
    facets = {
        "bundesland": {"Bayern": 50, "Berlin": 30},  # covers 80 of 100: a gap
        "arbeitszeit": {"vz": 80, "tz": 40, "ho": 0},  # covers all, 20 fetched twice
        "befristung": {"1": 30, "2": 70},  # covers all exactly, one part above the cap
        "berufsfeld": {"A": 50, "B": 50},  # covers all exactly, every part under the cap
    }
    page = SearchPage(items=(), total=100, page=1, size=10, facets=facets)
    dim, values = c._choose_split({}, page)
    assert dim.param == "berufsfeld" and values == ["A", "B"]
    dim, values = c._choose_split({"berufsfeld": "A"}, page)
    assert dim.param == "befristung" and values == ["2", "1"]  # exact beats overlapping
    dim, values = c._choose_split({"berufsfeld": "A", "befristung": "1"}, page)
    assert dim.param == "arbeitszeit" and values == ["vz", "tz"]  # covering beats a gap
    dim, values = c._choose_split({"berufsfeld": "A", "befristung": "1", "arbeitszeit": "vz"}, page)
    assert dim.param == "wo" and values == ["Bayern", "Berlin"]  # best coverage left
    dim, values = c._choose_split({}, SearchPage(items=(), total=100, page=1, size=10))
    assert dim.param == "wo" and len(values) == 16  # no facets: the federal states, in order


def test_two_partitions_share_postings_stored_once(db_conn, fake):
    client = client_for(fake)
    a = crawl_once(db_conn, client, {"angebotsart": 1}, page_size=50)
    b = crawl_once(db_conn, client, {"wo": "Bayern"}, page_size=50)
    both = live_refnrs(fake, angebotsart=1) & live_refnrs(fake, wo="Bayern")
    assert both, "the fixture must overlap"
    assert b.stats.unchanged == len(both)
    assert stored(db_conn) == live_refnrs(fake, angebotsart=1) | live_refnrs(fake, wo="Bayern")
    assert a.stats.inserted + b.stats.inserted == len(stored(db_conn))


def test_second_run_unchanged_and_changed_posting_requeues(db_conn, fake):
    client = client_for(fake)
    crawl_once(db_conn, client, {}, page_size=100)
    db_conn.execute("UPDATE postings SET description_state = 'fetched'")  # as the description stage does
    db_conn.execute("UPDATE queue SET status = 'done', finished_at = now()")
    again = crawl_once(db_conn, client, {}, page_size=100)
    assert (again.stats.inserted, again.stats.updated) == (0, 0)
    assert again.stats.unchanged >= len(live_refnrs(fake))
    assert db_conn.execute("SELECT count(*) FROM queue WHERE status = 'pending'").fetchone()[0] == 0
    target = fake.population.postings[5].refnr
    fake.population.modify(target, title="Neuer Titel Fachinformatiker Systemintegration (m/w/d)")
    third = crawl_once(db_conn, client, {}, page_size=100)
    assert third.stats.updated == 1
    pid, title_id = db_conn.execute(
        "SELECT id, title_id FROM postings WHERE external_id = %s", (target,)
    ).fetchone()
    pending = db_conn.execute("SELECT stage, subject FROM queue WHERE status = 'pending'").fetchall()
    # the posting's embedding and description again, and the new title's classification
    assert sorted(pending) == [("classify", title_id), ("description", pid), ("embed", pid)]


def test_incremental_run_fetches_only_the_recent_window(db_conn, fake):
    rec = Recording(client_for(fake))
    full = crawl_once(db_conn, rec, {"angebotsart": 1}, page_size=50)
    new = fake.population.add(7)
    n_calls = len(rec.calls)
    with crawl.Crawler(rec, db_conn, page_size=50) as c:
        inc = c.crawl("test", {"angebotsart": 1}, crawl.INCREMENTAL, since_days=2)
    calls = rec.calls[n_calls:]
    assert all(p["veroeffentlichtseit"] == 2 for p, _, _ in calls)
    assert len(calls) < full.requests
    new_offer1 = {r for r in new if fake.population.get(r).offer == 1}
    assert inc.stats.inserted == len(new_offer1)
    assert new_offer1 <= stored(db_conn)
    # a source's own veroeffentlichtseit is kept when it is narrower; the window is capped at 100
    with crawl.Crawler(rec, db_conn, page_size=50) as c:
        c.crawl("test", {"angebotsart": 1, "veroeffentlichtseit": 1}, crawl.INCREMENTAL, since_days=5)
        c.crawl("test", {"angebotsart": 1}, crawl.INCREMENTAL, since_days=500)
    assert rec.calls[-2][0]["veroeffentlichtseit"] in (1, 100)
    assert {p["veroeffentlichtseit"] for p, _, _ in rec.calls[-3:]} <= {1, 100}


def test_plan_full_incremental_and_window():
    now = datetime(2026, 9, 14, 12, tzinfo=UTC)
    h = timedelta(hours=1)
    assert fetch_sources.plan(now, None, None, None, 3600, 86400 * 7) == ("full", None)
    assert fetch_sources.plan(now, now - 8 * 24 * h, now - h, now - h, 3600, 86400 * 7) == ("full", None)
    assert fetch_sources.plan(now, now - 2 * h, None, now - 2 * h, 3600, 86400 * 7) == ("incremental", 2)
    assert fetch_sources.plan(now, now - 30 * h, now - 1.5 * h, now - 30 * h, 3600, 86400 * 7) == (
        "incremental",
        3,
    )
    assert fetch_sources.plan(now, now - 30 * h, now - 0.5 * h, now - 30 * h, 3600, 86400 * 7) is None
    # the last success is older than any incremental window can reach: full
    assert fetch_sources.plan(
        now, now - 200 * 24 * h, now - 2 * h, now - 120 * 24 * h, 3600, 86400 * 365
    ) == (
        "full",
        None,
    )


def test_sources_schedule_and_lease(db_conn):
    sources = fetch_sources.parse_sources([{"name": "a", "angebotsart": 1}, {"name": "b", "wo": "Berlin"}])
    fetch_sources.sync_sources(db_conn, sources)
    due = fetch_sources.due_runs(db_conn, 3600, 86400)
    assert [(r.name, r.kind) for r in due] == [("a", "full"), ("b", "full")]
    started = fetch_sources.claim_source(db_conn, "a", "me", 60)
    assert started is not None
    assert fetch_sources.claim_source(db_conn, "a", "other", 60) is None  # one crawler per source
    assert [r.name for r in fetch_sources.due_runs(db_conn, 3600, 86400)] == ["b"]
    crawl.record_success(db_conn, crawl.CrawlResult("a", "full", started), "me")
    assert [r.name for r in fetch_sources.due_runs(db_conn, 3600, 86400)] == ["b"]
    db_conn.execute(
        "UPDATE fetch_sources SET last_full_at = last_full_at - interval '2 hours', "
        "last_success_at = last_success_at - interval '2 hours' WHERE name = 'a'"
    )
    due = {r.name: r for r in fetch_sources.due_runs(db_conn, 3600, 86400)}
    assert (due["a"].kind, due["a"].since_days) == ("incremental", 2)
    # removed from the config: disabled, never due
    fetch_sources.sync_sources(db_conn, sources[1:])
    assert [r.name for r in fetch_sources.due_runs(db_conn, 3600, 86400)] == ["b"]
    # back with other parameters: a full crawl of the new query
    fetch_sources.sync_sources(db_conn, [fetch_sources.Source("a", {"angebotsart": 4}), sources[1]])
    due = {r.name: r for r in fetch_sources.due_runs(db_conn, 3600, 86400)}
    assert (due["a"].kind, due["a"].params) == ("full", {"angebotsart": 4})
    delay = crawl.record_failure(db_conn, "b", "me", "boom", 10, 100)
    assert delay == 10 and [r.name for r in fetch_sources.due_runs(db_conn, 3600, 86400)] == [
        "a"
    ]  # b backs off
    assert crawl.record_failure(db_conn, "b", "me", "boom", 10, 100) == 20


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"angebotsart": 1}], "needs a non-empty `name`"),
        ([{"name": "a"}, {"name": "a"}], "duplicate source name"),
        ([{"name": "a", "page": 2}], "unknown search parameter(s) page"),
        ([{"name": "a", "wo": ["x"]}], "must be a string or an integer"),
        (["x"], "must be a mapping"),
    ],
)
def test_bad_sources_config(entries, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fetch_sources.parse_sources(entries)


# ---------------------------------------------------------------- shape drift and bad input


@pytest.mark.parametrize("mode", ["v4", "no_keys"])
def test_schema_drift_stores_nothing_and_is_counted(db_conn, fake, mode, caplog):
    fake.faults.set_drift(mode, route="search")
    metrics = FetcherMetrics(DaemonMetrics("fetcher"))
    result = crawl_once(db_conn, client_for(fake), {}, page_size=50, metrics=metrics)
    assert result.error is not None and "schema error" in result.error
    assert result.schema_errors == 3  # first try + 2 retries, then the run stops
    assert stored(db_conn) == set()
    assert metrics.schema_errors.labels("fetcher", "search")._value.get() == 3
    logged = [r for r in caplog.records if r.getMessage() == "schema_error"]
    assert logged and logged[0].jobpipe_fields["sample"]


def test_transient_truncated_and_malformed_pages_are_retried(db_conn, fake):
    fake.faults.truncate_next(2)  # the first page twice: the third try succeeds
    result = crawl_once(db_conn, client_for(fake), {}, page_size=100)
    assert result.error is None and result.schema_errors == 2
    assert stored(db_conn) == live_refnrs(fake)
    fake.faults.malformed_next(1)  # an HTML maintenance page with status 200
    result = crawl_once(db_conn, client_for(fake), {}, page_size=100)
    assert result.error is None and result.schema_errors == 1
    assert result.stats.unchanged == len(live_refnrs(fake))


def test_null_item_and_dirty_data_crawl(db_conn):
    with FakeBA(population(160, seed=9, dirty_share=0.5)) as f:
        f.faults.null_item_next(1)
        result = crawl_once(db_conn, client_for(f), {}, page_size=100)
        assert result.error is None
        assert result.problems > 0
        assert stored(db_conn) == live_refnrs(f)  # duplicates collapsed, null skipped, nothing lost
        nul = next(p for p in f.population.postings if p.dirty == "nul")
    title, raw = db_conn.execute(
        "SELECT title, raw::text FROM postings WHERE external_id = %s", (nul.refnr,)
    ).fetchone()
    assert "\x00" not in title and "\\u0000" not in raw


def test_query_rejected_by_the_ba_ends_the_run(db_conn, fake):
    result = crawl_once(db_conn, client_for(fake), {"angebotsart": 99}, page_size=50)
    assert result.error is not None and "query rejected" in result.error
    assert stored(db_conn) == set()


def test_wrong_key_is_dependency_down_and_backs_off(db_conn, fake):
    client = BAClient(
        fake.url, "wrong-key", rate_limit_per_s=None, max_retries=2, backoff_base_s=0.0, sleep=lambda s: None
    )
    fetch_sources.sync_sources(db_conn, fetch_sources.parse_sources([{"name": "de"}]))
    run = fetch_sources.due_runs(db_conn, 3600, 86400)[0]
    with pytest.raises(DependencyDown):
        settings = crawl_settings(page_size=50, lease_s=60, retry_s=30, retry_max_s=60)
        crawl.run_source(client, db_conn, run, "me", settings)
    assert fake.count("search", 403) == 3
    err, nxt, lease, failures = db_conn.execute(
        "SELECT last_error, next_attempt_at > now(), lease_owner, failures FROM fetch_sources"
    ).fetchone()
    assert "dependency down" in err and nxt and lease is None and failures == 1
    assert fetch_sources.due_runs(db_conn, 3600, 86400) == []  # no crash loop: the next try waits


def test_outage_mid_crawl_keeps_stored_pages_and_backs_off(db_conn, fake):
    fetch_sources.sync_sources(db_conn, fetch_sources.parse_sources([{"name": "de"}]))
    run = fetch_sources.due_runs(db_conn, 3600, 86400)[0]

    def break_after_first_page(ev: crawl.PageEvent) -> None:
        if ev.page == 1:
            fake.faults.fail_next(100, 503, route="search")

    settings = crawl_settings(page_size=50, retry_s=30, retry_max_s=60)
    with pytest.raises(DependencyDown):
        crawl.run_source(client_for(fake), db_conn, run, "me", settings, on_page=break_after_first_page)
    n = len(stored(db_conn))
    assert 50 <= n <= 100  # page 1 (and page 2 if it was prefetched before the outage) kept
    ok, err = db_conn.execute("SELECT last_success_at, last_error FROM fetch_sources").fetchone()
    assert ok is None and "503" in err
    # the next run, once the BA is back, completes and only adds what is missing
    fake.faults.clear()
    db_conn.execute("UPDATE fetch_sources SET next_attempt_at = NULL")
    result = crawl.run_source(
        client_for(fake), db_conn, fetch_sources.due_runs(db_conn, 3600, 86400)[0], "me", settings
    )
    assert result.error is None and result.stats.inserted == len(live_refnrs(fake)) - n
    assert stored(db_conn) == live_refnrs(fake)


def test_stop_ends_the_crawl_between_pages_and_releases_the_lease(db_conn, fake):
    fetch_sources.sync_sources(db_conn, fetch_sources.parse_sources([{"name": "de"}]))
    run = fetch_sources.due_runs(db_conn, 3600, 86400)[0]
    stop = threading.Event()
    settings = crawl_settings(page_size=50)
    result = crawl.run_source(
        client_for(fake), db_conn, run, "me", settings, stop=stop, on_page=lambda ev: stop.set()
    )
    assert result.stopped and result.error is None
    assert 50 <= len(stored(db_conn)) <= 100
    row = db_conn.execute("SELECT lease_owner, last_success_at, last_error FROM fetch_sources").fetchone()
    assert row == (None, None, None)  # released, not a success, not a failure
    assert [r.name for r in fetch_sources.due_runs(db_conn, 3600, 86400)] == ["de"]


# ---------------------------------------------------------------- the daemon on the runtime


def daemon_cfg(fake: FakeBA, **over: Any) -> config.Config:
    base = {
        "fetcher__base_url": fake.url,
        "fetcher__rate_limit_per_s": 1000.0,
        "fetcher__sources": [{"name": "all"}],
        "fetcher__page_size": 100,
        "fetcher__backoff_base_s": 0.0,
        "fetcher__max_retries": 1,
        "fetcher__workers": 4,
        "fetcher__batch_size": 50,
        "fetcher__description_max_chars": 5000,
        "queue__poll_interval_s": 0.05,
        "queue__backoff_base_s": 0.0,
        "runtime__dependency_backoff_s": 0.05,
        "runtime__dependency_backoff_max_s": 0.1,
        "runtime__status_interval_s": 0.1,
    }
    base.update(over)
    return config.load(environ={}).with_overrides(**base)


def run_fetcher(cfg: config.Config, url: str) -> DaemonMetrics:
    metrics = DaemonMetrics("fetcher")
    assert run_daemon(FetcherDaemon, cfg, once=True, db_url=url, metrics=metrics) == 0
    return metrics


def test_daemon_crawls_and_fetches_descriptions(pg_url, db_conn):
    pop = population(240, seed=12, expired_share=0.0, partner_share=0.2, dirty_share=0.2)
    with FakeBA(pop) as f:
        metrics = run_fetcher(daemon_cfg(f), pg_url)
        assert stored(db_conn) == live_refnrs(f)
        states = dict(
            db_conn.execute("SELECT description_state, count(*) FROM postings GROUP BY 1").fetchall()
        )
        partners = sum(1 for p in pop.postings if p.external_url)
        assert states.get("external") == partners
        assert states.get("fetched") == len(pop.postings) - partners
        huge = next(p for p in pop.postings if p.dirty == "huge_description" and not p.external_url)
        nul = next(p for p in pop.postings if p.dirty == "nul" and not p.external_url)
    rows = dict(
        db_conn.execute(
            "SELECT external_id, description FROM postings WHERE external_id = ANY(%s)",
            ([huge.refnr, nul.refnr],),
        ).fetchall()
    )
    assert len(rows[huge.refnr]) <= 5000 and "\x00" not in rows[nul.refnr]
    assert "  " not in rows[nul.refnr] and "\n\n\n" not in rows[nul.refnr]
    text = metrics.exposition().decode()
    assert 'jobpipe_items_processed_total{daemon="fetcher",outcome="fetched",stage="description"}' in text
    assert 'jobpipe_fetcher_crawls_total{daemon="fetcher",kind="full",outcome="ok"} 1.0' in text
    assert db_conn.execute("SELECT last_success_at IS NOT NULL, truncated FROM fetch_sources").fetchone() == (
        True,
        False,
    )


@pytest.mark.system
def test_daemon_metrics_pass_promtool(pg_url):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    with FakeBA(population(30, seed=18)) as f:
        metrics = run_fetcher(daemon_cfg(f), pg_url)
    text = metrics.exposition().decode()
    for name in (
        "jobpipe_fetcher_schema_errors_total",
        "jobpipe_fetcher_truncated_partitions",
        "jobpipe_fetcher_postings_total",
        "jobpipe_fetcher_pages_total",
        "jobpipe_fetcher_crawls_total",
        "jobpipe_fetcher_last_crawl_success_timestamp_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_daemon_marks_gone_postings_inactive_and_outages_charge_nothing(pg_url, db_conn):
    with FakeBA(population(60, seed=13, partner_share=0.0)) as f:
        crawl_once(db_conn, client_for(f), {}, page_size=100)  # postings known, descriptions pending
        gone = f.population.refnrs()[:5]
        f.population.expire(gone)
        f.faults.fail_next(4, 503, route="details")  # the details endpoint is down for a moment
        run_fetcher(daemon_cfg(f), pg_url)
        assert f.count("details", 503) == 4
    rows = db_conn.execute(
        "SELECT external_id, active, inactive_since IS NOT NULL, description_state FROM postings "
        "WHERE NOT active OR description_state = 'gone'"
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(gone)
    assert all(r[1:] == (False, True, "gone") for r in rows)
    assert db_conn.execute(
        "SELECT count(*) FROM postings WHERE description_state = 'fetched' AND description <> ''"
    ).fetchone() == (55,)
    # the outage deferred items without charging them an attempt
    assert db_conn.execute(
        "SELECT count(*), max(attempts) FROM queue WHERE stage = 'description' AND status = 'done'"
    ).fetchone() == (60, 0)


def test_daemon_gives_up_descriptions_apart_from_failures(pg_url, db_conn):
    with FakeBA(population(12, seed=14, partner_share=0.0)) as f:
        f.faults.set_drift("no_keys", route="details")
        metrics = run_fetcher(daemon_cfg(f, fetcher__description_max_attempts=2), pg_url)
    states = dict(db_conn.execute("SELECT description_state, count(*) FROM postings GROUP BY 1").fetchall())
    assert states == {"given_up": 12}
    counts = dict(
        db_conn.execute(
            "SELECT outcome, sum(n) FROM stage_counts WHERE stage = 'description' GROUP BY 1"
        ).fetchall()
    )
    assert counts == {"failed": 12, "given_up": 12}
    assert queue.stats(db_conn, ["description"])["description"].given_up == 12
    text = metrics.exposition().decode()
    assert 'jobpipe_fetcher_schema_errors_total{daemon="fetcher",operation="details"} 24.0' in text


def test_daemon_wrong_key_stays_up_without_charging(pg_url, db_conn):
    with FakeBA(population(20, seed=15)) as f:
        cfg = daemon_cfg(f, fetcher__api_key="wrong")
        metrics = run_fetcher(cfg, pg_url)
        assert f.count("search", 403) == 2  # one request and one retry, then dependency down
    text = metrics.exposition().decode()
    assert 'jobpipe_dependency_up{daemon="fetcher",dependency="ba_api"} 0.0' in text
    assert 'jobpipe_fetcher_crawls_total{daemon="fetcher",kind="full",outcome="dependency_down"} 1.0' in text
    row = db_conn.execute("SELECT last_error, next_attempt_at > now() FROM fetch_sources").fetchone()
    assert "403" in row[0] and row[1]


def narrowest_part(fake: FakeBA) -> tuple[dict[str, Any], int]:
    """Source params fixing every split dimension to its most common value, and the part's hits."""
    pop = fake.population
    filters: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for facet, param, conv in (
        ("bundesland", "wo", str),
        ("arbeitszeit", "arbeitszeit", lambda v: (v,)),
        ("angebotsart", "angebotsart", int),
        ("befristung", "befristung", lambda v: (int(v),)),
        ("berufsfeld", "berufsfeld", str),
    ):
        counts = pop.search(filters).facets[facet]["counts"]
        value = max(counts, key=counts.get)
        filters[param] = conv(value)
        params[param] = value
    return params, len(pop.search(filters).indices)


def test_daemon_records_truncation_metric(pg_url, db_conn):
    with FakeBA(population(400, seed=16)) as f:
        params, total = narrowest_part(f)
        assert total > 4, "the fixture needs a part above the cap that cannot be split further"
        cfg = daemon_cfg(
            f, fetcher__max_results=4, fetcher__page_size=2, fetcher__sources=[{"name": "small", **params}]
        )
        metrics = run_fetcher(cfg, pg_url)
    text = metrics.exposition().decode()
    assert 'jobpipe_fetcher_truncated_partitions{daemon="fetcher",source="small"} 1.0' in text
    assert 'jobpipe_fetcher_crawls_total{daemon="fetcher",kind="full",outcome="truncated"} 1.0' in text
    truncated, parts = db_conn.execute("SELECT truncated, truncated_parts FROM fetch_sources").fetchone()
    assert truncated and len(parts) == 1
    assert (parts[0]["total"], parts[0]["covered"], parts[0]["reason"]) == (total, 4, "cap")
    assert db_conn.execute("SELECT count(*) FROM postings").fetchone() == (4,)


@pytest.mark.system
def test_jobpipe_run_fetcher_once_as_a_process(tmp_path, pg_url, db_conn):
    with FakeBA(population(80, seed=19)) as f:
        cfg_file = tmp_path / "jobpipe.yaml"
        cfg_file.write_text(
            f"database:\n  url: '{pg_url}'\n"
            f"fetcher:\n  base_url: '{f.url}'\n  rate_limit_per_s: 1000\n  sources: [{{name: alle}}]\n"
            "queue:\n  poll_interval_s: 0.1\n",
            encoding="utf-8",
        )
        out = subprocess.run(
            [sys.executable, "-m", "jobpipe.cli", "-c", str(cfg_file), "run", "fetcher", "--once",
             "--metrics-port", "0"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert stored(db_conn) == live_refnrs(f)
    assert db_conn.execute(
        "SELECT count(*) FROM postings WHERE description_state = 'pending'"
    ).fetchone() == (0,)


def test_alert_conditions_from_fetch_sources(pg_url, db_conn):
    import logging

    from jobpipe.runtime import Context

    cfg = config.load(environ={}).with_overrides(
        fetcher__sources=[{"name": "a"}, {"name": "b"}, {"name": "c"}]
    )
    ctx = Context(cfg, DaemonMetrics("fetcher"), "me", pg_url, threading.Event(), logging.getLogger("t"))
    daemon = FetcherDaemon(ctx)
    daemon.setup(db_conn)
    by_key = {c.key: c for c in daemon.alert_conditions(db_conn)}
    assert not any(c.active for c in by_key.values())
    db_conn.execute(
        """UPDATE fetch_sources SET truncated = true,
                  truncated_parts = '[{"params": {}, "total": 12000, "covered": 10000, "reason": "cap"}]'
            WHERE name = 'a'"""
    )
    db_conn.execute(
        "UPDATE fetch_sources SET last_error = 'schema error (BA format changed?) x' WHERE name = 'b'"
    )
    db_conn.execute(
        "UPDATE fetch_sources SET last_error = 'dependency down: 403', failures = 4 WHERE name = 'c'"
    )
    by_key = {c.key: c for c in daemon.alert_conditions(db_conn)}
    assert by_key["truncated_partitions"].active and "a" in by_key["truncated_partitions"].numbers
    assert by_key["schema_drift"].active and "b" in by_key["schema_drift"].numbers
    assert by_key["crawl_failing"].active and "c: 4" in by_key["crawl_failing"].numbers
    daemon.close()


# ---------------------------------------------------------------- CLI


def test_cli_fetch_run_and_sources(tmp_path, pg_url, db_conn, capsys):
    with FakeBA(population(120, seed=17)) as f:
        cfg_file = tmp_path / "jobpipe.yaml"
        cfg_file.write_text(
            f"database:\n  url: '{pg_url}'\n"
            f"fetcher:\n  base_url: '{f.url}'\n  rate_limit_per_s: 1000\n  page_size: 50\n"
            "  sources: [{name: eins, angebotsart: 1}, {name: alle}]\n",
            encoding="utf-8",
        )
        assert cli_main(["-c", str(cfg_file), "fetch", "run", "--source", "eins", "--full"]) == 0
        out = capsys.readouterr().out
        assert "eins" in out and "new" in out
        assert stored(db_conn) == live_refnrs(f, angebotsart=1)
        assert cli_main(["-c", str(cfg_file), "fetch", "sources"]) == 0
        out = capsys.readouterr().out
        assert "eins" in out and "alle" in out and "never" in out
        assert cli_main(["-c", str(cfg_file), "fetch", "run", "--source", "nope"]) == 2
        assert "unknown source" in capsys.readouterr().err


# ---------------------------------------------------------------- the benchmark stays runnable


@pytest.mark.system
@pytest.mark.slow
def test_bench_quick_mode(pg_url):
    """bench/fetcher.py --quick end to end (fake BA process, ingest in child processes)."""
    result, _ = run_bench("fetcher.py", "--quick", "--database-url", pg_url, timeout=300)
    assert result["stored"] == result["postings"] == 5000
    assert result["goals_met"]["complete"]
    assert result["run3_bumped"] == 5000  # the aged run rewrote every row's last_seen_at
    assert 0 < result["run1_peak_rss_mb"] < 150
    assert result["run1_postings_per_s"] > 0 and result["speedup"] > 0
