"""Helpers of every command that need no database: argparse types and the configuration (so that
`jobpipe config ...` and `--help` start without psycopg)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from jobpipe import config as config_mod
from jobpipe.text import parse_int


def int_arg(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer of ASCII digits in [lo, hi] (a bad one is a one-line error,
    exit 2; never a traceback from int() or an overflowing SQL parameter)."""

    def parse(text: str) -> int:
        s = text.strip()
        n = parse_int(s.removeprefix("-"), max_value=max(abs(lo), abs(hi)))
        if n is not None and s.startswith("-"):
            n = -n
        if n is None or not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"expected a whole number from {lo} to {hi}, got {text[:40]!r}")
        return n

    parse.__name__ = "integer"
    return parse


def float_arg(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] ("nan" or "inf" would make deadlines never end)."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        if not math.isfinite(x) or not lo <= x <= hi:
            raise argparse.ArgumentTypeError(f"expected a number from {lo:g} to {hi:g}, got {text[:40]!r}")
        return x

    parse.__name__ = "number"
    return parse


def load_config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(getattr(args, "config", None))
