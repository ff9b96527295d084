"""jobpipe.backoff: the one capped exponential backoff (pure: no database, no waiting)."""

from __future__ import annotations

import random

import pytest

from jobpipe.backoff import Backoff, Jitter, Streak, reconnect


class _Fixed:
    """A random source that always draws `r` (the bounds of a jitter are its draws of 0 and ~1)."""

    def __init__(self, r: float) -> None:
        self.r = r

    def random(self) -> float:
        return self.r


def test_ceiling_doubles_from_base_and_stops_at_the_cap() -> None:
    b = Backoff(0.5, 30.0)
    assert [b.ceiling(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.ceiling(0) == b.ceiling(-3) == 0.5  # "no failure yet" waits like the first
    assert b.ceiling(5000) == 30.0  # no OverflowError after a very long outage


def test_a_base_above_the_cap_is_capped_from_the_first_retry() -> None:
    assert Backoff(60.0, 10.0).ceiling(1) == 10.0


@pytest.mark.parametrize("jitter", list(Jitter))
def test_delays_are_monotone_until_the_cap_within_the_jitter_bounds(jitter: Jitter) -> None:
    b = Backoff(1.0, 100.0, jitter)
    rng = random.Random(7)
    ceilings = [b.ceiling(n) for n in range(1, 12)]
    assert ceilings == sorted(ceilings) and ceilings[-1] == 100.0
    low = {Jitter.NONE: 1.0, Jitter.FULL: 0.0, Jitter.EQUAL: 0.5}[jitter]
    for n, c in enumerate(ceilings, start=1):
        for _ in range(200):
            d = b.delay(n, rng)
            assert low * c <= d <= c, (jitter, n, d)


def test_none_is_exact_and_draws_nothing() -> None:
    class NoDraws:
        def random(self) -> float:
            raise AssertionError("NONE must not draw")

    assert Backoff(2.0, 30.0).delay(3, NoDraws()) == 8.0


def test_full_and_equal_jitter_at_their_extreme_draws() -> None:
    full, equal = Backoff(1.0, 60.0, Jitter.FULL), Backoff(1.0, 60.0, Jitter.EQUAL)
    assert full.delay(4, _Fixed(0.0)) == 0.0 and full.delay(4, _Fixed(0.5)) == 4.0
    assert equal.delay(4, _Fixed(0.0)) == 4.0 and equal.delay(4, _Fixed(1.0)) == 8.0


def test_jitter_spreads_delays_and_a_seeded_source_repeats_them() -> None:
    b = Backoff(10.0, 1000.0, Jitter.FULL)
    first = [b.delay(3, random.Random(1)) for _ in range(3)]
    assert len(set(first)) == 1  # the same seed draws the same delay
    assert len({round(b.delay(3, random.Random(s)), 9) for s in range(20)}) > 10


def test_streak_counts_failures_and_starts_over_after_a_success() -> None:
    s = Streak(Backoff(1.0, 5.0))
    assert s.next_delay == 1.0
    assert [s.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert s.failures == 5 and s.next_delay == 5.0
    s.reset()
    assert s.failed() == 1.0


def test_reconnect_is_half_a_second_doubling_to_the_setting() -> None:
    assert [reconnect(3.0).ceiling(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
