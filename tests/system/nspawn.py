"""A booted systemd in a container (systemd-nspawn -b) for the system test, on machines whose PID 1
is not systemd. See /work/shared/docs/tooling.md, "A real systemd on these machines".

- `why_not()` says why this machine cannot do it (None when it can): not root, no nspawn, no
  cgroups or namespaces;
- `root_tarball()` builds the minimal Debian 12 root once (tests/system/build_root.sh, cached
  under /var/cache/jobpipe-systemd-test) and reuses it afterwards;
- `Container` unpacks it, boots it (no --private-network: the container shares the host's
  loopback, so it reaches the test's PostgreSQL and simulators on 127.0.0.1), runs commands
  inside with nsenter, and always powers off and unmounts what it mounted (`close`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_DIR = Path(os.environ.get("JOBPIPE_SYSTEMD_TEST_CACHE", "/var/cache/jobpipe-systemd-test"))
NSPAWN_RUN = Path("/run/systemd/nspawn")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_PYTHON = (3, 11)  # Debian 12's python3


def why_not() -> str | None:
    """Why a container cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn)"
    for tool in ("systemd-nspawn", "nsenter", "debootstrap"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install systemd-container debootstrap)"
    mounts = Path("/proc/self/mounts").read_text()
    if not any(line.split()[2] in ("cgroup", "cgroup2") for line in mounts.splitlines() if line.strip()):
        return "needs cgroups mounted under /sys/fs/cgroup (systemd in a container needs them)"
    return None


def root_tarball(timeout: float = 1200) -> tuple[Path, float]:
    """The cached root file system tarball and the seconds it took (0 when it was cached).
    RuntimeError with the build's last lines when it cannot be built (e.g. no Debian mirror)."""
    t0 = time.monotonic()
    res = subprocess.run(
        ["sh", str(HERE / "build_root.sh"), str(CACHE_DIR)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if res.returncode != 0:
        tail = " / ".join(res.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"cannot build the root file system: {tail}")
    return Path(res.stdout.strip().splitlines()[-1]), time.monotonic() - t0


class Container:
    """One booted container. Use as a context manager; `run` executes inside it."""

    def __init__(self, tarball: Path, directory: Path, name: str) -> None:
        self.tarball = tarball
        self.dir = directory
        self.name = name
        self.log_path = directory.parent / f"{name}-console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1 (systemd), seen from the host
        self._mounted_run = False

    @property
    def root(self) -> Path:
        return self.dir

    def unpack(self) -> None:
        self.dir.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(self.dir), "-xf", str(self.tarball)], check=True)

    def boot(self, timeout: float = 60) -> None:
        """Boot and wait until systemd in it reached its default target (or degraded)."""
        if not NSPAWN_RUN.is_dir() or not os.path.ismount(NSPAWN_RUN):
            # Without it nspawn fails: "Attempted to remove disk file system under
            # /run/systemd/nspawn/propagate/..." (the host's /run is not a tmpfs here).
            NSPAWN_RUN.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(NSPAWN_RUN)], check=True)
            self._mounted_run = True
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed when the process is reaped
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "-b",
                "-D",
                str(self.dir),
                "-M",
                self.name,
                "--register=no",
                "--keep-unit",
                "--console=passive",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        state, detail = "", ""
        while state not in ("running", "degraded"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.console()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the container's systemd did not come up within {timeout}s ({state or detail}): "
                    f"{self.console()}"
                )
            self.leader = self._systemd_pid()
            if self.leader:
                # Fails until the manager inside listens (its private socket): then waits for boot.
                left = max(1.0, deadline - time.monotonic())
                try:
                    res = self.run("systemctl", "is-system-running", "--wait", timeout=left, check=False)
                except subprocess.TimeoutExpired:
                    state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                    jobs = self.run("systemctl", "list-jobs", "--no-pager", check=False).stdout.strip()
                    raise RuntimeError(
                        f"the boot did not finish within {timeout}s (is-system-running: {state}); "
                        f"jobs: {' / '.join(jobs.splitlines()[:8])}"
                    ) from None
                state, detail = res.stdout.strip(), res.stderr.strip()
                if state in ("running", "degraded"):
                    break
            time.sleep(0.2)  # polling: nspawn gives no event when the container's systemd is up

    def _systemd_pid(self) -> int:
        """The container's PID 1 as seen from the host: nspawn's child once it has exec'd systemd."""
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def console(self) -> str:
        try:
            return " / ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return ""

    def run(
        self, *cmd: str, timeout: float = 120, check: bool = True, env: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the container (all its namespaces, root, a clean environment)."""
        assert self.leader, "not booted"
        res = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.leader),
                "-a",
                "env",
                "-i",
                f"PATH={PATH}",
                "HOME=/root",
                "LANG=C.UTF-8",
                *env,
                *cmd,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            )
        return res

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show UNIT -p ...` as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the container's file system (from the host)."""
        p = self.dir / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    def close(self, timeout: float = 60) -> None:
        """Power off (systemctl poweroff inside), else kill nspawn; unmount what boot mounted."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.leader:
                    with contextlib.suppress(Exception):
                        self.run("systemctl", "poweroff", "--no-block", timeout=20, check=False)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(30)
        finally:
            self.leader = 0
            if self._mounted_run:
                subprocess.run(["umount", "--lazy", str(NSPAWN_RUN)], check=False)
                self._mounted_run = False

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
