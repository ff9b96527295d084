"""The units under a real systemd (issue 20): a minimal Debian 12 booted with systemd-nspawn,
jobpipe installed from its wheel into /opt/jobpipe exactly as the README says, the simulators
(BA, Ollama, Signal) and PostgreSQL on the host's loopback.

One test, in phases, each timed (printed at the end; run with -s to see them live):
 1. boot with jobpipe.target enabled while the database is unreachable: the boot finishes
    (is-system-running: running) and every daemon is active (running) saying "DOWN database";
 2. the database comes up (TCP, a password with a `$`): the printed `migrate` step runs verbatim
    and reads /etc/jobpipe/env as systemd does (the template's own list example uncommented);
    the daemons connect, STATUS drops the old database error, postings are fetched, classified
    and embedded;
 3. SIGKILL one daemon: systemd restarts it; SIGSTOP one: the watchdog kills it (SIGABRT) and
    systemd restarts it within WatchdogSec + RestartSec + a margin;
 4. a bad value in one daemon's drop-in: the unit fails for good, jobpipe-alert@<daemon> runs,
    the simulated Signal gateway receives exactly one message naming the unit;
 5. `systemctl stop jobpipe.target` returns only when every daemon has exited 0; no lease is held.

Skipped, with the reason printed, where the machine cannot do it (not root, no systemd-nspawn,
no cgroup2, no Debian mirror for the first root build). The root file system is built once and
cached (tests/system/build_root.sh); that one-time build is measured and reported apart.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobpipe import embedded
from jobpipe.sandbox import Options, Sandbox, free_port
from jobpipe.settings import DAEMONS
from jobpipe.sim.signal import FakeSignalGateway
from tests.system import nspawn
from tests.waiting import wait_until

pytestmark = [pytest.mark.system, pytest.mark.systemd, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
VENV = "/opt/jobpipe"
JOBPIPE = f"{VENV}/bin/jobpipe"
SENDER = "+4915100000001"
# The env template's own example line, uncommented: it must reach the daemons and the printed
# migrate step as a YAML list with this number.
RECIPIENT = "+4915112345678"
RECIPIENTS_LINE = f'JOBPIPE_ALERTS_RECIPIENTS=["{RECIPIENT}"]'
DB_USER, DB_PASSWORD = "jobpipe", "pa$word"  # a shell would turn pa$word into pa
WATCHDOG_TEST_S = 10  # the watchdog phase shortens WatchdogSec in a drop-in: 120 s is too long here


def start_simulators(home: Path) -> Sandbox:
    """PostgreSQL (embedded, migrated, catalogue loaded) and the simulated BA API and Ollama,
    on the host's 127.0.0.1. The one place to repoint when the simulators move into the package."""
    box = Sandbox(home, Options(postings=120, real_model=False, signal_up=False), say=lambda s: None)
    box.start()
    return box


def open_database_over_tcp(box: Sandbox) -> str:
    """Restart the sandbox's PostgreSQL listening on 127.0.0.1 (its socket lives in a 0700
    directory the service user cannot enter), with a role that logs in with DB_PASSWORD (scram),
    and return the URL the container uses."""
    with box.connect() as c:
        c.execute(f"CREATE ROLE {DB_USER} LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}'")
        dbname = c.execute("SELECT current_database()").fetchone()[0]
    hba = box.data_dir / "pg_hba.conf"
    hba.write_text(f"host all {DB_USER} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    port = free_port()
    embedded.pg_ctl(box.data_dir, "-w", "-m", "fast", "-o", f"-h 127.0.0.1 -p {port}", "restart", timeout=120)
    # The host too (pg_ctl's -o replaced the socket directory option; initdb's hba trusts loopback).
    box.url = f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    return f"postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{port}/{dbname}"


def container_config(box: Sandbox, signal_url: str) -> str:
    """/etc/jobpipe/jobpipe.yaml: the sandbox's settings (simulators, short intervals) without the
    database URL and the recipients, which come from /etc/jobpipe/env as in production."""
    cfg: dict[str, Any] = box.config()
    del cfg["database"]
    cfg["alerts"].update(gateway_url=signal_url, sender=SENDER)
    del cfg["alerts"]["recipients"]
    cfg["logging"] = {"format": "json"}
    return yaml.safe_dump(cfg, sort_keys=False)


def next_step(install_output: str, word: str) -> list[str]:
    """The printed next step containing `word`, as argv (it is printed shell-quoted)."""
    lines = [
        ln.strip() for ln in install_output.splitlines() if word in ln and not ln.strip().startswith("#")
    ]
    assert lines, f"no next step with {word!r} in:\n{install_output}"
    return shlex.split(lines[0])


class Timer:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last = self.t0
        self.phases: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append((name, now - self.last))
        print(f"[systemd test] {name}: {now - self.last:.1f} s", flush=True)
        self.last = now

    def report(self) -> str:
        total = time.monotonic() - self.t0
        return "; ".join(f"{n} {s:.1f}s" for n, s in self.phases) + f"; total {total:.1f}s"


@pytest.fixture(scope="module")
def machine() -> Iterator[None]:
    reason = nspawn.why_not()
    if reason is None and sys.version_info[:2] != nspawn.CONTAINER_PYTHON:
        # The wheels are built here (numpy, psycopg-binary, orjson are CPython-version specific).
        version = ".".join(map(str, nspawn.CONTAINER_PYTHON))
        reason = f"needs Python {version} here, like Debian 12 in the container"
    if reason:
        pytest.skip(f"systemd system test: {reason}")
    yield


def units(c: nspawn.Container) -> dict[str, dict[str, str]]:
    props = ("ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result", "ExecMainStatus")
    return {d: c.show(f"jobpipe@{d}.service", *props) for d in DAEMONS}


def test_units_under_a_real_systemd(machine: None, tmp_path: Path) -> None:
    timer = Timer()
    try:
        tarball, build_s = nspawn.root_tarball()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"systemd system test: {exc}")
    timer.lap("root file system " + ("built (one-time)" if build_s > 5 else "from cache"))

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    timer.lap("wheels built")
    box = start_simulators(tmp_path / "sandbox")
    signal_gw = FakeSignalGateway(account=SENDER)
    c = nspawn.Container(tarball, tmp_path / "root", "jobpipe-i20")
    try:
        timer.lap("simulators and PostgreSQL started")
        c.unpack()
        c.boot()
        timer.lap("container booted")

        # --- install as the README says: a venv in /opt, the wheel, `jobpipe install --enable`
        (c.root / "root/wheels").mkdir(parents=True)
        for w in wheels.iterdir():
            (c.root / "root/wheels" / w.name).write_bytes(w.read_bytes())
        c.run("python3", "-m", "venv", VENV)
        c.run(f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/root/wheels", "jobpipe",
              timeout=300)  # fmt: skip
        out = c.run(JOBPIPE, "install", "--enable").stdout
        assert "ran        systemctl enable jobpipe.target" in out, out
        env_file = (c.root / "etc/jobpipe/env").read_text()
        assert RECIPIENTS_LINE in env_file  # the template's example, which we now use uncommented
        # The port is chosen now; nothing listens on it until phase 2.
        port = free_port()
        unreachable = f"postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{port}/x"
        c.write("/etc/jobpipe/jobpipe.yaml", container_config(box, signal_gw.url))
        c.write(
            "/etc/jobpipe/env", env_file + f"{RECIPIENTS_LINE}\nJOBPIPE_DATABASE_URL={unreachable}\n", 0o600
        )
        timer.lap("wheel installed, jobpipe install --enable")

        # --- 1. boot with the target enabled and the database unreachable: the boot completes
        c.close()
        c.boot(timeout=120)  # raises unless is-system-running --wait says running/degraded
        state = c.run("systemctl", "is-system-running", check=False).stdout.strip()
        assert state == "running", (state, c.run("systemctl", "--failed", "--no-pager", check=False).stdout)
        assert c.run("systemctl", "list-jobs", "--no-legend", check=False).stdout.strip() == ""
        st = units(c)
        for d, u in st.items():
            assert (u["ActiveState"], u["SubState"]) == ("active", "running"), (d, u)
            assert "DOWN database" in u["StatusText"], (d, u)
        timer.lap("1. booted with the database down: boot finished, every daemon running, DOWN database")

        # --- 2. database up; the printed migrate step verbatim; real work flows
        url = open_database_over_tcp(box)
        env_text = (c.root / "etc/jobpipe/env").read_text().replace(unreachable, url)
        c.write("/etc/jobpipe/env", env_text, 0o600)
        # The daemons read the env at start: restart them onto the right URL.
        c.run("systemctl", "restart", "jobpipe.target")
        migrate = next_step(out, " migrate")
        res = c.run(*migrate, check=False)
        assert res.returncode == 0, (migrate, res.stdout, res.stderr)
        cfg_json = c.run(*migrate[:-1], "config", "show", "--json", check=False)
        assert cfg_json.returncode == 0, cfg_json.stderr

        def working() -> bool:
            p = box.progress()
            return p["postings"] > 0 and p["classified"] > 0 and p["embedded"] > 0

        wait_until(working, timeout=240, what="postings fetched, classified and embedded", interval=1.0)
        st = wait_until(
            lambda: (
                (s := units(c))
                and all(
                    "DOWN database" not in u["StatusText"] and "last error: database" not in u["StatusText"]
                    for u in s.values()
                )
                and s
            ),
            timeout=60,
            what="every STATUS without the database outage",
            interval=1.0,
        )
        for d, u in st.items():
            assert (u["ActiveState"], u["SubState"]) == ("active", "running"), (d, u)
            assert u["StatusText"], (d, u)
        progress = box.progress()
        timer.lap(f"2. database up, migrate step ok, work flows ({progress})")

        # --- 3a. SIGKILL: systemd restarts the daemon
        victim = DAEMONS[0]
        before = c.show(f"jobpipe@{victim}.service", "MainPID", "NRestarts")
        c.run("systemctl", "kill", "--kill-whom=main", "--signal=KILL", f"jobpipe@{victim}.service")
        after = wait_until(
            lambda: (
                (s := c.show(f"jobpipe@{victim}.service", "MainPID", "NRestarts", "SubState"))
                and s["SubState"] == "running"
                and int(s["NRestarts"]) > int(before["NRestarts"])
                and s
            ),
            timeout=10 + 30,  # RestartSec + a margin
            what=f"jobpipe@{victim} restarted after SIGKILL",
            interval=0.5,
        )
        assert after["MainPID"] != before["MainPID"]
        timer.lap(f"3a. SIGKILL {victim}: restarted")

        # --- 3b. SIGSTOP: the watchdog kills it, systemd restarts it
        victim = DAEMONS[-1]
        c.write(
            f"/etc/systemd/system/jobpipe@{victim}.service.d/watchdog.conf",
            f"[Service]\nWatchdogSec={WATCHDOG_TEST_S}\n",
        )
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "restart", f"jobpipe@{victim}.service")
        before = c.show(f"jobpipe@{victim}.service", "MainPID", "NRestarts", "WatchdogUSec", "RestartUSec")
        assert before["WatchdogUSec"] == f"{WATCHDOG_TEST_S}s", before
        restart_s = int(re.fullmatch(r"(\d+)s", before["RestartUSec"])[1])  # type: ignore[index]
        t_stop = time.monotonic()
        c.run("systemctl", "kill", "--kill-whom=main", "--signal=STOP", f"jobpipe@{victim}.service")
        wait_until(
            lambda: (
                (s := c.show(f"jobpipe@{victim}.service", "MainPID", "NRestarts", "SubState"))
                and s["SubState"] == "running"
                and int(s["NRestarts"]) > int(before["NRestarts"])
            ),
            timeout=WATCHDOG_TEST_S + restart_s + 30,
            what=f"jobpipe@{victim} killed by the watchdog and restarted",
            interval=0.5,
        )
        took = time.monotonic() - t_stop
        log = c.run("journalctl", "-u", f"jobpipe@{victim}.service", "--no-pager", "-o", "cat").stdout
        assert "Watchdog timeout" in log, log[-2000:]
        assert WATCHDOG_TEST_S <= took <= WATCHDOG_TEST_S + restart_s + 30, took
        timer.lap(f"3b. SIGSTOP {victim}: watchdog kill and restart after {took:.1f}s")

        # --- 4. a unit that fails for good pages once, naming itself
        victim = DAEMONS[1]
        c.write(
            f"/etc/systemd/system/jobpipe@{victim}.service.d/broken.conf",
            f"[Service]\nEnvironment=JOBPIPE_{victim.upper()}_WORKERS=many\n",
        )
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "restart", f"jobpipe@{victim}.service", check=False)
        wait_until(
            lambda: c.show(f"jobpipe@{victim}.service", "ActiveState")["ActiveState"] == "failed",
            timeout=60,
            what=f"jobpipe@{victim} failed",
            interval=0.5,
        )
        alert_unit = f"jobpipe-alert@{victim}.service"
        alert = wait_until(
            lambda: (
                (s := c.show(alert_unit, "ActiveState", "Result", "ExecMainStatus", "ExecMainExitTimestamp"))
                and s["ActiveState"] in ("inactive", "failed")
                and s["ExecMainExitTimestamp"]
                and s
            ),
            timeout=120,
            what=f"{alert_unit} ran",
            interval=0.5,
        )
        assert (alert["Result"], alert["ExecMainStatus"]) == ("success", "0"), alert
        named = [m for m in signal_gw.messages if f"jobpipe@{victim}" in m.message]
        assert len(named) == 1, [m.message for m in signal_gw.messages]
        assert named[0].recipients == (RECIPIENT,)
        timer.lap(f"4. {victim} failed for good: {alert_unit} sent one message")

        # --- 5. stop: returns when every daemon has exited 0, leases released
        running = [d for d in DAEMONS if d != victim]
        t_stop = time.monotonic()
        c.run("systemctl", "stop", "jobpipe.target", timeout=120)
        stop_s = time.monotonic() - t_stop
        st = units(c)
        for d in running:
            u = st[d]
            assert (u["ActiveState"], u["Result"], u["ExecMainStatus"]) == ("inactive", "success", "0"), (
                d,
                u,
            )
        drain = yaml.safe_load(container_config(box, signal_gw.url))["runtime"]["drain_timeout_s"]
        assert stop_s <= drain + 15, stop_s
        with box.connect() as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.columns WHERE column_name = 'lease_owner'"
                " AND table_schema = 'public'")]  # fmt: skip
            assert tables
            held = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE lease_owner IS NOT NULL").fetchone()[0]
                    for t in tables}  # fmt: skip
        assert not any(held.values()), held
        assert len([m for m in signal_gw.messages if f"jobpipe@{victim}" in m.message]) == 1
        timer.lap(f"5. stop jobpipe.target: {stop_s:.1f}s, every daemon exited 0, no lease held")
    finally:
        c.close()
        signal_gw.close()
        box.stop()
        print(f"[systemd test] {timer.report()}", flush=True)
