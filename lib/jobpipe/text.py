"""Cleaning text from outside sources before it reaches PostgreSQL.

PostgreSQL rejects NUL bytes in text and invalid UTF-8; source data (the BA API, saved files)
contains both now and then. Every text column is written through `clean_text`, so nothing is
lost to an encoding error: bad bytes become U+FFFD, NULs are dropped.
"""

from __future__ import annotations

import os
import re

_WS = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(value: object, max_chars: int | None = None) -> str | None:
    """Return `value` as PostgreSQL-safe text: str, NUL-free, valid UTF-8, optionally cut.

    bytes are decoded as UTF-8 with replacement; lone surrogates (from JSON `\\udxxx` escapes)
    are replaced too, because they cannot be encoded to UTF-8.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    return text


def normalise_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs, keep paragraph breaks (at most one blank line), strip ends."""
    lines = [_WS.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# C0/C1 control characters (ESC, BEL, backspace... which a terminal acts on; U+009B is an 8-bit
# CSI) and the Unicode bidirectional marks, overrides and isolates (which make a text display as
# something it is not): one set, for one-line fields and for terminal output (which keeps \n, \t).
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROLS = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]+")


def clean_line(value: object, max_chars: int | None = None) -> str | None:
    """A one-line text field (title, employer, city...): clean_text, control characters and
    bidi overrides replaced by a space, whitespace collapsed, cut to `max_chars`.

    Guarantees: the result holds no C0/C1 control character, no run of whitespace, no leading or
    trailing space, at most `max_chars` characters; None when nothing is left. The input is cut
    to 4 * max_chars before any work, so an oversized value costs bounded time.
    """
    if value is None:
        return None
    if type(value) is str and value.isascii() and value.isprintable():
        # The common case (no control character, no NUL, nothing to re-encode): only whitespace.
        text = " ".join(value.split()) if "  " in value or value[:1] == " " or value[-1:] == " " else value
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars].rstrip()
        return text or None
    if max_chars is not None and isinstance(value, str | bytes | bytearray) and len(value) > 4 * max_chars:
        value = value[: 4 * max_chars]
    text = clean_text(value)
    if text is None:
        return None
    if not (text.isascii() and text.isprintable()):
        text = _CONTROLS.sub(" ", text)
    text = " ".join(text.split())
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text or None


# -- numbers in text -------------------------------------------------------------------------------

BIGINT_MAX = 2**63 - 1  # PostgreSQL bigint: ids and limits beyond it fail in SQL, not with a message


def parse_int(value: object, max_value: int = BIGINT_MAX) -> int | None:
    """`value` as a non-negative int when it is a string of ASCII digits (surrounding blanks
    allowed) not above `max_value`; else None.

    Why not `str.isdigit()`: it accepts "²", "٣" and other Unicode digits, which `int()` then
    rejects with a ValueError (a traceback in the CLI, a crash on an LLM answer).
    """
    if not isinstance(value, str):
        return None
    s = value.strip()
    if not s or len(s) > len(str(max_value)) or not (s.isascii() and s.isdigit()):
        return None
    n = int(s)
    return n if n <= max_value else None


# -- terminal output -------------------------------------------------------------------------------

# What a terminal would act on instead of showing: the _CONTROLS set but newline and tab.
_TERMINAL_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")


def terminal_safe(text: str) -> str:
    """`text` with every control character a terminal would interpret written as a visible
    `\\uXXXX` escape (also valid inside a JSON string, so JSON output stays parseable and lossless).
    Lone surrogates become U+FFFD: a terminal write would fail on them."""
    text = _TERMINAL_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
    if _has_surrogate(text):
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def cell(value: object, max_chars: int = 200) -> str:
    """`value` as one cell of a text table: every run of whitespace (newlines included) one space,
    at most `max_chars` characters (cut with "…"). Control characters are left to the CLI's
    terminal-safe stdout, which escapes them."""
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


# -- input files -----------------------------------------------------------------------------------

MAX_INPUT_FILE_BYTES = 64 << 20  # a labelled evaluation file; the shipped ones are below 1 MB


class InputTooLarge(ValueError):
    """A file given on the command line is larger than its reader accepts."""


def read_capped(path: str | os.PathLike[str], max_bytes: int = MAX_INPUT_FILE_BYTES) -> bytes:
    """The bytes of `path`, at most `max_bytes`; InputTooLarge beyond, OSError as open() raises it.

    A bounded read, not read_bytes(): a device or pipe (/dev/zero, /dev/urandom) has no size to
    check first and is read until memory runs out otherwise. Never reads more than max_bytes + 1.
    """
    with open(path, "rb") as fh:
        body = fh.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise InputTooLarge(f"{os.fsdecode(path)}: more than the {max_bytes:,} bytes accepted")
    return body


def fmt_duration(seconds: float | None) -> str:
    """A duration for people: "45 s", "12 min", "3.5 h", "2.0 d" ("-" for None); the one format of
    the alerts, `jobpipe health` and the other commands."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s" if s >= 1 or s == 0 else f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"
