"""The `jobpipe` command. Each area adds its subcommands from its own `cli_<area>` module.

A user's mistake (bad config, bad arguments, a database that is behind) ends with one line on
stderr and exit code 2, never a traceback. Everything printed to stdout is terminal-safe: control
characters from the database or an API (a title with ESC or BEL) are shown as `\\uXXXX` escapes,
never interpreted by the terminal (jobpipe.text.terminal_safe).
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from jobpipe import __version__
from jobpipe.errors import DependencyDown, UserError
from jobpipe.text import terminal_safe

# Modules that define `add_commands(sub)`; each registers its own subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "jobpipe.cli_core",
    "jobpipe.cli_run",
    "jobpipe.cli_demo",
    "jobpipe.cli_embed",
    "jobpipe.cli_fetch",
    "jobpipe.cli_install",
    "jobpipe.cli_verify",
    "jobpipe.cli_snapshot",
    "jobpipe.cli_classify",
    "jobpipe.cli_alerts",
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2): `jobpipe queue requeue: error: ...`, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {terminal_safe(message)} (see {self.prog} --help)\n")


class TerminalSafeWriter(io.TextIOBase):
    """A text stream that writes through `terminal_safe`. `raw` is the stream underneath, for the
    few writers whose control sequences are their own (`jobpipe up`'s live status lines)."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(terminal_safe(text))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", "utf-8")


def unfiltered(stream: Any) -> Any:
    """The stream under a TerminalSafeWriter (or `stream` itself)."""
    return getattr(stream, "raw", stream) if isinstance(stream, TerminalSafeWriter) else stream


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="jobpipe",
        description="Daemons that keep a PostgreSQL + pgvector database of German job postings "
        "complete and fresh.",
    )
    parser.add_argument("--version", action="version", version=f"jobpipe {__version__}")
    parser.add_argument(
        "-c", "--config", help="config file (default: $JOBPIPE_CONFIG, else /etc/jobpipe/jobpipe.yaml)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. stdout is terminal-safe for the command's duration; errors are one line."""
    stdout = sys.stdout
    if stdout is not None and not isinstance(stdout, TerminalSafeWriter):
        sys.stdout = TerminalSafeWriter(stdout)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return _dispatch(args)
    finally:
        sys.stdout = stdout


def _error(text: str) -> None:
    print(f"jobpipe: {terminal_safe(' '.join(text.split()))}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        _error(str(exc))
        return exc.exit_code
    except DependencyDown as exc:
        _error(f"{exc} (is it running? see `jobpipe db status` for the embedded database)")
        return 3
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
