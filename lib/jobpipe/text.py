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


# C0/C1 control characters (ESC, BEL, backspace... which a terminal acts on) and the Unicode
# bidirectional overrides/isolates (which make a title display as something it is not).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+")


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
