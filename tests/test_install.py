"""`jobpipe install` / `jobpipe uninstall` into a directory (--root), as packaging would use them,
and the live-system path (user creation, systemctl) with the commands recorded instead of run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jobpipe import install
from jobpipe.config import render_defaults
from jobpipe.errors import UserError
from jobpipe.settings import DAEMONS

ROOT = Path(__file__).resolve().parent.parent
SYSTEMCTL = shutil.which("systemctl")
needs_systemctl = pytest.mark.skipif(SYSTEMCTL is None, reason="needs systemctl (Debian systemd)")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every file and link below root: (kind, mode, content or link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", 0, str(p.readlink()))
        elif p.is_file():
            out[rel] = ("file", p.stat().st_mode & 0o777, p.read_text())
    return out


def test_install_writes_units_config_env_and_sysusers(tmp_path: Path) -> None:
    report = install.install(tmp_path)
    unit_dir = tmp_path / "etc/systemd/system"
    service = (unit_dir / "jobpipe@.service").read_text()
    # ExecStart= is this interpreter's `jobpipe` script, by absolute path.
    expected_cmd = Path(sys.executable).absolute().parent / "jobpipe"
    assert expected_cmd.is_file()
    assert f"\nExecStart={expected_cmd} run %i\n" in service
    alert = (unit_dir / "jobpipe-alert@.service").read_text()
    assert install.TEMPLATE_COMMAND not in alert
    assert f"\nExecStart={expected_cmd} alert unit-failed jobpipe@%i.service\n" in alert
    assert "\nUser=jobpipe\n" in service and "\nGroup=jobpipe\n" in service
    assert (unit_dir / "jobpipe.target").is_file()

    config = tmp_path / "etc/jobpipe/jobpipe.yaml"
    assert config.read_text() == render_defaults()  # the shipped defaults, from the settings registry
    env = tmp_path / "etc/jobpipe/env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert "JOBPIPE_DATABASE_URL" in env.read_text()
    assert "u jobpipe " in (tmp_path / "etc/sysusers.d/jobpipe.conf").read_text()

    assert sorted(report.written) == sorted(
        [unit_dir / n for n in install.UNIT_FILES] + [config, env, tmp_path / "etc/sysusers.d/jobpipe.conf"]
    )
    assert report.ran == []  # staged: no user created, nothing enabled
    text = "\n".join(report.lines())
    assert "systemctl enable --now jobpipe.target" in text
    assert "systemctl daemon-reload" in text


@pytest.mark.system
def test_install_twice_is_idempotent_and_keeps_an_edited_config(tmp_path: Path) -> None:
    install.install(tmp_path, enable=SYSTEMCTL is not None)
    first = snapshot(tmp_path)
    report = install.install(tmp_path, enable=SYSTEMCTL is not None)
    assert snapshot(tmp_path) == first
    assert report.written == [] and report.kept == []
    assert not (tmp_path / "etc/jobpipe/jobpipe.yaml.new").exists()

    config = tmp_path / "etc/jobpipe/jobpipe.yaml"
    env = tmp_path / "etc/jobpipe/env"
    edited = config.read_text().replace("  workers: 4\n", "  workers: 9\n", 1)
    assert edited != config.read_text()
    config.write_text(edited)
    env.write_text("JOBPIPE_DATABASE_URL=postgresql://jobpipe:secret@db/jobpipe\n")
    os.chmod(env, 0o644)  # an operator loosened it by mistake

    report = install.install(tmp_path)
    assert config.read_text() == edited  # never overwritten
    new = tmp_path / "etc/jobpipe/jobpipe.yaml.new"
    assert new.read_text() == render_defaults()
    assert report.written == [new] and config in report.kept and env in report.kept
    assert env.read_text() == "JOBPIPE_DATABASE_URL=postgresql://jobpipe:secret@db/jobpipe\n"
    assert env.stat().st_mode & 0o777 == 0o600
    assert any("0600" in w for w in report.warnings)

    again = snapshot(tmp_path)
    report = install.install(tmp_path)
    assert snapshot(tmp_path) == again and report.written == []


def test_user_is_rendered_and_validated(tmp_path: Path) -> None:
    install.install(tmp_path, user="jp-svc")
    service = (tmp_path / "etc/systemd/system/jobpipe@.service").read_text()
    assert "\nUser=jp-svc\n" in service and "\nGroup=jp-svc\n" in service
    assert "u jp-svc " in (tmp_path / "etc/sysusers.d/jobpipe.conf").read_text()
    for bad in ("root", "Bad Name", "1abc", "x" * 40):
        with pytest.raises(UserError):
            install.install(tmp_path / "other", user=bad)
    assert not (tmp_path / "other").exists()


@pytest.mark.system
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd-sysusers")
def test_sysusers_file_creates_the_service_user(tmp_path: Path) -> None:
    """The staged sysusers.d file is what the target system applies at boot: apply it offline."""
    install.install(tmp_path)
    res = subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    entry = next(
        line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("jobpipe:")
    )
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert int(uid) < 1000 and home == "/var/lib/jobpipe" and shell == "/usr/sbin/nologin"
    assert f"jobpipe:x:{gid}:" in (tmp_path / "etc/group").read_text()


def test_live_install_creates_the_user_and_talks_to_systemd(tmp_path: Path) -> None:
    """On the running system (simulated: commands are recorded, not run)."""
    ran: list[list[str]] = []
    report = install.install(
        tmp_path,
        enable=True,
        live=True,
        run=ran.append,
        user_exists=lambda name: False,
        systemd_running=lambda: True,
        is_root=lambda: True,
    )
    sysusers = str(tmp_path / "etc/sysusers.d/jobpipe.conf")
    create = ran[0]
    assert create == ["systemd-sysusers", sysusers] or (create[0] == "useradd" and create[-1] == "jobpipe")
    assert ran[1:] == [["systemctl", "daemon-reload"], ["systemctl", "enable", "jobpipe.target"]]
    assert report.ran == ran
    assert "systemctl start jobpipe.target" in report.next_steps
    assert any("migrate" in s for s in report.next_steps)

    # An existing user is left alone; not being root is a clear error, before anything is written.
    ran.clear()
    install.install(tmp_path, live=True, run=ran.append, user_exists=lambda n: True,
                    systemd_running=lambda: False, is_root=lambda: True)  # fmt: skip
    assert ran == []
    with pytest.raises(UserError, match="run it as root"):
        install.install(tmp_path / "x", live=True, run=ran.append, is_root=lambda: False)
    assert not (tmp_path / "x").exists()


def test_warns_when_protecthome_hides_the_command(tmp_path: Path) -> None:
    report = install.install(tmp_path, command="/home/ops/venv/bin/jobpipe")
    assert any("ProtectHome" in w for w in report.warnings)
    report = install.install(tmp_path / "opt", command="/opt/jobpipe/bin/jobpipe")
    assert report.warnings == []


@pytest.mark.system
@needs_systemctl
def test_cli_install_enable_then_uninstall(tmp_path: Path) -> None:
    res = cli("install", "--root", str(tmp_path), "--enable")
    assert res.returncode == 0, res.stderr
    assert f"systemctl --root={tmp_path} enable jobpipe.target" in res.stdout
    assert "systemctl start jobpipe.target" in res.stdout
    wants = tmp_path / "etc/systemd/system/jobpipe.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == sorted(f"jobpipe@{d}.service" for d in DAEMONS)

    config = tmp_path / "etc/jobpipe/jobpipe.yaml"
    config.write_text(config.read_text() + "# an operator's note\n")
    res = cli("uninstall", "--root", str(tmp_path))
    assert res.returncode == 0, res.stderr
    left = snapshot(tmp_path)
    assert list(left) == ["etc/jobpipe/jobpipe.yaml"]  # only the operator's edited file is kept
    assert "--purge" in res.stdout

    res = cli("uninstall", "--root", str(tmp_path), "--purge")
    assert res.returncode == 0, res.stderr
    assert snapshot(tmp_path) == {}


@pytest.mark.system
def test_cli_rejects_a_bad_user_with_one_line(tmp_path: Path) -> None:
    res = cli("install", "--root", str(tmp_path), "--user", "root")
    assert res.returncode == 2
    assert res.stderr.startswith("jobpipe: ") and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.system
def test_wheel_ships_the_unit_templates_and_the_simulators(tmp_path: Path) -> None:
    """A non-editable install must find the units: they are package data (jobpipe.units), and
    every module of lib/jobpipe (a subpackage missing from pyproject's list would be left out).
    Built from a copy of the sources, so no build/ directory lands in the working tree."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "lib", src / "lib", ignore=ignore)  # daemons/ and units/ link into it
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0 and "satisfies the requirement" in res.stderr:
        pytest.skip("no package index for the build requirements (setuptools, wheel)")
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("jobpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for unit in install.UNIT_FILES:
        assert f"jobpipe/units/{unit}" in names
    modules = {str(p.relative_to(ROOT / "lib")) for p in (ROOT / "lib" / "jobpipe").rglob("*.py")}
    assert modules - names == set()
    assert {n for n in names if n.endswith(".py")} == modules  # each once, nothing from elsewhere
    # The simulators and their reference data, for `jobpipe demo` / `jobpipe sim` from a wheel.
    for sim in ("server.py", "ba.py", "ba_data.py", "ollama.py", "signal.py"):
        assert f"jobpipe/sim/{sim}" in names
    for data in ("kldb2010.csv", "occupation-names-berufenet-2015.txt"):
        assert f"jobpipe/sim/data/{data}" in names
    assert "jobpipe/data/berufenet_test_catalogue.json" in names


# ------------------------------------------------------------------ issue 15 item 10, issue 20 item 7


def test_an_env_symlink_is_never_followed_by_chmod(tmp_path: Path) -> None:
    """An existing /etc/jobpipe/env that is a symlink: its target keeps its mode (install used to
    chmod 0600 through the link, e.g. onto a shared file it does not own), the link stays."""
    target = tmp_path / "shared-secrets"
    target.write_text("JOBPIPE_ALERTS_SENDER=+4915100000000\n")
    target.chmod(0o644)
    root = tmp_path / "root"
    env = root / "etc/jobpipe/env"
    env.parent.mkdir(parents=True)
    env.symlink_to(target)
    for _ in range(2):  # the second run sees the same link
        report = install.install(root)
        assert env.is_symlink() and env.readlink() == target
        assert target.stat().st_mode & 0o777 == 0o644
        assert target.read_text() == "JOBPIPE_ALERTS_SENDER=+4915100000000\n"
        assert env in report.kept
        assert any("symlink" in w and str(target) in w for w in report.warnings), report.warnings


def test_a_planted_temp_file_link_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    unit_dir = tmp_path / "root/etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / ".jobpipe@.service.tmp").symlink_to(victim)
    install.install(tmp_path / "root")
    assert victim.read_text() == "untouched\n"
    assert "ExecStart=" in (unit_dir / "jobpipe@.service").read_text()


@pytest.mark.system
@pytest.mark.parametrize(
    "exe",
    [
        "/opt/my tools/venv/bin/jobpipe",
        "/opt/100%/bin/jobpipe",
        "/opt/$HOME/bin/jobpipe",
    ],
)
def test_execstart_is_escaped_so_systemd_runs_that_exact_path(tmp_path: Path, exe: str) -> None:
    """systemd splits ExecStart= on spaces and expands % and $: the path is quoted and escaped.
    Checked with systemd's own parser: `systemd-analyze verify` fails when the executable it
    parsed out of ExecStart= does not exist, so it must name exactly the one created here."""
    unit = install.render_units(exe, "jobpipe")["jobpipe@.service"]
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert line == f"ExecStart={install.unit_command_line([exe])} run %i"
    if SYSTEMCTL is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze to parse the unit")
    real = tmp_path / exe.lstrip("/")
    real.parent.mkdir(parents=True)
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    rendered = install.render_units([str(real)], "jobpipe")
    unit_path = tmp_path / "jobpipe@embedder.service"
    unit_path.write_text(rendered["jobpipe@.service"])
    (tmp_path / "jobpipe-alert@embedder.service").write_text(rendered["jobpipe-alert@.service"])
    (tmp_path / "jobpipe.target").write_text(rendered["jobpipe.target"])
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_path)], capture_output=True, text=True
    )
    assert res.returncode == 0 and "jobpipe@embedder.service" not in res.stderr, res.stderr
    # And where the executable is missing, verify does complain: the check above can fail.
    real.unlink()
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_path)], capture_output=True, text=True
    )
    assert "jobpipe@embedder.service" in res.stderr


def test_command_must_be_absolute_and_without_control_characters(tmp_path: Path) -> None:
    # systemd itself refuses quotes and backslashes in an executable's path: said before writing.
    bad_paths = ['/opt/q"uote/bin/jobpipe', "/opt/it's/bin/jobpipe", "/opt/back\\slash/bin/jobpipe"]
    for bad in ("jobpipe", "/opt/job\npipe/bin/jobpipe", ["/usr/bin/python3", "-m", "x\ty"], *bad_paths):
        with pytest.raises(UserError):
            install.install(tmp_path / "x", command=bad)
    assert not (tmp_path / "x").exists()


def test_next_steps_read_the_env_file_as_systemd_does(tmp_path: Path) -> None:
    """The printed migrate step used to be `sh -c '. /etc/jobpipe/env'`: a shell drops the quotes
    of the template's own list example and expands `pa$word`. It now lets systemd read the file
    (EnvironmentFile=), exactly as for the units; the system test runs it verbatim."""
    import shlex

    exe = "/opt/my tools/bin/jobpipe"
    for live in (False, True):
        report = install.install(
            tmp_path / str(live), command=exe, live=live, run=lambda cmd: None,
            user_exists=lambda n: True, systemd_running=lambda: True, is_root=lambda: True,
        )  # fmt: skip
        steps = [s for s in report.next_steps if not s.startswith("#")]
        assert not any("sh -c" in s or ". /etc/jobpipe/env" in s for s in report.next_steps)
        (migrate,) = [shlex.split(s) for s in steps if s.endswith(" migrate")]
        assert migrate == install.with_env_file([exe, "migrate"])
        assert migrate[0] == "systemd-run" and "--property=EnvironmentFile=/etc/jobpipe/env" in migrate
        assert migrate[migrate.index("--") + 1 :] == [exe, "migrate"]  # the path survives as one word
    assert 'JOBPIPE_ALERTS_RECIPIENTS=["+4915112345678"]' in install.ENV_TEMPLATE
    assert "not by a shell" in install.ENV_TEMPLATE


def test_target_enables_one_instance_per_daemon() -> None:
    target = install.render_units("/opt/jobpipe/bin/jobpipe", "jobpipe")["jobpipe.target"]
    (also,) = [ln for ln in target.splitlines() if ln.startswith("Also=")]
    assert also.removeprefix("Also=").split() == [f"jobpipe@{d}.service" for d in DAEMONS]
