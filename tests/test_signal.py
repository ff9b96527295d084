"""Signal delivery against the fake gateways: every answer of the contract (docs/contracts/signal.md)
maps to the right status."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from jobpipe.alerts.channels.signal import (
    AMBIGUOUS,
    DELIVERED,
    FAILED,
    MAX_MESSAGE_CHARS,
    MAX_RESPONSE_BYTES,
    RATE_LIMITED,
    UNREACHABLE,
    CheckResult,
    JsonRpcGateway,
    RestGateway,
    SendResult,
    explain,
    internal_group_id,
    make_gateway,
    redact,
    redact_number,
    rest_group_id,
)
from jobpipe.errors import ConfigError
from jobpipe.sim.signal import FakeSignalGateway

SENDER = "+4915100000001"
R1 = "+4917612345678"
R2 = "+4917699999999"
GROUP = "c2lnbmFsLWdyb3VwLWlkLTEyMzQ1Ng=="  # signal-cli's (internal) group id
GROUP_REST = rest_group_id(GROUP)
REPO = Path(__file__).resolve().parents[1]


def no_secrets(*texts: str) -> None:
    """No full number, group id or long digit run in any text an operator or a log could see."""
    for text in texts:
        for secret in (SENDER, R1, R2, GROUP, GROUP_REST, SENDER[1:], R1[1:], R2[1:]):
            assert secret not in text, (secret, text)
        assert not re.search(r"\d{7,}", text), text


def check_result(result: SendResult) -> None:
    texts = [result.detail, explain(result), repr(result), *result.failed_recipients]
    if result.timestamp:  # Signal's message timestamp is the one long number allowed
        texts = [t.replace(result.timestamp, "TS") for t in texts]
    no_secrets(*texts)
    if result.challenge_token:
        assert result.challenge_token not in result.detail + explain(result) + repr(result)


@pytest.fixture
def rest():
    with FakeSignalGateway("rest", account=SENDER) as fake:
        yield fake


@pytest.fixture
def rpc():
    with FakeSignalGateway("jsonrpc", account=SENDER) as fake:
        yield fake


def rest_gw(
    fake: FakeSignalGateway, recipients=(R1, R2), group=None, sender=SENDER, timeout=5.0
) -> RestGateway:
    return RestGateway(fake.url, sender, list(recipients), group, timeout=timeout)


def rpc_gw(
    fake: FakeSignalGateway, recipients=(R1, R2), group=None, account=SENDER, timeout=5.0
) -> JsonRpcGateway:
    return JsonRpcGateway(fake.url, account, list(recipients), group, timeout=timeout)


# -- signal-cli-rest-api ---------------------------------------------------------------------------


def test_rest_send_exact_payload_and_object_success(rest):
    with rest_gw(rest) as gw:
        result = gw.send("host1 embedder: 56 of 56 failed")
    (req,) = rest.requests
    assert (req.method, req.path) == ("POST", "/v2/send")
    assert req.headers["Content-Type"] == "application/json"
    assert req.json == {
        "number": SENDER,
        "recipients": [R1, R2],
        "message": "host1 embedder: 56 of 56 failed",
        "text_mode": "normal",
    }
    (msg,) = rest.messages
    assert msg.recipients == (R1, R2) and msg.account == SENDER and msg.group_id is None
    assert result.status == DELIVERED and result.ok and result.http_status == 201
    assert result.timestamp == str(msg.timestamp)
    assert explain(result).startswith("OK")
    check_result(result)


def test_rest_array_success_form(rest):
    rest.success_form = "array"
    result = rest_gw(rest).send("hi")
    (msg,) = rest.messages
    assert result.status == DELIVERED and result.timestamp == str(msg.timestamp)


@pytest.mark.parametrize("form", ["object", "array"])
def test_rest_unregistered_recipient_is_a_failure_in_both_forms(rest, form):
    rest.success_form = form
    rest.unregistered.add(R1)
    result = rest_gw(rest).send("hi")
    assert result.status == FAILED and result.kind == "recipient_unregistered"
    assert result.failed_recipients == (redact_number(R1),) == ("+49…678",)
    assert result.http_status == (201 if form == "array" else 400)
    # signal-cli still sent it to the others.
    (msg,) = rest.messages
    assert msg.recipients == (R2,)
    assert "alerts.recipients" in explain(result)
    check_result(result)


@pytest.mark.parametrize("form", ["object", "array"])
def test_rest_untrusted_identity(rest, form):
    rest.success_form = form
    rest.untrusted.add(R2)
    result = rest_gw(rest).send("hi")
    assert result.status == FAILED and result.kind == "untrusted_identity"
    assert result.failed_recipients == ("+49…999",)
    assert "trust" in explain(result)
    check_result(result)


def test_rest_unregistered_sender(rest):
    result = rest_gw(rest, sender="+4915199999999").send("hi")
    assert result.status == FAILED and result.kind == "sender_unregistered"
    assert rest.messages == []
    text = explain(result)
    assert "register" in text and "alerts.sender" in text
    assert "+4915199999999" not in text + result.detail
    check_result(result)


@pytest.mark.parametrize(
    ("fault", "status", "kind", "http_status", "delivered"),
    [
        ("captcha", RATE_LIMITED, "captcha", 400, 0),
        ("rate_limit", RATE_LIMITED, "rate_limit", 400, 0),
        ("rate_limit_429", RATE_LIMITED, "captcha", 429, 0),
        ("killed_timeout", AMBIGUOUS, "gateway_timeout", 400, 1),
        ("internal_error", AMBIGUOUS, "http_5xx", 500, 0),
        ("http_error", AMBIGUOUS, "http_5xx", 502, 0),
        ("malformed", AMBIGUOUS, "malformed_response", 201, 1),
        ("network_failure", UNREACHABLE, "network_failure", 400, 0),
    ],
)
def test_rest_error_answers(rest, fault, status, kind, http_status, delivered):
    rest.set_fault(fault, times=1)
    result = rest_gw(rest).send("hi")
    assert (result.status, result.kind, result.http_status) == (status, kind, http_status)
    assert len(rest.messages) == delivered
    assert len(rest.requests) == 1  # one call, no retries inside the gateway client
    check_result(result)
    # The fault was for one request only: the next one goes through.
    assert rest_gw(rest).send("again").status == DELIVERED


def test_rest_captcha_carries_token_and_wait_hint(rest):
    rest.set_fault("captcha")
    result = rest_gw(rest).send("hi")
    body = json.loads(rest.requests[0].body)  # what we sent
    assert body["recipients"] == [R1, R2]
    assert result.retry_after == 86400.0
    assert result.challenge_token and re.fullmatch(r"[0-9a-f-]{36}", result.challenge_token)
    text = explain(result)
    assert "captcha" in text and "hours" in text and "submitRateLimitChallenge" in text
    check_result(result)


def test_rest_429_challenge_token(rest):
    rest.set_fault("rate_limit_429")
    result = rest_gw(rest).send("hi")
    assert result.status == RATE_LIMITED and result.challenge_token
    assert "degraded" in explain(result)
    check_result(result)


def test_rest_ambiguous_explained_as_maybe_delivered(rest):
    rest.set_fault("killed_timeout")
    result = rest_gw(rest).send("hi")
    assert not result.may_resend
    assert "MAY have been delivered" in explain(result)
    assert rest.wait_for_messages(1)[0].message == "hi"


def test_rest_group_and_numbers_go_in_separate_calls(rest):
    result = rest_gw(rest, group=GROUP).send("hi")
    assert result.status == DELIVERED
    calls = [r.json["recipients"] for r in rest.requests]
    assert calls == [[R1, R2], [GROUP_REST]]
    assert all(not (any(x.startswith("group.") for x in c) and len(c) > 1) for c in calls)
    numbers, group = rest.messages
    assert numbers.recipients == (R1, R2) and group.group_id == GROUP and group.recipients == ()


def test_rest_group_only_and_group_in_recipients_list(rest):
    # Operators paste the group.<…> id into recipients too: it still goes alone.
    result = rest_gw(rest, recipients=[GROUP_REST]).send("hi")
    assert result.status == DELIVERED
    assert [r.json["recipients"] for r in rest.requests] == [[GROUP_REST]]
    assert rest.messages[0].group_id == GROUP


def test_fake_rejects_mixed_group_and_numbers(rest):
    r = requests.post(
        rest.url + "/v2/send",
        json={"number": SENDER, "recipients": [R1, GROUP_REST], "message": "x"},
        timeout=5,
    )
    assert r.status_code == 400 and "group" in r.json()["error"]
    assert rest.messages == []


def test_rest_partial_delivery_keeps_most_cautious_status(rest):
    rest.set_fault("captcha", times=1)  # the numbers call is first
    result = rest_gw(rest, group=GROUP).send("hi")
    assert result.status == RATE_LIMITED
    assert "numbers: " in result.detail and "group: delivered" in result.detail
    assert [m.group_id for m in rest.messages] == [GROUP]
    check_result(result)


def test_rest_unknown_group(rest):
    rest.groups = {"some-other-group"}
    result = rest_gw(rest, recipients=[], group=GROUP).send("hi")
    assert result.status == FAILED and result.kind == "unknown_group"
    check_result(result)


def test_rest_check(rest):
    ok = rest_gw(rest).check()
    assert isinstance(ok, CheckResult) and ok.ok and ok.mode == "normal" and ok.version == "0.92"
    rest.go_down()
    down = rest_gw(rest).check()
    assert down.status == "unreachable" and down.kind == "connection_refused"
    assert rest.url in explain(down) and "running" in explain(down)


def test_wrong_kind_is_named(rest, rpc):
    sent = rest_gw(rpc).send("hi")
    assert sent.status == FAILED and sent.kind == "wrong_endpoint" and "signal-jsonrpc" in sent.detail
    assert rest_gw(rpc).check().kind == "wrong_endpoint"
    assert rpc_gw(rest).send("hi").kind == "wrong_endpoint"
    assert rpc_gw(rest).check().kind == "wrong_endpoint"
    assert "alerts.channel" in explain(sent)


# -- transport failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rest", "jsonrpc"])
def test_refused_is_unreachable_and_restart_on_same_port_works(mode):
    with FakeSignalGateway(mode, account=SENDER) as fake:
        gw = rest_gw(fake) if mode == "rest" else rpc_gw(fake)
        assert gw.send("first").status == DELIVERED  # leaves a keep-alive connection in the pool
        port = fake.port
        fake.go_down()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        result = gw.send("while down")
        assert result.status == UNREACHABLE and result.kind == "connection_refused" and result.may_resend
        assert fake.url in explain(result) and "running" in explain(result)
        check_result(result)
        fake.come_up()
        assert fake.port == port
        assert gw.send("back").status == DELIVERED
        assert [m.message for m in fake.messages] == ["first", "back"]


@pytest.mark.parametrize("mode", ["rest", "jsonrpc"])
def test_hang_beyond_timeout_is_ambiguous_and_bounded(mode):
    with FakeSignalGateway(mode, account=SENDER) as fake:
        fake.set_fault("hang")
        gw = rest_gw(fake, timeout=0.3) if mode == "rest" else rpc_gw(fake, timeout=0.3)
        t0 = time.monotonic()
        result = gw.send("hi")
        elapsed = time.monotonic() - t0
        fake.release()
        assert result.status == AMBIGUOUS and result.kind == "timeout"
        assert elapsed < 2.0
        assert "MAY have been delivered" in explain(result)
        check_result(result)


@pytest.mark.parametrize("mode", ["rest", "jsonrpc"])
def test_slow_gateway_delivers_after_client_gave_up(mode):
    """The reason a timeout is `ambiguous`: the gateway did send the message."""
    with FakeSignalGateway(mode, account=SENDER) as fake:
        fake.set_fault("slow", delay=0.4, times=1)
        gw = rest_gw(fake, timeout=0.2) if mode == "rest" else rpc_gw(fake, timeout=0.2)
        result = gw.send("late")
        assert result.status == AMBIGUOUS
        assert [m.message for m in fake.wait_for_messages(1, timeout=5)] == ["late"]


def test_slow_within_timeout_is_delivered(rest):
    rest.set_fault("slow", delay=0.1)
    assert rest_gw(rest, timeout=5).send("hi").status == DELIVERED


def test_connection_cut_while_waiting_is_ambiguous(rest):
    rest.set_fault("hang")
    gw = rest_gw(rest, timeout=10)
    out: list[SendResult] = []
    t = threading.Thread(target=lambda: out.append(gw.send("hi")))
    t.start()
    rest.wait_for_requests(1)
    rest.go_down()  # closes the listener and the connection the request is waiting on
    t.join(timeout=10)
    assert out and out[0].status == AMBIGUOUS and out[0].kind == "connection_lost"


@pytest.mark.timeout(60)
def test_unresolvable_host_is_unreachable():
    result = RestGateway("http://no-such-gateway.invalid:8080", SENDER, [R1], timeout=2).send("hi")
    assert (result.status, result.kind) == (UNREACHABLE, "dns") and result.may_resend
    assert "alerts.gateway_url" in explain(result)


def test_giant_answer_is_cut_and_ambiguous(rest):
    rest.set_fault("raw", status=201, body=b" " * (MAX_RESPONSE_BYTES + 10) + b'{"timestamp": "1"}')
    result = rest_gw(rest).send("hi")
    assert result.status == AMBIGUOUS and result.kind == "malformed_response"


def test_garbage_error_body_is_cleaned_and_redacted(rest):
    rest.set_fault("raw", status=400, body=b'{"error": "bad \xff\x00 ' + R1.encode() + b'"}')
    result = rest_gw(rest).send("hi")
    assert result.status == FAILED and result.kind == "bad_request"
    assert "\x00" not in result.detail and "\ufffd" in result.detail
    check_result(result)


def test_non_json_201_is_ambiguous(rest):
    rest.set_fault("raw", status=201, body=b"OK", content_type="text/plain")
    assert rest_gw(rest).send("hi").kind == "malformed_response"


def test_unexpected_4xx_is_a_failure(rest):
    rest.set_fault("raw", status=401, body=b"")
    result = rest_gw(rest).send("hi")
    assert (result.status, result.kind) == (FAILED, "forbidden")


# -- signal-cli JSON-RPC ---------------------------------------------------------------------------


def test_rpc_exact_payload_and_success(rpc):
    gw = rpc_gw(rpc)
    first = gw.send("hello")
    second = gw.send("again")
    a, b = rpc.requests
    assert a.path == "/api/v1/rpc" and a.headers["Content-Type"] == "application/json"
    assert a.json == {
        "jsonrpc": "2.0",
        "method": "send",
        "params": {"recipient": [R1, R2], "message": "hello", "account": SENDER},
        "id": 1,
    }
    assert b.json["id"] == 2
    assert first.status == DELIVERED and first.timestamp == str(rpc.messages[0].timestamp)
    assert second.ok
    check_result(first)


def test_rpc_without_account_and_group_id_forms(rpc):
    # The REST form (group.<base64>) is converted to signal-cli's id.
    result = rpc_gw(rpc, recipients=[], group=GROUP_REST, account=None).send("hi")
    assert result.status == DELIVERED
    (req,) = rpc.requests
    assert req.json["params"] == {"groupId": GROUP, "message": "hi"}
    assert rpc.messages[0].group_id == GROUP


def test_rpc_group_and_numbers_go_in_separate_calls(rpc):
    assert rpc_gw(rpc, group=GROUP).send("hi").ok
    params = [r.json["params"] for r in rpc.requests]
    assert params[0]["recipient"] == [R1, R2] and "groupId" not in params[0]
    assert params[1]["groupId"] == GROUP and "recipient" not in params[1]


def test_rpc_needs_json_content_type(rpc):
    r = requests.post(rpc.url + "/api/v1/rpc", data=b'{"jsonrpc": "2.0"}', timeout=5)
    assert r.status_code == 415
    r = requests.post(
        rpc.url + "/api/v1/rpc", data=b"{", headers={"Content-Type": "application/json"}, timeout=5
    )
    assert r.status_code == 200 and r.json()["error"]["code"] == -32700
    rpc.set_fault("raw", status=415, body=b"")
    result = rpc_gw(rpc).send("hi")
    assert (result.status, result.kind) == (FAILED, "bad_request")


def test_rpc_unregistered_recipient_result(rpc):
    rpc.unregistered.add(R1)
    result = rpc_gw(rpc).send("hi")
    assert result.status == FAILED and result.kind == "recipient_unregistered"
    assert result.failed_recipients == ("+49…678",)
    assert rpc.messages[0].recipients == (R2,)
    check_result(result)


def test_rpc_identity_failure_result_and_untrusted_error(rpc):
    rpc.untrusted.add(R1)
    some = rpc_gw(rpc).send("hi")
    assert (some.status, some.kind) == (FAILED, "untrusted_identity")
    rpc.untrusted.add(R2)
    all_ = rpc_gw(rpc).send("hi")  # every recipient untrusted: JSON-RPC error -4
    assert (all_.status, all_.kind) == (FAILED, "untrusted_identity")
    assert "-4" in all_.detail
    check_result(all_)


def test_rpc_unknown_account(rpc):
    result = rpc_gw(rpc, account="+4915199999999").send("hi")
    assert (result.status, result.kind) == (FAILED, "sender_unregistered")
    assert "-1" in result.detail and rpc.messages == []
    check_result(result)


@pytest.mark.parametrize(
    ("fault", "status", "kind", "delivered"),
    [
        ("captcha", RATE_LIMITED, "captcha", 0),
        ("rate_limit", RATE_LIMITED, "rate_limit", 0),
        ("killed_timeout", AMBIGUOUS, "io_error", 1),
        ("internal_error", AMBIGUOUS, "gateway_error", 0),
        ("http_error", AMBIGUOUS, "http_5xx", 0),
        ("malformed", AMBIGUOUS, "malformed_response", 1),
        ("network_failure", UNREACHABLE, "network_failure", 0),
    ],
)
def test_rpc_error_answers(rpc, fault, status, kind, delivered):
    rpc.set_fault(fault, times=1)
    result = rpc_gw(rpc).send("hi")
    assert (result.status, result.kind) == (status, kind)
    assert len(rpc.messages) == delivered
    check_result(result)
    assert rpc_gw(rpc).send("again").ok


def test_rpc_captcha_token_from_results(rpc):
    rpc.set_fault("captcha")
    result = rpc_gw(rpc).send("hi")
    assert result.challenge_token and result.retry_after == 86400.0
    assert result.failed_recipients == ("+49…678", "+49…999")
    check_result(result)


def test_rpc_check(rpc):
    ok = rpc_gw(rpc).check()
    assert ok.ok and ok.kind == "ok"
    rpc.go_down()
    assert rpc_gw(rpc).check().status == "unreachable"


def test_fake_rejects_unknown_fault_for_mode(rpc):
    with pytest.raises(ValueError):
        rpc.set_fault("rate_limit_429")
    with pytest.raises(ValueError):
        rpc.set_fault("no-such-fault")


# -- input, config, redaction ----------------------------------------------------------------------


def test_message_is_cleaned_and_capped(rest):
    gw = rest_gw(rest)
    assert gw.send(b"caf\xc3\xa9 \xff\x00end").ok  # type: ignore[arg-type]
    assert rest.messages[0].message == "café \ufffdend"
    assert gw.send("x" * (MAX_MESSAGE_CHARS * 5)).ok
    assert len(rest.messages[1].message) == MAX_MESSAGE_CHARS
    with pytest.raises(ValueError):
        gw.send("   ")


def test_make_gateway_and_config_errors():
    assert isinstance(make_gateway("signal-rest", "http://127.0.0.1:1", SENDER, [R1], None, 1.0), RestGateway)
    rpc = make_gateway("signal-jsonrpc", "http://127.0.0.1:1", SENDER, [R1], None, 1.0)
    assert isinstance(rpc, JsonRpcGateway) and rpc.account == SENDER
    with pytest.raises(ConfigError):
        make_gateway("signal-carrier-pigeon", "http://127.0.0.1:1", SENDER, [R1], None)
    with pytest.raises(ConfigError):
        make_gateway("signal-rest", "http://127.0.0.1:1", SENDER, [], None)
    with pytest.raises(ConfigError):
        make_gateway("signal-rest", "ftp://x", SENDER, [R1], None)
    with pytest.raises(ConfigError) as bad:
        make_gateway("signal-rest", "http://127.0.0.1:1", SENDER, ["+49 176 12345678 x"], None)
    assert "12345678" not in str(bad.value)
    with pytest.raises(ConfigError):
        make_gateway("signal-rest", "http://127.0.0.1:1", "", [R1], None)
    with pytest.raises(ConfigError):
        make_gateway("signal-rest", "http://127.0.0.1:1", SENDER, [GROUP_REST], "other-group")


def test_group_id_conversions():
    assert rest_group_id(GROUP) == "group." + base64.b64encode(GROUP.encode()).decode()
    assert rest_group_id(GROUP_REST) == GROUP_REST
    assert internal_group_id(GROUP_REST) == GROUP and internal_group_id(GROUP) == GROUP
    with pytest.raises(ConfigError):
        internal_group_id("group.!!!")


def test_redaction():
    assert redact_number("+4917612345678") == "+49…678"
    assert redact_number("+49 176 1234 5678") == "+49…678"
    text = (
        'Unregistered user "+4917612345678", account 4915100000001, '
        "uuid 123e4567-e89b-12d3-a456-426614174000, "
        f'{GROUP_REST}, challenge token "0123abcd-ffff", number +49 176 12345678'
    )
    out = redact(text, secrets=[GROUP])
    assert "+49…678" in out
    for leaked in (
        "17612345678",
        "4915100000001",
        "426614174000",
        GROUP_REST,
        "0123abcd-ffff",
        "176 12345678",
    ):
        assert leaked not in out, out


def test_redaction_removes_url_credentials():
    """An error text naming the gateway URL (a proxy's page, an exception) never carries its password."""
    out = redact("POST http://alerts:s3cret-pw@gateway.internal:8080/v2/send failed: 502")
    assert "s3cret-pw" not in out and "gateway.internal:8080/v2/send" in out


def test_url_credentials_never_shown(rest):
    url = rest.url.replace("http://", "http://user:s3cret@") + "/?token=abc"
    gw = RestGateway(url, SENDER, [R1], timeout=5)
    result = gw.send("hi")
    assert "s3cret" not in result.gateway + explain(result) and "abc" not in result.gateway


def test_concurrent_sends_are_all_recorded(rest):
    gw = rest_gw(rest)
    threads = [threading.Thread(target=gw.send, args=(f"m{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    msgs = rest.wait_for_messages(8, timeout=5)
    assert sorted(m.message for m in msgs) == sorted(f"m{i}" for i in range(8))
    assert len({m.timestamp for m in msgs}) == 8


@pytest.mark.system
def test_fake_as_a_process_prints_messages():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobpipe.sim.signal", "--port", str(port), "--mode", "rest"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # blocks until it listens (or dies: then the assert shows it)
        assert "listening on" in first, proc.stderr.read() if proc.poll() is not None else first
        gw = RestGateway(f"http://127.0.0.1:{port}", "+4915100000001", [R1], timeout=5)
        assert gw.send("host1 embedder: FAIL\nrun: jobpipe health").ok
        line = proc.stdout.readline()
        assert line.startswith("[simulated Signal gateway] would send to +49…678")
        assert proc.stdout.readline().strip() == "host1 embedder: FAIL"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
