"""Core commands: db, migrate, queue; and `connect`, the database connection of every command."""

from __future__ import annotations

import argparse
import dataclasses
import json

from jobpipe import db, embedded, queue
from jobpipe.cli.args import load_config
from jobpipe.config import Config
from jobpipe.errors import UserError, first_line


def connect(
    args: argparse.Namespace,
    start_embedded: bool = True,
    *,
    check_schema: bool = True,
    cfg: Config | None = None,
) -> db.Conn:
    """The configured database (the one connection helper of the commands). With `check_schema` a
    schema that is behind is a UserError naming `jobpipe migrate`, never an SQL error later; the
    commands that must work whatever the schema (health, the OnFailure alert) pass False. A
    command that has loaded the configuration passes it as `cfg` (read once, one view of it)."""
    if cfg is None:
        cfg = load_config(args)
    url = db.resolve_url(cfg, start_embedded=start_embedded)
    conn = db.connect(url, connect_timeout=cfg.database.connect_timeout_s)
    if check_schema:
        try:
            db.check_schema(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="manage the embedded PostgreSQL (when database.url is empty)")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    for name, fn, text in (
        ("start", cmd_db_start, "start the embedded server (and migrate)"),
        ("stop", cmd_db_stop, "stop the embedded server"),
        ("status", cmd_db_status, "is the database reachable, which schema version"),
        ("url", cmd_db_url, "print the connection URL"),
    ):
        dsub.add_parser(name, help=text).set_defaults(func=fn)

    sub.add_parser("migrate", help="apply pending schema migrations").set_defaults(func=cmd_migrate)

    p = sub.add_parser("queue", help="inspect and manage the work queue")
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION")
    qsub.required = True
    st = qsub.add_parser("stats", help="pending, scheduled, running and given-up items per stage")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_queue_stats)
    rq = qsub.add_parser("requeue", help="give given-up items of a stage a fresh start")
    rq.add_argument("stage")
    rq.set_defaults(func=cmd_queue_requeue)


def cmd_db_start(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if cfg.database.url:
        print("database.url is set: jobpipe uses that server, not the embedded one")
        return 0
    url = embedded.start(embedded.resolve_data_dir(cfg.database.data_dir))
    applied = db.migrate(url)
    print(f"embedded PostgreSQL running: {url}")
    if applied:
        print(f"applied migrations: {', '.join(applied)}")
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    data_dir = embedded.resolve_data_dir(cfg.database.data_dir)
    print("stopped" if embedded.stop(data_dir) else f"not running ({data_dir})")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        url = db.resolve_url(cfg, start_embedded=False)
        with db.connect(url, connect_timeout=cfg.database.connect_timeout_s) as conn:
            version = db.one(conn, "SHOW server_version")[0]
            pending = [m.version for m in db.pending_migrations(conn)]
    except Exception as exc:
        print(f"database: DOWN ({first_line(exc)})")
        return 1
    kind = "external" if cfg.database.url else "embedded"
    print(f"database: UP ({kind}, PostgreSQL {version})")
    print(f"schema: {'current' if not pending else 'behind: ' + ', '.join(pending)}")
    return 0 if not pending else 1


def cmd_db_url(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    print(db.resolve_url(cfg, start_embedded=False))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    applied = db.migrate(db.resolve_url(cfg))
    print(f"applied: {', '.join(applied)}" if applied else "schema is current")
    return 0


def cmd_queue_stats(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        st = queue.stats(conn)
    if args.json:
        print(json.dumps({s: dataclasses.asdict(v) for s, v in st.items()}))
        return 0
    print(f"{'stage':<14}{'pending':>9}{'scheduled':>11}{'running':>9}{'given up':>10}  oldest pending")
    for s in st.values():
        age = "-" if s.oldest_pending_age_s is None else f"{s.oldest_pending_age_s:.0f}s"
        print(f"{s.stage:<14}{s.pending:>9}{s.scheduled:>11}{s.running:>9}{s.given_up:>10}  {age}")
    if not st:
        print("(no work items yet)")
    return 0


# The stages of the shipped daemons (description: fetcher, classify + classify_llm: classifier,
# embed: embedder, verify: verifier); stages with given-up items are valid too (custom daemons).
BUILTIN_STAGES = ("classify", "classify_llm", "description", "embed", "verify")
MAX_STAGE_CHARS = 64


def cmd_queue_requeue(args: argparse.Namespace) -> int:
    stage = args.stage
    if not stage or len(stage) > MAX_STAGE_CHARS or not stage.isprintable():
        raise UserError(
            f"queue requeue: a stage name is 1 to {MAX_STAGE_CHARS} printable characters "
            f"(got {len(stage)}); see jobpipe queue stats"
        )
    with connect(args) as conn:
        known = set(BUILTIN_STAGES) | {
            r[0] for r in conn.execute("SELECT DISTINCT stage FROM queue WHERE status = 'given_up'")
        }
        if stage not in known:
            raise UserError(f"queue requeue: unknown stage {stage!r}; stages: {', '.join(sorted(known))}")
        n = queue.requeue_given_up(conn, args.stage)
    print(f"requeued {n} given-up item(s) of stage {args.stage}")
    return 0
