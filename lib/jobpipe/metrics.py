"""Prometheus metrics of a daemon, defined in one place, and the /metrics HTTP server.

Every metric carries a `daemon` label (the dashboard and the alert rules select on it); the helper
methods of `DaemonMetrics` fill it in, so daemon code only names the stage, operation, outcome...

Naming (checked by `promtool check metrics` in tests/test_metrics.py):
- shared metrics are `jobpipe_<what>_<unit>` and are defined here, nowhere else;
- a metric only one daemon has goes on `metrics.registry` named `jobpipe_<daemon>_<what>_<unit>`
  (`metrics.prefix` gives `jobpipe_<daemon>_`), still with the `daemon` label;
- base units only (`_seconds`, `_bytes`), counters end in `_total` (prometheus_client appends it to
  the name you give a Counter), timestamps are `_timestamp_seconds` (Unix time);
- labels hold small closed sets (stage, outcome, operation, error kind), never ids, URLs or texts.
"""

from __future__ import annotations

import errno
import platform
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import start_wsgi_server

import jobpipe
from jobpipe.errors import UserError

# No `*_created` series: they double the series count and nothing here reads them.
prometheus_client.disable_created_metrics()

# 1 ms (an empty claim) .. 10 min (a large snapshot or a slow model batch).
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0, 120.0, 300.0, 600.0)  # fmt: skip
# 5 ms (a cached embedding) .. 2 min (a long LLM answer or a call that runs into its timeout).
MODEL_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                      120.0)  # fmt: skip

_OK = "ok"  # the outcome of a successful call, as endpoints.Observer reports it
_DAEMON_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class DaemonMetrics:
    """The shared metrics of one daemon, on their own registry.

    `registry` defaults to a new CollectorRegistry (never the global one, so tests and several
    daemons in one process cannot collide). The process_* (RSS, CPU, open fds,
    process_start_time_seconds to see restarts), python_info and python_gc_* collectors are
    registered on it too. `clock` gives Unix time for the timestamp gauges, `timer` a monotonic
    clock for durations; both are arguments so tests can pass their own.

    The metric families are public attributes for the rare case a helper does not fit; use
    `.labels(daemon=m.daemon, ...)` on them, or the helpers below.
    """

    def __init__(
        self,
        daemon: str,
        registry: CollectorRegistry | None = None,
        version: str = jobpipe.__version__,
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not _DAEMON_NAME.match(daemon):
            raise ValueError(
                f"daemon name {daemon!r} must match {_DAEMON_NAME.pattern} (it is used in names)"
            )
        self.daemon = daemon
        self.registry = registry if registry is not None else CollectorRegistry()
        self.prefix = f"jobpipe_{daemon}_"
        self._clock = clock
        self._timer = timer
        reg = self.registry

        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)

        self.build_info = Gauge(
            "jobpipe_build_info",
            "Always 1; labels carry the jobpipe and Python versions",
            ["daemon", "version", "python"],
            registry=reg,
        )
        self.build_info.labels(daemon, version, platform.python_version()).set(1)

        self.items_processed = Counter(
            "jobpipe_items_processed",
            "Work items finished, by stage and outcome (done, failed, given_up, ...)",
            ["daemon", "stage", "outcome"],
            registry=reg,
        )
        self.batch_duration = Histogram(
            "jobpipe_batch_duration_seconds",
            "Wall time to process one claimed batch, claim to commit",
            ["daemon", "stage"],
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.model_call_duration = Histogram(
            "jobpipe_model_call_duration_seconds",
            "Duration of calls to external services (model server, BA API), failed calls included",
            ["daemon", "operation"],
            buckets=MODEL_CALL_BUCKETS,
            registry=reg,
        )
        self.model_call_errors = Counter(
            "jobpipe_model_call_errors",
            "Failed calls to external services, by operation and error kind",
            ["daemon", "operation", "kind"],
            registry=reg,
        )
        self.queue_pending = Gauge(
            "jobpipe_queue_pending", "Items waiting to be claimed", ["daemon", "stage"], registry=reg
        )
        self.queue_in_flight = Gauge(
            "jobpipe_queue_in_flight", "Items claimed and not yet finished", ["daemon", "stage"], registry=reg
        )
        self.queue_given_up = Gauge(
            "jobpipe_queue_given_up",
            "Items that used up their attempts (kept apart from pending; requeue by command)",
            ["daemon", "stage"],
            registry=reg,
        )
        self.queue_oldest_pending_age = Gauge(
            "jobpipe_queue_oldest_pending_age_seconds",
            "Age of the oldest pending item (0 when nothing is pending)",
            ["daemon", "stage"],
            registry=reg,
        )
        self.last_success = Gauge(
            "jobpipe_last_success_timestamp_seconds",
            "Unix time of the last batch that finished at least one item successfully",
            ["daemon", "stage"],
            registry=reg,
        )
        self.dependency_up = Gauge(
            "jobpipe_dependency_up",
            "1 when the dependency (database, ollama, ba_api, signal) answered on last use, else 0",
            ["daemon", "dependency"],
            registry=reg,
        )
        self.loop_heartbeat = Gauge(
            "jobpipe_loop_heartbeat_timestamp_seconds",
            "Unix time of the work loop's last turn (stale means a hung loop)",
            ["daemon"],
            registry=reg,
        )
        self.alerts_firing = Gauge(
            "jobpipe_alerts_firing",
            "1 while an alert condition holds",
            ["daemon", "condition"],
            registry=reg,
        )
        self.signal_degraded = Gauge(
            "jobpipe_signal_degraded",
            "1 while alerts cannot be delivered to the Signal gateway",
            ["daemon"],
            registry=reg,
        )
        self.alerts_sent = Counter(
            "jobpipe_alerts_sent",
            "Alert messages delivered, by kind (firing, resolved, reminder)",
            ["daemon", "kind"],
            registry=reg,
        )
        # Exists from the start so alert rules never see it absent; the heartbeat is deliberately
        # not pre-set (a 0 would read as a hung loop before the first turn).
        self.signal_degraded.labels(daemon).set(0)

    # -- helpers (each fills in the daemon label) -------------------------------------------------

    def observe_model_call(self, op: str, endpoint: str, seconds: float, outcome: str) -> None:
        """Observer for the model/HTTP clients: `(op, endpoint, seconds, outcome)`.

        Every call is timed (a timeout is latency the operator must see, and the histogram's
        _count is then the call count for error ratios); an outcome other than "ok" is an
        error kind and counts as an error. `endpoint` is not a label (URLs are unbounded);
        it is accepted so one observer signature serves every client.
        """
        self.model_call_duration.labels(self.daemon, op).observe(max(0.0, seconds))
        if outcome != _OK:
            self.model_call_errors.labels(self.daemon, op, outcome).inc()

    def item_outcomes(self, stage: str, counts: Mapping[str, int]) -> None:
        """Add a batch's outcome counts, e.g. {"done": 30, "failed": 2}; zero counts create the series."""
        for outcome, n in counts.items():
            if n < 0:
                raise ValueError(f"outcome count for {stage}/{outcome} is negative: {n}")
            self.items_processed.labels(self.daemon, stage, outcome).inc(n)

    @contextmanager
    def batch_timer(self, stage: str) -> Iterator[None]:
        """Time the `with` block into jobpipe_batch_duration_seconds (also when it raises)."""
        start = self._timer()
        try:
            yield
        finally:
            self.batch_duration.labels(self.daemon, stage).observe(max(0.0, self._timer() - start))

    def set_queue(
        self, stage: str, pending: int, in_flight: int, given_up: int, oldest_age_s: float | None
    ) -> None:
        """Publish a queue snapshot; `oldest_age_s` None (nothing pending) is exported as 0."""
        self.queue_pending.labels(self.daemon, stage).set(pending)
        self.queue_in_flight.labels(self.daemon, stage).set(in_flight)
        self.queue_given_up.labels(self.daemon, stage).set(given_up)
        self.queue_oldest_pending_age.labels(self.daemon, stage).set(oldest_age_s or 0.0)

    def dependency(self, name: str, up: bool) -> None:
        """Mark a dependency up (1) or down (0)."""
        self.dependency_up.labels(self.daemon, name).set(1 if up else 0)

    def success(self, stage: str) -> None:
        """Record that `stage` just finished work successfully (now, by `clock`)."""
        self.last_success.labels(self.daemon, stage).set(self._clock())

    def heartbeat(self) -> None:
        """Call once per work-loop turn."""
        self.loop_heartbeat.labels(self.daemon).set(self._clock())

    def set_alert_firing(self, condition: str, firing: bool) -> None:
        """1 while the alert condition holds, 0 once resolved."""
        self.alerts_firing.labels(self.daemon, condition).set(1 if firing else 0)

    def set_signal_degraded(self, degraded: bool) -> None:
        """1 while the Signal gateway cannot take our alerts."""
        self.signal_degraded.labels(self.daemon).set(1 if degraded else 0)

    def alert_sent(self, kind: str) -> None:
        """Count one delivered alert message of `kind` (firing, resolved, reminder)."""
        self.alerts_sent.labels(self.daemon, kind).inc()

    def exposition(self) -> bytes:
        """The text exposition of this registry (what /metrics serves)."""
        return prometheus_client.generate_latest(self.registry)


class MetricsServer:
    """A running /metrics HTTP server (daemon thread). `port` is the real port (also for port 0)."""

    def __init__(self, httpd: Any, thread: threading.Thread, bind: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.bind = bind
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and wait for the thread (idempotent)."""
        if self._httpd is None:
            return
        httpd, self._httpd = self._httpd, None
        httpd.shutdown()
        httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve_metrics(
    registry: CollectorRegistry,
    *,
    port: int,
    bind: str = "127.0.0.1",
    setting: str = "metrics_port",
) -> MetricsServer:
    """Serve `registry` at http://bind:port/metrics from a daemon thread.

    `port` 0 picks a free port (read it from `.port`). A port already in use is a UserError naming
    `setting`, the config key the operator should change (e.g. "embedder.metrics_port").
    """
    if not 0 <= port <= 65535:
        raise UserError(f"metrics port {port} is out of range 0..65535: set {setting} for this daemon")
    try:
        httpd, thread = start_wsgi_server(port, addr=bind, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is in use: set {setting} for this daemon") from exc
        raise UserError(f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") from exc
    return MetricsServer(httpd, thread, bind)
