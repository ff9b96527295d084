"""Writes finished batches on a thread and a database connection of its own.

Why: the work loop claims, loads and dispatches on its connection; when it also wrote every
result, a fast model server left it waiting on one database round trip after another, and the
writes (the larger part) held up the next claims. With the writes here, claiming and writing
overlap, each on its own backend.

What it guarantees:
- everything submitted is written in submission order, in groups (what queued up while the last
  group was written goes in the next one);
- the database going away loses nothing: the group is kept, the connection is opened again with
  backoff, and the same group is written once it is back. Only a lost connection counts as that
  (db.connection_lost); any other error fails the group's future at once, never a retry loop;
- `close` writes what is left within its timeout and then gives up the rest (their leases expire
  and the items are claimed again), so a stop never hangs on a database that is down.

The runtime passes `write(conn, batches)`, which owns the transaction, handles every error that
is about the items (it has the items to charge) and raises only a lost connection.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from jobpipe import backoff
from jobpipe.backoff import Streak
from jobpipe.db import Conn, close_quietly, connection_lost
from jobpipe.errors import first_line
from jobpipe.logs import log_event

T = TypeVar("T")


class BatchWriter(Generic[T]):
    def __init__(
        self,
        connect: Callable[[], Any],
        write: Callable[[Any, list[T]], None],
        *,
        name: str = "writer",
        log: logging.Logger | None = None,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._connect = connect
        self._write = write
        self.name = name
        self.log = log or logging.getLogger("jobpipe.writer")
        self.reconnect_max_s = reconnect_max_s
        self._queue: collections.deque[tuple[list[T], cf.Future[None]]] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self.conn: Conn | None = None
        self.last_error = ""

    def start(self) -> BatchWriter[T]:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def submit(self, batches: list[T]) -> cf.Future[None]:
        """Queue `batches` for writing; the future is done when they are written (its exception
        is set when they were given up: a bug in `write`, or `close` ran out of time)."""
        fut: cf.Future[None] = cf.Future()
        with self._cv:
            if self._closing:
                raise RuntimeError("writer is closed")
            self._queue.append((batches, fut))
            self._cv.notify()
        return fut

    def pending(self) -> int:
        """Batches submitted and not yet written."""
        with self._cv:
            return sum(len(b) for b, _ in self._queue)

    def close(self, timeout: float) -> int:
        """Write what was submitted, waiting at most `timeout` s; return the batches given up."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            if self._thread.is_alive():
                self._abort.set()  # stop retrying; a write in progress ends with its statement
                self._thread.join(5.0)
        given_up = 0
        with self._cv:
            while self._queue:
                batches, fut = self._queue.popleft()
                given_up += len(batches)
                fut.set_exception(RuntimeError("not written: the writer was closed"))
        close_quietly(self.conn)
        self.conn = None
        return given_up

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        retry = Streak(backoff.reconnect(self.reconnect_max_s))
        while not self._abort.is_set():
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return  # closing, and everything is written
                group = list(self._queue)
            batches = [b for bs, _ in group for b in bs]
            try:
                if self.conn is None:
                    self.conn = self._connect()
                self._write(self.conn, batches)
            except Exception as exc:
                if not connection_lost(exc):
                    # Not an outage (a bug, or a database error `write` did not handle): retrying
                    # the same group as "unreachable" would never end. Never end the thread silently.
                    self.log.exception("write crashed", extra={"event": "write_crashed"})
                    self._finish(group, exc)
                    continue
                msg = first_line(exc)
                if msg != self.last_error:
                    log_event(self.log, "write_retry", level="warning", batches=len(batches), error=msg)
                self.last_error = msg
                close_quietly(self.conn)
                self.conn = None
                self._abort.wait(retry.failed())
                continue
            if self.last_error:
                log_event(self.log, "write_resumed", batches=len(batches))
            self.last_error = ""
            retry.reset()
            self._finish(group, None)

    def _finish(self, group: list[tuple[list[T], cf.Future[None]]], exc: BaseException | None) -> None:
        with self._cv:
            for _ in group:
                self._queue.popleft()
        for _, fut in group:
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
