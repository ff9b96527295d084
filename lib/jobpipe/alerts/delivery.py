"""Getting queued alert messages out through the Signal gateway, once, without blocking anyone.

The rules (docs/contracts/signal.md), and how they are kept:
- One message per transition, whatever the number of instances: a message is claimed by setting
  its row to `sending` (FOR UPDATE SKIP LOCKED, committed before the request goes out), so two
  processes never send the same one. Conditions of one daemon that changed together go out as
  one message.
- Gateway down (`unreachable`: nothing went out): the row goes back to `pending` with an
  exponential backoff (alerts.retry_base_s .. retry_max_s).
- Rate limit or captcha: every daemon's messages wait `alerts.rate_limit_backoff_h` (the channel
  row `alert_channel`), the `jobpipe_signal_degraded` gauge is 1 and the log says what to do.
- Ambiguous (timeout, 5xx, killed signal-cli: it may have gone out): recorded and never resent.
  A process that dies while sending leaves a `sending` row whose claim expires: also ambiguous.
- `failed` (unregistered number, bad request: resending cannot help until someone fixes it):
  retried only after the longest backoff, and logged with what to fix.

The database alert cannot live in the database: `DatabaseWatch` keeps it in a small file under a
lock (`Latch`) shared by the daemons of one host, so they send one message between them, and a
restarted daemon does not send it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row

from jobpipe import embedded
from jobpipe.alerts.channels.signal import (
    AMBIGUOUS,
    DELIVERED,
    FAILED,
    RATE_LIMITED,
    UNREACHABLE,
    SendResult,
    explain,
    internal_group_id,
    make_gateway,
    rest_group_id,
)
from jobpipe.alerts.message import render_message
from jobpipe.config import Config
from jobpipe.logs import log_event, register_secret
from jobpipe.queue import RetryPolicy

log = logging.getLogger("jobpipe.alerts")

CHANNEL = "signal"
ANNOUNCING_KINDS = ("start", "reminder", "unit_failed")  # kinds after which the condition counts as announced
_METRIC_KIND = {
    "start": "firing",
    "reminder": "reminder",
    "resolved": "resolved",
    "unit_failed": "unit_failed",
}
STALE_SENDING = (
    "the process sending this stopped before the gateway answered: it may have gone out, so it is not resent"
)


def register_secrets(cfg: Config) -> None:
    """Numbers and group ids never appear in logs, in any spelling a gateway might echo."""
    a = cfg.alerts
    for value in [a.sender, *list(a.recipients or []), a.group_id]:
        value = (value or "").strip()
        if not value:
            continue
        register_secret(value)
        if value.startswith("+"):
            register_secret(value[1:])
    gid = (a.group_id or "").strip()
    if gid:
        register_secret(rest_group_id(gid))
        with contextlib.suppress(Exception):
            register_secret(internal_group_id(gid))


def gateway_from_config(cfg: Config) -> Any:
    """The configured gateway, or None when alerts.channel is none. ConfigError on bad settings."""
    a = cfg.alerts
    if a.channel == "none":
        return None
    return make_gateway(
        a.channel, a.gateway_url, a.sender, list(a.recipients or []), a.group_id or None, timeout=a.timeout_s
    )


def safe_send(gateway: Any, text: str) -> SendResult:
    """gateway.send, with a bug in the client counted as "may have gone out" instead of a crash."""
    try:
        return gateway.send(text)
    except Exception as exc:
        return SendResult(AMBIGUOUS, f"{type(exc).__name__}: {exc}"[:300], kind="client_error")


class Deliverer:
    """Sends the messages `jobpipe.alerts.state.apply` queued in the `alerts` table."""

    def __init__(self, gateway: Any, cfg: Config, *, metrics: Any = None) -> None:
        a = cfg.alerts
        self.gateway = gateway
        self.metrics = metrics
        self.policy = RetryPolicy(1 << 30, a.retry_base_s, a.retry_max_s)
        self.retry_max_s = a.retry_max_s
        self.rate_limit_s = a.rate_limit_backoff_h * 3600
        # Two requests (numbers and a group) with connect + read timeouts each, plus slack.
        self.lease_s = a.timeout_s * 4 + 30

    # -- channel state -----------------------------------------------------------------------------

    def degraded_until(self, conn: Any) -> datetime | None:
        row = conn.execute(
            "SELECT degraded_until FROM alert_channel WHERE channel = %s AND degraded_until > now()",
            (CHANNEL,),
        ).fetchone()
        return row[0] if row else None

    def _set_degraded(self, degraded: bool) -> None:
        if self.metrics is not None:
            self.metrics.set_signal_degraded(degraded)

    def next_due_in(self, conn: Any) -> float | None:
        """Seconds until the next delivery is due (None: nothing queued)."""
        row = conn.execute(
            """SELECT extract(epoch FROM greatest(min(a.next_delivery_at),
                          (SELECT max(degraded_until) FROM alert_channel WHERE channel = %s)) - now())
                 FROM alerts a WHERE a.delivery IN ('pending', 'sending')""",
            (CHANNEL,),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, float(row[0]))

    # -- the pass ----------------------------------------------------------------------------------

    def deliver_due(
        self, conn: Any, *, only: tuple[str, str] | None = None, max_messages: int = 10
    ) -> list[SendResult]:
        """Send what is due, one message per daemon's batch of changes; stop at the first message
        that does not go through (the next ones would meet the same gateway)."""
        if self.gateway is None:
            return []
        self.reclaim_stale(conn)
        if self.degraded_until(conn) is not None:
            self._set_degraded(True)
            return []
        results: list[SendResult] = []
        for _ in range(max_messages):
            rows = self.claim(conn, only)
            if not rows:
                break
            text = render_message(rows)
            result = safe_send(self.gateway, text)
            self.record(conn, rows, text, result)
            results.append(result)
            if not result.ok:
                break
        return results

    def claim(self, conn: Any, only: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """Claim the due messages of one daemon (the one waiting longest): rows go to `sending`
        with a claim that expires after `lease_s`, committed before anything is sent."""
        filt = "" if only is None else " AND daemon = %(d)s AND condition = %(c)s"
        params: dict[str, Any] = {"lease": self.lease_s}
        if only is not None:
            params.update(d=only[0], c=only[1])
        with conn.transaction():
            first = conn.execute(
                f"""SELECT daemon FROM alerts WHERE delivery = 'pending' AND next_delivery_at <= now(){filt}
                     ORDER BY next_delivery_at LIMIT 1 FOR UPDATE SKIP LOCKED""",
                params,
            ).fetchone()
            if first is None:
                return []
            params["daemon"] = first[0]
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(
                    f"""UPDATE alerts a SET delivery = 'sending',
                               next_delivery_at = now() + make_interval(secs => %(lease)s),
                               delivery_attempts = a.delivery_attempts + 1, updated_at = now()
                          FROM (SELECT daemon, condition FROM alerts
                                 WHERE daemon = %(daemon)s AND delivery = 'pending'
                                   AND next_delivery_at <= now(){filt}
                                 ORDER BY condition LIMIT 20 FOR UPDATE SKIP LOCKED) c
                         WHERE a.daemon = c.daemon AND a.condition = c.condition
                     RETURNING a.*""",
                    params,
                )
                rows = cur.fetchall()
        rows.sort(key=lambda r: (r["msg_kind"] != "start", r["condition"]))
        return rows

    def record(self, conn: Any, rows: Sequence[dict[str, Any]], text: str, result: SendResult) -> None:
        """Write what happened to each claimed row (only if no newer message replaced it meanwhile),
        to alert_log, and to the channel state."""
        status = result.status
        why = explain(result)
        delay = 0.0
        with conn.transaction():
            for r in rows:
                key = {"d": r["daemon"], "c": r["condition"], "seq": r["msg_seq"], "kind": r["msg_kind"]}
                if status in (DELIVERED, AMBIGUOUS):
                    conn.execute(
                        """UPDATE alerts SET
                                  delivery = CASE WHEN msg_seq = %(seq)s AND delivery = 'sending'
                                                  THEN %(new)s ELSE delivery END,
                                  delivery_attempts = CASE WHEN msg_seq = %(seq)s THEN 0
                                                           ELSE delivery_attempts END,
                                  delivery_error = CASE WHEN msg_seq = %(seq)s THEN %(err)s
                                                        ELSE delivery_error END,
                                  notified_at = CASE WHEN %(kind)s = ANY(%(announcing)s) THEN now()
                                                     ELSE notified_at END,
                                  message = %(text)s, updated_at = now()
                            WHERE daemon = %(d)s AND condition = %(c)s""",
                        {
                            **key,
                            "new": "sent" if status == DELIVERED else "ambiguous",
                            "err": None if status == DELIVERED else why,
                            "announcing": list(ANNOUNCING_KINDS),
                            "text": text,
                        },
                    )
                else:
                    if status == RATE_LIMITED:
                        delay = max(self.rate_limit_s, result.retry_after or 0.0)
                    elif status == FAILED:
                        delay = self.retry_max_s  # resending cannot help until someone fixes it
                    else:
                        delay = self.policy.delay(int(r["delivery_attempts"]))
                    conn.execute(
                        """UPDATE alerts SET delivery = 'pending',
                                  next_delivery_at = now() + make_interval(secs => %(delay)s),
                                  delivery_error = %(err)s, updated_at = now()
                            WHERE daemon = %(d)s AND condition = %(c)s AND msg_seq = %(seq)s
                              AND delivery = 'sending'""",
                        {**key, "delay": delay, "err": why},
                    )
                conn.execute(
                    """INSERT INTO alert_log (daemon, condition, kind, message, status, detail)
                       VALUES (%s, %s, %s, %s, %s, %s)""",
                    (r["daemon"], r["condition"], r["msg_kind"], text, status, why),
                )
            if status == RATE_LIMITED:
                conn.execute(
                    """INSERT INTO alert_channel (channel, degraded_until, reason)
                       VALUES (%s, now() + make_interval(secs => %s), %s)
                       ON CONFLICT (channel) DO UPDATE SET degraded_until = excluded.degraded_until,
                              reason = excluded.reason, updated_at = now()""",
                    (CHANNEL, delay, why),
                )
            elif status == DELIVERED:
                conn.execute(
                    "UPDATE alert_channel SET degraded_until = NULL, reason = NULL, updated_at = now() "
                    "WHERE channel = %s AND degraded_until IS NOT NULL",
                    (CHANNEL,),
                )
        conditions = [f"{r['daemon']}/{r['condition']}" for r in rows]
        if self.metrics is not None:
            self.metrics.dependency("signal", status not in (UNREACHABLE,))
        if status == DELIVERED:
            self._set_degraded(False)
            if self.metrics is not None:
                for r in rows:
                    self.metrics.alert_sent(_METRIC_KIND.get(r["msg_kind"], r["msg_kind"]))
            log_event(log, "alert_delivered", conditions=conditions, gateway=result.gateway)
            return
        if status == AMBIGUOUS:
            log_event(log, "alert_delivery_ambiguous", level="warning", conditions=conditions, explain=why)
            return
        self._set_degraded(True)
        event = "signal_degraded" if status == RATE_LIMITED else "alert_delivery_failed"
        log_event(
            log,
            event,
            level="warning",
            conditions=conditions,
            status=status,
            retry_in_s=round(delay, 1),
            explain=why,
        )

    def reclaim_stale(self, conn: Any) -> int:
        """`sending` rows whose claim expired: the sender died mid-request. Ambiguous, not resent."""
        with conn.transaction():
            rows = conn.execute(
                """UPDATE alerts SET delivery = 'ambiguous', delivery_error = %s, updated_at = now(),
                          notified_at = CASE WHEN msg_kind = ANY(%s) THEN now() ELSE notified_at END
                    WHERE delivery = 'sending' AND next_delivery_at < now()
                RETURNING daemon, condition, msg_kind, coalesce(message, summary, condition)""",
                (STALE_SENDING, list(ANNOUNCING_KINDS)),
            ).fetchall()
            for d, c, kind, msg in rows:
                conn.execute(
                    """INSERT INTO alert_log (daemon, condition, kind, message, status, detail)
                       VALUES (%s, %s, %s, %s, 'ambiguous', %s)""",
                    (d, c, kind or "start", msg, STALE_SENDING),
                )
        for d, c, _, _ in rows:
            log_event(
                log,
                "alert_delivery_ambiguous",
                level="warning",
                conditions=[f"{d}/{c}"],
                explain=STALE_SENDING,
            )
        return len(rows)


def record_unit_failed(
    conn: Any, daemon: str, host: str, title: str, numbers: str, detail: str, hint: str
) -> None:
    """Queue the OnFailure message as the daemon's `unit_failed` alert (it resolves once the
    daemon runs again for alerts.resolve_minutes)."""
    conn.execute(
        """INSERT INTO alerts (daemon, condition, firing, since, severity, summary, last_value, detail, hint,
                               host, msg_kind, msg_seq, delivery, next_delivery_at, delivery_attempts)
           VALUES (%(d)s, 'unit_failed', true, now(), 'fail', %(t)s, %(n)s, %(det)s, %(h)s, %(host)s,
                   'unit_failed', 1, 'pending', now(), 0)
           ON CONFLICT (daemon, condition) DO UPDATE SET
               firing = true, since = CASE WHEN alerts.firing THEN alerts.since ELSE now() END,
               resolved_at = NULL, clear_since = NULL, active_since = NULL, severity = 'fail',
               summary = excluded.summary, last_value = excluded.last_value, detail = excluded.detail,
               hint = excluded.hint, host = excluded.host, msg_kind = 'unit_failed',
               msg_seq = alerts.msg_seq + 1, delivery = 'pending', next_delivery_at = now(),
               delivery_attempts = 0, delivery_error = NULL, updated_at = now()""",
        {"d": daemon, "t": title, "n": numbers, "det": detail or None, "h": hint or None, "host": host},
    )


# ---------------------------------------------------------------------------------------- database down


def default_latch_path(cfg: Config) -> Path | None:
    """Where the daemons of this host share the database alert: systemd's StateDirectory
    (jobpipe@.service sets StateDirectory=jobpipe), else next to the embedded database."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state and os.path.isdir(state):
        return Path(state) / "alert-database.json"
    parent = embedded.resolve_data_dir(cfg.database.data_dir).parent
    if parent.is_dir() and os.access(parent, os.W_OK):
        return parent / "alert-database.json"
    return None


class Latch:
    """A small JSON state under an exclusive flock, shared by the processes of one host.
    Without a usable path it is kept in memory (this process only)."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path else None
        self._memory: dict[str, Any] = {}

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        fd = None
        if self.path is not None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                log_event(log, "alert_latch_unusable", level="warning", path=str(self.path), error=str(exc))
                self.path = None
        if fd is None:
            state = dict(self._memory)
            yield state
            self._memory = state
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 1 << 16)
            try:
                state = json.loads(raw.decode()) if raw.strip() else {}
            except (ValueError, UnicodeDecodeError):
                state = {}  # a torn or foreign file: start over rather than fail
            if not isinstance(state, dict):
                state = {}
            before = json.dumps(state, sort_keys=True)
            yield state
            after = json.dumps(state, sort_keys=True)
            if after != before:
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, after.encode())
        finally:
            os.close(fd)  # closing releases the flock


class DatabaseWatch:
    """The alert for a database this process cannot reach, kept outside the database.

    `down()` is called on every failed connection attempt, `up()` on every good turn. After
    `hold_s` of failures one process per host sends the message (the latch says whether it is
    out); once the database answers again, one process sends "resolved". What happened is
    written to alert_log when the database is back.
    """

    def __init__(
        self,
        daemon: str,
        host: str,
        gateway: Any,
        hold_s: float,
        latch: Latch,
        *,
        retry_base_s: float = 30.0,
        retry_max_s: float = 1800.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.daemon = daemon
        self.host = host
        self.gateway = gateway
        self.hold_s = hold_s
        self.latch = latch
        self.policy = RetryPolicy(1 << 30, retry_base_s, retry_max_s)
        self.clock = clock
        self.down_since: float | None = None
        self.down_since_wall: float | None = None
        self.error = ""
        self.next_try = 0.0
        self.attempts = 0
        self.firing = False
        self.log_rows: list[tuple[str, str, str, str]] = []  # (kind, message, status, detail)

    def down(self, error: str) -> None:
        now = self.clock()
        if self.down_since is None:
            self.down_since, self.down_since_wall = now, time.time()
            log_event(log, "alert_database_unreachable", level="warning", error=error)
        self.error = error
        if self.gateway is None or now - self.down_since < self.hold_s or now < self.next_try:
            return
        with self.latch.locked() as state:
            if state.get("firing"):
                self.firing = True  # announced already, by a sibling or by us before a restart
                return
            since = self.down_since_wall or time.time()
            text = "\n".join(
                [
                    f"{self.host} {self.daemon}: FIRING database unreachable "
                    f"(since {datetime.fromtimestamp(since).astimezone().strftime('%H:%M %Z')})",
                    f"no connection for {int((now - self.down_since) // 60)} min: {self.error[:200]}",
                    "Run: jobpipe db status; systemctl status postgresql; "
                    f"journalctl -u jobpipe@{self.daemon} --since -1h",
                ]
            )
            result = safe_send(self.gateway, text)
            self._after(result, text, "start")
            if result.status in (DELIVERED, AMBIGUOUS):
                state.update(firing=True, since=since, host=self.host, by=self.daemon)
                self.firing = True

    def up(self, conn: Any) -> None:
        now = self.clock()
        was_down = self.down_since
        self.down_since = self.down_since_wall = None
        if was_down is not None:
            log_event(log, "alert_database_reachable")
        if self.gateway is not None and now >= self.next_try and (self.firing or self._latched()):
            with self.latch.locked() as state:
                if state.get("firing"):
                    since = datetime.fromtimestamp(state.get("since") or time.time()).astimezone()
                    text = (
                        f"{self.host} {self.daemon}: RESOLVED database unreachable (was down since "
                        f"{since.strftime('%H:%M %Z')})\nthe database answers again.\nRun: jobpipe health"
                    )
                    result = safe_send(self.gateway, text)
                    self._after(result, text, "resolved")
                    if result.status not in (DELIVERED, AMBIGUOUS, FAILED):
                        return  # retried on a later turn
                    state.clear()
                self.firing = False
        self._flush(conn)

    def _latched(self) -> bool:
        if self.latch.path is None or not self.latch.path.exists():
            return bool(self.latch._memory.get("firing"))
        with self.latch.locked() as state:
            return bool(state.get("firing"))

    def _after(self, result: SendResult, text: str, kind: str) -> None:
        self.log_rows.append((kind, text, result.status, explain(result)))
        del self.log_rows[:-20]
        if result.status in (DELIVERED, AMBIGUOUS):
            self.attempts = 0
            self.next_try = 0.0
            log_event(
                log,
                "alert_delivered" if result.ok else "alert_delivery_ambiguous",
                conditions=[f"{self.daemon}/dependency:database"],
                kind=kind,
                explain=explain(result),
            )
            return
        self.attempts += 1
        delay = self.policy.delay(self.attempts)
        self.next_try = self.clock() + delay
        log_event(
            log,
            "alert_delivery_failed",
            level="warning",
            conditions=[f"{self.daemon}/dependency:database"],
            status=result.status,
            retry_in_s=round(delay, 1),
            explain=explain(result),
        )

    def _flush(self, conn: Any) -> None:
        if not self.log_rows:
            return
        rows, self.log_rows = self.log_rows, []
        with conn.transaction():
            for kind, text, status, detail in rows:
                conn.execute(
                    """INSERT INTO alert_log (daemon, condition, kind, message, status, detail)
                       VALUES (%s, 'dependency:database', %s, %s, %s, %s)""",
                    (self.daemon, kind, text, status, detail),
                )
