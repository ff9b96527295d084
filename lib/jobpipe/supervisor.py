"""`jobpipe up`: every daemon as a supervised child process, systemd-style, for a laptop or a demo.

Each child gets its own sd_notify socket (the same protocol systemd speaks), so the supervisor
knows when a child is READY and shows its STATUS= line live. A crashed child is restarted with
backoff; one child failing never stops the others. Ctrl-C (or SIGTERM) stops them all cleanly.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from jobpipe.cli import unfiltered


def die_with_parent() -> None:
    """In a child before exec: receive SIGTERM when the parent dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so supervised processes never outlive their supervisor."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    sock: socket.socket
    sock_path: str
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    status: str = "starting"
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = 1.0
    started_at: float = 0.0
    log: IO[bytes] | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        names: Sequence[str],
        base_cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        tty: bool = False,
        max_backoff: float = 30.0,
        out: IO[str] | None = None,
    ) -> None:
        self.base_cmd = list(base_cmd)
        self.env = dict(os.environ if env is None else env)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            self.env.pop(k, None)  # children talk to us, not to our own supervisor
        self.log_dir = log_dir
        self.tty = tty
        self.max_backoff = max_backoff
        # Its own cursor movements must reach the terminal: not through the CLI's escaping writer
        # (what it shows of the daemons is their STATUS line, ASCII-only already).
        self.out = out or unfiltered(sys.stdout)
        self.tmp = tempfile.mkdtemp(prefix="jobpipe-up-")
        self.children: list[Child] = []
        for name in names:
            path = os.path.join(self.tmp, f"{name}.sock")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(path)
            s.setblocking(False)
            self.children.append(Child(name, s, path))
        self.stopping = False
        self._lines_drawn = 0

    def _start(self, c: Child) -> None:
        env = dict(self.env, NOTIFY_SOCKET=c.sock_path)
        stdout: IO[bytes] | int | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            c.log = open(self.log_dir / f"{c.name}.log", "ab")  # noqa: SIM115 - kept open for the child's life
            stdout = c.log
        c.proc = subprocess.Popen(
            [*self.base_cmd, "run", c.name],
            env=env,
            stdout=stdout,
            stderr=stdout,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        c.ready = False
        c.status = "starting"
        c.started_at = time.monotonic()

    def _read_notifications(self) -> None:
        for c in self.children:
            while True:
                try:
                    data = c.sock.recv(4096).decode("ascii", "replace")
                except BlockingIOError:
                    break
                for line in data.splitlines():
                    key, _, value = line.partition("=")
                    if key == "READY":
                        c.ready = True
                    elif key == "STATUS":
                        c.status = value
                    elif key == "STOPPING":
                        c.status = "stopping"

    def _reap(self) -> None:
        now = time.monotonic()
        for c in self.children:
            if c.proc is None:
                if not self.stopping and now >= c.next_start:
                    self._start(c)
                continue
            rc = c.proc.poll()
            if rc is None:
                if c.ready and now - c.started_at > 60:
                    c.backoff = 1.0  # a child that stayed up a minute earns a fresh backoff
                continue
            c.exits.append(rc)
            c.proc = None
            if c.log is not None:
                c.log.close()
                c.log = None
            if self.stopping:
                continue
            c.restarts += 1
            c.status = f"exited {rc}; restart in {c.backoff:.0f}s"
            c.next_start = now + c.backoff
            c.backoff = min(c.backoff * 2, self.max_backoff)
            self._print(f"{c.name} exited with code {rc}; restarting in {c.next_start - now:.0f}s")

    def _print(self, line: str) -> None:
        if self.tty:
            self._clear()
        print(line, file=self.out, flush=True)

    def _clear(self) -> None:
        if self._lines_drawn:
            self.out.write(f"\x1b[{self._lines_drawn}F\x1b[J")
            self._lines_drawn = 0

    def _draw(self) -> None:
        if not self.tty:
            return
        self._clear()
        on_terminal = self.out is unfiltered(sys.stdout) and self.out.isatty()
        width = os.get_terminal_size().columns if on_terminal else 120
        for c in self.children:
            state = "up" if c.ready and c.proc else ("down" if c.proc is None else "start")
            line = f"{c.name:<12} {state:<5} restarts {c.restarts:<3} {c.status}"
            self.out.write(line[: width - 1] + "\n")
        self.out.flush()
        self._lines_drawn = len(self.children)

    def run(self) -> int:
        def on_signal(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        names = ", ".join(c.name for c in self.children)
        self._print(
            f"jobpipe up: starting {names}"
            + (f" (logs in {self.log_dir})" if self.log_dir else "")
            + "; Ctrl-C stops them all"
        )
        last_draw = 0.0
        while not self.stopping:
            self._reap()
            self._read_notifications()
            if time.monotonic() - last_draw > 1.0:
                self._draw()
                last_draw = time.monotonic()
            time.sleep(0.1)
        return self.shutdown()

    def shutdown(self, timeout: float = 60.0) -> int:
        self._print("stopping all daemons...")
        for c in self.children:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in self.children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
            c.exits.append(c.proc.returncode)
        for c in self.children:
            c.sock.close()
            try:
                os.unlink(c.sock_path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.tmp)
        except OSError:
            pass
        self._print("all daemons stopped")
        return 0
