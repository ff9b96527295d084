"""`jobpipe install` and `jobpipe uninstall`: the systemd units, config and service user (see install.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobpipe import install


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "install",
        help="write the systemd units, /etc/jobpipe/{jobpipe.yaml,env} and create the service user",
        description="Write jobpipe@.service, jobpipe.target and jobpipe-alert@.service (ExecStart= runs "
        "this installation's `jobpipe`), /etc/jobpipe/jobpipe.yaml (never overwritten: a differing "
        "file gets jobpipe.yaml.new beside it), /etc/jobpipe/env (secrets, mode 0600) and the "
        "service user, then print the systemctl commands to run next. Safe to run again.",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="install below this directory instead of / (packaging, tests); no user is created",
    )
    p.add_argument("--user", default=install.DEFAULT_USER, help="service user (default: %(default)s)")
    p.add_argument(
        "--enable", action="store_true", help="also `systemctl enable jobpipe.target` (does not start it)"
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser(
        "uninstall",
        help="disable and remove what `jobpipe install` wrote (edited config files are kept)",
    )
    p.add_argument("--root", type=Path, default=Path("/"), help="the --root given to install")
    p.add_argument("--purge", action="store_true", help="also remove edited jobpipe.yaml and env")
    p.set_defaults(func=cmd_uninstall)


def cmd_install(args: argparse.Namespace) -> int:
    report = install.install(args.root, args.user, args.enable)
    print("\n".join(report.lines()))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    report = install.uninstall(args.root, purge=args.purge)
    print("\n".join(report.lines()))
    return 0
