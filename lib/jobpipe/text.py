"""Cleaning text from outside sources before it reaches PostgreSQL.

PostgreSQL rejects NUL bytes in text and invalid UTF-8; source data (the BA API, saved files)
contains both now and then. Every text column is written through `clean_text`, so nothing is
lost to an encoding error: bad bytes become U+FFFD, NULs are dropped.
"""

from __future__ import annotations

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
