"""The HTTP plumbing the three simulators share: a threaded server, a request handler that hands
every request to its simulator, a listener that can go down and come back on the same port, and
the process entry point's stop on SIGTERM/SIGINT.

Guarantees:
- `Listener.open()` binds before it returns (port 0 becomes the kernel's choice, kept for reopening).
- `Listener.close()` returns only when the socket is closed and every open keep-alive connection
  has been cut, so a client sees "connection refused/reset", never a half-alive server; a
  handler that hangs does not block it.
- Client disconnects (timeouts, cut connections) are expected and never print a traceback.
- A port that cannot be bound (in use, out of range, unknown host) is a UserError naming the
  address: `jobpipe sim NAME` ends with one line and exit code 2, never a traceback; the
  argument types below reject an out-of-range option the same way, before anything starts.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from jobpipe.errors import UserError


class Simulator(Protocol):
    """What a simulator provides: one method answering every request."""

    def _handle(self, handler: SimHandler, method: str) -> None: ...


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # hung handlers must not block close()
    allow_reuse_address = True  # reopening on the same port right after close()
    request_queue_size = 128  # benchmarks open many connections at once
    listener: Listener

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and close() cutting connections are part of the game, not errors.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class SimHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive (like the real servers); every method goes to the simulator's `_handle`.

    Subclasses set `server_version` and add `do_PUT` etc. for the methods their service knows
    (the rest get the standard 501)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    sys_version = ""
    server: SimServer

    @property
    def sim(self) -> Simulator:
        return self.server.listener.sim

    def setup(self) -> None:
        super().setup()
        self.server.listener.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.listener.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters
        pass

    def do_GET(self) -> None:
        self.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.sim._handle(self, "POST")


class ListenerAddress:
    """`host`, `port` and `url` of a simulator that serves through `self._listener`."""

    _listener: Listener

    @property
    def host(self) -> str:
        return self._listener.host

    @property
    def port(self) -> int:
        """The listening port (the kernel's choice once started with port 0), kept while the
        simulator is down so that it comes back on the same one."""
        return self._listener.port

    @property
    def url(self) -> str:
        return self._listener.url


class Listener:
    """One listening socket of a simulator, served by a daemon thread."""

    def __init__(
        self,
        sim: Simulator,
        handler: type[SimHandler],
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "sim",
        poll_interval: float = 0.05,  # shutdown() waits up to this long; tests start many servers
        on_connect: Callable[[], None] | None = None,  # called once per accepted TCP connection
    ) -> None:
        self.sim = sim
        self.handler = handler
        self.host = host
        self.port = port
        self.name = name
        self.poll_interval = poll_interval
        self.on_connect = on_connect
        self._server: SimServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # open/close from several threads (control APIs, tests)
        self._conns: set[socket.socket] = set()
        self._conn_lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def open(self) -> int:
        """Listen (again, on the same port once one was chosen); returns the port. Idempotent."""
        with self._lock:
            if self._server is None:
                try:
                    server = SimServer((self.host, self.port), self.handler)
                except (OSError, OverflowError) as exc:  # in use, not local, port > 65535
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    where = f"{self.host}:{self.port}"
                    raise UserError(f"{self.name}: cannot listen on {where}: {reason}") from None
                server.listener = self
                self.port = server.server_address[1]
                self._server = server
                self._thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": self.poll_interval},
                    name=f"{self.name}-{self.port}",
                    daemon=True,
                )
                self._thread.start()
            return self.port

    def close(self) -> None:
        """Refuse connections from now on: close the socket and cut every open connection."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            with self._conn_lock:
                conns = list(self._conns)
            for conn in conns:  # keep-alive connections would otherwise go on being served
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            if thread is not None:
                thread.join(timeout=5)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)
        if add and self.on_connect is not None:
            self.on_connect()


Number = TypeVar("Number", int, float)


def port_number(value: str) -> int:
    """argparse type: a TCP port, 0 (the kernel picks a free one) to 65535."""
    return _ranged(int, value, 0, 65535)


def count(value: str) -> int:
    """argparse type: a whole number >= 0."""
    return _ranged(int, value, 0, None)


def positive(value: str) -> int:
    """argparse type: a whole number >= 1."""
    return _ranged(int, value, 1, None)


def share(value: str) -> float:
    """argparse type: a fraction from 0 to 1."""
    return _ranged(float, value, 0.0, 1.0)


def seconds(value: str) -> float:
    """argparse type: a duration >= 0 (also milliseconds, for the options that say MS)."""
    return _ranged(float, value, 0.0, None)


def _ranged(kind: type[Number], value: str, low: Number, high: Number | None) -> Number:
    try:
        number = kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {what}: {value!r}") from None
    if number != number or number < low or (high is not None and number > high):  # NaN too
        upper = f" to {high}" if high is not None else " or more"
        raise argparse.ArgumentTypeError(f"{value} is out of range ({low}{upper})")
    return number


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a simulator run as a process: installed before it
    prints its URL, so a stop right after that still ends in a clean shutdown (exit 0)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
