"""BatchWriter: order, grouping, retry after a lost connection, a crashing write, close."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from jobpipe.errors import DependencyDown
from jobpipe.writer import BatchWriter


class Recorder:
    """A `write` that records groups; `fail` raises for the next n calls; `gate` holds writes."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.connects = 0
        self.fail: list[BaseException] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def connect(self) -> str:
        self.connects += 1
        return f"conn{self.connects}"

    def write(self, conn: Any, batches: list[int]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail:
            raise self.fail.pop(0)
        self.groups.append(list(batches))


def test_everything_is_written_in_order_in_groups() -> None:
    r = Recorder()
    w: BatchWriter[int] = BatchWriter(r.connect, r.write).start()
    r.gate.clear()
    first = w.submit([1])
    assert r.entered.wait(5)  # [1] is being written; what comes now queues up behind it
    rest = [w.submit([2, 3]), w.submit([4])]
    assert w.pending() == 4
    r.gate.set()
    for f in (first, *rest):
        f.result(5)
    assert r.groups == [[1], [2, 3, 4]]  # what queued during a write goes in the next one
    assert w.pending() == 0 and w.close(5) == 0


def test_a_lost_connection_is_opened_again_and_the_same_batches_written() -> None:
    r = Recorder()
    r.fail = [psycopg.OperationalError("server closed the connection"), DependencyDown("database", "down")]
    w: BatchWriter[int] = BatchWriter(r.connect, r.write, reconnect_max_s=0.05).start()
    w.submit([7, 8]).result(10)
    assert r.groups == [[7, 8]]
    assert r.connects == 3  # a new connection after each failure
    assert w.last_error == "" and w.close(5) == 0


def test_a_crashing_write_fails_its_batches_and_the_writer_goes_on() -> None:
    r = Recorder()
    r.fail = [ValueError("bug")]
    w: BatchWriter[int] = BatchWriter(r.connect, r.write).start()
    bad = w.submit([1])
    with pytest.raises(ValueError):
        bad.result(5)
    w.submit([2]).result(5)
    assert r.groups == [[2]]
    w.close(5)


def test_close_writes_what_is_left_then_gives_up_on_a_database_that_stays_down() -> None:
    r = Recorder()
    w: BatchWriter[int] = BatchWriter(r.connect, r.write).start()
    w.submit([1]).result(5)
    r.fail = [psycopg.OperationalError("down")] * 1000
    stuck = w.submit([2, 3])
    assert w.close(timeout=0.3) == 2
    with pytest.raises(RuntimeError, match="not written"):
        stuck.result(0)
    with pytest.raises(RuntimeError):
        w.submit([4])
