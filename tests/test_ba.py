"""jobpipe.ba.client: the BA client against the fake BA server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from jobpipe.ba.client import BAClient, BAQueryError, Gone, RateLimiter, parse_retry_after
from jobpipe.ba.wire import PostingDetails, SchemaError
from jobpipe.errors import DependencyDown, ItemError
from jobpipe.sim.ba import FakeBA, Population

TODAY = date(2026, 10, 1)


class FakeClock:
    """A monotonic clock that only moves when someone sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture(scope="module")
def population() -> Population:
    return Population.generate(1500, seed=21, today=TODAY)


@pytest.fixture
def fake(population: Population) -> Iterator[FakeBA]:
    with FakeBA(population) as server:
        yield server


def client(fake: FakeBA, clock: FakeClock | None = None, **kw: Any) -> BAClient:
    """A client that never really sleeps for backoff (unless given no clock and a rate limit)."""
    clock = clock or FakeClock()
    defaults: dict[str, Any] = {
        "berufenet_url": fake.berufenet_url,
        "rate_limit_per_s": None,
        "sleep": clock.sleep,
        "clock": clock,
        "max_retries": 4,
        "backoff_base_s": 1.0,
        "backoff_max_s": 30.0,
        "read_timeout": 10.0,
    }
    return BAClient(fake.url, **{**defaults, **kw})


# ---------------------------------------------------------------- search


def test_paging_through_a_query(fake: FakeBA) -> None:
    with client(fake, user_agent="jobpipe-test/1") as c:
        first = c.search({"angebotsart": 1}, page=1, size=100)
        pages = [first] + [
            c.search({"angebotsart": 1}, page=n, size=100) for n in range(2, first.total // 100 + 2)
        ]
    refnrs = [r.external_id for p in pages for r in p.items]
    expected = [r for r in fake.population.refnrs(active=True) if fake.population.get(r).offer == 1]
    assert len(refnrs) == first.total == len(expected) and set(refnrs) == set(expected)
    assert all(p.page == n for n, p in enumerate(pages, 1)) and first.size == 100
    assert {r.offer_type for p in pages for r in p.items} == {"ARBEIT"}
    assert first.facets["angebotsart"] == {"1": first.total}
    assert pages[-1].items == () or len(pages[-1].items) < 100
    assert fake.last_headers["User-Agent"] == "jobpipe-test/1"
    assert fake.last_headers["X-API-Key"] == "jobboerse-jobsuche"


def test_umlaut_state_query_and_records(fake: FakeBA) -> None:
    with client(fake) as c:
        result = c.search({"wo": "Baden-Württemberg"}, page=1, size=50)
    assert result.total > 0 and result.problems == []
    for rec in result.items:
        assert "BADEN_WUERTTEMBERG" in {loc.region for loc in rec.locations}
        assert rec.title and rec.occupation_label and rec.published_from and rec.modified_at
        assert all(-90 <= loc.lat <= 90 and -180 <= loc.lon <= 180 for loc in rec.locations if loc.lat)


@pytest.mark.parametrize(("page", "size"), [(0, 100), (101, 100), (1, 10_001), (-1, 10), (3, 0)])
def test_page_cap_is_checked_locally(fake: FakeBA, page: int, size: int) -> None:
    with client(fake) as c, pytest.raises(BAQueryError, match="page") as caught:
        c.search({}, page=page, size=size)
    assert isinstance(caught.value, ItemError) and caught.value.kind == "http_400"
    assert fake.count() == 0  # nothing was sent
    with client(fake) as c, pytest.raises(ValueError):
        c.search({"page": 2}, page=1, size=10)


def test_a_400_names_the_code_and_path_and_is_not_retried(fake: FakeBA) -> None:
    with client(fake) as c, pytest.raises(BAQueryError) as caught:
        c.search({"angebotsart": 7}, page=1, size=10)
    assert caught.value.code == "EINGABEN_UNVOLLSTAENDIG_ODER_FEHLERHAFT"
    assert caught.value.path == "angebotsart"
    assert "EINGABEN_UNVOLLSTAENDIG_ODER_FEHLERHAFT at angebotsart" in str(caught.value)
    assert fake.count("search", 400) == 1 and fake.count() == 1


def test_empty_result(fake: FakeBA) -> None:
    with client(fake) as c:
        result = c.search({"was": "nichtvorhandenxyz"}, page=1, size=100)
    assert (result.total, result.items, result.facets) == (0, (), {})


# ---------------------------------------------------------------- retries


def test_403_burst_is_retried_with_jittered_backoff_then_succeeds(fake: FakeBA) -> None:
    clock = FakeClock()
    outcomes: list[tuple[str, str]] = []
    fake.faults.fail_next(3, 403)
    with client(fake, clock, observer=lambda op, s, outcome: outcomes.append((op, outcome))) as c:
        result = c.search({}, page=1, size=10)
    assert len(result.items) == 10
    assert fake.count("search", 403) == 3 and fake.count("search", 200) == 1
    assert len(clock.sleeps) == 3
    for attempt, slept in enumerate(clock.sleeps):
        assert 0 <= slept <= 1.0 * 2**attempt  # full jitter under the exponential ceiling
    assert outcomes == [("search", "http_403")] * 3 + [("search", "ok")]


def test_403_forever_is_dependency_down_without_really_waiting(fake: FakeBA) -> None:
    clock = FakeClock()
    started = time.monotonic()
    with (
        client(fake, clock, api_key="falsch", max_retries=6, backoff_max_s=600) as c,
        pytest.raises(DependencyDown) as caught,
    ):
        c.search({}, page=1, size=10)
    assert time.monotonic() - started < 5  # the backoff (up to minutes) went to the fake clock
    assert caught.value.dependency == "ba_api" and caught.value.kind == "http_403"
    assert fake.count("search", 403) == 7 and len(clock.sleeps) == 6
    assert sum(clock.sleeps) > 0


@pytest.mark.parametrize(("status", "kind"), [(503, "http_503"), (502, "http_502"), (500, "http_500")])
def test_5xx_forever_is_dependency_down(fake: FakeBA, status: int, kind: str) -> None:
    fake.faults.fail_next(100, status)
    with client(fake, max_retries=2) as c, pytest.raises(DependencyDown) as caught:
        c.details(fake.population.refnrs(active=True)[0])
    assert caught.value.kind == kind and fake.count("details", status) == 3


def test_401_is_not_retried(fake: FakeBA) -> None:
    fake.faults.fail_next(5, 401)
    with client(fake) as c, pytest.raises(DependencyDown) as caught:
        c.search({}, page=1, size=10)
    assert caught.value.kind == "http_401" and fake.count() == 1


def test_retry_after_seconds_is_honoured(fake: FakeBA) -> None:
    clock = FakeClock()
    fake.faults.fail_next(1, 429, retry_after=7)
    with client(fake, clock) as c:
        assert c.search({}, page=1, size=5).items
    assert clock.sleeps == [7.0]


def test_retry_after_http_date_is_honoured(fake: FakeBA) -> None:
    clock = FakeClock()
    when = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    fake.faults.fail_next(1, 503, retry_after=format_datetime(when, usegmt=True))
    with client(fake, clock, wall_clock=lambda: when.timestamp() - 12) as c:
        assert c.search({}, page=1, size=5).items
    assert clock.sleeps == [12.0]


def test_retry_after_longer_than_we_wait_hands_back_to_the_daemon(fake: FakeBA) -> None:
    clock = FakeClock()
    fake.faults.fail_next(1, 429, retry_after=3600)
    with client(fake, clock, backoff_max_s=60) as c, pytest.raises(DependencyDown) as caught:
        c.search({}, page=1, size=5)
    assert caught.value.retry_after == 3600 and caught.value.kind == "http_429"
    assert fake.count() == 1 and clock.sleeps == []


def test_parse_retry_after() -> None:
    now = datetime(2026, 10, 21, 7, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2026 06:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after("bald", now) is None and parse_retry_after(None, now) is None


def test_read_timeout_then_dependency_down(fake: FakeBA) -> None:
    outcomes: list[str] = []
    fake.faults.set_latency(2.0, route="details")
    c = client(fake, read_timeout=0.2, max_retries=1, observer=lambda op, s, o: outcomes.append(o))
    with c, pytest.raises(DependencyDown) as caught:
        c.details(fake.population.refnrs(active=True)[0])
    assert caught.value.kind == "timeout" and outcomes == ["timeout", "timeout"]


def test_connection_refused_then_dependency_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock()
    c = BAClient(
        f"http://127.0.0.1:{port}", rate_limit_per_s=None, sleep=clock.sleep, clock=clock, max_retries=2
    )
    with c, pytest.raises(DependencyDown) as caught:
        c.search({}, page=1, size=10)
    assert caught.value.kind == "connection" and len(clock.sleeps) == 2


def test_a_broken_observer_does_not_break_requests(fake: FakeBA) -> None:
    def observer(op: str, seconds: float, outcome: str) -> None:
        raise RuntimeError("metrics are down")

    with client(fake, observer=observer) as c:
        assert c.search({}, page=1, size=3).items


# ---------------------------------------------------------------- politeness


def test_rate_limit_spaces_requests_on_an_injected_clock(fake: FakeBA) -> None:
    clock = FakeClock()
    with client(fake, clock, rate_limit_per_s=5.0) as c:
        for n in range(1, 11):
            c.search({}, page=n, size=10)
    assert len(clock.sleeps) == 9 and sum(clock.sleeps) == pytest.approx(9 * 0.2)


def test_rate_limit_is_shared_by_threads_in_real_time(fake: FakeBA) -> None:
    fake.reset_counters()
    rate, threads, each = 25.0, 4, 5
    c = BAClient(fake.url, rate_limit_per_s=rate, max_concurrency=4)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(each):
                c.search({}, page=1 + offset * each + n, size=10)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    c.close()
    assert not errors
    arrivals = sorted(fake.arrivals)
    assert len(arrivals) == threads * each
    # 20 requests at 25/s take at least 19 intervals; allow scheduling noise of a few ms each.
    assert arrivals[-1] - arrivals[0] >= 19 / rate * 0.9
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sorted(gaps)[len(gaps) // 2] >= 0.8 / rate  # the median gap is the interval


def test_rate_limiter_burst_and_disabled() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, burst=3, clock=clock, sleep=clock.sleep)
    waits = [limiter.acquire() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0] and all(w > 0 for w in waits[3:])
    assert clock.now - 1000.0 == pytest.approx(0.3)
    off = RateLimiter(None, clock=clock, sleep=clock.sleep)
    assert [off.acquire() for _ in range(100)] == [0.0] * 100


def test_concurrency_is_capped(fake: FakeBA) -> None:
    fake.faults.set_latency(0.15, route="search")
    c = BAClient(fake.url, rate_limit_per_s=None, max_concurrency=2)
    workers = [threading.Thread(target=c.search, args=({}, 1, 5)) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    c.close()
    assert fake.count("search", 200) == 6
    assert fake.max_inflight == 2


# ---------------------------------------------------------------- details


def test_details_gone_versus_plain_404(fake: FakeBA) -> None:
    pop = fake.population
    expired = pop.refnrs(active=False)[0]
    live = next(r for r in pop.refnrs(active=True) if pop.get(r).external_url is None)
    with client(fake) as c:
        assert c.details(expired) == Gone(expired)
        fake.faults.fail_next(1, 404, route="details")  # a plain 404: not the expiry signal
        result = c.details(live)
        assert isinstance(result, PostingDetails) and result.record and result.record.external_id == live
        fake.faults.fail_next(100, 404, route="details")
        with pytest.raises(DependencyDown) as caught:
            c.details(live)
    assert caught.value.kind == "http_404"


def test_details_base64_description_and_partner(fake: FakeBA) -> None:
    pop = fake.population
    live = [pop.get(r) for r in pop.refnrs(active=True)]
    hex_one = next(p for p in live if p.refnr.startswith("12265-") and p.external_url is None)
    partner = next(p for p in live if p.external_url)
    with client(fake, max_description_chars=300) as c:
        d = c.details(hex_one.refnr)
        assert isinstance(d, PostingDetails) and d.record is not None
        assert d.record.external_id == hex_one.refnr and d.record.title == hex_one.title
        assert (
            d.description and len(d.description) <= 300 and "\n- " in d.description and "**" in d.description
        )
        assert "  " not in d.description and not d.is_external
        p = c.details(partner.refnr)
        assert isinstance(p, PostingDetails) and p.is_external and p.external_url == partner.external_url


# ---------------------------------------------------------------- shape drift and bad data


@pytest.mark.parametrize(
    ("arm", "reason", "sample_has"),
    [
        (lambda f: f.faults.set_drift("v4"), "v4 key 'stellenangebote'", '"stellenangebote"'),
        (lambda f: f.faults.set_drift("no_keys"), "neither", '"ergebnisse"'),
        (lambda f: f.faults.truncate_next(1), "malformed JSON", '{"ergebnisliste":'),
        (lambda f: f.faults.malformed_next(1), "malformed JSON", "Wartungsarbeiten"),
    ],
)
def test_schema_drift_raises_schema_error_with_a_sample(
    fake: FakeBA, arm: Any, reason: str, sample_has: str
) -> None:
    outcomes: list[str] = []
    arm(fake)
    with (
        client(fake, observer=lambda op, s, o: outcomes.append(o)) as c,
        pytest.raises(SchemaError) as caught,
    ):
        c.search({}, page=1, size=20)
    assert reason in caught.value.reason and sample_has in caught.value.sample
    assert "/pc/v6/jobs" in caught.value.reason
    assert outcomes == ["schema_error"]


def test_details_drift_is_a_schema_error(fake: FakeBA) -> None:
    fake.faults.set_drift("v4", route="details")
    with client(fake) as c, pytest.raises(SchemaError, match="referenznummer"):
        c.details(fake.population.refnrs(active=True)[0])


def test_null_item_page_is_parsed_with_a_problem(fake: FakeBA) -> None:
    fake.faults.null_item_next(1)
    with client(fake) as c:
        result = c.search({}, page=1, size=20)
    assert len(result.items) == 20 and any("null item" in p for p in result.problems)


def test_dirty_population_is_fully_ingestible() -> None:
    pop = Population.generate(500, seed=4, today=TODAY, dirty_share=0.1, expired_share=0.0)
    with FakeBA(pop) as fake, client(fake, max_description_chars=20_000) as c:
        pages = [c.search({}, page=n, size=100) for n in range(1, 6)]
        records = {r.external_id: r for p in pages for r in p.items}
        problems = [x for p in pages for x in p.problems]
        assert set(records) == set(pop.refnrs())  # nothing lost, duplicates kept once
        assert sum(len(p.items) for p in pages) == len(pop)
        by_kind: dict[str, Any] = {}
        for p in pop.postings:
            if p.dirty:
                by_kind.setdefault(p.dirty, records[p.refnr])
        assert by_kind["missing_title"].title is None
        assert "\x00" not in (by_kind["nul"].title or "") and "\x00" not in (by_kind["nul"].employer or "")
        assert "\ufffd" in (by_kind["invalid_utf8"].title or "")
        by_kind["surrogate"].title.encode("utf-8")
        assert by_kind["invalid_date"].modified_at is None and by_kind["invalid_date"].first_published is None
        assert (
            by_kind["bad_coords"].locations[0].lat is None and by_kind["bad_coords"].locations[0].lon is None
        )
        for needle in (
            "missing title",
            "duplicate referenznummer",
            "out of range",
            "invalid date",
            "invalid UTF-8",
        ):
            assert any(needle in x for x in problems), needle
        huge = next(p for p in pop.postings if p.dirty == "huge_description" and p.external_url is None)
        d = c.details(huge.refnr)
        assert isinstance(d, PostingDetails) and d.description is not None and len(d.description) <= 20_000
        nul = next(p for p in pop.postings if p.dirty == "nul" and p.external_url is None)
        d = c.details(nul.refnr)
        assert isinstance(d, PostingDetails) and d.description and "\x00" not in d.description


# ---------------------------------------------------------------- BERUFENET


def test_berufenet_through_the_client(fake: FakeBA) -> None:
    with client(fake) as c:
        first = c.berufe_page(0)
        assert len(first.items) == 20 and first.total_elements == len(fake.catalogue) and not first.is_last
        last = c.berufe_page(first.total_pages - 1)
        assert last.is_last and last.items
        (detail, *_rest) = c.beruf_detail(first.items[3].id)
        assert detail.id == first.items[3].id and detail.name == first.items[3].name
        assert detail.kldb2010 == fake.catalogue.by_id[detail.id].kldb and len(detail.kldb2010) == 5
    assert fake.last_headers["X-API-Key"] == "infosysbub-berufenet"
    with client(fake, berufenet_api_key="falsch", max_retries=0) as c, pytest.raises(DependencyDown):
        c.berufe_page(0)
    with client(fake) as c, pytest.raises(ValueError):
        c.berufe_page(-1)
