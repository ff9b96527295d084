"""Database access: resolving the URL (operator's server or embedded), connecting, migrations.

Migrations are the numbered SQL files in jobpipe/migrations/, each applied in one transaction
and recorded in schema_migrations, serialised by an advisory lock so that daemons starting at
the same moment cannot both migrate.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.abc import Params
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobpipe import embedded
from jobpipe.config import Config
from jobpipe.errors import DependencyDown, UserError, first_line

log = logging.getLogger(__name__)

# Arbitrary constant: the advisory lock key that serialises migrations across processes.
MIGRATION_LOCK = 0x6A6F6270  # "jobp"
# Exception classes a lost connection can surface as (db.connect raises DependencyDown). Not
# every instance is one: OperationalError also covers a statement timeout, a deadlock, disk
# full or an oversized index row; `connection_lost` tells them apart.
# The one connection type of the package: rows are tuples unless a query asks for another row
# factory, so the row type stays Any.
Conn: TypeAlias = psycopg.Connection[Any]

CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
UNREACHABLE = (*CONNECTION_ERRORS, DependencyDown)
# SQLSTATEs that mean the server or the connection went away: class 08 (connection exception),
# admin_shutdown, crash_shutdown, cannot_connect_now.
_LOST_STATES = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(exc: BaseException) -> bool:
    """True only when `exc` means the database connection is gone (reconnect and retry the same
    work): a client-side broken connection (no SQLSTATE), SQLSTATE class 08, 57P01-57P03, an
    InterfaceError, or DependencyDown from `connect`. Everything else the server said about the
    statement (timeout, deadlock, disk full, oversized row...) is False: retrying the same work
    as "database down" would never end."""
    if isinstance(exc, DependencyDown):
        return exc.dependency == "database"
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _LOST_STATES
    return False


def resolve_url(cfg: Config, start_embedded: bool = True) -> str:
    """`database.url`, else the embedded server's URL (started when `start_embedded`)."""
    if cfg.database.url:
        return cfg.database.url
    data_dir = embedded.resolve_data_dir(cfg.database.data_dir)
    if start_embedded:
        return embedded.start(data_dir)
    url = embedded.url_if_running(data_dir)
    if url is None:
        raise DependencyDown(
            "database", f"the embedded PostgreSQL in {data_dir} is not running", "connection"
        )
    return url


def connect(
    url: str,
    *,
    autocommit: bool = True,
    connect_timeout: float = 5.0,
    statement_timeout_s: float | None = None,
    application_name: str = "jobpipe",
    vector: bool = True,
) -> Conn:
    """Open a connection; DependencyDown when the server cannot be reached, UserError (one line,
    credentials redacted) when `url` is not a connection string at all."""
    check_url(url)
    options = f"-c statement_timeout={int(statement_timeout_s * 1000)}" if statement_timeout_s else None
    try:
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=max(1, int(connect_timeout)),
            application_name=application_name,
            options=options,
        )
    except psycopg.OperationalError as exc:
        raise DependencyDown("database", str(exc).strip().splitlines()[0], "connection") from None
    if vector:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            pass  # extension not installed yet: only the migration connection sees this
    return conn


def one(conn: Conn, query: str | sql.SQL | sql.Composed, params: Params | None = None) -> Any:
    """The row of a query that always returns one (an aggregate, `SELECT now()`, an EXISTS).
    None there would be a bug in the query: it is raised as LookupError, not returned."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        shown = " ".join(str(query).split())[:200]
        raise LookupError(f"no row from a query that always returns one: {shown}")
    return row


def check_url(url: str) -> None:
    """UserError unless `url` parses as a PostgreSQL URL or key=value connection string. libpq's
    parse error quotes the string, password included, so the message is redacted."""
    try:
        conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise UserError(f"database.url is not a valid PostgreSQL connection URL: {first_line(exc)}") from None


def close_quietly(conn: Conn | None) -> None:
    """Close `conn` if there is one; a broken connection may fail to close, which is fine."""
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # file name without .sql, e.g. "0001_schema"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


def available_migrations() -> list[Migration]:
    files = importlib.resources.files("jobpipe.migrations")
    found = [
        Migration(f.name[:-4], f.read_text(encoding="utf-8"))
        for f in files.iterdir()
        if f.name.endswith(".sql")
    ]
    return sorted(found, key=lambda m: m.version)


_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def applied_versions(conn: Conn) -> set[str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return set()
    return {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}


def pending_migrations(conn: Conn) -> list[Migration]:
    done = applied_versions(conn)
    return [m for m in available_migrations() if m.version not in done]


def migrate(url: str) -> list[str]:
    """Apply pending migrations (each in its own transaction); return the versions applied."""
    applied: list[str] = []
    with connect(url, vector=False) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute(_VERSION_TABLE)
            for m in pending_migrations(conn):
                with conn.transaction():
                    conn.execute(m.sql)  # trusted files shipped in the package
                    conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (m.version, m.checksum),
                    )
                log.info("migration applied", extra={"event": "migration_applied", "version": m.version})
                applied.append(m.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


def check_schema(conn: Conn) -> None:
    """Refuse to run against a schema that is behind (UserError with what to run)."""
    missing = [m.version for m in pending_migrations(conn)]
    if missing:
        raise UserError(
            f"the database schema is behind: {len(missing)} migration(s) pending ({', '.join(missing)}); "
            "run `jobpipe migrate`"
        )


def url_for(url: str, dbname: str) -> str:
    """`url` with another database name (same server, user and options)."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new, migrated database named `prefix` + a random suffix on the server of `admin_url`;
    yields its URL and drops it on exit (WITH (FORCE): connections left open do not block it).
    For benchmarks, which measure against a database of their own."""
    name = prefix + uuid.uuid4().hex[:10]
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")  # generated here: safe to splice
    try:
        url = url_for(admin_url, name)
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
