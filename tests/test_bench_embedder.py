"""bench/embedder.py in quick mode, so the benchmark cannot rot: it runs end to end (real
processes: the fake Ollama, `jobpipe run embedder --once`, the predecessor's pattern) and its
RESULT line holds numbers that make sense."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)

ROOT = Path(__file__).resolve().parent.parent


def test_bench_embedder_quick(pg_server):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "embedder.py"), "--quick", "--db-url", pg_server["url"]],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT "), lines[-5:]
    r = json.loads(lines[-1][len("RESULT ") :])
    assert "capacity_ratio" in proc.stdout and "peak RSS" in proc.stdout  # the table came first

    assert r["all_embedded"] is True
    n = r["postings"]
    # Nobody can beat the fake's capacity; batching means few requests for many postings.
    assert 0 < r["capacity_postings_per_s"] <= r["capacity_limit_per_s"] * 1.05
    assert r["capacity_requests"] <= math.ceil(n / r["batch_size"]) + 4
    assert 0 < r["predecessor_postings_per_s"] <= r["capacity_limit_per_s"] * 1.05
    assert r["overhead_postings_per_s"] > 0 and r["request_cost_gain"] is not None
    assert 0 < r["peak_rss_mb"] <= 150
    assert r["pgai_ratio"] is None and "skipped" in r["pgai"]
