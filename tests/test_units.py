"""The systemd units, checked by systemd's own tools offline (systemd is installed but not PID 1):
`systemd-analyze verify` must print nothing, `systemd-analyze security` must score <= 2.0, and
`systemctl --root` must turn `enable jobpipe.target` into the expected links."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jobpipe import install
from jobpipe.settings import DAEMONS, all_settings

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMCTL = shutil.which("systemctl")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or SYSTEMCTL is None, reason="needs systemd-analyze/systemctl (Debian systemd)"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (keys like SystemCallFilter= may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert section is not None, f"key outside a section: {line}"
        section.setdefault(key, []).append(value)
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, f"unexpected time span {value!r}"
    return int(m[1]) * (60 if m[2] == "min" else 1)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as `jobpipe install` writes them, with ExecStart= naming this installation's
    `jobpipe` (a binary that exists here, as verify requires), plus one file per instance."""
    d = tmp_path_factory.mktemp("units")
    for name, text in install.render_units(install.jobpipe_command(), "jobpipe").items():
        (d / name).write_text(text)
    template = (d / "jobpipe@.service").read_text()
    for daemon in DAEMONS:
        (d / f"jobpipe@{daemon}.service").write_text(template)
    # The OnFailure= hook as systemd instantiates it: jobpipe-alert@<daemon>.service
    shutil.copy(d / "jobpipe-alert@.service", d / "jobpipe-alert@embedder.service")
    return d


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, paths)], capture_output=True, text=True
    )


@pytest.mark.system
def test_verify_prints_nothing_for_every_unit(rendered: Path) -> None:
    units = [rendered / f"jobpipe@{d}.service" for d in DAEMONS]
    units += [rendered / "jobpipe.target", rendered / "jobpipe-alert@embedder.service"]
    res = verify(*units)
    # Warnings (unknown keys, bad values) do not change verify's exit code: any output fails.
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


@pytest.mark.system
def test_verify_would_catch_a_bad_key(rendered: Path, tmp_path: Path) -> None:
    """The check above is only worth something if verify reports mistakes of this kind."""
    text = (rendered / "jobpipe@.service").read_text()
    bad = tmp_path / "jobpipe@embedder.service"
    bad.write_text(
        text.replace("ProtectSystem=strict", "ProtectSytem=strict").replace("RestartSec=10", "RestartSteps=3")
    )  # fmt: skip  (a typo, and a key systemd 252 lacks)
    res = verify(bad)
    assert "Unknown key 'ProtectSytem'" in res.stderr
    assert "Unknown key 'RestartSteps'" in res.stderr


@pytest.mark.system
@pytest.mark.parametrize("unit", ["jobpipe@embedder.service", "jobpipe-alert@embedder.service"])
def test_security_exposure_at_most_2(rendered: Path, unit: str) -> None:
    res = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(rendered / unit)],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    score = float(m[1])
    print(f"{unit}: exposure {score}")
    assert score <= 2.0, res.stdout


def test_service_keys_the_issue_requires() -> None:
    unit = parse_unit((ROOT / "units" / "jobpipe@.service").read_text())
    svc, sec = unit["Service"], unit["Unit"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["Restart"] == ["on-failure"] and seconds(svc["RestartSec"][0]) > 0
    assert svc["KillMode"] == ["mixed"]
    assert svc["EnvironmentFile"] == ["-/etc/jobpipe/env"]
    assert svc["ExecStart"] == [f"{install.TEMPLATE_COMMAND} run %i"]
    assert "2" in svc["RestartPreventExitStatus"][0].split()
    # %i, not %n: the alert unit is jobpipe-alert@embedder, not jobpipe-alert@jobpipe@embedder.service
    assert sec["OnFailure"] == ["jobpipe-alert@%i.service"] and sec["PartOf"] == ["jobpipe.target"]
    # After= the target: stopping the target waits for the daemons, starting it does not (boot).
    assert "jobpipe.target" in " ".join(sec["After"]).split()
    # READY no longer waits for the database: a finite start timeout catches a hung start.
    assert svc["TimeoutStartSec"] != ["infinity"]
    # Start limits only work in [Unit] (systemd ignores them in [Service]); the burst must be
    # reachable within the interval.
    assert "StartLimitBurst" not in svc and "StartLimitIntervalSec" not in svc
    burst, interval = int(sec["StartLimitBurst"][0]), seconds(sec["StartLimitIntervalSec"][0])
    assert interval > burst * seconds(svc["RestartSec"][0])
    # Stopping must outlast the drain, and the watchdog the longest statement a loop turn may run.
    defaults = all_settings()
    assert seconds(svc["TimeoutStopSec"][0]) >= defaults["runtime.drain_timeout_s"].default + 10
    assert seconds(svc["WatchdogSec"][0]) > defaults["database.statement_timeout_s"].default
    # Traps from docs/tooling.md: ProcSubset=pid hides process_start_time_seconds.
    assert "ProcSubset" not in svc
    assert unit["Install"]["WantedBy"] == ["jobpipe.target"]


def test_alert_unit_runs_the_alert_command() -> None:
    unit = parse_unit((ROOT / "units" / "jobpipe-alert@.service").read_text())
    assert unit["Service"]["Type"] == ["oneshot"]
    assert unit["Service"]["ExecStart"] == [
        f"{install.TEMPLATE_COMMAND} alert unit-failed jobpipe@%i.service"
    ]
    assert "OnFailure" not in unit["Unit"]  # a failing alert must not page about itself in a loop


@pytest.mark.system
def test_enable_target_creates_the_wants_links(rendered: Path, tmp_path: Path) -> None:
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name in install.UNIT_FILES:
        shutil.copy(rendered / name, unit_dir / name)
    res = subprocess.run(
        [SYSTEMCTL, f"--root={tmp_path}", "enable", "jobpipe.target"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    links = {str(p.relative_to(unit_dir)): str(p.readlink()) for p in unit_dir.rglob("*") if p.is_symlink()}
    expected = {"multi-user.target.wants/jobpipe.target": "/etc/systemd/system/jobpipe.target"}
    expected |= {
        f"jobpipe.target.wants/jobpipe@{d}.service": "/etc/systemd/system/jobpipe@.service" for d in DAEMONS
    }
    assert links == expected

    # One daemon can be left out, and disabling the target removes every link again.
    def systemctl(*args: str) -> str:
        return subprocess.run(
            [SYSTEMCTL, f"--root={tmp_path}", *args], capture_output=True, text=True, check=True
        ).stdout

    systemctl("disable", "jobpipe@verifier.service")
    assert not (unit_dir / "jobpipe.target.wants/jobpipe@verifier.service").exists()
    assert (unit_dir / "jobpipe.target.wants/jobpipe@embedder.service").is_symlink()
    systemctl("disable", "jobpipe.target")
    assert not [p for p in unit_dir.rglob("*") if p.is_symlink()]


def test_watchdog_comment_states_the_real_restart_bound() -> None:
    """The comment promised "restarted within 2 minutes" while the kill alone takes WatchdogSec
    (120 s) and the restart comes RestartSec later: the bound it states is their sum."""
    text = (ROOT / "units" / "jobpipe@.service").read_text()
    svc = parse_unit(text)["Service"]
    bound = seconds(svc["WatchdogSec"][0]) + seconds(svc["RestartSec"][0])
    m = re.search(r"within (\d+) s of its last ping", text)
    assert m, "the WatchdogSec comment must state the restart bound in seconds"
    assert int(m[1]) == bound


def test_alert_unit_names_the_failed_daemon(rendered: Path) -> None:
    """systemd instantiates OnFailure=jobpipe-alert@%i.service of jobpipe@embedder.service as
    jobpipe-alert@embedder.service, whose command names jobpipe@embedder.service again."""
    svc = parse_unit((rendered / "jobpipe@.service").read_text())
    on_failure = svc["Unit"]["OnFailure"][0].replace("%i", "embedder")
    assert on_failure == "jobpipe-alert@embedder.service"
    alert = parse_unit((rendered / "jobpipe-alert@.service").read_text())
    assert alert["Service"]["ExecStart"][0].endswith(" alert unit-failed jobpipe@%i.service")
