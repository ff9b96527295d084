"""Capped exponential backoff: the one way jobpipe spaces out retries.

`Backoff(base_s, max_s, jitter)` gives the delay before retry number n (n = 1 after the first
failure). Guarantees, for every n >= 1:

- the ceiling is min(max_s, base_s * 2^(n-1)): it never decreases as n grows and never exceeds
  max_s (a base above max_s is capped from the first retry on);
- the delay lies within the jitter policy's bounds of that ceiling:
  NONE -> exactly the ceiling; FULL -> [0, ceiling] (uniform); EQUAL -> [ceiling/2, ceiling]
  (half fixed, half uniform), so retries of many items that failed together spread out;
- the random source is an argument (`rng`, default: the `random` module), so tests draw from a
  seeded `random.Random` and never wait for a real backoff.

`Streak` counts consecutive failures of one thing (a connection, a job, a tick) against a
Backoff: `failed()` gives the next delay, `reset()` starts over after a success.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Protocol


class Jitter(enum.Enum):
    NONE = "none"  # a single retrier (one connection, one thread): nothing to spread out
    FULL = "full"  # many clients of one server (BA requests): spread as widely as possible
    EQUAL = "equal"  # many items failed together (queue retries): spread, yet never retry at once


class _Random(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float
    max_s: float
    jitter: Jitter = Jitter.NONE

    def ceiling(self, n: int) -> float:
        """The un-jittered delay before retry `n` (n < 1 counts as 1)."""
        # Capped before it can overflow: 2.0 ** 1100 is an OverflowError.
        exp = min(max(0, n - 1), 1023)
        return min(self.max_s, self.base_s * 2.0**exp)

    def delay(self, n: int, rng: _Random | None = None) -> float:
        """The delay before retry `n` (1 = after the first failure), within the jitter's bounds."""
        c = self.ceiling(n)
        if self.jitter is Jitter.NONE:
            return c
        r = (rng or random).random()
        if self.jitter is Jitter.FULL:
            return c * r
        return c / 2 + r * c / 2


@dataclass
class Streak:
    """Consecutive failures of one retrier against `backoff` (not thread-safe: one owner)."""

    backoff: Backoff
    failures: int = 0

    def failed(self, rng: _Random | None = None) -> float:
        """One more failure: the delay to wait before the next attempt."""
        self.failures += 1
        return self.backoff.delay(self.failures, rng)

    def reset(self) -> None:
        self.failures = 0

    @property
    def next_delay(self) -> float:
        """The ceiling the next failure will wait (for messages saying when the retry comes)."""
        return self.backoff.ceiling(self.failures + 1)


RECONNECT_BASE_S = 0.5  # the first pause before reconnecting to the database


def reconnect(max_s: float) -> Backoff:
    """Between attempts to reach the database (every thread with a connection of its own):
    0.5 s doubling up to `max_s` (database.reconnect_max_s)."""
    return Backoff(RECONNECT_BASE_S, max_s)
