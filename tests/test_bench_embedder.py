"""bench/embedder.py in quick mode, so the benchmark cannot rot: it runs end to end (real
processes: the fake Ollama, `jobpipe run embedder --once`, the predecessor's pattern) and its
RESULT line holds numbers that make sense."""

from __future__ import annotations

import math

import pytest

from tests.bench_run import run_bench

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)


def test_bench_embedder_quick(pg_server):
    r, out = run_bench("embedder.py", "--quick", "--db-url", pg_server["url"], timeout=240)
    assert "capacity_ratio" in out and "peak RSS" in out  # the table came first

    assert r["all_embedded"] is True
    n = r["postings"]
    # Nobody can beat the fake's capacity; batching means few requests for many postings.
    assert 0 < r["capacity_postings_per_s"] <= r["capacity_limit_per_s"] * 1.05
    assert r["capacity_requests"] <= math.ceil(n / r["batch_size"]) + 4
    assert 0 < r["predecessor_postings_per_s"] <= r["capacity_limit_per_s"] * 1.05
    assert r["overhead_postings_per_s"] > 0 and r["request_cost_gain"] is not None
    assert 0 < r["peak_rss_mb"] <= 150
    assert r["pgai_ratio"] is None and "skipped" in r["pgai"]
