"""`jobpipe run DAEMON` (what the systemd unit starts) and `jobpipe up` (all daemons, supervised)."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from pathlib import Path

from jobpipe import config as config_mod
from jobpipe import db, embedded, runtime
from jobpipe.cli.args import int_arg
from jobpipe.logs import setup_logging
from jobpipe.settings import DAEMONS
from jobpipe.supervisor import Supervisor


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one daemon in the foreground (what jobpipe@DAEMON.service starts)")
    p.add_argument("daemon", help=f"one of {', '.join(DAEMONS)}")
    p.add_argument("--once", action="store_true", help="drain the pending work, then exit 0")
    p.add_argument(
        "--metrics-port", type=int_arg(0, 65535), help="override <daemon>.metrics_port (0 = any free port)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("up", help="run every enabled daemon, supervised, on the configured database")
    p.add_argument("--only", nargs="+", choices=DAEMONS, help="run only these daemons")
    p.add_argument(
        "--log-dir", help="where the daemons' logs go when on a terminal (default: <data dir>/logs)"
    )
    p.set_defaults(func=cmd_up)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    daemon_cls = runtime.resolve_daemon(args.daemon)
    if args.metrics_port is not None and hasattr(cfg, daemon_cls.name):
        cfg = cfg.with_overrides(**{f"{daemon_cls.name}__metrics_port": args.metrics_port})
    setup_logging(daemon_cls.name, cfg.logging.level, cfg.logging.format)
    return runtime.run_daemon(
        daemon_cls, cfg, once=args.once, serve=True, install_signals=True, metrics_port=args.metrics_port
    )


def cmd_up(args: argparse.Namespace) -> int:
    """Supervise the daemons until Ctrl-C/SIGTERM. With the embedded database, a server this
    command started is stopped again on the way out (also on a Ctrl-C/SIGTERM before the daemons
    run); one that was already running is left alone.
    A second `jobpipe up` on the same embedded database stops at once with one line (exit 2)."""
    cfg = config_mod.load(args.config)
    setup_logging("up", cfg.logging.level, cfg.logging.format)
    # Until the supervisor installs its own handlers, SIGTERM unwinds like Ctrl-C (exit 130), so a
    # server this command started while starting up is stopped again, not left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if cfg.database.url:
        return _up(args, cfg, cfg.database.url)
    say = functools.partial(print, flush=True)
    data_dir = embedded.resolve_data_dir(cfg.database.data_dir)
    # Claimed first: whether the server "was running before" must not be another up's server.
    with embedded.claimed(data_dir, "jobpipe up"), embedded.running(data_dir, on_stop=say) as url:
        return _up(args, cfg, url)


def _up(args: argparse.Namespace, cfg: config_mod.Config, url: str) -> int:
    applied = db.migrate(url)
    if applied:
        print(f"migrated: {', '.join(applied)}")
    names = args.only or [d for d in DAEMONS if getattr(cfg, d).enabled]
    log_dir = (
        Path(args.log_dir)
        if args.log_dir
        else embedded.resolve_data_dir(cfg.database.data_dir).parent / "logs"
    )
    cmd = [sys.executable, "-m", "jobpipe.cli"]
    if args.config:
        cmd += ["--config", args.config]
    env = dict(os.environ)
    if not cfg.database.url:
        env["JOBPIPE_DATABASE_URL"] = url  # children share the server this process started
    sup = Supervisor(
        names, cmd, env=env, log_dir=log_dir if sys.stdout.isatty() else None, tty=sys.stdout.isatty()
    )
    return sup.run()
