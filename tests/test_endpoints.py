"""EndpointPool: fleet routing, the per-endpoint breaker (with an injected clock), error mapping."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from jobpipe.errors import DependencyDown, ItemError
from jobpipe.models.endpoints import EndpointPool, error_message
from jobpipe.sim.ollama import FakeOllama


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOllama, FakeOllama]]:
    with FakeOllama() as a, FakeOllama() as b:
        yield a, b


def make_pool(urls: list[str], clock: Clock, calls: list[tuple[str, str, str]], **kw: object) -> EndpointPool:
    def observer(op: str, endpoint: str, seconds: float, outcome: str) -> None:
        assert seconds >= 0
        calls.append((op, endpoint, outcome))

    return EndpointPool(
        "ollama",
        urls,
        concurrency=4,
        connect_timeout=1.0,
        read_timeout=2.0,
        observer=observer,
        backoff_base=1.0,
        backoff_max=8.0,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def test_arguments_are_checked() -> None:
    for urls in ([], ["  "], ["http://a", "http://a/"], ["ftp://a"]):
        with pytest.raises(ValueError):
            EndpointPool("ollama", urls, concurrency=1, connect_timeout=1, read_timeout=1)
    with pytest.raises(ValueError):
        EndpointPool("ollama", ["http://a"], concurrency=0, connect_timeout=1, read_timeout=1)


def test_one_session_with_a_pool_sized_to_the_concurrency() -> None:
    pool = EndpointPool("ollama", ["http://127.0.0.1:1"], concurrency=13, connect_timeout=1, read_timeout=1)
    adapter = pool.session.get_adapter("http://127.0.0.1:1/api/embed")
    assert adapter._pool_maxsize == 13  # type: ignore[attr-defined]
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
    pool.close()


def test_breaker_skips_a_failed_endpoint_until_its_backoff_passes(
    fakes: tuple[FakeOllama, FakeOllama],
) -> None:
    a, b = fakes
    clock = Clock()
    calls: list[tuple[str, str, str]] = []
    pool = make_pool([a.url, b.url], clock, calls)
    a.fail_mode = "refuse"
    assert pool.get_json("version", "/api/version") == {"version": "0.33.0"}
    assert calls == [("version", a.url, "connection"), ("version", b.url, "ok")]  # failed over at once
    status = {s["url"]: s for s in pool.status()}
    assert status[a.url]["up"] is False and status[a.url]["retry_in"] == pytest.approx(1.0)
    assert "refused" in status[a.url]["last_error"].lower()

    calls.clear()
    for _ in range(3):  # A is skipped entirely while it backs off
        pool.get_json("version", "/api/version")
    assert [c[1] for c in calls] == [b.url] * 3

    calls.clear()
    clock.now += 1.0  # backoff over: A is tried again, fails again, backoff doubles
    pool.get_json("version", "/api/version")
    assert calls == [("version", a.url, "connection"), ("version", b.url, "ok")]
    assert {s["url"]: s for s in pool.status()}[a.url]["retry_in"] == pytest.approx(2.0)

    a.fail_mode = None
    calls.clear()
    clock.now += 2.0
    pool.get_json("version", "/api/version")  # A has fewer requests: it is picked and succeeds
    assert calls == [("version", a.url, "ok")]
    assert all(s["up"] and s["consecutive_failures"] == 0 for s in pool.status())
    pool.close()


def test_failover_is_logged_under_the_logger_name_operators_filter_by(
    fakes: tuple[FakeOllama, FakeOllama], caplog: pytest.LogCaptureFixture
) -> None:
    """`jobpipe.endpoints`, as before the module moved into jobpipe.models (a journal filter on the
    JSON `logger` field would silently match nothing otherwise)."""
    a, b = fakes
    pool = make_pool([a.url, b.url], Clock(), [])
    a.fail_mode = "refuse"
    with caplog.at_level(logging.DEBUG, logger="jobpipe"):
        assert pool.get_json("version", "/api/version") == {"version": "0.33.0"}
    (failover,) = [r for r in caplog.records if "failed on" in r.getMessage()]
    assert failover.name == "jobpipe.endpoints" and a.url in failover.getMessage()
    pool.close()


def test_backoff_is_capped(fakes: tuple[FakeOllama, FakeOllama]) -> None:
    a, _ = fakes
    clock = Clock()
    pool = make_pool([a.url], clock, [])
    a.fail_mode = "refuse"
    backoffs = []
    for _ in range(6):
        with pytest.raises(DependencyDown):
            pool.get_json("version", "/api/version")
        backoffs.append(pool.status()[0]["retry_in"])
        clock.now += 100
    assert backoffs == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped at backoff_max
    pool.close()


def test_all_down_raises_with_retry_after_and_without_calling_again(
    fakes: tuple[FakeOllama, FakeOllama],
) -> None:
    a, b = fakes
    clock = Clock()
    calls: list[tuple[str, str, str]] = []
    pool = make_pool([a.url, b.url], clock, calls)
    a.fail_mode = b.fail_mode = "refuse"
    with pytest.raises(DependencyDown) as err:
        pool.get_json("version", "/api/version")
    assert err.value.kind == "connection" and err.value.dependency == "ollama"
    assert "all 2 endpoints are down" in str(err.value)
    assert len(calls) == 2
    clock.now += 0.25
    with pytest.raises(DependencyDown) as err:
        pool.get_json("version", "/api/version")
    assert len(calls) == 2  # the breaker answered, no socket was touched
    assert err.value.retry_after == pytest.approx(0.75)
    assert err.value.kind == "connection"
    pool.close()


def test_probe_reports_every_endpoint_and_closes_the_breaker(fakes: tuple[FakeOllama, FakeOllama]) -> None:
    a, b = fakes
    clock = Clock()
    pool = make_pool([a.url, b.url], clock, [])
    a.fail_mode = "refuse"
    pool.get_json("version", "/api/version")
    result = pool.probe("/")
    assert result[a.url]["ok"] is False and result[b.url]["ok"] is True
    assert result[b.url]["body"] == b"Ollama is running"
    a.fail_mode = None
    assert pool.probe("/")[a.url]["ok"] is True
    assert all(s["up"] for s in pool.status())  # no need to wait for the backoff
    pool.close()


def test_status_mapping(fakes: tuple[FakeOllama, FakeOllama]) -> None:
    a, _ = fakes
    clock = Clock()
    calls: list[tuple[str, str, str]] = []
    pool = make_pool([a.url], clock, calls)
    with pytest.raises(DependencyDown) as err:  # an unknown route is not a missing model
        pool.post_json("embed", "/api/nope", {"model": "x"}, model="x")
    assert err.value.kind == "not_found" and "provider" in str(err.value)
    clock.now += 100
    with pytest.raises(DependencyDown) as err:
        pool.post_json("embed", "/api/embed", {"model": "x", "input": ["a"]}, model="x")
    assert err.value.kind == "model_missing" and "ollama pull x" in str(err.value)
    clock.now += 100
    with pytest.raises(ItemError) as item:
        pool.post_json("embed", "/api/embed", {"model": "all-minilm", "input": 5}, model="all-minilm")
    assert item.value.kind == "bad_input"
    assert pool.status()[0]["up"] is True  # a bad input says nothing against the server
    assert [c[2] for c in calls] == ["not_found", "model_missing", "bad_input"]
    pool.close()


def test_observer_errors_do_not_break_calls(fakes: tuple[FakeOllama, FakeOllama]) -> None:
    a, _ = fakes

    def broken(*args: object) -> None:
        raise RuntimeError("metrics are broken")

    pool = EndpointPool("ollama", [a.url], concurrency=1, connect_timeout=1, read_timeout=2, observer=broken)
    assert pool.get_json("version", "/api/version") == {"version": "0.33.0"}
    pool.close()


def test_error_message_reads_both_flavours() -> None:
    assert error_message(b'{"error": "model \\"x\\" not found"}') == 'model "x" not found'
    assert error_message(b'{"error": {"message": "bad", "type": "invalid_request_error"}}') == "bad"
    assert error_message(b"<html>502</html>") == "<html>502</html>"
    assert error_message(b'{"detail": "x"}') == '{"detail": "x"}'


def test_proxies_from_the_environment_are_honoured(fakes, monkeypatch) -> None:
    """The environment is read once, at construction (not per request), and still applies:
    HTTP_PROXY routes the call through the proxy, NO_PROXY exempts the host again."""
    proxy, _ = fakes  # any HTTP server shows whether the request reached it
    target = "http://ollama.invalid:11434"
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    via_proxy = EndpointPool("ollama", [target], concurrency=1, connect_timeout=1, read_timeout=2)
    monkeypatch.setenv("NO_PROXY", "ollama.invalid")
    direct = EndpointPool("ollama", [target], concurrency=1, connect_timeout=1, read_timeout=2)
    monkeypatch.delenv("HTTP_PROXY")  # too late to matter: both pools have read it
    try:
        with pytest.raises(DependencyDown) as through:
            via_proxy.post_json("embed", "/api/embed", {"model": "m", "input": ["x"]})
        assert through.value.kind == "not_found"  # the proxy answered (it does not know the URL)
        with pytest.raises(DependencyDown) as no_proxy:
            direct.post_json("embed", "/api/embed", {"model": "m", "input": ["x"]})
        assert no_proxy.value.kind != "not_found"  # no server at all: the name does not resolve
    finally:
        via_proxy.close()
        direct.close()
