"""The text of an alert message, and the time and duration formats the alerts and `jobpipe health`
share."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jobpipe.text import fmt_duration


def render_message(rows: Sequence[dict[str, Any]]) -> str:
    """Plain text: host and daemon first, then what crossed which threshold, then what to run.

    `rows` are alert rows of one daemon with a message queued (see delivery.Deliverer.claim); several
    rows (conditions that changed together) become one message.
    """
    first = rows[0]
    daemon, host = first["daemon"], first.get("host") or socket.gethostname()
    lines: list[str] = []
    if len(rows) == 1:
        lines.append(f"{host} {daemon}: {_headline(first)}")
        lines.append(first.get("last_value") or "")
    else:
        lines.append(f"{host} {daemon}: {len(rows)} alerts")
        for r in rows:
            lines.append(f"{_headline(r)}: {r.get('last_value') or ''}")
    for r in rows:
        if r.get("detail") and r["msg_kind"] != "resolved":
            lines.append(r["detail"])
    hints = list(dict.fromkeys(r["hint"] for r in rows if r.get("hint") and r["msg_kind"] != "resolved"))
    unit = f"jobpipe@{daemon}" if "@" not in daemon else daemon
    lines.append(f"Run: jobpipe health; journalctl -u {unit} --since -1h")
    lines += [f"Then: {h}" for h in hints]
    return "\n".join(line for line in lines if line)


def _headline(r: dict[str, Any]) -> str:
    kind, title = r["msg_kind"], r.get("summary") or r["condition"]
    since: datetime | None = r.get("since")
    if kind == "start":
        return f"FIRING {title} (since {fmt_time(since)})"
    if kind == "reminder":
        return f"STILL FIRING {title} (since {fmt_time(since)}, {fmt_duration(_age(since))})"
    if kind == "unit_failed":
        return f"FAILED {title}"
    ended: datetime | None = r.get("resolved_at")
    span = f"{fmt_time(since)} to {fmt_time(ended)}"
    announced = r.get("notified_at") is not None and since is not None and r["notified_at"] >= since
    if announced:
        return f"RESOLVED {title} (was firing {span})"
    return f"RESOLVED {title} (fired {span}; the start could not be delivered)"


def _age(at: datetime | None) -> float:
    return 0.0 if at is None else max(0.0, time.time() - at.timestamp())


def fmt_time(at: datetime | None) -> str:
    if at is None:
        return "?"
    local = at.astimezone()
    fmt = "%H:%M %Z" if abs(time.time() - at.timestamp()) < 20 * 3600 else "%Y-%m-%d %H:%M %Z"
    return local.strftime(fmt)

