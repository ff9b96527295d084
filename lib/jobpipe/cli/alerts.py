"""Alert commands: `jobpipe alert test|unit-failed UNIT`, `jobpipe alerts`, `jobpipe health`."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from jobpipe import db, health
from jobpipe.alerts.channels.signal import DELIVERED, UNREACHABLE, explain
from jobpipe.alerts.delivery import (
    Deliverer,
    gateway_from_config,
    record_unit_failed,
    register_secrets,
    safe_send,
)
from jobpipe.alerts.message import fmt_time, render_message
from jobpipe.backoff import Backoff, Streak
from jobpipe.cli.args import float_arg, load_config
from jobpipe.cli.core import connect
from jobpipe.errors import DependencyDown, UserError

# What systemd's $MONITOR_SERVICE_RESULT values mean (systemd.exec(5), "$SERVICE_RESULT").
SERVICE_RESULTS = {
    "success": "the service ended successfully",
    "protocol": "the service broke the start-up protocol (e.g. no READY=1 for Type=notify)",
    "timeout": "a start, stop or runtime timeout was hit",
    "exit-code": "the main process exited with a non-zero status",
    "signal": "the main process was killed by a signal",
    "core-dump": "the main process crashed and dumped core",
    "watchdog": "the watchdog fired: the work loop stopped pinging (hung)",
    "start-limit-hit": "it was restarted too often (StartLimitBurst) and systemd gave up",
    "resources": "systemd could not set up the service (missing user, directory, ...)",
    "oom-kill": "the kernel's OOM killer ended it (out of memory)",
}
# jobpipe's own exit statuses (see jobpipe.cli).
JOBPIPE_EXIT = {
    "1": "an unexpected error (traceback in the journal)",
    "2": "a user error: invalid configuration or a schema that is behind (run `jobpipe migrate`)",
    "3": "a dependency it needs at start was down",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alert", help="send a test alert, or the OnFailure alert of a failed unit")
    asub = p.add_subparsers(dest="alert_command", metavar="ACTION")
    asub.required = True
    t = asub.add_parser("test", help="send a test message through the configured Signal gateway")
    t.add_argument("--message", help="text to send instead of the standard test message")
    t.set_defaults(func=cmd_alert_test)
    u = asub.add_parser(
        "unit-failed",
        help="what jobpipe-alert@.service runs: one message naming the failed unit "
        "($MONITOR_SERVICE_RESULT, $MONITOR_EXIT_CODE, $MONITOR_EXIT_STATUS)",
    )
    u.add_argument("unit", nargs="?", help="the failed unit (default: $MONITOR_UNIT)")
    u.set_defaults(func=cmd_unit_failed)

    p = sub.add_parser("alerts", help="alerts firing now and what was sent recently")
    p.add_argument(
        "--hours", type=float_arg(0.01, 24 * 365), default=24.0, help="how far back to list (default 24)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("health", help="one table per stage with a verdict; exit 0 OK, 1 WARN, 2 FAIL")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_health)


# ---------------------------------------------------------------------------------------- alert test


def _gateway(cfg: Any) -> Any:
    register_secrets(cfg)
    if cfg.alerts.channel == "none":
        raise UserError(
            "alerts.channel is none: set alerts.channel (signal-rest or signal-jsonrpc), "
            "alerts.gateway_url, alerts.sender and alerts.recipients or alerts.group_id"
        )
    return gateway_from_config(cfg)


def _try_connect(args: argparse.Namespace) -> Any:
    """The database if it answers now (never starts the embedded one), else None."""
    try:
        return connect(args, start_embedded=False, check_schema=False)
    except DependencyDown:
        return None


def cmd_alert_test(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    gw = _gateway(cfg)
    host = socket.gethostname()
    try:
        check = gw.check()
        print(f"gateway check: {explain(check)}")
        if check.status == "unreachable":
            print("nothing sent: the gateway cannot be reached.")
            return 1
        text = args.message or (
            f"{host} jobpipe: test message from `jobpipe alert test` at "
            f"{fmt_time(datetime.now().astimezone())}."
            "\nIf you read this, alerts reach you.\nRun: jobpipe health"
        )
        result = safe_send(gw, text)
    finally:
        gw.close()
    print(f"send: {explain(result)}")
    if result.challenge_token:
        # For the operator at the terminal only (never logged): what submitRateLimitChallenge needs.
        print(f"challenge token: {result.challenge_token}")
    conn = _try_connect(args)
    if conn is not None:
        with conn:
            conn.execute(
                """INSERT INTO alert_log (daemon, condition, kind, message, status, detail)
                   VALUES ('cli', 'test', 'test', %s, %s, %s)""",
                (text, result.status, explain(result)),
            )
            if result.status == DELIVERED:
                # The channel works again: lift a rate-limit pause and send what waits now.
                conn.execute(
                    "UPDATE alert_channel SET degraded_until = NULL, reason = NULL, updated_at = now()"
                )
                n = conn.execute(
                    "UPDATE alerts SET next_delivery_at = now() WHERE delivery = 'pending'"
                ).rowcount
                if n:
                    print(f"{n} waiting alert message(s) will go out with the daemons' next turn.")
    return 0 if result.ok else 1


# ---------------------------------------------------------------------------------------- unit failed


def describe_failure(unit: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(numbers, detail) naming systemd's MONITOR_* values and what they mean."""
    result = env.get("MONITOR_SERVICE_RESULT") or "unknown"
    code = env.get("MONITOR_EXIT_CODE") or "unknown"
    status = env.get("MONITOR_EXIT_STATUS") or "unknown"
    meaning = SERVICE_RESULTS.get(result, "see systemctl status")
    numbers = (
        f"MONITOR_SERVICE_RESULT={result} ({meaning}), MONITOR_EXIT_CODE={code}, MONITOR_EXIT_STATUS={status}"
    )
    detail = ""
    if code == "exited" and status in JOBPIPE_EXIT:
        detail = f"exit status {status}: {JOBPIPE_EXIT[status]}"
    elif code in ("killed", "dumped"):
        detail = f"killed by signal {status}" + (" (the watchdog's SIGABRT)" if result == "watchdog" else "")
    return numbers, detail


def daemon_of(unit: str) -> str:
    """`jobpipe@embedder.service` -> `embedder`; any other unit keeps its name."""
    name = unit.removesuffix(".service")
    return name.split("@", 1)[1] if name.startswith("jobpipe@") else name


def cmd_unit_failed(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    unit = args.unit or env.get("MONITOR_UNIT")
    if not unit:
        raise UserError("name the failed unit: jobpipe alert unit-failed UNIT (or set MONITOR_UNIT)")
    cfg = load_config(args)
    register_secrets(cfg)
    gw = gateway_from_config(cfg)
    daemon, host = daemon_of(unit), socket.gethostname()
    numbers, detail = describe_failure(unit, env)
    title = f"unit {unit}"
    hint = f"systemctl status {unit}; when fixed: systemctl reset-failed {unit}; systemctl start {unit}"
    conn = _try_connect(args)
    why = "database unreachable"
    if conn is not None and db.pending_migrations(conn):
        # No alerts table to record in, and no daemon running to deliver: like no database at all.
        conn.close()
        conn, why = None, "database schema behind (run `jobpipe migrate`)"
    if conn is not None:
        with conn:
            record_unit_failed(conn, daemon, host, title, numbers, detail, hint)
            if gw is None:
                conn.execute(
                    "UPDATE alerts SET delivery = 'disabled' WHERE daemon = %s AND condition = 'unit_failed'",
                    (daemon,),
                )
                print(f"recorded {unit} as failed; not sent: alerts.channel is none")
                return 0
            results = Deliverer(gw, cfg).deliver_due(conn, only=(daemon, "unit_failed"))
        gw.close()
        if not results:
            print(f"recorded {unit} as failed; Signal is rate-limited, the message waits (jobpipe alerts)")
            return 0
        print(f"send: {explain(results[-1])}")
        if results[-1].ok:
            return 0
        if results[-1].status in (UNREACHABLE, "rate_limited", "failed"):
            print("the message waits in the database; running daemons retry it with backoff.")
            return 0
        return 1
    # No database: nobody else will know, so send it now, retrying a little while the unit may run.
    print(f"{why}: sending directly")
    if gw is None:
        print("not sent: alerts.channel is none")
        return 1
    row = {
        "daemon": daemon,
        "host": host,
        "condition": "unit_failed",
        "msg_kind": "unit_failed",
        "summary": title,
        "last_value": numbers,
        "detail": detail,
        "hint": hint,
        "since": datetime.now().astimezone(),
    }
    text = render_message([row])
    retry = Streak(Backoff(min(cfg.alerts.retry_base_s, 10.0), float("inf")))
    try:
        for attempt in range(3):
            result = safe_send(gw, text)
            print(f"send: {explain(result)}")
            if result.status != UNREACHABLE or attempt == 2:
                break
            time.sleep(retry.failed())  # backoff between attempts of this one-shot command
    finally:
        gw.close()
    return 0 if result.ok else 1


# ---------------------------------------------------------------------------------------- listing


def cmd_alerts(args: argparse.Namespace) -> int:
    conn = connect(args, start_embedded=False)
    with conn:
        firing = conn.execute(
            """SELECT daemon, condition, severity, coalesce(summary, condition), coalesce(last_value, ''),
                      since, delivery, delivery_error, notified_at
                 FROM alerts WHERE firing ORDER BY since"""
        ).fetchall()
        building = conn.execute(
            """SELECT daemon, condition, coalesce(summary, condition), coalesce(last_value, ''), active_since
                 FROM alerts WHERE NOT firing AND active_since IS NOT NULL ORDER BY active_since"""
        ).fetchall()
        resolved = conn.execute(
            """SELECT daemon, condition, coalesce(summary, condition), since, resolved_at, delivery
                 FROM alerts WHERE NOT firing AND resolved_at > now() - make_interval(secs => %s)
                ORDER BY resolved_at DESC""",
            (args.hours * 3600,),
        ).fetchall()
        sent = conn.execute(
            """SELECT at, daemon, condition, kind, status, detail FROM alert_log
                WHERE at > now() - make_interval(secs => %s) ORDER BY at DESC LIMIT 50""",
            (args.hours * 3600,),
        ).fetchall()
        channel = conn.execute(
            """SELECT degraded_until, reason FROM alert_channel
                WHERE channel = 'signal' AND degraded_until > now()"""
        ).fetchone()
    if args.json:

        def iso(v: Any) -> Any:
            return v.isoformat() if isinstance(v, datetime) else v

        def records(keys: tuple[str, ...], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
            return [dict(zip(keys, map(iso, r), strict=True)) for r in rows]

        print(
            json.dumps(
                {
                    "firing": records(
                        (
                            "daemon",
                            "condition",
                            "severity",
                            "title",
                            "value",
                            "since",
                            "delivery",
                            "delivery_error",
                            "notified_at",
                        ),
                        firing,
                    ),
                    "building": records(("daemon", "condition", "title", "value", "active_since"), building),
                    "resolved": records(
                        ("daemon", "condition", "title", "since", "resolved_at", "delivery"), resolved
                    ),
                    "log": records(("at", "daemon", "condition", "kind", "status", "detail"), sent),
                    "channel_degraded_until": iso(channel[0]) if channel else None,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    if channel:
        print(f"Signal held back until {fmt_time(channel[0])}: {channel[1]}\n")
    print(f"firing ({len(firing)})")
    for d, c, _sev, title, value, since, delivery, err, _ in firing:
        state = delivery or "-"
        print(f"  {d}/{c}: {title} since {fmt_time(since)}; {value}; message: {state}")
        if err and delivery != "sent":
            print(f"      {err}")
    if building:
        print(f"\nholding, not firing yet ({len(building)})")
        for d, c, title, value, since in building:
            print(f"  {d}/{c}: {title} since {fmt_time(since)}; {value}")
    print(f"\nresolved in the last {args.hours:g} h ({len(resolved)})")
    for d, c, title, since, ended, delivery in resolved:
        print(f"  {d}/{c}: {title} {fmt_time(since)} to {fmt_time(ended)}; message: {delivery or '-'}")
    print(f"\nmessages in the last {args.hours:g} h ({len(sent)})")
    for at, d, c, kind, status, _detail in sent:
        print(f"  {fmt_time(at)} {d}/{c} {kind}: {status}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        conn = connect(args, start_embedded=False, check_schema=False, cfg=cfg)
    except DependencyDown as exc:
        h = health.database_down(str(exc))
    else:
        with conn:
            h = health.collect(conn, cfg)
    print(health.to_json(h) if args.json else health.render_text(h))
    return h.exit_code
