"""bench/work_queue.py in quick mode, so the benchmark cannot rot (figures are not asserted here)."""

from __future__ import annotations

import pytest

from tests.bench_run import run_bench

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)


def test_queue_bench_quick(pg_url):
    result, _ = run_bench("work_queue.py", "--quick", "--url", pg_url, timeout=600)
    assert result["finished_large"] == 100_000 and result["claim_complete_per_s"] > 0
    assert result["claim_ms_small"] > 0 and result["claim_ms_large"] > 0
