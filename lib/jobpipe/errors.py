"""The error kinds every part of jobpipe speaks.

The split matters to the queue: an ItemError charges the item an attempt (and eventually gives it
up), a DependencyDown backs the whole daemon off without charging anything, because the item is
not at fault when the model server, the BA API or the database is away.
"""

from __future__ import annotations

from jobpipe.logs import redact

# An error text ends up in logs, queue.last_error, STATUS= (readable by every local user), Signal
# messages and the CLI; so the errors below redact credentials once, when their text is made.


class JobpipeError(Exception):
    """Base class for jobpipe's own errors. A single-string message is redacted (jobpipe.logs.redact):
    credentials in URLs and connection strings never reach `str(exc)`."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (redact(args[0]),)
        super().__init__(*args)


class UserError(JobpipeError):
    """A mistake an operator can fix (bad config, bad arguments): printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """Invalid configuration; the message names the key, the file and the line."""


class ItemError(JobpipeError):
    """This item (text, posting, title) cannot be processed as it is: charge it an attempt.

    `kind` is a short machine label used in metrics (`bad_input`, `malformed_answer`, `dimension`...).
    """

    def __init__(self, message: str, kind: str = "item_error") -> None:
        super().__init__(message)
        self.kind = kind


class DependencyDown(JobpipeError):
    """An external dependency (database, model server, BA API, gateway) is unavailable.

    `dependency` names it (`ollama`, `ba_api`, `database`, `signal`), `kind` says how
    (`timeout`, `connection`, `http_503`, `model_missing`...). `retry_after` (seconds) is a hint.
    """

    def __init__(
        self, dependency: str, message: str, kind: str = "unavailable", retry_after: float | None = None
    ) -> None:
        super().__init__(f"{dependency}: {message}")
        self.dependency = dependency
        self.kind = kind
        self.retry_after = retry_after


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg's run over several), else its type name;
    redacted (a libpq error echoes the connection string, password included)."""
    text = redact(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
