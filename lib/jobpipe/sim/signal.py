"""A fake Signal gateway following docs/contracts/signal.md, for tests, benchmarks and the demo.

`FakeSignalGateway(mode="rest")` speaks signal-cli-rest-api (`POST /v2/send`, `GET /v1/about`,
`GET /v1/health`); `mode="jsonrpc"` speaks signal-cli's JSON-RPC HTTP daemon (`POST /api/v1/rpc`,
`GET /api/v1/check`). It records every delivered message and every send request, and can be told
to misbehave the way real gateways do (`set_fault`), to refuse connections (`go_down` / `come_up`,
same port), or to treat numbers as unregistered / untrusted.

Run it as a process for the demo:
    jobpipe sim signal --port 8080 [--mode rest|jsonrpc]   (or python -m jobpipe.sim.signal)
Each delivered message is printed as "[simulated Signal gateway] would send to …".
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, TextIO

from jobpipe.alerts.channels.signal import redact_number
from jobpipe.sim.server import Listener, ListenerAddress, SimHandler, port_number, stop_on_signals

LABEL = "[simulated Signal gateway]"
DEFAULT_ACCOUNT = "+4915100000001"

# fault -> modes it exists in. What each one answers is in `_rest_fault` / `_rpc_fault`.
FAULTS: dict[str, tuple[str, ...]] = {
    "hang": ("rest", "jsonrpc"),  # read the request, never answer (until released / closed)
    "slow": ("rest", "jsonrpc"),  # wait `delay` seconds, then deliver and answer normally
    "http_error": ("rest", "jsonrpc"),  # a bare HTTP `status` (e.g. 502 from a proxy), text body
    "internal_error": ("rest", "jsonrpc"),  # REST: 500 {"error"}; JSON-RPC: 200 with error -32603
    "malformed": ("rest", "jsonrpc"),  # success status, truncated JSON body (message delivered)
    "rate_limit_429": ("rest",),  # 429 with challenge_tokens (REST API in json-rpc mode)
    "captcha": ("rest", "jsonrpc"),  # REST 400 "CAPTCHA proof required…"; JSON-RPC -5 with token
    "rate_limit": ("rest", "jsonrpc"),  # REST 400 "…Rate limit exceeded…"; JSON-RPC -5
    "killed_timeout": ("rest", "jsonrpc"),  # delivered, then REST 400 "process killed as timeout
    # reached" / JSON-RPC -3 I/O error: the ambiguous case
    "network_failure": ("rest", "jsonrpc"),  # gateway could not reach Signal: nothing delivered
    "raw": ("rest", "jsonrpc"),  # answer exactly `status` + `body` (malformed, giant, invalid UTF-8…)
}
# Faults after which the message did go out (unless set_fault(deliver=...) says otherwise).
_DELIVERING_FAULTS = {"slow", "malformed", "killed_timeout"}


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the fake "delivered": to `recipients` (numbers) or to `group_id` (signal-cli id)."""

    account: str | None
    recipients: tuple[str, ...]
    group_id: str | None
    message: str
    timestamp: int


@dataclass(frozen=True)
class ReceivedRequest:
    """Every request to the send endpoint, delivered or not (to count resend storms, check payloads)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


class _Handler(SimHandler):
    server_version = "FakeSignal/1.0"
    timeout = 30  # an idle keep-alive connection does not hold a thread forever
    # Buffered writes: headers and body leave in one segment (two small writes meet Nagle + delayed
    # ACK and cost ~40 ms per request on loopback).
    wbufsize = 1 << 16

    def do_PUT(self) -> None:
        self.sim._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.sim._handle(self, "DELETE")


class FakeSignalGateway(ListenerAddress):
    """signal-cli-rest-api (`mode="rest"`) or signal-cli JSON-RPC (`mode="jsonrpc"`) on 127.0.0.1."""

    def __init__(
        self,
        mode: str = "rest",
        *,
        account: str = DEFAULT_ACCOUNT,
        host: str = "127.0.0.1",
        port: int = 0,
        success_form: str = "object",
        about_mode: str = "normal",
        groups: set[str] | None = None,
        unregistered: set[str] | None = None,
        untrusted: set[str] | None = None,
        echo: TextIO | None = None,
        max_body: int = 1 << 20,
    ) -> None:
        if mode not in ("rest", "jsonrpc"):
            raise ValueError(f"mode must be 'rest' or 'jsonrpc', not {mode!r}")
        if success_form not in ("object", "array"):
            raise ValueError("success_form must be 'object' or 'array'")
        self.mode = mode
        self.account = account
        self.success_form = success_form  # REST: 201 {"timestamp"} or the newer array form
        self.about_mode = about_mode
        self.groups = groups  # signal-cli group ids the account is in; None: any
        self.unregistered: set[str] = set(unregistered or ())
        self.untrusted: set[str] = set(untrusted or ())
        self.echo = echo
        self.max_body = max_body
        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._requests: list[ReceivedRequest] = []
        self._fault: str | None = None
        self._fault_times: int | None = None
        self._fault_opts: dict[str, Any] = {}
        self._release = threading.Event()
        self._last_ts = 0
        self._listener = Listener(self, _Handler, host, port, name="fake-signal")
        self._start()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return not self._listener.is_open

    def _start(self) -> None:
        self._release.clear()
        self._listener.open()

    def go_down(self) -> None:
        """Refuse connections from now on: close the listening socket and every open connection."""
        if self._listener.is_open:
            self._release.set()  # hung handlers give up
            self._listener.close()

    def come_up(self) -> None:
        """Listen again on the same port."""
        if not self._listener.is_open:
            self._start()

    def close(self) -> None:
        self.go_down()

    def __enter__(self) -> FakeSignalGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def release(self) -> None:
        """Let requests held by the `hang` fault go (their connections are closed, no answer)."""
        self._release.set()

    # -- switches --------------------------------------------------------------------------------

    def set_fault(
        self,
        fault: str | None,
        *,
        times: int | None = None,
        delay: float = 0.0,
        status: int = 502,
        deliver: bool | None = None,
        hang_max: float = 60.0,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> None:
        """Misbehave on the next `times` send requests (None: until cleared with set_fault(None)).

        `delay` is for `slow`; `status` for `http_error` and `raw`; `body`/`content_type` for `raw`.
        `deliver` overrides whether the message counts as delivered before the faulty answer
        (default: only for slow, malformed, killed_timeout).
        """
        if fault is not None:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
            if self.mode not in FAULTS[fault]:
                raise ValueError(f"fault {fault!r} does not exist in {self.mode} mode")
        with self._cond:
            self._fault = fault
            self._fault_times = times
            self._fault_opts = {
                "delay": delay,
                "status": status,
                "deliver": deliver,
                "hang_max": hang_max,
                "body": body,
                "content_type": content_type,
            }
        if self._listener.is_open:
            self._release.clear()  # a new fault starts un-released (release() may have been called before)

    def _take_fault(self) -> tuple[str | None, dict[str, Any]]:
        with self._cond:
            fault, opts = self._fault, dict(self._fault_opts)
            if fault is not None and self._fault_times is not None:
                self._fault_times -= 1
                if self._fault_times <= 0:
                    self._fault, self._fault_times = None, None
            return fault, opts

    # -- what arrived ----------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._messages)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._cond:
            return list(self._requests)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least `n` messages were delivered or `timeout` passed; return them all."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._messages) >= n, timeout)
            return list(self._messages)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        with self._cond:
            self._cond.wait_for(lambda: len(self._requests) >= n, timeout)
            return list(self._requests)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()
            self._requests.clear()

    def _timestamp(self) -> int:
        with self._cond:
            ts = max(int(time.time() * 1000), self._last_ts + 1)  # unique, like Signal's
            self._last_ts = ts
            return ts

    def _deliver(self, account: str | None, recipients: list[str], group_id: str | None, message: str) -> int:
        ts = self._timestamp()
        msg = ReceivedMessage(account, tuple(recipients), group_id, message, ts)
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()
        if self.echo is not None:
            targets = [redact_number(r) for r in recipients] + (
                [f"group {group_id[:6]}…"] if group_id else []
            )
            lines = message.splitlines() or [""]
            body = "\n".join("    " + line for line in lines)
            print(f"{LABEL} would send to {', '.join(targets)}:\n{body}", file=self.echo, flush=True)
        return ts

    # -- HTTP ------------------------------------------------------------------------------------

    def _handle(self, h: _Handler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        length = h.headers.get("Content-Length")
        try:
            n = int(length) if length else 0
        except ValueError:
            n = -1
        if n < 0 or n > self.max_body:
            self._reply(h, 413, b"request too large", "text/plain")
            h.close_connection = True
            return
        body = h.rfile.read(n) if n else b""
        if self.mode == "rest":
            routes = {
                ("POST", "/v2/send"): self._rest_send,
                ("GET", "/v1/about"): self._rest_about,
                ("GET", "/v1/health"): self._rest_health,
            }
        else:
            routes = {("POST", "/api/v1/rpc"): self._rpc, ("GET", "/api/v1/check"): self._rpc_check}
        route = routes.get((method, path))
        if route is None:
            if self.mode == "jsonrpc" and any(p == path for _, p in routes):
                self._reply(h, 405, b"", "text/plain")
            else:
                self._reply(h, 404, b"404 page not found", "text/plain")
            return
        route(h, body)

    def _reply(
        self, h: _Handler, status: int, body: bytes, ctype: str = "application/json; charset=utf-8"
    ) -> None:
        try:
            h.send_response(status)
            if body or status not in (204, 304):
                h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if body:
                h.wfile.write(body)
            h.wfile.flush()
        except OSError:  # the client gave up (timeout) or we went down meanwhile
            h.close_connection = True

    def _json(self, h: _Handler, status: int, obj: Any) -> None:
        self._reply(h, status, json.dumps(obj).encode())

    def _record(self, h: _Handler, body: bytes, parsed: Any) -> None:
        req = ReceivedRequest(h.command, h.path, {k: v for k, v in h.headers.items()}, body, parsed)
        with self._cond:
            self._requests.append(req)
            self._cond.notify_all()

    def _pre_fault(self, h: _Handler, fault: str | None, opts: dict[str, Any]) -> bool:
        """Faults that happen before any answer. False: the request is over (no answer at all)."""
        if fault == "hang":
            self._release.wait(opts["hang_max"])
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return False
        if fault == "slow" and opts["delay"] > 0:
            self._release.wait(opts["delay"])  # also cut short by go_down()/close()
            if not self._listener.is_open:
                h.close_connection = True
                return False
        return True

    def _raw(self, h: _Handler, fault: str | None, opts: dict[str, Any]) -> bool:
        """The `raw` fault: answer the configured bytes as they are. True when it answered."""
        if fault != "raw":
            return False
        self._reply(h, opts["status"], opts["body"], opts["content_type"])
        return True

    def _delivering(self, fault: str | None, opts: dict[str, Any]) -> bool:
        if fault is None:
            return True
        return opts["deliver"] if opts["deliver"] is not None else fault in _DELIVERING_FAULTS

    # signal-cli-rest-api ------------------------------------------------------------------------

    def _rest_about(self, h: _Handler, body: bytes) -> None:
        self._json(
            h,
            200,
            {
                "versions": ["v1", "v2"],
                "build": 2,
                "mode": self.about_mode,
                "version": "0.92",
                "capabilities": {"v2/send": ["quotes", "mentions"]},
            },
        )

    def _rest_health(self, h: _Handler, body: bytes) -> None:
        self._reply(h, 204, b"")

    def _rest_send(self, h: _Handler, body: bytes) -> None:
        try:
            req = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            req = None
        self._record(h, body, req)
        fault, opts = self._take_fault()
        if not self._pre_fault(h, fault, opts):
            return
        bad = self._rest_validate(req)
        if bad:
            self._json(h, 400, {"error": bad})
            return
        number, message = req["number"], req.get("message") or ""
        recipients: list[str] = req["recipients"]
        group_id = _rest_group_to_internal(recipients[0]) if recipients[0].startswith("group.") else None
        if fault == "http_error":
            self._deliver_if(fault, opts, number, recipients, group_id, message)
            self._reply(h, opts["status"], f"{opts['status']} Bad Gateway".encode(), "text/plain")
            return
        if fault == "raw":
            self._deliver_if(fault, opts, number, recipients, group_id, message)
            self._raw(h, fault, opts)
            return
        if fault == "internal_error":
            self._deliver_if(fault, opts, number, recipients, group_id, message)
            self._json(h, 500, {"error": "Failed to send message: internal server error"})
            return
        if fault == "rate_limit_429":
            self._json(
                h,
                429,
                {
                    "error": "Failed to send message due to rate limiting",
                    "challenge_tokens": [str(uuid.uuid4())],
                    "account": number,
                },
            )
            return
        first = recipients[0]
        if fault == "captcha":
            self._json(h, 400, {"error": _captcha_text(first, str(uuid.uuid4()))})
            return
        if fault == "rate_limit":
            self._json(h, 400, {"error": "Failed to send message: [413] Rate limit exceeded: 413"})
            return
        if fault == "network_failure":
            lines = "".join(f'Network failure for "{r}"\n' for r in recipients)
            self._json(h, 400, {"error": "Failed to send (some) messages:\n" + lines})
            return
        if group_id is not None:
            ok, failures = [], []
        else:
            failures = [(r, "Unregistered user") for r in recipients if r in self.unregistered]
            failures += [
                (r, "Untrusted Identity")
                for r in recipients
                if r in self.untrusted and r not in self.unregistered
            ]
            failed = {r for r, _ in failures}
            ok = [r for r in recipients if r not in failed]
        ts = None
        if (ok or group_id is not None) and self._delivering(fault, opts):
            ts = self._deliver(number, ok, group_id, message)
        if fault == "killed_timeout":
            self._json(h, 400, {"error": "process killed as timeout reached"})
            return
        if fault == "malformed":
            self._reply(h, 201, b'{"timestamp": "17')
            return
        ts_s = str(ts if ts is not None else self._timestamp())
        if self.success_form == "array":
            entry: dict[str, Any] = {"timestamp": ts_s}
            if failures:
                entry["errors"] = {"recipients": [{"number": r, "reason": why} for r, why in failures]}
            self._json(h, 201, [entry])
            return
        if failures:
            lines = "".join(
                f'{why} for "{r}"\n' if why.startswith("Untrusted") else f'{why} "{r}"\n'
                for r, why in failures
            )
            self._json(h, 400, {"error": "Failed to send (some) messages:\n" + lines})
            return
        self._json(h, 201, {"timestamp": ts_s})

    def _deliver_if(
        self,
        fault: str | None,
        opts: dict[str, Any],
        account: str | None,
        recipients: list[str],
        group_id: str | None,
        message: str,
    ) -> None:
        if opts.get("deliver"):
            self._deliver(account, [] if group_id else recipients, group_id, message)

    def _rest_validate(self, req: Any) -> str | None:
        if not isinstance(req, dict):
            return "Couldn't process request - invalid request"
        recipients = req.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            return "Couldn't process request - please provide at least one recipient"
        if not all(isinstance(r, str) and r for r in recipients):
            return "Couldn't process request - invalid request"
        if not isinstance(req.get("number"), str) or not req["number"]:
            return "Couldn't process request - please provide a valid number"
        if "message" in req and not isinstance(req["message"], str):
            return "Couldn't process request - invalid request"
        if req.get("text_mode", "normal") not in ("normal", "styled"):
            return "Couldn't process request - invalid text_mode"
        groups = [r for r in recipients if r.startswith("group.")]
        if groups and len(recipients) > 1:
            # Contract: one group per call, never mixed with numbers.
            return "Invalid recipients - a group cannot be combined with other recipients"
        if req["number"] != self.account:
            return f"User {req['number']} is not registered."
        if groups:
            internal = _rest_group_to_internal(groups[0])
            if internal is None:
                return "Invalid group id"
            if self.groups is not None and internal not in self.groups:
                return "Failed to send message: Group not found"
        return None

    # signal-cli JSON-RPC ------------------------------------------------------------------------

    def _rpc_check(self, h: _Handler, body: bytes) -> None:
        self._reply(h, 200, b"", "text/plain")

    def _rpc(self, h: _Handler, body: bytes) -> None:
        ctype = (h.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            self._record(h, body, None)
            self._reply(h, 415, b"", "text/plain")
            return
        try:
            req = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self._record(h, body, None)
            self._json(h, 200, _rpc_error(None, -32700, "Parse error"))
            return
        self._record(h, body, req)
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
            rid = req.get("id") if isinstance(req, dict) else None
            self._json(h, 200, _rpc_error(rid, -32600, "Invalid request"))
            return
        rid = req.get("id")
        if req["method"] != "send":
            self._json(h, 200, _rpc_error(rid, -32601, "Method not implemented"))
            return
        fault, opts = self._take_fault()
        if not self._pre_fault(h, fault, opts):
            return
        params = req.get("params")
        if not isinstance(params, dict):
            self._json(h, 200, _rpc_error(rid, -32602, "Invalid params"))
            return
        recipient = params.get("recipient")
        recipients = [recipient] if isinstance(recipient, str) else recipient
        group_id = params.get("groupId")
        message = params.get("message")
        if recipients is not None and not (
            isinstance(recipients, list) and all(isinstance(r, str) and r for r in recipients)
        ):
            self._json(h, 200, _rpc_error(rid, -32602, "Invalid params: recipient"))
            return
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            self._json(h, 200, _rpc_error(rid, -32602, "Invalid params: groupId"))
            return
        if message is not None and not isinstance(message, str):
            self._json(h, 200, _rpc_error(rid, -32602, "Invalid params: message"))
            return
        if not recipients and group_id is None:
            self._json(h, 200, _rpc_error(rid, -1, "No recipients given"))
            return
        if recipients and group_id is not None:
            # Contract: recipient numbers *or* a groupId in one call.
            self._json(h, 200, _rpc_error(rid, -1, "Cannot send to recipients and a group in one call"))
            return
        account = params.get("account")
        if account is not None and account != self.account:
            self._json(h, 200, _rpc_error(rid, -1, "Specified account does not exist"))
            return
        if group_id is not None and self.groups is not None and group_id not in self.groups:
            self._json(h, 200, _rpc_error(rid, -1, "Failed to send to group: Group not found"))
            return
        message = message or ""
        targets = list(recipients or [])
        if fault == "http_error":
            self._deliver_if(fault, opts, account, targets, group_id, message)
            self._reply(h, opts["status"], f"{opts['status']} Bad Gateway".encode(), "text/plain")
            return
        if fault == "raw":
            self._deliver_if(fault, opts, account, targets, group_id, message)
            self._raw(h, fault, opts)
            return
        if fault == "internal_error":
            self._deliver_if(fault, opts, account, targets, group_id, message)
            self._json(h, 200, _rpc_error(rid, -32603, "Internal error"))
            return
        if fault in ("captcha", "rate_limit"):
            token = str(uuid.uuid4()) if fault == "captcha" else None
            results = []
            for r in targets or [None]:
                entry: dict[str, Any] = {"recipientAddress": _address(r), "type": "RATE_LIMIT_FAILURE"}
                if token:
                    entry["token"] = token
                results.append(entry)
            text = (
                _captcha_text(targets[0] if targets else "group", token)
                if token
                else "Failed to send message due to rate limiting"
            )
            self._json(
                h,
                200,
                _rpc_error(rid, -5, text, {"response": {"timestamp": self._timestamp(), "results": results}}),
            )
            return
        if fault == "network_failure":
            results = [
                {"recipientAddress": _address(r), "type": "NETWORK_FAILURE"} for r in targets or [None]
            ]
            self._json(
                h,
                200,
                {"jsonrpc": "2.0", "result": {"timestamp": self._timestamp(), "results": results}, "id": rid},
            )
            return
        if targets and all(r in self.untrusted for r in targets):
            results = [{"recipientAddress": _address(r), "type": "IDENTITY_FAILURE"} for r in targets]
            self._json(
                h,
                200,
                _rpc_error(
                    rid,
                    -4,
                    "Failed to send message due to untrusted identities",
                    {"response": {"timestamp": self._timestamp(), "results": results}},
                ),
            )
            return
        results = []
        ok: list[str] = []
        for r in targets:
            if r in self.unregistered:
                results.append({"recipientAddress": _address(r), "type": "UNREGISTERED_FAILURE"})
            elif r in self.untrusted:
                results.append({"recipientAddress": _address(r), "type": "IDENTITY_FAILURE"})
            else:
                results.append({"recipientAddress": _address(r), "type": "SUCCESS"})
                ok.append(r)
        if group_id is not None:
            results.append({"recipientAddress": _address(None), "type": "SUCCESS"})  # a group member
        ts = None
        if (ok or group_id is not None) and self._delivering(fault, opts):
            ts = self._deliver(account or self.account, ok, group_id, message)
        if fault == "killed_timeout":
            self._json(h, 200, _rpc_error(rid, -3, "Failed to send message: Timeout (IOException)"))
            return
        if fault == "malformed":
            self._reply(h, 200, b'{"jsonrpc": "2.0", "result": {"timestamp": 17')
            return
        self._json(
            h,
            200,
            {
                "jsonrpc": "2.0",
                "result": {"timestamp": ts or self._timestamp(), "results": results},
                "id": rid,
            },
        )


def _rpc_error(rid: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": rid}


def _address(number: str | None) -> dict[str, Any]:
    # signal-cli names recipients by uuid and, when known, number.
    return {"uuid": str(uuid.uuid5(uuid.NAMESPACE_OID, number or "member")), "number": number}


def _captcha_text(recipient: str, token: str | None) -> str:
    # signal-cli's wording (ErrorUtils), so clients see what they would see in production.
    return (
        "Failed to send (some) messages:\n"
        f'CAPTCHA proof required for sending to "{recipient}", available options "RECAPTCHA, PUSH_CHALLENGE" '
        f'with challenge token "{token}", or wait "86400" seconds.\n'
        "To get the captcha token, go to https://signalcaptchas.org/challenge/generate.html\n"
        "Use the following command to submit the captcha token:\n"
        "signal-cli submitRateLimitChallenge --challenge CHALLENGE_TOKEN --captcha CAPTCHA_TOKEN\n"
    )


def _rest_group_to_internal(rest_id: str) -> str | None:
    """signal-cli-rest-api's `group.<base64(internal id)>` back to signal-cli's id."""
    try:
        return base64.b64decode(rest_id[len("group.") :], validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jobpipe sim signal", description="A simulated Signal gateway (prints instead of sending)."
    )
    parser.add_argument("--port", type=port_number, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", choices=("rest", "jsonrpc"), default="rest")
    parser.add_argument("--account", default=DEFAULT_ACCOUNT, help="the sender number it accepts")
    parser.add_argument("--success-form", choices=("object", "array"), default="object")
    args = parser.parse_args(argv)
    stop = stop_on_signals()
    fake = FakeSignalGateway(
        args.mode,
        account=args.account,
        host=args.host,
        port=args.port,
        success_form=args.success_form,
        echo=sys.stdout,
    )
    print(
        f"{LABEL} listening on {fake.url} ({args.mode}); accepts sender {redact_number(args.account)}",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
