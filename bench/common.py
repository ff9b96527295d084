"""What several benchmarks share. The scripts run as files, not as a package: each puts
`bench/` on sys.path and imports this module as `common`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class TimedLLM:
    """A fake Ollama chat handler around `answer(view) -> str`: spends `latency_s` of model time
    inside the fake's capacity gate, and records every call's start and end (for the capacity
    window) and the most calls it saw at once."""

    def __init__(self, answer: Callable[[dict[str, Any]], str], latency_s: float) -> None:
        self.answer = answer
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.calls = 0
        self.first_start: float | None = None
        self.last_end = 0.0
        self.now = 0
        self.max_concurrent = 0
        self._clock = threading.Event()  # never set: wait() is the simulated compute time

    def __call__(self, view: dict[str, Any]) -> str:
        start = time.monotonic()
        with self.lock:
            self.calls += 1
            self.now += 1
            self.max_concurrent = max(self.max_concurrent, self.now)
            if self.first_start is None:
                self.first_start = start
        try:
            self._clock.wait(self.latency_s)
            return self.answer(view)
        finally:
            with self.lock:
                self.now -= 1
                self.last_end = max(self.last_end, time.monotonic())

    @property
    def window_s(self) -> float:
        """Seconds from the first call's start to the last call's end; 0 before any call."""
        return (self.last_end - self.first_start) if self.first_start is not None else 0.0
