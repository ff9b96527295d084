"""sd_notify over real AF_UNIX datagram sockets, bound by the test the way systemd binds them."""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobpipe.notify import STATUS_MAX_CHARS, Notifier, ascii_status

REPO = Path(__file__).resolve().parents[1]


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)  # a missing datagram fails the test instead of hanging it
    return sock


def _recv_lines(sock: socket.socket) -> list[str]:
    data = sock.recv(65536)
    return data.decode("ascii").split("\n")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    yield path, sock
    sock.close()


def test_ready_status_watchdog_stopping_arrive_as_datagrams(notify_socket):
    path, sock = notify_socket
    n = Notifier(path, watchdog_usec=3_000_000)
    assert n.enabled
    assert n.ready("connected, schema 7")
    assert _recv_lines(sock) == ["READY=1", "STATUS=connected, schema 7"]
    assert n.status("embedded 32 at 41.2/s, pending 1200")
    assert _recv_lines(sock) == ["STATUS=embedded 32 at 41.2/s, pending 1200"]
    assert n.watchdog()
    assert _recv_lines(sock) == ["WATCHDOG=1"]
    assert n.stopping()
    assert _recv_lines(sock) == ["STOPPING=1"]
    assert n.watchdog_interval() == pytest.approx(1.5)
    n.close()


def test_non_ascii_status_arrives_sanitised_not_dropped(notify_socket):
    path, sock = notify_socket
    n = Notifier(path)
    assert n.status("Köln → 41.2/s ✓ — Straße „ok“ café…")
    (line,) = _recv_lines(sock)
    assert line == 'STATUS=Koeln -> 41.2/s ok - Strasse "ok" cafe...'
    assert n.status("日本 ∑")  # nothing foldable: still arrives, as '?'
    assert _recv_lines(sock) == ["STATUS=?? ?"]


def test_newline_in_status_cannot_inject_a_second_message(notify_socket):
    path, sock = notify_socket
    n = Notifier(path)
    n.status("last error: boom\nREADY=1\r\nSTOPPING=1\x00")
    lines = _recv_lines(sock)
    assert lines == ["STATUS=last error: boom READY=1 STOPPING=1"]


def test_long_status_is_capped(notify_socket):
    path, sock = notify_socket
    n = Notifier(path)
    n.status("x" * 10_000)
    (line,) = _recv_lines(sock)
    status = line.removeprefix("STATUS=")
    assert len(status) == STATUS_MAX_CHARS
    assert status.endswith("...")


def test_ascii_status_always_gives_one_printable_ascii_line():
    rng = random.Random(1234)
    pool = [chr(c) for c in range(0, 0x3000)] + ["\n", "\r", "\u2028", "\x00", "→", "ü", "\U0001f600"]
    for _ in range(300):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 400)))
        out = ascii_status(text)
        assert out.isascii()
        assert out.isprintable()
        assert len(out) <= STATUS_MAX_CHARS
        assert out == out.strip()


def test_abstract_socket_address(tmp_path):
    name = f"jobpipe-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    try:
        n = Notifier("@" + name)
        assert n.ready("abstract")
        assert _recv_lines(sock) == ["READY=1", "STATUS=abstract"]
    finally:
        sock.close()


def test_no_socket_means_disabled_no_ops():
    n = Notifier(env={})
    assert not n.enabled
    assert n.watchdog_interval() is None
    assert n.ready("x") is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False


def test_send_errors_never_raise_are_logged_once_and_recover(tmp_path, caplog):
    path = str(tmp_path / "later.sock")
    n = Notifier(path)
    with caplog.at_level(logging.DEBUG, logger="jobpipe.notify"):
        assert n.ready() is False
        assert n.status("still down") is False
        assert n.watchdog() is False
    failures = [r for r in caplog.records if r.name == "jobpipe.notify"]
    assert len(failures) == 1
    assert path in failures[0].getMessage()

    # systemd (re)creates the socket: the same notifier reaches it without being rebuilt.
    sock = _receiver(path)
    try:
        assert n.watchdog() is True
        assert _recv_lines(sock) == ["WATCHDOG=1"]
    finally:
        sock.close()


def test_defaults_from_environment(tmp_path):
    path = str(tmp_path / "n.sock")
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert n.socket_path == path
    assert n.watchdog_interval() == pytest.approx(1.0)
    # A watchdog meant for another process (our parent) is not ours to ping.
    other = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval() is None
    own = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert own.watchdog_interval() == pytest.approx(1.0)
    assert Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    assert Notifier(env={"NOTIFY_SOCKET": path}).watchdog_interval() is None
    # Explicit arguments win over the environment.
    assert Notifier(path, 500_000, env={"WATCHDOG_USEC": "2000000"}).watchdog_interval() == 0.25
    with pytest.raises(ValueError, match="watchdog_usec"):
        Notifier(path, -1)


@pytest.mark.system
def test_real_process_reads_notify_socket_from_its_environment(notify_socket):
    path, sock = notify_socket
    code = "from jobpipe.notify import Notifier; n = Notifier(); n.ready('up → ok'); n.stopping()"
    env = {**os.environ, "NOTIFY_SOCKET": path, "PYTHONPATH": str(REPO / "lib")}
    env.pop("WATCHDOG_USEC", None)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert _recv_lines(sock) == ["READY=1", "STATUS=up -> ok"]
    assert _recv_lines(sock) == ["STOPPING=1"]


def test_why_not_sdnotify_it_drops_non_latin1_status(notify_socket, monkeypatch):
    """Documents the trap notify.py works around; if sdnotify ever fixes it, this test says so."""
    sdnotify = pytest.importorskip("sdnotify")
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    sd = sdnotify.SystemdNotifier()
    sd.notify("STATUS=up → ok")  # silently dropped
    sd.notify("STATUS=second")
    assert _recv_lines(sock) == ["STATUS=second"]
