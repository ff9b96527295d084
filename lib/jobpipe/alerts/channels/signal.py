"""Delivering alert messages through a self-hosted Signal gateway (see docs/contracts/signal.md).

Two gateways are supported: signal-cli-rest-api (`POST /v2/send`) and signal-cli's JSON-RPC HTTP
daemon (`POST /api/v1/rpc`). Both answer in their own way; this module turns every answer, and
every way a request can go wrong, into one `SendResult` whose `status` tells the caller what to do:

- ``delivered``: done.
- ``failed``: permanent for this message (unregistered number, untrusted identity, bad request):
  resending the same message will fail the same way until an operator acts.
- ``rate_limited``: Signal rate-limits the sender or wants a captcha: back off for hours.
- ``ambiguous``: timeout, 5xx, "process killed as timeout reached": the message MAY have been
  delivered, so the caller must not blindly resend it.
- ``unreachable``: nothing was sent (connection refused, DNS, gateway down): safe to retry.

`send()` and `check()` never raise on a gateway problem (only constructors raise ConfigError on
bad settings, and `send()` ValueError on an empty message), and nothing here logs. Phone numbers,
group ids and challenge tokens never appear in `detail` or in `explain()`'s text (numbers are cut
to ``+49…678``).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from jobpipe.errors import ConfigError
from jobpipe.httpio import BodyLimitExceeded, read_body
from jobpipe.logs import redact as redact_credentials
from jobpipe.text import clean_text

Status = Literal["delivered", "failed", "rate_limited", "ambiguous", "unreachable"]
DELIVERED: Status = "delivered"
FAILED: Status = "failed"
RATE_LIMITED: Status = "rate_limited"
AMBIGUOUS: Status = "ambiguous"
UNREACHABLE: Status = "unreachable"

CheckStatus = Literal["ok", "failed", "unreachable"]
GatewayKind = Literal["signal-rest", "signal-jsonrpc"]
KINDS: tuple[str, ...] = ("signal-rest", "signal-jsonrpc")

# Alerts are a few lines; signal-cli turns anything over 2,000 bytes into a long-text attachment
# by itself, so this cap only guards against a runaway caller.
MAX_MESSAGE_CHARS = 4000
# A gateway answer bigger than this is not a Signal gateway answer; reading on would only cost memory.
MAX_RESPONSE_BYTES = 1 << 20
# Gateway error texts go into `detail` (logs, the CLI): one short line is enough.
MAX_DETAIL_CHARS = 300

# When several outcomes combine (numbers and group sent separately, several recipients), the one
# that demands the most caution wins: a rate limit must back off even if another part only failed,
# and a possible delivery must not be resent just because another part is retryable.
_SEVERITY: dict[str, int] = {DELIVERED: 0, FAILED: 1, UNREACHABLE: 2, AMBIGUOUS: 3, RATE_LIMITED: 4}

# JSON-RPC per-recipient result types other than SUCCESS.
_RESULT_TYPES: dict[str, tuple[Status, str]] = {
    "RATE_LIMIT_FAILURE": (RATE_LIMITED, "rate_limit"),
    "UNREGISTERED_FAILURE": (FAILED, "recipient_unregistered"),
    "IDENTITY_FAILURE": (FAILED, "untrusted_identity"),
    "NETWORK_FAILURE": (UNREACHABLE, "network_failure"),
}

CAPTCHA_URL = "https://signalcaptchas.org/challenge/generate.html"

_PHONE = re.compile(r"\+\d[\d \-]{4,}\d")
# signal-cli sometimes prints numbers without "+"; 9+ digit runs in gateway text are treated as numbers.
_BARE_DIGITS = re.compile(r"(?<![\w.])\d{9,}(?![\w.])")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_GROUP = re.compile(r"group\.[A-Za-z0-9+/=_\-]{4,}")
_CHALLENGE = re.compile(r'(challenge[ _]tokens?["\s:=\[]*)([A-Za-z0-9+/=_\-]{6,})', re.IGNORECASE)
_WAIT_SECONDS = re.compile(r'wait\s+"?(\d+)"?\s*seconds', re.IGNORECASE)
_WS = re.compile(r"\s+")


def redact_number(value: str) -> str:
    """`+4915112345678` -> `+49…678`; anything else (uuid, username) -> `…` + its last 3 characters."""
    value = value.strip()
    digits = re.sub(r"\D", "", value)
    if value.startswith("+") and len(digits) >= 5:
        return f"+{digits[:2]}…{digits[-3:]}"
    if value.startswith("group."):
        return "group.…"
    if len(value) <= 3:
        return "…"
    return "…" + value[-3:]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove URL credentials and other secrets (jobpipe.logs.redact), phone numbers, uuids, group
    ids and challenge tokens from free text.

    `secrets` are exact strings known to be sensitive (the configured sender, recipients, group id):
    they are replaced wherever they appear, whatever format the regexes would miss.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, redact_number(secret))
    text = redact_credentials(text)
    text = _CHALLENGE.sub(lambda m: m.group(1) + "<redacted>", text)
    text = _GROUP.sub("group.…", text)
    text = _UUID.sub(lambda m: "…" + m.group(0)[-3:], text)
    text = _PHONE.sub(lambda m: redact_number(m.group(0)), text)
    return _BARE_DIGITS.sub(lambda m: "…" + m.group(0)[-3:], text)


def rest_group_id(group_id: str) -> str:
    """signal-cli-rest-api's group id (`group.` + base64 of signal-cli's id) from either form."""
    return (
        group_id if group_id.startswith("group.") else "group." + base64.b64encode(group_id.encode()).decode()
    )


def internal_group_id(group_id: str) -> str:
    """signal-cli's own group id (what JSON-RPC `groupId` wants) from either form.

    signal-cli-rest-api shows `group.<base64 of the internal id>`; operators copy whichever their
    tool printed, so both are accepted.
    """
    if not group_id.startswith("group."):
        return group_id
    try:
        return base64.b64decode(group_id[len("group.") :], validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError("alerts.group_id: not a valid group.<base64> id") from exc


@dataclass(frozen=True)
class SendResult:
    """The outcome of one `send()`; safe to log (no numbers, no tokens)."""

    status: Status
    detail: str
    timestamp: str | None = None  # Signal's message timestamp (ms since epoch) when the gateway gave one
    failed_recipients: tuple[str, ...] = ()  # redacted
    kind: str = "ok"  # machine label: connection_refused, timeout, captcha, sender_unregistered, ...
    gateway: str = ""  # "signal-rest at http://127.0.0.1:8080" (no credentials)
    http_status: int | None = None
    retry_after: float | None = None  # seconds Signal asked to wait, when it said so
    # The rate-limit challenge token an operator needs for `submitRateLimitChallenge`; kept out of repr
    # and detail so it does not end up in logs by accident.
    challenge_token: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == DELIVERED

    @property
    def may_resend(self) -> bool:
        """True when sending the same message again cannot duplicate it (nothing went out)."""
        return self.status == UNREACHABLE


@dataclass(frozen=True)
class CheckResult:
    """The outcome of `check()`: is the gateway there and of the configured kind?"""

    status: CheckStatus
    detail: str
    kind: str = "ok"
    gateway: str = ""
    http_status: int | None = None
    mode: str | None = None  # signal-cli-rest-api's mode (normal, native, json-rpc)
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SignalGateway(Protocol):
    kind: str
    url: str

    def send(self, message: str) -> SendResult: ...

    def check(self) -> CheckResult: ...

    def close(self) -> None: ...


@dataclass
class _Http:
    """What came back from one HTTP request, or how it failed before an answer."""

    status: int | None = None
    body: bytes = b""
    content_type: str = ""
    error_status: Status | None = None  # set when no complete answer arrived
    error_kind: str = ""
    error_text: str = ""


class _GatewayBase:
    kind: str = ""

    def __init__(
        self,
        url: str,
        recipients: list[str] | None,
        group_id: str | None,
        session: requests.Session | None,
        timeout: float,
        secrets: Iterable[str],
    ) -> None:
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"alerts.gateway_url: {redact_credentials(url or '')!r} is not an http(s) URL")
        if not timeout or timeout <= 0:
            raise ConfigError("alerts.timeout_s: must be > 0")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            # The gateway is a local service: an HTTP(S)_PROXY meant for the internet must not catch it.
            session.trust_env = False
        self.session = session
        numbers: list[str] = []
        group = (group_id or "").strip() or None
        for raw in recipients or []:
            r = (raw or "").strip()
            if not r:
                continue
            if r.startswith("group."):  # a group pasted into the recipients list
                if group and group != r:
                    raise ConfigError("alerts.recipients: only one Signal group per alert channel")
                group = r
                continue
            if r.startswith("+") and not re.fullmatch(r"\+\d{6,15}", r):
                raise ConfigError(
                    f"alerts.recipients: {redact_number(r)} is not a number in +<country><number> form"
                )
            if any(c.isspace() for c in r):
                raise ConfigError(f"alerts.recipients: {redact_number(r)} contains whitespace")
            numbers.append(r)
        if not numbers and not group:
            raise ConfigError("alerts.recipients / alerts.group_id: no recipient configured")
        self.recipients: list[str] = numbers
        self.group_id: str | None = group
        self._secrets = {*numbers, *(s for s in secrets if s)}
        if group:
            self._secrets |= {group, rest_group_id(group)}
            if group.startswith("group."):
                try:
                    self._secrets.add(internal_group_id(group))
                except ConfigError:
                    pass

    # -- plumbing shared by both gateways -------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{self.kind} at {redact_credentials(self.url)}"

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> _GatewayBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _gateway_text(self, value: object) -> str:
        """A gateway-supplied text made safe for `detail`: cleaned, one line, redacted, cut."""
        text = clean_text(value if isinstance(value, str | bytes) else json.dumps(value)) or ""
        text = _WS.sub(" ", self._redact(text)).strip()
        return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"

    def _request(self, method: str, path: str, payload: Any = None, sent: bool = True) -> _Http:
        """One HTTP exchange; network failures are classified, never raised.

        `sent` says whether a lost answer means the request may have taken effect (a send) or not
        (a health check), i.e. whether a read timeout is `ambiguous` or `unreachable`.
        """
        lost: Status = AMBIGUOUS if sent else UNREACHABLE
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + self.timeout * 2  # guards against a gateway trickling bytes
        try:
            resp = self.session.request(
                method,
                self.url + path,
                data=data,
                headers=headers,
                timeout=(self.timeout, self.timeout),
                stream=True,
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout:
            return _Http(
                error_status=UNREACHABLE, error_kind="connect_timeout", error_text="connect timed out"
            )
        except requests.exceptions.ReadTimeout:
            return _Http(
                error_status=lost, error_kind="timeout", error_text=f"no answer within {self.timeout:g} s"
            )
        except requests.exceptions.SSLError as exc:
            return _Http(error_status=UNREACHABLE, error_kind="tls", error_text=self._gateway_text(str(exc)))
        except requests.exceptions.ConnectionError as exc:
            return self._connection_error(exc, lost)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
            return _Http(error_status=FAILED, error_kind="bad_url", error_text=self._gateway_text(str(exc)))
        except requests.exceptions.RequestException as exc:
            return _Http(error_status=lost, error_kind="http_error", error_text=self._gateway_text(str(exc)))
        try:
            body = read_body(resp, max_bytes=MAX_RESPONSE_BYTES, deadline=deadline)
            return _Http(
                status=resp.status_code, body=body, content_type=resp.headers.get("Content-Type", "")
            )
        except BodyLimitExceeded as exc:
            too_large = exc.kind == "too_large"
            return _Http(
                status=resp.status_code,
                error_status=lost,
                error_kind="malformed_response" if too_large else "timeout",
                error_text=f"answer larger than {MAX_RESPONSE_BYTES} bytes"
                if too_large
                else "answer did not complete in time",
            )
        except requests.exceptions.RequestException as exc:
            # Headers arrived, the body broke off: the gateway did act on the request.
            cause = exc.args[0] if exc.args else None
            timed_out = isinstance(exc, requests.exceptions.Timeout) or isinstance(
                cause, urllib3.exceptions.ReadTimeoutError
            )
            kind = "timeout" if timed_out else "malformed_response"
            return _Http(
                status=resp.status_code,
                error_status=lost,
                error_kind=kind,
                error_text="answer broke off: " + self._gateway_text(str(exc)),
            )
        finally:
            resp.close()

    def _connection_error(self, exc: requests.exceptions.ConnectionError, lost: Status) -> _Http:
        reason = getattr(exc.args[0] if exc.args else None, "reason", None)
        if isinstance(reason, urllib3.exceptions.NameResolutionError):
            return _Http(error_status=UNREACHABLE, error_kind="dns", error_text="host name does not resolve")
        if isinstance(reason, urllib3.exceptions.NewConnectionError):
            return _Http(
                error_status=UNREACHABLE, error_kind="connection_refused", error_text="connection refused"
            )
        if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
            return _Http(
                error_status=UNREACHABLE, error_kind="connect_timeout", error_text="connect timed out"
            )
        if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
            return _Http(
                error_status=lost, error_kind="timeout", error_text=f"no answer within {self.timeout:g} s"
            )
        # The connection was up and broke after the request went out: it may have been acted on.
        return _Http(
            error_status=lost,
            error_kind="connection_lost",
            error_text="connection lost before the answer: " + self._gateway_text(str(exc)),
        )

    def _result(self, status: Status, kind: str, detail: str, **kw: Any) -> SendResult:
        return SendResult(status=status, kind=kind, detail=detail, gateway=self.label, **kw)

    def _transport_result(self, http: _Http) -> SendResult:
        return self._result(
            http.error_status or AMBIGUOUS, http.error_kind, http.error_text, http_status=http.status
        )

    def _check_result(self, status: CheckStatus, kind: str, detail: str, **kw: Any) -> CheckResult:
        return CheckResult(status=status, kind=kind, detail=detail, gateway=self.label, **kw)

    def _check_transport(self, http: _Http) -> CheckResult:
        status: CheckStatus = "failed" if http.error_status == FAILED else "unreachable"
        return self._check_result(status, http.error_kind, http.error_text, http_status=http.status)

    def _prepare(self, message: str) -> str:
        text = clean_text(message)
        if not text or not text.strip():
            raise ValueError("an alert message must not be empty")
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[: MAX_MESSAGE_CHARS - 1] + "…"
        return text

    def _http_status_result(self, http: _Http, path: str, other_kind: str) -> SendResult:
        """Statuses that mean the same on both gateways (not the gateway's own error forms)."""
        code = http.status or 0
        text = self._gateway_text(http.body[:2000]) if http.body else ""
        suffix = f": {text}" if text else ""
        if code >= 500:
            return self._result(
                AMBIGUOUS, "http_5xx", f"gateway answered HTTP {code}{suffix}", http_status=code
            )
        if code == 404:
            return self._result(
                FAILED,
                "wrong_endpoint",
                f"{path} not found (HTTP 404): is this a {self.kind} gateway? (try {other_kind})",
                http_status=code,
            )
        if code in (401, 403):
            return self._result(
                FAILED, "forbidden", f"gateway answered HTTP {code}{suffix}", http_status=code
            )
        if 400 <= code < 500:
            return self._result(
                FAILED, "bad_request", f"gateway answered HTTP {code}{suffix}", http_status=code
            )
        return self._result(
            AMBIGUOUS, "unexpected_status", f"gateway answered HTTP {code}{suffix}", http_status=code
        )

    def _classify_text(self, text: str) -> tuple[Status, str]:
        """Map a signal-cli / gateway error text to (status, kind). Order matters: the most
        cautious reading wins when a text mentions several things."""
        low = text.lower()
        if "captcha" in low or "proof required" in low or "proofrequired" in low:
            return RATE_LIMITED, "captcha"
        if (
            "rate limit" in low
            or "ratelimit" in low
            or "rate-limit" in low
            or "[413]" in low
            or "[429]" in low
        ):
            return RATE_LIMITED, "rate_limit"
        if "killed as timeout" in low or "timeout" in low or "timed out" in low:
            return AMBIGUOUS, "gateway_timeout"
        if "unregistered user" in low or "unregistered_failure" in low:
            return FAILED, "recipient_unregistered"
        if (
            "not registered" in low
            or "account does not exist" in low
            or "invalid account" in low
            or "no such account" in low
            or "unknown account" in low
        ):
            return FAILED, "sender_unregistered"
        if "untrusted" in low or "identity_failure" in low:
            return FAILED, "untrusted_identity"
        if "network failure" in low or "network_failure" in low:
            return UNREACHABLE, "network_failure"
        if "group" in low and (
            "not found" in low or "invalid" in low or "unknown" in low or "not a member" in low
        ):
            return FAILED, "unknown_group"
        return FAILED, "bad_request"

    def _rate_limit_extras(self, text: str, tokens: Iterable[Any] = ()) -> dict[str, Any]:
        extras: dict[str, Any] = {}
        m = _WAIT_SECONDS.search(text)
        if m:
            extras["retry_after"] = float(m.group(1))
        token = next((t for t in tokens if isinstance(t, str) and t), None)
        if token is None:
            m2 = _CHALLENGE.search(text)
            token = m2.group(2) if m2 else None
        if token:
            extras["challenge_token"] = token
        return extras


def _combine(parts: list[tuple[str, SendResult]]) -> SendResult:
    """One result for the separate calls of one message (numbers and the group go separately).

    The most cautious status wins (see _SEVERITY); the detail names each part ("numbers: …;
    group: …") so a partial delivery is visible.
    """
    if len(parts) == 1:
        return parts[0][1]
    results = [r for _, r in parts]
    worst = max(results, key=lambda r: _SEVERITY[r.status])
    return SendResult(
        status=worst.status,
        detail="; ".join(f"{label}: {r.detail}" for label, r in parts),
        timestamp=next((r.timestamp for r in results if r.timestamp), None),
        failed_recipients=tuple(itertools.chain.from_iterable(r.failed_recipients for r in results)),
        kind=worst.kind,
        gateway=worst.gateway,
        http_status=worst.http_status,
        retry_after=max((r.retry_after for r in results if r.retry_after is not None), default=None),
        challenge_token=next((r.challenge_token for r in results if r.challenge_token), None),
    )


class RestGateway(_GatewayBase):
    """signal-cli-rest-api: `POST /v2/send`, `GET /v1/health`, `GET /v1/about`."""

    kind = "signal-rest"

    def __init__(
        self,
        url: str,
        sender: str,
        recipients: list[str] | None = None,
        group_id: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 10.0,
    ) -> None:
        sender = (sender or "").strip()
        if not re.fullmatch(r"\+\d{6,15}", sender):
            raise ConfigError("alerts.sender: needs the registered sender number in +<country><number> form")
        super().__init__(url, recipients, group_id, session, timeout, [sender])
        self.sender = sender

    def _payloads(self, message: str) -> list[tuple[str, list[str], dict[str, Any]]]:
        # Contract: numbers and a group cannot share one call, and one group per call.
        calls: list[tuple[str, list[str], dict[str, Any]]] = []
        base = {"number": self.sender, "message": message, "text_mode": "normal"}
        if self.recipients:
            calls.append(("numbers", self.recipients, {**base, "recipients": list(self.recipients)}))
        if self.group_id:
            gid = rest_group_id(self.group_id)
            calls.append(("group", [gid], {**base, "recipients": [gid]}))
        return calls

    def send(self, message: str) -> SendResult:
        text = self._prepare(message)
        return _combine([(label, self._send_one(t, p)) for label, t, p in self._payloads(text)])

    def _send_one(self, targets: list[str], payload: dict[str, Any]) -> SendResult:
        http = self._request("POST", "/v2/send", payload)
        if http.error_status:
            return self._transport_result(http)
        code = http.status or 0
        body = _parse_json(http.body)
        if code in (200, 201):
            return self._success(code, body, targets)
        if code == 429 or (code == 400 and isinstance(body, dict) and "error" in body):
            raw = body.get("error") if isinstance(body, dict) else None
            raw_text = clean_text(raw if isinstance(raw, str) else json.dumps(raw)) or ""
            text = self._gateway_text(raw_text)
            if code == 429:
                tokens = body.get("challenge_tokens") if isinstance(body, dict) else None
                extras = self._rate_limit_extras(raw_text, tokens if isinstance(tokens, list) else ())
                kind = "captcha" if extras.get("challenge_token") else "rate_limit"
                return self._result(
                    RATE_LIMITED,
                    kind,
                    f"rate limited by Signal (HTTP 429): {text}",
                    http_status=code,
                    **extras,
                )
            status, kind = self._classify_text(raw_text)
            extras = self._rate_limit_extras(raw_text) if status == RATE_LIMITED else {}
            failed = (
                tuple(redact_number(t) for t in targets)
                if kind in ("recipient_unregistered", "untrusted_identity")
                else ()
            )
            return self._result(
                status,
                kind,
                f"gateway answered 400: {text}",
                http_status=code,
                failed_recipients=self._failed_from_text(raw_text, targets) or failed,
                **extras,
            )
        return self._http_status_result(http, "/v2/send", "signal-jsonrpc")

    def _failed_from_text(self, text: str, targets: list[str]) -> tuple[str, ...]:
        """Recipients named in a signal-cli error text (`Unregistered user "+49…"`), redacted."""
        return tuple(redact_number(t) for t in targets if t in text)

    def _success(self, code: int, body: Any, targets: list[str]) -> SendResult:
        if isinstance(body, dict) and isinstance(body.get("timestamp"), str | int):
            return self._result(
                DELIVERED,
                "ok",
                f"delivered (HTTP {code})",
                timestamp=str(body["timestamp"]),
                http_status=code,
            )
        if isinstance(body, list) and body and all(isinstance(x, dict) for x in body):
            # Newer builds: [{"timestamp": "...", "errors": {"recipients": [{"number", "reason"}]}}]
            timestamp = next(
                (str(x["timestamp"]) for x in body if isinstance(x.get("timestamp"), str | int)), None
            )
            failures: list[tuple[str, str]] = []
            for entry in body:
                errors = entry.get("errors")
                recips = errors.get("recipients") if isinstance(errors, dict) else None
                for item in recips if isinstance(recips, list) else []:
                    if isinstance(item, dict):
                        failures.append(
                            (
                                str(item.get("number") or item.get("recipient") or "?"),
                                str(item.get("reason") or item.get("error") or "failed"),
                            )
                        )
                    else:
                        failures.append((str(item), "failed"))
            if timestamp is None and not failures:
                return self._malformed(code, "array answer without timestamp")
            if not failures:
                return self._result(
                    DELIVERED, "ok", f"delivered (HTTP {code})", timestamp=timestamp, http_status=code
                )
            return self._recipient_failures(code, failures, len(targets), timestamp)
        return self._malformed(code, "success status but no timestamp in the answer")

    def _recipient_failures(
        self, code: int, failures: list[tuple[str, str]], n_targets: int, timestamp: str | None
    ) -> SendResult:
        worst: tuple[Status, str] = (FAILED, "recipient_failed")
        extras: dict[str, Any] = {}
        for _, reason in failures:
            status, kind = self._classify_text(reason)
            if kind == "bad_request":
                kind = "recipient_failed"
            if _SEVERITY[status] > _SEVERITY[worst[0]] or worst[1] == "recipient_failed":
                worst = (status, kind)
            if status == RATE_LIMITED:
                extras = self._rate_limit_extras(reason)
        redacted = tuple(redact_number(n) for n, _ in failures)
        reasons = "; ".join(f"{redact_number(n)}: {self._gateway_text(r)}" for n, r in failures)
        delivered = max(n_targets - len(failures), 0)
        return self._result(
            worst[0],
            worst[1],
            f"delivered to {delivered} of {n_targets}; failed {reasons}",
            timestamp=timestamp,
            failed_recipients=redacted,
            http_status=code,
            **extras,
        )

    def _malformed(self, code: int, what: str) -> SendResult:
        # The gateway said "sent" but we cannot read to whom: assume it may have gone out.
        return self._result(AMBIGUOUS, "malformed_response", f"HTTP {code}, {what}", http_status=code)

    def check(self) -> CheckResult:
        http = self._request("GET", "/v1/health", sent=False)
        if http.error_status:
            return self._check_transport(http)
        if http.status == 404:
            return self._check_result(
                "failed",
                "wrong_endpoint",
                "/v1/health not found (HTTP 404): not a signal-cli-rest-api? (try signal-jsonrpc)",
                http_status=404,
            )
        if http.status not in (200, 204):
            status: CheckStatus = "unreachable" if (http.status or 0) >= 500 else "failed"
            return self._check_result(
                status, "unhealthy", f"/v1/health answered HTTP {http.status}", http_status=http.status
            )
        about = self._request("GET", "/v1/about", sent=False)
        if about.error_status:
            return self._check_transport(about)
        info = _parse_json(about.body) if about.status == 200 else None
        if not isinstance(info, dict):
            return self._check_result(
                "failed",
                "malformed_response",
                f"/v1/about answered HTTP {about.status} without a JSON object",
                http_status=about.status,
            )
        versions = got if isinstance(got := info.get("versions"), list) else []
        mode = got if isinstance(got := info.get("mode"), str) else None
        version = got if isinstance(got := info.get("version"), str | int) else None
        mode_s = self._gateway_text(mode) if mode else None
        version_s = self._gateway_text(str(version)) if version is not None else None
        if "v2" not in versions:
            return self._check_result(
                "failed",
                "unsupported_version",
                "gateway does not offer API v2 (/v2/send): upgrade signal-cli-rest-api",
                mode=mode_s,
                version=version_s,
                http_status=200,
            )
        return self._check_result(
            "ok",
            "ok",
            f"healthy, mode {mode_s or '?'}, version {version_s or '?'}",
            mode=mode_s,
            version=version_s,
            http_status=200,
        )


class JsonRpcGateway(_GatewayBase):
    """signal-cli's JSON-RPC daemon over HTTP: `POST /api/v1/rpc`, `GET /api/v1/check`."""

    kind = "signal-jsonrpc"

    def __init__(
        self,
        url: str,
        account: str | None = None,
        recipients: list[str] | None = None,
        group_id: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 10.0,
    ) -> None:
        account = (account or "").strip() or None
        if account is not None and not re.fullmatch(r"\+\d{6,15}", account):
            raise ConfigError("alerts.sender: needs the account number in +<country><number> form")
        super().__init__(url, recipients, group_id, session, timeout, [account or ""])
        self.account = account
        self._ids = itertools.count(1)
        if self.group_id:
            self._internal_group = internal_group_id(self.group_id)
            self._secrets.add(self._internal_group)

    def send(self, message: str) -> SendResult:
        text = self._prepare(message)
        calls: list[tuple[str, list[str], dict[str, Any]]] = []
        base: dict[str, Any] = {"message": text}
        if self.account:
            base["account"] = self.account
        if self.recipients:
            calls.append(("numbers", self.recipients, {"recipient": list(self.recipients), **base}))
        if self.group_id:
            calls.append(("group", [self.group_id], {"groupId": self._internal_group, **base}))
        return _combine([(label, self._send_one(t, p)) for label, t, p in calls])

    def _send_one(self, targets: list[str], params: dict[str, Any]) -> SendResult:
        req_id = next(self._ids)
        http = self._request(
            "POST", "/api/v1/rpc", {"jsonrpc": "2.0", "method": "send", "params": params, "id": req_id}
        )
        if http.error_status:
            return self._transport_result(http)
        if http.status != 200:
            if http.status == 415:
                return self._result(
                    FAILED,
                    "bad_request",
                    "gateway refused the request's content type (HTTP 415)",
                    http_status=415,
                )
            return self._http_status_result(http, "/api/v1/rpc", "signal-rest")
        body = _parse_json(http.body)
        if not isinstance(body, dict) or body.get("id") not in (req_id, None):
            return self._result(
                AMBIGUOUS,
                "malformed_response",
                "HTTP 200 without a JSON-RPC answer to our call",
                http_status=200,
            )
        if isinstance(body.get("error"), dict):
            return self._error(body["error"])
        result = body.get("result")
        if not isinstance(result, dict):
            return self._result(
                AMBIGUOUS, "malformed_response", "JSON-RPC answer without result or error", http_status=200
            )
        ts = result.get("timestamp")
        timestamp = str(ts) if isinstance(ts, int | str) and not isinstance(ts, bool) else None
        results = got if isinstance(got := result.get("results"), list) else []
        failures: list[tuple[str, Status, str, str]] = []
        token: str | None = None
        for r in results:
            if not isinstance(r, dict):
                continue
            rtype = str(r.get("type") or "")
            if rtype == "SUCCESS":
                continue
            status, kind = _RESULT_TYPES.get(rtype, (FAILED, "recipient_failed"))
            addr = got if isinstance(got := r.get("recipientAddress"), dict) else {}
            who = str(addr.get("number") or addr.get("uuid") or "?")
            if rtype == "RATE_LIMIT_FAILURE" and isinstance(r.get("token"), str):
                token = r["token"]
                kind = "captcha"
            failures.append((who, status, kind, rtype or "?"))
        if timestamp is None and not failures:
            return self._result(
                AMBIGUOUS, "malformed_response", "JSON-RPC result without timestamp", http_status=200
            )
        if not failures:
            return self._result(DELIVERED, "ok", "delivered", timestamp=timestamp, http_status=200)
        status, kind = max(((s, k) for _, s, k, _ in failures), key=lambda sk: _SEVERITY[sk[0]])
        reasons = "; ".join(f"{redact_number(w)}: {t}" for w, _, _, t in failures)
        n_ok = max(len(results) - len(failures), 0)
        return self._result(
            status,
            kind,
            f"delivered to {n_ok} of {len(results)}; failed {reasons}",
            timestamp=timestamp,
            failed_recipients=tuple(redact_number(w) for w, *_ in failures),
            http_status=200,
            challenge_token=token,
        )

    def _error(self, error: dict[str, Any]) -> SendResult:
        code = error.get("code")
        raw = clean_text(error.get("message") if isinstance(error.get("message"), str) else "") or ""
        text = self._gateway_text(raw) or "(no message)"
        data = got if isinstance(got := error.get("data"), dict) else {}
        response = got if isinstance(got := data.get("response"), dict) else {}
        results = got if isinstance(got := response.get("results"), list) else []
        tokens = [r.get("token") for r in results if isinstance(r, dict)]
        failed = tuple(
            redact_number(str((r.get("recipientAddress") or {}).get("number") or "?"))
            for r in results
            if isinstance(r, dict)
            and r.get("type") not in (None, "SUCCESS")
            and isinstance(r.get("recipientAddress") or {}, dict)
        )
        where = f"JSON-RPC error {code}: {text}"
        if code == -5:
            extras = self._rate_limit_extras(raw, tokens)
            kind = "captcha" if extras.get("challenge_token") or "captcha" in raw.lower() else "rate_limit"
            return self._result(
                RATE_LIMITED, kind, where, failed_recipients=failed, http_status=200, **extras
            )
        if code == -4:
            return self._result(
                FAILED, "untrusted_identity", where, failed_recipients=failed, http_status=200
            )
        if code == -3:
            return self._result(AMBIGUOUS, "io_error", where, failed_recipients=failed, http_status=200)
        if code == -1:
            status, kind = self._classify_text(raw)
            extras = self._rate_limit_extras(raw, tokens) if status == RATE_LIMITED else {}
            return self._result(status, kind, where, failed_recipients=failed, http_status=200, **extras)
        if code in (-32700, -32600, -32601, -32602):
            # Rejected before anything ran: the request itself is wrong.
            return self._result(FAILED, "bad_request", where, http_status=200)
        # -32603 internal error, -2 and unknown codes: something broke while sending.
        return self._result(AMBIGUOUS, "gateway_error", where, failed_recipients=failed, http_status=200)

    def check(self) -> CheckResult:
        http = self._request("GET", "/api/v1/check", sent=False)
        if http.error_status:
            return self._check_transport(http)
        if http.status == 200:
            return self._check_result("ok", "ok", "signal-cli daemon answers /api/v1/check", http_status=200)
        if http.status == 404:
            return self._check_result(
                "failed",
                "wrong_endpoint",
                "/api/v1/check not found (HTTP 404): not a signal-cli daemon? (try signal-rest)",
                http_status=404,
            )
        status: CheckStatus = "unreachable" if (http.status or 0) >= 500 else "failed"
        return self._check_result(
            status, "unhealthy", f"/api/v1/check answered HTTP {http.status}", http_status=http.status
        )


def _parse_json(body: bytes) -> Any:
    """The gateway's JSON answer, None when it is not JSON we can read. Never raises: a body nested
    deeper than the parser's recursion limit (the stdlib parser recurses) is "not JSON" too, or a
    hostile or broken gateway took `send`/`check` (and `jobpipe alert test`) down with a
    RecursionError, against the contract that failures are classified, never raised."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def make_gateway(
    kind: str,
    url: str,
    sender: str | None,
    recipients: list[str] | None,
    group_id: str | None,
    timeout: float = 10.0,
    session: requests.Session | None = None,
) -> RestGateway | JsonRpcGateway:
    """The gateway for `alerts.channel`. For JSON-RPC the sender becomes the `account` parameter
    (needed when the daemon serves several accounts, ignored by a single-account daemon)."""
    if kind == "signal-rest":
        return RestGateway(url, sender or "", recipients, group_id, session=session, timeout=timeout)
    if kind == "signal-jsonrpc":
        return JsonRpcGateway(url, sender or None, recipients, group_id, session=session, timeout=timeout)
    raise ConfigError(
        f"alerts.channel: {kind!r} is not a Signal gateway kind (signal-rest or signal-jsonrpc)"
    )


def explain(result: SendResult | CheckResult) -> str:
    """One line for an operator: what went wrong and what to do about it."""
    gw = result.gateway or "the Signal gateway"
    url = gw.split(" at ", 1)[1] if " at " in gw else "alerts.gateway_url"
    k = result.kind
    d = result.detail
    if isinstance(result, CheckResult) and result.ok:
        return f"OK: {gw} is up ({d})."
    if isinstance(result, SendResult) and result.ok:
        return f"OK: delivered through {gw} (Signal timestamp {result.timestamp or '?'})."
    who = ", ".join(result.failed_recipients) if isinstance(result, SendResult) else ""
    who = f" ({who})" if who else ""
    # `jobpipe` never resends an ambiguous or rate-limited alert on its own; say so where it matters.
    hints: dict[str, str] = {
        "connection_refused": f"nothing listens at {url}: is the gateway running"
        " (docker ps / systemctl status), and is alerts.gateway_url right?"
        " jobpipe keeps the alert and retries with backoff.",
        "dns": f"the host in {url} does not resolve: fix alerts.gateway_url; jobpipe retries with backoff.",
        "connect_timeout": f"{url} does not accept connections in time: is the gateway up and reachable"
        " (firewall)? jobpipe retries with backoff.",
        "tls": f"TLS with {url} failed: check its certificate or use http:// on loopback.",
        "network_failure": "the gateway is up but could not reach the Signal servers: check its internet"
        " access; jobpipe retries with backoff.",
        "timeout": f"{url} did not answer in time: the message MAY have been delivered, so jobpipe will not"
        " resend it blindly; check the gateway's log and load (or raise alerts.timeout_s).",
        "connection_lost": "the connection broke before the gateway answered: the message MAY have been"
        " delivered, so jobpipe will not resend it blindly; check the gateway's log.",
        "gateway_timeout": "signal-cli inside the gateway timed out ('process killed as timeout reached'):"
        " the message MAY have been delivered and is not resent blindly; run signal-cli-rest-api with"
        " MODE=json-rpc to avoid starting signal-cli per message.",
        "http_5xx": "the gateway had an internal error: the message MAY have been delivered and is not"
        " resent blindly; look at the gateway's log.",
        "io_error": "signal-cli reported an I/O error while sending: the message MAY have been delivered"
        " and is not resent blindly; look at the signal-cli daemon's log.",
        "gateway_error": "signal-cli failed while sending: the message MAY have been delivered and is not"
        " resent blindly; look at the signal-cli daemon's log.",
        "malformed_response": "the gateway's answer could not be read: the message MAY have been delivered"
        " and is not resent blindly; check that alerts.channel matches the gateway and look at its log.",
        "unexpected_status": "the gateway answered with an unexpected HTTP status: the message MAY have"
        " been delivered; check that alerts.channel matches the gateway.",
        "captcha": "Signal wants a captcha before this sender may send again: open "
        + CAPTCHA_URL
        + ", solve it, and submit it with `signal-cli -a SENDER submitRateLimitChallenge --challenge"
        " TOKEN --captcha CAPTCHA` (TOKEN: the challenge token in the gateway's answer; see signal-cli's"
        " docs). jobpipe backs off for hours and marks the Signal channel degraded meanwhile.",
        "rate_limit": "Signal rate-limits this sender: jobpipe backs off for hours"
        " (alerts.rate_limit_backoff_h) and marks the Signal channel degraded;"
        " if it persists, solve the rate-limit captcha per signal-cli's docs (submitRateLimitChallenge).",
        "sender_unregistered": "the sender number (alerts.sender) is not registered with the gateway:"
        " register and verify it (`signal-cli -a NUMBER register`, then `verify CODE`; or POST"
        " /v1/register/NUMBER and /v1/register/NUMBER/verify/CODE on signal-cli-rest-api), or link the"
        " gateway as a device.",
        "recipient_unregistered": f"recipient{who} has no Signal account: fix alerts.recipients.",
        "untrusted_identity": f"the safety number of recipient{who} changed: after verifying it, trust it"
        " (`signal-cli -a SENDER trust -a RECIPIENT`, or PUT /v1/identities/SENDER/trust/RECIPIENT"
        " on signal-cli-rest-api).",
        "unknown_group": "the group in alerts.group_id is unknown to the sender: check the id"
        " (signal-cli listGroups / GET /v1/groups/SENDER) and that the sender is a member.",
        "recipient_failed": f"the gateway could not deliver to{who or ' some recipients'}: see the detail and"
        " the gateway's log.",
        "wrong_endpoint": f"{url} is not a {gw.split(' at ')[0]} endpoint: check alerts.gateway_url and"
        " alerts.channel (signal-rest for signal-cli-rest-api, signal-jsonrpc for"
        " `signal-cli daemon --http`).",
        "forbidden": "the gateway (or a proxy in front of it) refused access: check its access rules.",
        "bad_request": "the gateway rejected the request: check alerts.sender, alerts.recipients and"
        " alerts.group_id.",
        "bad_url": "alerts.gateway_url is not a usable URL: fix it.",
        "unhealthy": f"the gateway at {url} answers but reports itself unhealthy: look at its log.",
        "unsupported_version": "the gateway is too old for /v2/send: upgrade signal-cli-rest-api.",
        "http_error": f"the request to {url} failed: check alerts.gateway_url and the gateway.",
    }
    hint = hints.get(k, "see the detail and the gateway's log.")
    label = result.status.replace("_", " ").upper()
    return f"{label} ({k}) via {gw}: {d} -> {hint}"
