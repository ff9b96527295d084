"""Test tiers (a pytest plugin, loaded by tests/conftest.py): every test is exactly one of

- `unit`: no database, no process of its own; in-process code, threads and sockets (the simulators
  run on threads). It needs no PostgreSQL; `pytest -m 'unit and not slow'` takes under a minute.
- `integration`: the test PostgreSQL (a fixture that depends on `pg_server`: `pg_url`, `db_conn`,
  ...), still no process of its own.
- `system`: starts processes: daemons, the CLI, promtool, systemd-analyze, the demo, an own
  PostgreSQL (`pg_home`, the sandbox), a container (`systemd`, which .ci/run runs apart).

`unit` and `integration` follow from a test's fixtures and are added here; `system` is written in
the test module (`pytestmark = pytest.mark.system`, or `@pytest.mark.system` on a test), because
a fixture list cannot show a `subprocess.run` in a test's body. Both directions are checked:

- at collection, a test with two tier markers, or an explicit `unit`/`integration` that its
  fixtures contradict, stops the run naming every such test;
- at run time, a `unit` or `integration` test that starts a process (the interpreter's audit
  events for subprocess, exec, spawn and fork) fails, naming the command; so does one using a
  fixture whose setup started a process, even when an earlier test set that fixture up. The test
  server's own start and stop (`pg_server`, inside `server_processes()`) are the one exception.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

TIERS = ("unit", "integration", "system")
# The session's PostgreSQL: every database fixture depends on it.
DATABASE_FIXTURE = "pg_server"
# Audit events (PEP 578) that start a process; os.fork covers os.spawn* and multiprocessing's fork.
# Not seen: multiprocessing's spawn and forkserver start methods (their fork_exec raises no audit
# event, Python 3.11); no test uses multiprocessing.
SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "os.system", "pty.spawn"}
)

# The running test's tier while it may not start processes (None: anything goes), and what it started.
_guarded: str | None = None
_exempt = 0
_started: list[str] = []
# Process starts so far (outside server_processes), and the fixtures whose setup started one: a test
# using such a fixture depends on a process even when an earlier test paid for the start.
_spawns = 0
_process_fixtures: set[int] = set()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    global _spawns
    if _exempt or event not in SPAWN_EVENTS:
        return
    _spawns += 1
    if _guarded is not None:
        # subprocess.Popen's args are (executable, args, cwd, env); os.exec's (path, args, env).
        argv = event in ("subprocess.Popen", "os.exec", "os.posix_spawn") and len(args) > 1
        what = args[1] if argv else args
        _started.append(f"{event} {what!r}"[:300])


sys.addaudithook(_audit)  # hooks cannot be removed; it only counts and records


@contextmanager
def server_processes() -> Iterator[None]:
    """Processes started inside are the test server's own (pg_server), allowed in every tier."""
    global _exempt
    _exempt += 1
    try:
        yield
    finally:
        _exempt -= 1


def derived_tier(item: pytest.Item) -> str:
    """The tier a test's fixtures and markers give it (explicit `system` wins over the fixtures)."""
    if item.get_closest_marker("system") is not None:
        return "system"
    return "integration" if DATABASE_FIXTURE in getattr(item, "fixturenames", ()) else "unit"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        named = [t for t in TIERS if item.get_closest_marker(t) is not None]
        tier = derived_tier(item)
        if len(named) > 1:
            wrong.append(f"{item.nodeid}: more than one tier ({', '.join(named)})")
        elif named and named[0] != tier:
            why = "uses the database" if tier == "integration" else "uses no database fixture"
            wrong.append(f"{item.nodeid}: marked {named[0]} but {why}: it is {tier}")
        if item.get_closest_marker("systemd") is not None and tier != "system":
            wrong.append(f"{item.nodeid}: a systemd test is also system (mark it so)")
        if not named:
            item.add_marker(getattr(pytest.mark, tier))
    if wrong:
        raise pytest.UsageError("test tiers (tests/tiers.py):\n  " + "\n  ".join(wrong))


def _process_fixtures_of(item: pytest.Item) -> list[str]:
    """The fixtures this test uses whose setup started a process (in this test or an earlier one)."""
    defs = item._fixtureinfo.name2fixturedefs  # type: ignore[attr-defined]  # no public way to these
    used = [name for name in getattr(item, "fixturenames", ()) if defs.get(name)]
    return [name for name in used if id(defs[name][-1]) in _process_fixtures]  # the last one is in force


def _guard(item: pytest.Item, phase: str) -> Iterator[None]:
    global _guarded
    tier = derived_tier(item)
    _guarded = None if tier == "system" else tier
    _started.clear()
    try:
        yield
    finally:
        _guarded = None
    if tier == "system":
        return
    if _started:
        started, more = _started[0], len(_started) - 1
        _started.clear()
        pytest.fail(
            f"this {tier} test started a process ({started}{f', and {more} more' if more else ''}); "
            "mark it system (tests/tiers.py)",
            pytrace=False,
        )
    uses = _process_fixtures_of(item) if phase == "setup" else []
    if uses:
        pytest.fail(
            f"this {tier} test uses {', '.join(uses)}, whose setup started a process; mark it system "
            "(tests/tiers.py)",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Iterator[Any]:
    before = _spawns
    try:
        return (yield)
    finally:
        if _spawns != before:
            _process_fixtures.add(id(fixturedef))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guard(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guard(item, "call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    return (yield from _guard(item, "teardown"))
