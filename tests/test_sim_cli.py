"""`jobpipe sim NAME` on bad input: one line on stderr, exit code 2, no traceback, nothing left
running (the CLI's promise for a user's mistake), for every simulator. Each runs as a real
process of the installed command against a real socket."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jobpipe.cli.sim import SIMULATORS

pytestmark = pytest.mark.system  # starts processes (tests/tiers.py)


def sim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", "sim", *args],
        capture_output=True,
        text=True,
        timeout=60,  # a simulator that starts despite the bad input serves until killed
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""  # no URL: nothing started
    last = r.stderr.strip().splitlines()[-1]
    assert all(f in last for f in fragments), r.stderr
    # argparse prints its usage first; any other error is exactly one line
    assert len(r.stderr.strip().splitlines()) == 1 or r.stderr.startswith("usage:"), r.stderr


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_a_port_in_use_is_one_line(name: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = sim(name, "--port", str(port), cwd=tmp_path)
    assert_one_line_error(r, f"127.0.0.1:{port}", "in use")


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_an_out_of_range_port_is_refused_before_starting(name: str, tmp_path: Path) -> None:
    assert_one_line_error(sim(name, "--port", "65536", cwd=tmp_path), "--port", "out of range")


def test_an_address_not_on_this_host_is_one_line(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is on no interface here: bind() fails, no DNS involved
    assert_one_line_error(sim("signal", "--host", "192.0.2.1", "--port", "0", cwd=tmp_path), "192.0.2.1:0")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["ba", "--postings", "-5"], ["--postings", "out of range"]),
        (["ba", "--expired-share", "1.5"], ["--expired-share", "out of range"]),
        (["ba", "--label-share", "nan"], ["--label-share", "out of range"]),
        (["ba", "--latency", "-1"], ["--latency", "out of range"]),
        (["ba", "--max-size", "ten"], ["--max-size", "not an integer"]),
        (["ollama", "--capacity", "0"], ["--capacity", "out of range"]),
        (["ollama", "--latency-per-input", "-3"], ["--latency-per-input", "out of range"]),
    ],
)
def test_an_out_of_range_option_is_refused_before_starting(
    args: list[str], fragments: list[str], tmp_path: Path
) -> None:
    assert_one_line_error(sim(*args, "--port", "0", cwd=tmp_path), *fragments)


def test_a_bad_catalogue_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert_one_line_error(sim("ba", "--catalogue", str(missing), cwd=tmp_path), str(missing), "No such file")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,')
    assert_one_line_error(sim("ba", "--catalogue", str(broken), cwd=tmp_path), str(broken), "JSONDecodeError")
