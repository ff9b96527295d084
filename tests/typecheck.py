"""Running mypy on a snippet, for tests that a mistake is a type error (the types are a contract)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mypy_errors(tmp_path: Path, source: str) -> list[str]:
    """mypy's errors in `source` (as "<line>: error: ..."), with jobpipe read from this source tree;
    errors in jobpipe itself are not listed (.ci/run's own mypy step judges those)."""
    src = tmp_path / "snippet.py"
    src.write_text(source)
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(tmp_path / "c"), src.name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT / "lib")},  # the source tree (the install is editable)
    )
    if r.returncode not in (0, 1):  # 2: mypy itself failed (a crash, bad options)
        raise RuntimeError(f"mypy failed: {r.stdout}{r.stderr}")
    ours = "snippet.py:"
    return [line.removeprefix(ours) for line in r.stdout.splitlines() if line.startswith(ours)]
