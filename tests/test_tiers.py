"""The tier rules (tests/tiers.py) on a small suite written here, run by a real pytest: tiers come
from the fixtures, `-m` selects by them, a unit or integration test that starts a process fails,
and a marker that contradicts the fixtures stops collection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # runs pytest as a process

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
import pytest

pytest_plugins = ("tests.tiers",)


@pytest.fixture(scope="session")
def pg_server():
    return {}  # stands in for the session's PostgreSQL: only its name matters to the tiers


@pytest.fixture
def pg_url(pg_server):
    return "postgresql://"
"""

SUITE = """
import os
import subprocess
import sys

import pytest


def test_pure():
    assert 1 + 1 == 2


def test_with_database(pg_url):
    assert pg_url


def test_unit_starting_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_unit_running_a_shell_command():
    assert os.system("true") == 0


def test_integration_starting_a_process(pg_url):
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.system
def test_system_starting_a_process(pg_url):
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    yield proc
    proc.wait()


def test_unit_whose_fixture_starts_a_process(child):
    assert child.pid


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.system
def test_system_starting_a_shared_server(server):
    assert server.poll() is None


def test_unit_using_a_server_started_before(server):
    assert server.poll() is None
"""


def run(tmp_path: Path, suite: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(suite)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-q", "-rA", str(tmp_path), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def outcomes(r: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """test name -> PASSED / FAILED / ERROR, from -rA's summary."""
    found = {}
    for line in r.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and "::" in rest:
            found[rest.split("::")[1].split(" ")[0]] = word
    return found


def test_tiers_come_from_the_fixtures_and_processes_are_for_system_tests(tmp_path: Path) -> None:
    r = run(tmp_path, SUITE)
    assert outcomes(r) == {
        "test_pure": "PASSED",
        "test_with_database": "PASSED",
        "test_unit_starting_a_process": "FAILED",
        "test_unit_running_a_shell_command": "FAILED",
        "test_integration_starting_a_process": "FAILED",
        "test_system_starting_a_process": "PASSED",
        "test_unit_whose_fixture_starts_a_process": "ERROR",
        "test_system_starting_a_shared_server": "PASSED",
        "test_unit_using_a_server_started_before": "ERROR",
    }, r.stdout + r.stderr
    assert "this unit test started a process (subprocess.Popen [" in r.stdout
    assert "this unit test started a process (os.system" in r.stdout
    assert "this integration test started a process (subprocess.Popen [" in r.stdout
    assert "this unit test uses server, whose setup started a process; mark it system" in r.stdout
    # Counted in the failure sections: the short summary repeats the messages, cut to the terminal's
    # width except when pytest sees CI set (then whole), so it is not counted.
    details = r.stdout.split("short test summary info")[0]
    assert details.count("mark it system") == 5, r.stdout

    for tier, expected in (
        ("unit", {"test_pure", "test_unit_starting_a_process", "test_unit_running_a_shell_command",
                  "test_unit_whose_fixture_starts_a_process", "test_unit_using_a_server_started_before"}),
        ("integration", {"test_with_database", "test_integration_starting_a_process"}),
        ("system", {"test_system_starting_a_process", "test_system_starting_a_shared_server"}),
    ):  # fmt: skip
        assert set(outcomes(run(tmp_path, SUITE, "-m", tier))) == expected, tier


@pytest.mark.parametrize(
    ("marks", "fixture", "says"),
    [
        ("@pytest.mark.unit", "pg_url", "marked unit but uses the database: it is integration"),
        ("@pytest.mark.integration", "tmp_path", "marked integration but uses no database fixture"),
        ("@pytest.mark.unit\n@pytest.mark.system", "tmp_path", "more than one tier (unit, system)"),
        ("@pytest.mark.systemd", "tmp_path", "a systemd test is also system"),
    ],
)
def test_a_marker_that_contradicts_the_fixtures_stops_collection(
    tmp_path: Path, marks: str, fixture: str, says: str
) -> None:
    r = run(tmp_path, f"import pytest\n\n\n{marks}\ndef test_it({fixture}):\n    pass\n")
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error: nothing ran
    assert f"test_suite.py::test_it: {says}" in r.stderr, r.stderr
