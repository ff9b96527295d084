"""The alert state machine, shared by every instance through PostgreSQL (table `alerts`).

A condition that holds long enough *starts* (one message), stays firing without messages (a
reminder after `renotify_hours`), and *resolves* after it has been clear for `resolve_minutes`
(one message). Each transition happens in one transaction holding the row lock (SELECT ... FOR
UPDATE), so of two instances that see the same thing at the same moment exactly one queues the
message; delivery is jobpipe.alerts.delivery's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobpipe.alerts.conditions import Condition, Thresholds
from jobpipe.logs import log_event

log = logging.getLogger("jobpipe.alerting")  # the name operators filter the journal by


@dataclass
class Transition:
    key: str
    event: str  # fired, resolved, reminder
    numbers: str


def apply(
    conn: Any,
    daemon: str,
    host: str,
    conditions: Sequence[Condition],
    th: Thresholds,
    *,
    deliver: bool,
) -> list[Transition]:
    """Move each condition's row through pending -> firing -> resolved; queue the messages.

    `deliver` False (alerts.channel none): state is kept and shown, messages are marked disabled.
    One short transaction per condition that needs a change, each holding its row lock.
    """
    existing = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT condition, firing, active_since, clear_since FROM alerts WHERE daemon = %s", (daemon,)
        ).fetchall()
    }
    out: list[Transition] = []
    for c in conditions:
        row = existing.get(c.key)
        if not c.active and (row is None or (not row[0] and row[1] is None)):
            continue  # nothing holds and nothing was pending: no write
        t = _transition(conn, daemon, host, c, th, deliver)
        if t is not None:
            out.append(t)
            log_event(
                log,
                f"alert_{t.event}",
                level="warning" if t.event == "fired" else "info",
                alert_daemon=daemon,
                condition=c.key,
                numbers=c.numbers,
            )
    return out


def _transition(
    conn: Any, daemon: str, host: str, c: Condition, th: Thresholds, deliver: bool
) -> Transition | None:
    delivery = "pending" if deliver else "disabled"
    with conn.transaction():
        if c.active:
            conn.execute(
                """INSERT INTO alerts (daemon, condition, firing, since, severity, summary, host)
                   VALUES (%s, %s, false, now(), %s, %s, %s) ON CONFLICT DO NOTHING""",
                (daemon, c.key, c.severity, c.title, host),
            )
        row = conn.execute(
            """SELECT firing, active_since, clear_since, notified_at, delivery, since, now()
                 FROM alerts WHERE daemon = %s AND condition = %s FOR UPDATE""",
            (daemon, c.key),
        ).fetchone()
        if row is None:
            return None
        firing, active_since, clear_since, notified_at, cur_delivery, _since, now = row
        key = (daemon, c.key)
        if c.active:
            if not firing:
                active_since = active_since or now
                if (now - active_since).total_seconds() < c.hold_s:
                    conn.execute(
                        """UPDATE alerts SET active_since = %s, last_value = %s, updated_at = now()
                            WHERE daemon = %s AND condition = %s""",
                        (active_since, c.numbers, *key),
                    )
                    return None
                conn.execute(
                    """UPDATE alerts SET firing = true, since = %s, resolved_at = NULL, active_since = NULL,
                              clear_since = NULL, severity = %s, summary = %s, last_value = %s, detail = %s,
                              hint = %s, host = %s, notified_at = NULL,
                              msg_kind = 'start', msg_seq = msg_seq + 1, delivery = %s,
                              next_delivery_at = now(), delivery_attempts = 0, delivery_error = NULL,
                              updated_at = now()
                        WHERE daemon = %s AND condition = %s""",
                    (active_since, c.severity, c.title, c.numbers, c.detail, c.hint, host, delivery, *key),
                )
                return Transition(c.key, "fired", c.numbers)
            reminder = (
                cur_delivery in ("sent", "ambiguous")
                and notified_at is not None
                and (now - notified_at).total_seconds() >= th.renotify_hours * 3600
            )
            conn.execute(
                """UPDATE alerts SET clear_since = NULL, last_value = %s, detail = %s, updated_at = now()
                    WHERE daemon = %s AND condition = %s""",
                (c.numbers, c.detail or None, *key),
            )
            if reminder:
                _queue(conn, key, "reminder", delivery)
                return Transition(c.key, "reminder", c.numbers)
            return None
        # not active
        if not firing:
            conn.execute(
                """UPDATE alerts SET active_since = NULL, updated_at = now()
                    WHERE daemon = %s AND condition = %s""",
                key,
            )
            return None
        clear_since = clear_since or now
        if (now - clear_since).total_seconds() < th.resolve_minutes * 60:
            conn.execute(
                """UPDATE alerts SET clear_since = %s, last_value = %s, updated_at = now()
                    WHERE daemon = %s AND condition = %s""",
                (clear_since, c.numbers, *key),
            )
            return None
        # A start that never went out (gateway down, channel off) still gets its one message:
        # the resolved one says it fired, from when to when.
        new_delivery = delivery if cur_delivery != "disabled" else "disabled"
        conn.execute(
            """UPDATE alerts SET firing = false, resolved_at = now(), clear_since = NULL, active_since = NULL,
                      last_value = %s, msg_kind = 'resolved', msg_seq = msg_seq + 1, delivery = %s,
                      next_delivery_at = now(), delivery_attempts = 0, delivery_error = NULL,
                      updated_at = now()
                WHERE daemon = %s AND condition = %s""",
            (c.numbers, new_delivery, *key),
        )
        return Transition(c.key, "resolved", c.numbers)


def _queue(conn: Any, key: tuple[str, str], kind: str, delivery: str) -> None:
    conn.execute(
        """UPDATE alerts SET msg_kind = %s, msg_seq = msg_seq + 1, delivery = %s, next_delivery_at = now(),
                  delivery_attempts = 0, delivery_error = NULL, updated_at = now()
            WHERE daemon = %s AND condition = %s""",
        (kind, delivery, *key),
    )
