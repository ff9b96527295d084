"""The `jobpipe` command. Each area adds its subcommands from its own `cli_<area>` module.

A user's mistake (bad config, bad arguments, a database that is behind) ends with one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from jobpipe import __version__
from jobpipe.errors import DependencyDown, UserError

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
    "jobpipe.cli_extract",
    "jobpipe.cli_alerts",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"jobpipe: {exc}", file=sys.stderr)
        return exc.exit_code
    except DependencyDown as exc:
        print(
            f"jobpipe: {exc} (is it running? see `jobpipe db status` for the embedded database)",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
