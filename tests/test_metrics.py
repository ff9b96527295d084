"""Metrics: every helper, the real /metrics HTTP endpoint, and promtool's lint of what it serves."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter

import jobpipe
from jobpipe.errors import UserError
from jobpipe.metrics import BATCH_BUCKETS, MODEL_CALL_BUCKETS, DaemonMetrics, serve_metrics

PROMTOOL = shutil.which("promtool")


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StepTimer:
    """Returns the given readings one by one (a monotonic clock under the test's control)."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def _value(m: DaemonMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, {"daemon": m.daemon, **labels})


def _exercised(daemon: str = "embedder") -> DaemonMetrics:
    """Metrics with every helper called at least once (so every family has a sample)."""
    clock = FakeClock(1_700_000_000.0)
    m = DaemonMetrics(daemon, registry=CollectorRegistry(), clock=clock, timer=StepTimer(5.0, 5.75))
    m.item_outcomes("embed", {"done": 30, "failed": 2, "given_up": 0})
    with m.batch_timer("embed"):
        pass
    m.observe_model_call("embed", "http://127.0.0.1:11434", 0.12, "ok")
    m.observe_model_call("embed", "http://127.0.0.1:11434", 30.0, "timeout")
    m.observe_model_call("chat", "http://127.0.0.1:11434", 2.0, "http_503")
    m.set_queue("embed", pending=1200, in_flight=64, given_up=3, oldest_age_s=42.5)
    m.dependency("ollama", True)
    m.dependency("database", False)
    m.success("embed")
    m.heartbeat()
    m.set_alert_firing("failure_ratio", True)
    m.set_signal_degraded(True)
    m.alert_sent("firing")
    m.background_run("index_build", "ok")
    return m


def test_every_helper_sets_what_it_says():
    m = _exercised()
    assert m.registry is not None
    assert _value(m, "jobpipe_build_info", version=jobpipe.__version__, python=_python()) == 1
    assert _value(m, "jobpipe_items_processed_total", stage="embed", outcome="done") == 30
    assert _value(m, "jobpipe_items_processed_total", stage="embed", outcome="failed") == 2
    assert _value(m, "jobpipe_items_processed_total", stage="embed", outcome="given_up") == 0
    assert _value(m, "jobpipe_batch_duration_seconds_count", stage="embed") == 1
    assert _value(m, "jobpipe_batch_duration_seconds_sum", stage="embed") == pytest.approx(0.75)
    # Every call is timed, failures too; only failures count as errors, by kind.
    assert _value(m, "jobpipe_model_call_duration_seconds_count", operation="embed") == 2
    assert _value(m, "jobpipe_model_call_duration_seconds_sum", operation="embed") == pytest.approx(30.12)
    assert _value(m, "jobpipe_model_call_errors_total", operation="embed", kind="timeout") == 1
    assert _value(m, "jobpipe_model_call_errors_total", operation="embed", kind="ok") is None
    assert _value(m, "jobpipe_model_call_errors_total", operation="chat", kind="http_503") == 1
    assert _value(m, "jobpipe_queue_pending", stage="embed") == 1200
    assert _value(m, "jobpipe_queue_in_flight", stage="embed") == 64
    assert _value(m, "jobpipe_queue_given_up", stage="embed") == 3
    assert _value(m, "jobpipe_queue_oldest_pending_age_seconds", stage="embed") == 42.5
    assert _value(m, "jobpipe_dependency_up", dependency="ollama") == 1
    assert _value(m, "jobpipe_dependency_up", dependency="database") == 0
    assert _value(m, "jobpipe_last_success_timestamp_seconds", stage="embed") == 1_700_000_000.0
    assert _value(m, "jobpipe_loop_heartbeat_timestamp_seconds") == 1_700_000_000.0
    assert _value(m, "jobpipe_alerts_firing", condition="failure_ratio") == 1
    assert _value(m, "jobpipe_signal_degraded") == 1
    assert _value(m, "jobpipe_alerts_sent_total", kind="firing") == 1
    assert _value(m, "jobpipe_background_runs_total", job="index_build", outcome="ok") == 1
    # The standard collectors are on the daemon's registry (RSS, and restarts via start time).
    assert m.registry.get_sample_value("process_start_time_seconds") > 0
    assert m.registry.get_sample_value("process_resident_memory_bytes") > 0


def _python() -> str:
    import platform

    return platform.python_version()


def test_gauges_follow_later_values_and_none_age_is_zero():
    clock = FakeClock(100.0)
    m = DaemonMetrics("classifier", registry=CollectorRegistry(), clock=clock)
    m.set_queue("classify", 5, 1, 0, 12.0)
    m.set_queue("classify", 0, 0, 1, None)
    assert _value(m, "jobpipe_queue_pending", stage="classify") == 0
    assert _value(m, "jobpipe_queue_given_up", stage="classify") == 1
    assert _value(m, "jobpipe_queue_oldest_pending_age_seconds", stage="classify") == 0
    m.heartbeat()
    clock.now = 160.0
    m.heartbeat()
    assert _value(m, "jobpipe_loop_heartbeat_timestamp_seconds") == 160.0
    m.set_alert_firing("no_progress", True)
    m.set_alert_firing("no_progress", False)
    assert _value(m, "jobpipe_alerts_firing", condition="no_progress") == 0
    m.set_signal_degraded(False)
    assert _value(m, "jobpipe_signal_degraded") == 0
    m.dependency("ollama", False)
    m.dependency("ollama", True)
    assert _value(m, "jobpipe_dependency_up", dependency="ollama") == 1


def test_batch_timer_observes_a_failing_batch_and_reraises():
    m = DaemonMetrics("fetcher", registry=CollectorRegistry(), timer=StepTimer(1.0, 3.5))
    with pytest.raises(RuntimeError, match="db gone"), m.batch_timer("fetch"):
        raise RuntimeError("db gone")
    assert _value(m, "jobpipe_batch_duration_seconds_sum", stage="fetch") == pytest.approx(2.5)
    assert _value(m, "jobpipe_batch_duration_seconds_bucket", stage="fetch", le="2.5") == 1
    assert _value(m, "jobpipe_batch_duration_seconds_bucket", stage="fetch", le="1.0") == 0


def test_bad_inputs_are_clear_errors():
    m = DaemonMetrics("verifier", registry=CollectorRegistry())
    with pytest.raises(ValueError, match="negative"):
        m.item_outcomes("verify", {"done": -1})
    with pytest.raises(ValueError, match="daemon name"):
        DaemonMetrics("Bad-Name", registry=CollectorRegistry())


def test_buckets_cover_the_documented_ranges():
    assert BATCH_BUCKETS[0] == 0.001 and BATCH_BUCKETS[-1] == 600
    assert MODEL_CALL_BUCKETS[0] == 0.005 and MODEL_CALL_BUCKETS[-1] == 120
    assert list(BATCH_BUCKETS) == sorted(set(BATCH_BUCKETS))
    assert list(MODEL_CALL_BUCKETS) == sorted(set(MODEL_CALL_BUCKETS))


def test_default_registry_is_private_so_two_instances_do_not_collide():
    a = DaemonMetrics("snapshotter")
    b = DaemonMetrics("snapshotter")
    assert a.registry is not b.registry
    a.heartbeat()
    assert (
        b.registry.get_sample_value("jobpipe_loop_heartbeat_timestamp_seconds", {"daemon": "snapshotter"})
        is None
    )


def test_no_created_series():
    text = _exercised().exposition().decode()
    assert "jobpipe_items_processed_total" in text
    assert "_created" not in text


def _promtool_check(exposition: bytes) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.fail("promtool not found: install Debian's prometheus package (see docs/tooling)")
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=exposition.decode(), capture_output=True, text=True, timeout=60
    )


@pytest.mark.system
def test_scrape_real_http_endpoint_and_promtool_lints_it_clean():
    m = _exercised("embedder")
    # A daemon's own metric, named by the documented convention.
    own = Counter(
        m.prefix + "texts_truncated", "Texts cut to the model's context", ["daemon"], registry=m.registry
    )
    own.labels(m.daemon).inc(3)
    server = serve_metrics(m.registry, port=0)
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        resp = requests.get(server.url, timeout=10)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = resp.content
    finally:
        server.shutdown()
    text = body.decode()
    for family in (
        "jobpipe_build_info",
        "jobpipe_items_processed_total",
        "jobpipe_batch_duration_seconds_bucket",
        "jobpipe_model_call_duration_seconds_bucket",
        "jobpipe_model_call_errors_total",
        "jobpipe_queue_pending",
        "jobpipe_queue_in_flight",
        "jobpipe_queue_given_up",
        "jobpipe_queue_oldest_pending_age_seconds",
        "jobpipe_last_success_timestamp_seconds",
        "jobpipe_dependency_up",
        "jobpipe_loop_heartbeat_timestamp_seconds",
        "jobpipe_alerts_firing",
        "jobpipe_signal_degraded",
        "jobpipe_alerts_sent_total",
        "jobpipe_embedder_texts_truncated_total",
        "process_start_time_seconds",
    ):
        assert f"\n{family}{{" in text or f"\n{family} " in text, family
    assert "_created" not in text
    result = _promtool_check(body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@pytest.mark.system
def test_promtool_would_catch_a_bad_name():
    """The lint above can fail: a counter-typed metric without _total is reported."""
    bad = b"# HELP jobpipe_bad A counter without the suffix\n# TYPE jobpipe_bad counter\njobpipe_bad 1\n"
    result = _promtool_check(bad)
    assert result.returncode != 0
    assert "jobpipe_bad" in result.stdout + result.stderr


def test_port_in_use_is_a_clear_user_error():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as err:
            serve_metrics(CollectorRegistry(), port=port, setting="embedder.metrics_port")
    assert str(err.value) == f"port {port} is in use: set embedder.metrics_port for this daemon"
    with pytest.raises(UserError, match="out of range"):
        serve_metrics(CollectorRegistry(), port=70000)


def test_shutdown_closes_the_port_and_is_idempotent():
    with serve_metrics(DaemonMetrics("fetcher").registry, port=0) as server:
        assert requests.get(server.url, timeout=10).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=10)
    server.shutdown()
    # The port is free again: a restarted daemon can bind it.
    again = serve_metrics(CollectorRegistry(), port=server.port)
    again.shutdown()
