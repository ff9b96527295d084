"""sd_notify: tell systemd we are ready, what we are doing, that the loop is alive, that we stop.

Why a small stdlib sender and not the `sdnotify` package (checked: sdnotify 0.3.2):
- it reads NOTIFY_SOCKET from the environment inside its constructor and cannot be given a path,
  so it cannot be pointed at a test socket without mutating os.environ;
- it connects once in the constructor: a socket that did not exist yet, or was re-created,
  leaves it dead for the life of the process, and it gives no way to learn that it is dead;
- it offers only "swallow every error" or "raise every error" (debug=True);
- it encodes with latin-1 and silently drops any message that is not latin-1 (STATUS with "→").
It does handle abstract addresses ('@' prefix); so do we. The protocol is one datagram of
newline-separated KEY=VALUE lines to an AF_UNIX socket, which is all this module sends
(see sd_notify(3)). `sdnotify` stays installable but nothing here imports it.

STATUS text goes through `ascii_status`: one ASCII line, length-capped. That keeps systemctl's
output readable, and a newline in a status can never inject a second KEY=VALUE (e.g. "READY=1").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import unicodedata
from collections.abc import Mapping

from jobpipe.logs import redact

log = logging.getLogger(__name__)

STATUS_MAX_CHARS = 200  # systemctl status shows one line; longer text only gets cut there

# Symbols our own status lines use, and German letters that NFKD cannot fold to ASCII
# (ä -> a would lose meaning; ae is the German convention).
_ASCII_MAP = str.maketrans(
    {
        "→": "->",
        "←": "<-",
        "⇒": "=>",
        "↑": "^",
        "↓": "v",
        "✓": "ok",
        "✔": "ok",
        "✗": "x",
        "✘": "x",
        "…": "...",
        "–": "-",
        "—": "-",
        "‘": "'",
        "’": "'",
        "‚": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "«": '"',
        "»": '"',
        "×": "x",
        "·": "*",
        "•": "*",
        "°": "deg",
        "µ": "u",
        "€": "EUR",
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "Ä": "Ae",
        "Ö": "Oe",
        "Ü": "Ue",
        "ß": "ss",
        "ẞ": "SS",
    }
)


def ascii_status(text: object, max_chars: int = STATUS_MAX_CHARS) -> str:
    """Return `text` as one printable ASCII line of at most `max_chars` characters.

    Known symbols and umlauts get ASCII equivalents, accents are folded (é -> e), anything else
    becomes '?'. Newlines, tabs and other control characters become spaces, runs of spaces collapse.
    """
    s = str(text).translate(_ASCII_MAP)
    s = unicodedata.normalize("NFKD", s)
    out = []
    for ch in s:
        if unicodedata.combining(ch):
            continue  # the accent NFKD split off its letter
        code = ord(ch)
        if code < 32 or code == 127 or unicodedata.category(ch) in ("Zl", "Zp", "Cc"):
            out.append(" ")
        elif code < 128:
            out.append(ch)
        elif unicodedata.category(ch) == "Zs":
            out.append(" ")  # no-break and other spaces
        else:
            out.append("?")
    line = " ".join("".join(out).split())
    if len(line) > max_chars:
        line = line[: max(0, max_chars - 3)].rstrip() + "..."
    return line


def _socket_address(path: str) -> str:
    """'@name' means an abstract socket: the kernel wants a leading NUL instead of '@'."""
    return "\0" + path[1:] if path.startswith("@") else path


def _watchdog_from_env(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, honouring WATCHDOG_PID like sd_watchdog_enabled(3): a watchdog meant for
    another process (e.g. our supervisor, whose environment we inherited) is not ours to ping."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    return usec if usec > 0 else None


class Notifier:
    """Sends sd_notify messages; every method is a no-op when there is no NOTIFY_SOCKET.

    `socket_path` defaults to $NOTIFY_SOCKET, `watchdog_usec` to $WATCHDOG_USEC (if $WATCHDOG_PID,
    when set, is this process). `env` only exists so tests need not touch os.environ.
    Sending never raises: systemd going away must not stop the work; the first failure of a run of
    failures is logged at debug level.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        watchdog_usec: int | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET")
        self.socket_path: str | None = path or None
        if watchdog_usec is None:
            watchdog_usec = _watchdog_from_env(env)
        elif watchdog_usec < 0:
            raise ValueError(f"watchdog_usec must be >= 0, got {watchdog_usec}")
        self.watchdog_usec: int | None = watchdog_usec or None
        self._address = _socket_address(self.socket_path) if self.socket_path else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured (we run under systemd or a test harness)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None without a watchdog."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (the runtime sends it once: connected with a current schema, or at the first failed
        connection attempt, so a database outage never holds systemd's start job)."""
        return self._send("READY=1", status)

    def status(self, text: str) -> bool:
        """STATUS=<one ASCII line>: rate, pending count, last error."""
        return self._send(None, text)

    def watchdog(self) -> bool:
        """WATCHDOG=1: call this from the work loop itself, so a hung loop stops the pings."""
        return self._send("WATCHDOG=1", None)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: sent on SIGTERM before the drain starts."""
        return self._send("STOPPING=1", status)

    def _send(self, first: str | None, status: str | None) -> bool:
        """Send one datagram; True when it went out (False when disabled or on error)."""
        if self._address is None:
            return False
        lines = [first] if first else []
        if status is not None:
            # `systemctl status` shows this line to every local user: no credentials in it.
            lines.append("STATUS=" + ascii_status(redact(status)))
        data = "\n".join(lines).encode("ascii")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # sendto (not connect once): a re-created socket at the same path keeps working.
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._failing:
                    log.debug("sd_notify to %s failed: %s", self.socket_path, exc)
                self._failing = True
                return False
            self._failing = False
            return True

    def close(self) -> None:
        """Close the sending socket (it is re-opened on the next send)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
