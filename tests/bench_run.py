"""Running a benchmark script in a test, so it cannot rot: `bench/<script>` as a process of this
Python from the repository root, which must exit 0 and end with its `RESULT {json}` line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float) -> tuple[dict[str, Any], str]:
    """(the RESULT line's object, the whole stdout) of `python bench/<script> <args>`; fails the
    test with the tail of both outputs when the script fails or its last line is no RESULT."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("RESULT "), lines[-5:]
    return json.loads(lines[-1][len("RESULT ") :]), proc.stdout
