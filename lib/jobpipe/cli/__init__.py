"""The `jobpipe` command. Each area adds its subcommands from its own module, `jobpipe.cli.<area>`.

Only the module of the command that runs is imported: `COMMANDS` names each top-level command's
module and help line, so `jobpipe --help`, `--version`, `config show` and `health` start without
numpy, prometheus_client, the model clients or the other command modules
(tests/test_cli_startup.py checks both the table and the imports).

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

# Top-level command -> (the module whose `add_commands(sub)` defines it, its help line).
# A module may define several commands; its `add_commands` registers all of them.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("jobpipe.cli.config", "show, check or print the documented defaults of the configuration"),
    "db": ("jobpipe.cli.core", "manage the embedded PostgreSQL (when database.url is empty)"),
    "migrate": ("jobpipe.cli.core", "apply pending schema migrations"),
    "queue": ("jobpipe.cli.core", "inspect and manage the work queue"),
    "run": ("jobpipe.cli.run", "run one daemon in the foreground (what jobpipe@DAEMON.service starts)"),
    "up": ("jobpipe.cli.run", "run every enabled daemon, supervised, on the configured database"),
    "demo": (
        "jobpipe.cli.demo",
        "run the six daemons offline against simulated services until drained, then show the results",
    ),
    "sim": ("jobpipe.cli.sim", "run one simulated external service (BA API, Ollama, Signal gateway)"),
    "search": (
        "jobpipe.cli.embed",
        "postings that match a text: vector and lexical candidates fused by reciprocal rank",
    ),
    "embeddings": ("jobpipe.cli.embed", "check and inspect the posting embeddings"),
    "fetch": ("jobpipe.cli.fetch", "BA crawl partitions: their state, and one-off crawls"),
    "install": (
        "jobpipe.cli.install",
        "write the systemd units, /etc/jobpipe/{jobpipe.yaml,env} and create the service user",
    ),
    "uninstall": (
        "jobpipe.cli.install",
        "disable and remove what `jobpipe install` wrote (edited config files are kept)",
    ),
    "verify": (
        "jobpipe.cli.verify",
        "check postings against the BA now (ahead of the background backlog), or show the state",
    ),
    "snapshot": (
        "jobpipe.cli.snapshot",
        "compute the daily demand snapshot (default: yesterday), backfill days, or the similarity",
    ),
    "similar": ("jobpipe.cli.snapshot", "the occupations most similar to one (by id or name)"),
    "occupations": ("jobpipe.cli.classify", "load, fetch and inspect the BERUFENET occupation catalogue"),
    "classifier": ("jobpipe.cli.classify", "evaluate models, re-queue titles, outcome counts"),
    "extract": ("jobpipe.cli.extract", "the extractor: evaluate summary models"),
    "alert": ("jobpipe.cli.alerts", "send a test alert, or the OnFailure alert of a failed unit"),
    "alerts": ("jobpipe.cli.alerts", "alerts firing now and what was sent recently"),
    "health": ("jobpipe.cli.alerts", "one table per stage with a verdict; exit 0 OK, 1 WARN, 2 FAIL"),
}
# Every command module, in the order their commands are listed (for tests and documentation).
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


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


def requested_command(argv: Sequence[str]) -> str:
    """The top-level command in argv, as argparse itself reads it: global options in any spelling
    it accepts (`-c F`, `-cF`, `--config=F`, abbreviations such as `--conf F`) are skipped, so the
    command module loaded is always the one the full parser would run. Exits as argparse does on
    `--help`, `--version`, a missing or an unknown command; loads no command module."""
    args, _ = build_parser().parse_known_args(argv)
    return str(args.command)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; only `command`'s module is imported and defines its
    subcommands (and those of its sibling commands), the others are help-only placeholders."""
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
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).add_commands(sub)
    for name, (_, text) in COMMANDS.items():
        if name not in sub.choices:
            # Listed in --help; parsed only to find the command (add_help=False: `jobpipe db --help`
            # is answered by the real parser, with db's actions, after its module is loaded).
            sub.add_parser(name, help=text, add_help=False)
    # The listing follows COMMANDS, however the loaded modules ordered their commands.
    by_name = {a.dest: a for a in sub._choices_actions}
    sub._choices_actions[:] = [by_name[n] for n in COMMANDS if n in by_name]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. stdout is terminal-safe for the command's duration; errors are one line."""
    stdout = sys.stdout
    if stdout is not None and not isinstance(stdout, TerminalSafeWriter):
        sys.stdout = TerminalSafeWriter(stdout)
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser(requested_command(argv))
        # Known args only: a passthrough command (`jobpipe sim ba --port 0`) hands the rest to its
        # program; any other command gets argparse's usual error for them.
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "passthrough", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if not hasattr(args, "func"):  # cannot happen with COMMANDS in step with the modules
            parser.error(f"command {args.command!r} is not defined by {COMMANDS[args.command][0]}")
        args.passthrough_args = extra
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

