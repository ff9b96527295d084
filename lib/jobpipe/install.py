"""`jobpipe install` / `jobpipe uninstall`: put the systemd units, the config and the secrets file in
place, create the service user, and say which systemctl commands come next.

Files (all below `root`, "/" for the live system; another directory stages them for packaging):
- etc/systemd/system/{jobpipe@.service, jobpipe.target, jobpipe-alert@.service}, rendered from the
  templates shipped in the package (units/ is installed as `jobpipe.units`) with ExecStart= naming
  the `jobpipe` of the interpreter running this (quoted and escaped for systemd, so a venv under
  `/opt/my tools/` works), User=/Group= the service user and the target's Also= listing one
  instance per daemon in jobpipe.settings.DAEMONS;
- etc/jobpipe/jobpipe.yaml, the documented defaults (`jobpipe config defaults`), written only if
  absent: an operator's file is never overwritten, a differing one gets `jobpipe.yaml.new` beside it;
- etc/jobpipe/env (mode 0600, never overwritten): secrets as JOBPIPE_<SECTION>_<KEY>=value. An
  existing env that is a symlink (e.g. to a secrets store) is left exactly as it is: its target is
  never chmod-ed through the link, a warning says to check it;
- etc/sysusers.d/jobpipe.conf: the service user, for systemd-sysusers. On the live system (as root)
  the user is created now; in a staged root it is created at the image's first boot.

The printed next steps read /etc/jobpipe/env the way the units do, through systemd itself
(`systemd-run -p EnvironmentFile=`), never by a shell (which would mangle `pa$word` and
`["+49..."]`).

Running it twice changes nothing. Everything that touches the machine outside `root` (creating the
user, systemctl) goes through the `run` argument so tests can see the commands without a real
systemd; `systemctl --root=DIR` works offline and is run for real with `enable=True`.
"""

from __future__ import annotations

import importlib.resources
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobpipe.config import render_defaults
from jobpipe.errors import UserError
from jobpipe.settings import DAEMONS

UNIT_FILES = ("jobpipe@.service", "jobpipe.target", "jobpipe-alert@.service")
TARGET = "jobpipe.target"
DEFAULT_USER = "jobpipe"
# The command the shipped templates name; install replaces it with the real one.
TEMPLATE_COMMAND = "/usr/local/bin/jobpipe"
UNIT_DIR = Path("etc/systemd/system")
CONFIG_DIR = Path("etc/jobpipe")
CONFIG_FILE = CONFIG_DIR / "jobpipe.yaml"
ENV_FILE = CONFIG_DIR / "env"
SYSUSERS_FILE = Path("etc/sysusers.d/jobpipe.conf")
STATE_DIR = "/var/lib/jobpipe"  # the unit's StateDirectory=, also the user's home
# Where ProtectHome=yes hides files from the service: an ExecStart there cannot start.
_HIDDEN_BY_PROTECT_HOME = ("/home/", "/root/", "/run/user/")
# useradd's rules for a portable name (no leading digit or dash, at most 32 characters).
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

Runner = Callable[[Sequence[str]], None]
# Arguments systemd takes as they are in a command line; anything else is quoted (systemd.service(5),
# "Command lines"). Specifiers (%) and variables ($) never appear unescaped.
_UNIT_SAFE_ARG = re.compile(r"^[A-Za-z0-9_./:+,=@-]+$")

ENV_TEMPLATE = """\
# Secrets for the jobpipe daemons, one JOBPIPE_<SECTION>_<KEY>=value per line. They override
# /etc/jobpipe/jobpipe.yaml. Mode 0600, owned by root: systemd reads this file
# (EnvironmentFile=) before it drops privileges; the daemons never need to open it.
# Read by systemd, not by a shell: write values as they are, without quotes; $ is kept literally
# (see EnvironmentFile= in systemd.exec(5)). One-off commands read it the same way:
#   systemd-run --wait --pipe --quiet --collect -p EnvironmentFile=/etc/jobpipe/env -- jobpipe ...
# Lists are YAML: JOBPIPE_ALERTS_RECIPIENTS=["+4915112345678"]
#
# JOBPIPE_DATABASE_URL=postgresql://jobpipe:PASSWORD@db.example.org:5432/jobpipe
# JOBPIPE_OLLAMA_API_KEY=
# JOBPIPE_ALERTS_CHANNEL=signal-rest
# JOBPIPE_ALERTS_SENDER=+4915100000000
# JOBPIPE_ALERTS_RECIPIENTS=["+4915112345678"]
"""


@dataclass
class Report:
    """What install/uninstall did, and what the operator should run next."""

    root: Path
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # an operator's file left as it is
    removed: list[Path] = field(default_factory=list)
    ran: list[list[str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as printed by the CLI."""
        out: list[str] = []
        for label, paths in (
            ("wrote", self.written),
            ("unchanged", self.unchanged),
            ("kept", self.kept),
            ("removed", self.removed),
        ):
            out += [f"{label:<10} {p}" for p in paths]
        out += [f"ran        {shlex.join(cmd)}" for cmd in self.ran]
        out += [f"warning: {w}" for w in self.warnings]
        if self.next_steps:
            out += ["", "Next:"] + [f"  {s}" for s in self.next_steps]
        return out


def jobpipe_command(python: str = sys.executable) -> list[str]:
    """The `jobpipe` console script installed with this interpreter, as an argv with an absolute path.

    The script sits beside the interpreter (venv/bin, /usr/local/bin). `python` is not resolved:
    a venv's python is a symlink to the system one, but its scripts live in the venv. Without a
    script there (e.g. `pip install --user`), the interpreter runs the CLI module directly.
    A list, not a string: a path may contain spaces (`/opt/my tools/bin/jobpipe`).
    """
    script = Path(python).absolute().parent / "jobpipe"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(Path(python).absolute()), "-m", "jobpipe.cli"]


def _argv(command: str | Sequence[str]) -> list[str]:
    """A command as argv: a string is one executable path (never split: it may contain spaces)."""
    argv = [command] if isinstance(command, str) else list(command)
    if not argv or not argv[0].startswith("/"):
        raise UserError(f"the jobpipe command must be an absolute path, not {argv!r}")
    for arg in argv:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in arg):
            raise UserError(f"the jobpipe command contains a control character: {arg!r}")
    # systemd refuses such an executable path ("Executable name contains special characters").
    if any(c in argv[0] for c in "\\\"'"):
        raise UserError(
            f"systemd cannot run {argv[0]!r}: quotes and backslashes are not allowed in an executable's "
            "path; install jobpipe elsewhere (e.g. python3 -m venv /opt/jobpipe)"
        )
    return argv


def unit_command_line(argv: Sequence[str]) -> str:
    """`argv` as a systemd ExecStart= command line that systemd splits back into exactly `argv`.

    Arguments with characters other than _UNIT_SAFE_ARG are double-quoted with backslash escapes;
    `%` becomes `%%` (no specifier expansion), and in the arguments after the executable `$` becomes
    `$$` (no variable expansion; systemd never expands variables in the executable's path, where
    `$$` would stay two characters: checked with systemd-analyze verify, tests/test_install.py).
    """
    out = []
    for i, arg in enumerate(argv):
        if not _UNIT_SAFE_ARG.match(arg):
            arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
        arg = arg.replace("%", "%%")
        out.append(arg.replace("$", "$$") if i else arg)
    return " ".join(out)


def unit_templates() -> dict[str, str]:
    """The shipped unit templates by file name (package data, so a wheel install has them too)."""
    base = importlib.resources.files("jobpipe.units")
    return {name: base.joinpath(name).read_text(encoding="utf-8") for name in UNIT_FILES}


def render_units(command: str | Sequence[str], user: str) -> dict[str, str]:
    """The unit files with ExecStart= running `command` (an executable path, or an argv), User=/Group=
    set to `user`, and the target's Also= naming one instance per daemon in DAEMONS."""
    _check_user(user)
    exec_line = unit_command_line(_argv(command))
    also = "Also=" + " ".join(f"jobpipe@{d}.service" for d in DAEMONS)
    rendered: dict[str, str] = {}
    for name, text in unit_templates().items():
        if TEMPLATE_COMMAND not in text and "ExecStart=" in text:
            raise RuntimeError(f"unit template {name} does not run {TEMPLATE_COMMAND}")
        text = text.replace(f"ExecStart={TEMPLATE_COMMAND} ", f"ExecStart={exec_line} ")
        # Callable replacements: nothing in them is read as a regex escape.
        text = re.sub(r"(?m)^User=.*$", lambda _: f"User={user}", text)
        text = re.sub(r"(?m)^Group=.*$", lambda _: f"Group={user}", text)
        text = re.sub(r"(?m)^Also=.*$", lambda _: also, text)
        rendered[name] = text
    return rendered


def render_sysusers(user: str) -> str:
    """A sysusers.d(5) line: a system user with its own group, home = the state directory."""
    _check_user(user)
    return (
        "# The jobpipe service user (written by `jobpipe install`; applied by systemd-sysusers).\n"
        f'u {user} - "jobpipe daemons" {STATE_DIR} /usr/sbin/nologin\n'
    )


def _check_user(user: str) -> None:
    if not _USER_NAME.match(user):
        raise UserError(f"--user {user!r} is not a valid user name (lower case letters, digits, _ and -)")
    if user == "root":
        raise UserError("--user root: the daemons must not run as root (their hardening assumes it)")


def _write(path: Path, text: str, mode: int, report: Report) -> None:
    """Write atomically (temp file + rename) with `mode` from the start; no-op if identical.

    Never follows a symlink to change modes or write: an identical file reached through a link is
    left alone, a differing one replaces the link itself (rename), and the temporary file is
    created fresh (O_EXCL | O_NOFOLLOW), so a planted link there cannot redirect the write.
    """
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        if not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)
        report.unchanged.append(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted run, or planted: never written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.written.append(path)


def default_runner(cmd: Sequence[str]) -> None:
    """Run a command; its failure is a UserError carrying its stderr."""
    res = subprocess.run(list(cmd), capture_output=True, text=True)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise UserError(f"{shlex.join(cmd)} failed ({res.returncode}): {' / '.join(detail[-3:])}")


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def is_root() -> bool:
    return os.geteuid() == 0


def systemd_running() -> bool:
    """sd_booted(3): is systemd the init system of this machine right now?"""
    return os.path.isdir("/run/systemd/system")


def install(
    root: Path = Path("/"),
    user: str = DEFAULT_USER,
    enable: bool = False,
    *,
    command: str | None = None,
    live: bool | None = None,
    run: Runner = default_runner,
    user_exists: Callable[[str], bool] = user_exists,
    systemd_running: Callable[[], bool] = systemd_running,
    is_root: Callable[[], bool] = is_root,
) -> Report:
    """Install units, config, secrets file and service user below `root`.

    `live` (default: root is "/") means `root` is the running system: the user is created and
    systemctl talks to the running manager. Otherwise the files are only staged, and
    `enable` runs `systemctl --root=ROOT enable jobpipe.target` (offline).
    """
    root = Path(root).absolute()
    live = (root == Path("/")) if live is None else live
    argv = _argv(command or jobpipe_command())
    units = render_units(argv, user)  # validates the user name and the command first
    if live and not is_root():
        raise UserError(
            "jobpipe install writes /etc and creates a user: run it as root (or stage with --root DIR)"
        )
    report = Report(root)

    exe = argv[0]
    if exe.startswith(_HIDDEN_BY_PROTECT_HOME):
        report.warnings.append(
            f"ExecStart runs {exe}, which ProtectHome=yes hides from the service: install jobpipe "
            "outside /home and /root, e.g. `python3 -m venv /opt/jobpipe && /opt/jobpipe/bin/pip "
            "install jobpipe && /opt/jobpipe/bin/jobpipe install`"
        )

    for name, text in units.items():
        _write(root / UNIT_DIR / name, text, 0o644, report)
    _write(root / SYSUSERS_FILE, render_sysusers(user), 0o644, report)

    config = root / CONFIG_FILE
    defaults = render_defaults()
    if config.exists() and config.read_text(encoding="utf-8") != defaults:
        report.kept.append(config)
        _write(config.with_name(config.name + ".new"), defaults, 0o644, report)
    else:
        # No secrets belong here (they go to env), so the service user may read it.
        _write(config, defaults, 0o644, report)

    env = root / ENV_FILE
    if env.is_symlink():
        # chmod would change the link's target (a secrets store, or a file someone pointed it
        # at); what the link points to is the operator's business.
        report.kept.append(env)
        report.warnings.append(
            f"{env} is a symlink to {os.readlink(env)}: left as it is; make sure its target is "
            "owned by root with mode 0600"
        )
    elif env.exists():
        if (env.stat().st_mode & 0o777) != 0o600:
            os.chmod(env, 0o600)
            report.warnings.append(f"{env} was readable by others: now mode 0600")
        (report.unchanged if env.read_text(encoding="utf-8") == ENV_TEMPLATE else report.kept).append(env)
    else:
        _write(env, ENV_TEMPLATE, 0o600, report)

    managed = live and systemd_running()  # else systemctl edits files offline (--root)
    if live and not user_exists(user):
        _run(report, run, _create_user_command(root / SYSUSERS_FILE, user))
    if managed:
        _run(report, run, ["systemctl", "daemon-reload"])
    if enable:
        _run(report, run, _systemctl(root, managed, "enable", TARGET))

    report.next_steps = _next_steps(root, live, enable, user, argv)
    return report


def _create_user_command(sysusers_file: Path, user: str) -> list[str]:
    if shutil.which("systemd-sysusers"):
        return ["systemd-sysusers", str(sysusers_file)]
    return ["useradd", "--system", "--user-group", "--home-dir", STATE_DIR, "--no-create-home",
            "--shell", "/usr/sbin/nologin", "--comment", "jobpipe daemons", user]  # fmt: skip


def _systemctl(root: Path, managed: bool, *args: str) -> list[str]:
    """systemctl for the running manager, or `--root=ROOT` on the unit files alone."""
    return ["systemctl", *([] if managed else [f"--root={root}"]), *args]


def _run(report: Report, run: Runner, cmd: list[str]) -> None:
    run(cmd)
    report.ran.append(cmd)


def with_env_file(argv: Sequence[str], env: Path = Path("/") / ENV_FILE) -> list[str]:
    """`argv` run once with `env` read exactly as the units read it: by systemd (EnvironmentFile=),
    not by a shell, so `pa$word` stays `pa$word` and `["+49..."]` keeps its quotes. Output and exit
    status are the command's (--pipe --wait)."""
    return ["systemd-run", "--quiet", "--wait", "--pipe", "--collect",
            f"--property=EnvironmentFile={env}", "--", *argv]  # fmt: skip


def _next_steps(root: Path, live: bool, enabled: bool, user: str, argv: Sequence[str]) -> list[str]:
    instances = " ".join(f"jobpipe@{d}.service" for d in DAEMONS)
    env = Path("/") / ENV_FILE
    migrate = shlex.join(with_env_file([*argv, "migrate"], env))
    if not live:
        return [
            f"# files staged below {root}; on the target system (as root):",
            f"systemd-sysusers /{SYSUSERS_FILE}    # creates user {user}",
            f"# set JOBPIPE_DATABASE_URL in {env}, then create the schema:",
            migrate,
            "systemctl daemon-reload",
            "systemctl start jobpipe.target" if enabled else "systemctl enable --now jobpipe.target",
            "systemctl status 'jobpipe@*'",
        ]
    return [
        f"# 1. point the daemons at PostgreSQL (with pgvector): JOBPIPE_DATABASE_URL=... in {env}",
        f"#    (the embedded database is for `jobpipe up`, not for units); other settings: /{CONFIG_FILE}",
        "# 2. create the schema (the daemons refuse to start on an old one):",
        migrate,
        "# 3. start the daemons (and at boot):",
        "systemctl start jobpipe.target" if enabled else "systemctl enable --now jobpipe.target",
        "systemctl status 'jobpipe@*'",
        f"journalctl -u 'jobpipe@*' -f    # one JSON line per event; units: {instances}",
    ]


def uninstall(
    root: Path = Path("/"),
    *,
    purge: bool = False,
    live: bool | None = None,
    run: Runner = default_runner,
    systemd_running: Callable[[], bool] = systemd_running,
    is_root: Callable[[], bool] = is_root,
) -> Report:
    """Reverse `install`: disable and remove the units, remove the config files it wrote.

    A config or env file the operator edited is kept (and reported) unless `purge`. The service
    user and /var/lib/jobpipe stay (removing a user can orphan files); the report says how.
    """
    root = Path(root).absolute()
    live = (root == Path("/")) if live is None else live
    if live and not is_root():
        raise UserError("jobpipe uninstall changes /etc: run it as root (or --root DIR)")
    report = Report(root)
    managed = live and systemd_running()
    unit_dir = root / UNIT_DIR
    if (unit_dir / TARGET).exists():
        if managed:
            _run(report, run, ["systemctl", "stop", TARGET])
        # Disabling the target disables its Also= instances too (removes every .wants link).
        _run(report, run, _systemctl(root, managed, "disable", TARGET))
    for name in UNIT_FILES:
        _remove(unit_dir / name, report)
    user = _sysusers_user(root / SYSUSERS_FILE) or DEFAULT_USER
    _remove(root / SYSUSERS_FILE, report)

    config, env = root / CONFIG_FILE, root / ENV_FILE
    for path, original in ((config, render_defaults()), (env, ENV_TEMPLATE)):
        if path.exists() and not purge and path.read_text(encoding="utf-8") != original:
            report.kept.append(path)
        else:
            _remove(path, report)
    _remove(config.with_name(config.name + ".new"), report)
    try:
        (root / CONFIG_DIR).rmdir()  # only when nothing of the operator's is left in it
    except OSError:
        pass
    if managed:
        _run(report, run, ["systemctl", "daemon-reload"])
    if report.kept:
        report.next_steps.append("# edited files were kept; `jobpipe uninstall --purge` removes them too")
    report.next_steps.append(
        f"# the service user and {STATE_DIR} are kept; remove them with: userdel {user}; rm -r {STATE_DIR}"
    )
    return report


def _sysusers_user(path: Path) -> str | None:
    """The user name in the sysusers.d file install wrote (it records --user)."""
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "u":
            return fields[1]
    return None


def _remove(path: Path, report: Report) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
        report.removed.append(path)
