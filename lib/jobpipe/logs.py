"""One log format for every daemon.

- Not a terminal (journald, a pipe, a file): one JSON object per line, keys in this order:
  time (ISO 8601 UTC, ms), level, daemon, event, logger, then the record's fields, then exc.
- A terminal: one readable line, "12:00:01 INFO  embedder batch_done n=32 rate=41.2".

Code logs events, not prose: `log_event(log, "batch_done", n=32, rate=41.2)`. A plain
`log.info("text %s", x)` still works; its rendered message becomes the event.

Secrets registered with `register_secret` (API keys, phone numbers) are replaced by "***" in every
formatted line, wherever they appear (message, fields, tracebacks); so are credentials written into
any URL or connection string (`http://user:pw@host`, `?password=`, libpq's `password=...`), known
or not. `redact` is the one redaction function: config show, error texts (jobpipe.errors), queue
errors, STATUS= lines and log lines all go through it.

`setup_logging` owns the root logger: calling it again replaces its handler instead of adding one,
and it removes plain stream handlers (e.g. from logging.basicConfig) that would write every line a
second time.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from jobpipe.text import terminal_safe

REDACTED = "***"
# journald splits lines longer than LineMax (48 KiB by default), which would break the JSON;
# so cap single values well below that.
MAX_FIELD_CHARS = 4000
MAX_EXC_CHARS = 16000

_RESERVED = ("time", "level", "daemon", "event", "logger", "exc")
# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "jobpipe_fields",
}
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# -- secret redaction ------------------------------------------------------------------------------

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Redact `value` from every log line from now on. Empty/None values are ignored (unset secret).

    Also the JSON-escaped spelling is redacted, so a secret with a quote or backslash in it is
    caught inside JSON strings too.
    """
    if value is None or not str(value).strip():
        return
    value = str(value)
    forms = {value, orjson.dumps(_utf8(value)).decode()[1:-1]}
    global _secret_pattern
    with _secrets_lock:
        _secrets.update(forms)
        # Longest first, so a secret that contains another one is redacted whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> str:
    """Lone surrogates (from a JSON "\\udxxx" escape) become U+FFFD; everything else is kept."""
    return _SURROGATE.sub("\ufffd", text)


# user:password@ (or token@) after a scheme: the userinfo part of any URL.
# Greedy up to the last "@" before the path: a password may contain a raw "@", and any of
# RFC 3986's sub-delims, "'" included (urllib3 sends "http://u:pa'ss@h" as user "u", password
# "pa'ss"). Only the authority's own ends (/ ? #), whitespace and '"' (a JSON string's end) stop it.
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://)([^/?#\s\"]*)@")
# A credential-looking parameter in a URL query, a libpq key=value string or an environment
# assignment (JOBPIPE_OLLAMA_API_KEY=..., PGPASSWORD=...); the value may be quoted the libpq way
# ('it''s' or 'a\'b'). An unquoted value runs to whitespace, "&name=" (the next query parameter)
# or '"' (the end of a JSON string): ",", ";", "#" and "'" are valid inside a password and libpq's
# backslash escapes are kept whole, so no tail of it stays; a "'" followed by a closer (', ) ] })
# ends the value (the closing quote of a repr). Redacting a little too much is harmless.
_CREDENTIAL_PARAM = re.compile(
    r"(?i)(?<![a-z0-9])((?:ssl|pg)?password|passwd|pwd|pass|passphrase|secret|token|access_token|"
    r"api[_\-]?key|apikey|auth|signature|sig)(\s*=\s*)"
    r"('(?:[^'\\]|\\.|'')*'?|(?:\\.|'(?=[^\s&\"',;)\]}])|&(?![a-z0-9_.\-]+=)|[^&\s\\\"'])*)"
)


def _redact_userinfo(m: re.Match[str]) -> str:
    user, sep, _password = m.group(2).partition(":")
    return f"{m.group(1)}{user}:{REDACTED}@" if sep else f"{m.group(1)}{REDACTED}@"


def redact(text: str) -> str:
    """`text` with every registered secret and every credential in a URL or connection string
    replaced by "***" (user names and hosts stay: they say where, not how to get in)."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "@" in text:
        text = _URL_USERINFO.sub(_redact_userinfo, text)
    if "=" in text:
        text = _CREDENTIAL_PARAM.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return text


# -- formatting ------------------------------------------------------------------------------------


def _cap(text: str, limit: int, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    # A traceback's end (the exception itself) matters most; a value's start does.
    return f"[{cut} chars cut]..." + text[-limit:] if keep_end else text[:limit] + f"...[{cut} chars cut]"


def _json_value(value: Any) -> Any:
    """Values orjson can write; long strings capped; anything else via str()."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _cap(redact(value), MAX_FIELD_CHARS)  # redact before cutting: no half secret
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v) for v in value]
    return _cap(redact(str(value)), MAX_FIELD_CHARS)


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            fields[key] = value
    fields.update(getattr(record, "jobpipe_fields", None) or {})
    # A field must never overwrite a fixed key (a field called "level" would lie about the level).
    return {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        return record.exc_text
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, always one line (newlines inside values are escaped)."""

    def __init__(self, daemon: str) -> None:
        super().__init__()
        self.daemon = daemon

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        payload: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "daemon": self.daemon,
            "event": _cap(redact(record.getMessage()), MAX_FIELD_CHARS),
            "logger": record.name,
        }
        for key, value in _record_fields(record).items():
            payload[key] = _json_value(value)
        exc = _exception_text(record)
        if exc is not None:
            payload["exc"] = _cap(redact(exc), MAX_EXC_CHARS, keep_end=True)
        if record.stack_info:
            payload["stack"] = _cap(redact(record.stack_info), MAX_EXC_CHARS, keep_end=True)
        try:
            line = orjson.dumps(payload)
        except TypeError:
            # orjson refuses lone surrogates (e.g. from a JSON "\udxxx" escape): clean and retry.
            line = orjson.dumps(_clean_strings(payload))
        return redact(line.decode())


def _clean_strings(value: Any) -> Any:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, dict):
        return {_utf8(str(k)): _clean_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_strings(v) for v in value]
    return value


_NEEDS_QUOTES = re.compile(r"[\s\"=]")


def _text_value(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    text = _cap(redact(text), MAX_FIELD_CHARS)
    if text == "" or _NEEDS_QUOTES.search(text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _one_line(text)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """A readable line for a terminal: "12:00:01 INFO  embedder batch_done n=32 rate=41.2".

    The traceback of an exception follows on indented lines (for a human at a terminal);
    journald never gets this format.
    """

    def __init__(self, daemon: str) -> None:
        super().__init__()
        self.daemon = daemon

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        message = _cap(redact(record.getMessage()), MAX_FIELD_CHARS)
        parts = [stamp, f"{record.levelname:<5}", self.daemon, _one_line(message)]
        parts += [f"{k}={_text_value(v)}" for k, v in _record_fields(record).items()]
        if not record.name.startswith("jobpipe"):
            parts.append(f"logger={record.name}")
        line = " ".join(parts)
        exc = _exception_text(record)
        if exc is not None:
            last = exc.strip().splitlines()[-1] if exc.strip() else ""
            line += f" exc={_text_value(last)}\n" + "\n".join("  | " + ln for ln in exc.splitlines())
        # A terminal reads this: control characters from data (a title with ESC) are shown as
        # \uXXXX, never interpreted; lone surrogates (which would fail the write) become U+FFFD.
        return terminal_safe(redact(_utf8(line)))


# -- setup -----------------------------------------------------------------------------------------


class _JobpipeHandler(logging.StreamHandler):
    """Marks the handler setup_logging installed, so a second call can find and replace it."""


def setup_logging(
    daemon: str, level: str | int = "INFO", fmt: str = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record, from any logger, to `stream` (default: stderr) in one format.

    `fmt`: "json", "text", or "auto" (text on a terminal, JSON elsewhere). Idempotent: the handler
    of an earlier call is replaced, never duplicated. Returns the installed handler.
    """
    if isinstance(level, str):
        name = level.strip().upper()
        if name not in _LEVELS:
            raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
        level_no = logging.getLevelName(name)
    else:
        level_no = int(level)
    if fmt not in ("auto", "json", "text"):
        raise ValueError(f"log format {fmt!r} is not one of auto, json, text")
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        try:
            fmt = "text" if stream.isatty() else "json"
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            fmt = "json"

    handler = _JobpipeHandler(stream)
    handler.setFormatter(JsonFormatter(daemon) if fmt == "json" else TextFormatter(daemon))

    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, or a plain console handler (basicConfig): either would write
        # each line again. Other handler types (pytest's capture, files, syslog) are left alone.
        if isinstance(old, _JobpipeHandler) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
            if isinstance(old, _JobpipeHandler):
                old.flush()
    root.addHandler(handler)
    root.setLevel(level_no)
    logging.captureWarnings(True)  # warnings.warn(...) become log lines in the same format
    return handler


def log_event(
    logger: logging.Logger | logging.LoggerAdapter,
    event: str,
    /,
    level: int | str = logging.INFO,
    *,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log a named event with fields: `log_event(log, "batch_done", n=32, rate=41.2)`.

    `level` takes an int or a name ("warning"); `exc_info=True` attaches the current exception.
    """
    if isinstance(level, str):
        number = logging.getLevelName(level.strip().upper())
        if not isinstance(number, int):
            raise ValueError(f"unknown log level {level!r}")
        level = number
    if logger.isEnabledFor(level):
        logger.log(level, "%s", event, exc_info=exc_info, extra={"jobpipe_fields": fields}, stacklevel=2)
