"""bench/work_queue.py in quick mode, so the benchmark cannot rot (figures are not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)

ROOT = Path(__file__).resolve().parent.parent


def test_queue_bench_quick(pg_url):
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "work_queue.py"), "--quick", "--url", pg_url],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last[len("RESULT ") :])
    assert result["finished_large"] == 100_000 and result["claim_complete_per_s"] > 0
    assert result["claim_ms_small"] > 0 and result["claim_ms_large"] > 0
