"""One log format: JSON lines off a terminal, a readable line on one, each record written once."""

from __future__ import annotations

import io
import logging
import os
import re
import select
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from jobpipe.logs import MAX_FIELD_CHARS, log_event, register_secret, setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """setup_logging configures the process-wide root logger; give it back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert text.endswith("\n") or text == ""
    return text.splitlines()


def _records(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in _lines(stream)]


def test_json_line_has_fixed_keys_first_then_fields():
    out = io.StringIO()
    setup_logging("embedder", stream=out)  # a StringIO is not a terminal: JSON
    log = logging.getLogger("jobpipe.embedder")
    before = time.time()
    log_event(log, "batch_done", n=32, rate=41.2, model="e5", path=Path("/x"), ok=True, none=None)
    (rec,) = _records(out)
    assert list(rec)[:5] == ["time", "level", "daemon", "event", "logger"]
    assert rec["level"] == "INFO"
    assert rec["daemon"] == "embedder"
    assert rec["event"] == "batch_done"
    assert rec["logger"] == "jobpipe.embedder"
    assert {k: rec[k] for k in ("n", "rate", "model", "path", "ok", "none")} == {
        "n": 32,
        "rate": 41.2,
        "model": "e5",
        "path": "/x",
        "ok": True,
        "none": None,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
    stamp = datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 0.002 <= stamp <= time.time()


def test_plain_logging_calls_and_extra_fields_share_the_format():
    out = io.StringIO()
    setup_logging("fetcher", level="DEBUG", stream=out)
    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTP connection (%d): %s", 1, "x")
    logging.getLogger("jobpipe.fetcher").warning("slow page", extra={"page": 3})
    first, second = _records(out)
    assert first["event"] == "Starting new HTTP connection (1): x"
    assert first["logger"] == "urllib3.connectionpool"
    assert first["level"] == "DEBUG"
    assert second["event"] == "slow page" and second["page"] == 3 and second["level"] == "WARNING"


def test_level_filters_and_level_names():
    out = io.StringIO()
    setup_logging("verifier", level="warning", stream=out)
    log = logging.getLogger("jobpipe.verifier")
    log_event(log, "quiet")
    log_event(log, "loud", level="error", code=7)
    log_event(log, "louder", level=logging.CRITICAL)
    assert [(r["event"], r["level"]) for r in _records(out)] == [("loud", "ERROR"), ("louder", "CRITICAL")]
    with pytest.raises(ValueError, match="log level"):
        setup_logging("verifier", level="chatty", stream=out)
    with pytest.raises(ValueError, match="log format"):
        setup_logging("verifier", fmt="xml", stream=out)
    with pytest.raises(ValueError, match="unknown log level"):
        log_event(log, "x", level="loudest")


def test_one_line_per_record_even_with_newlines_nul_and_bad_text():
    out = io.StringIO()
    setup_logging("classifier", stream=out)
    log = logging.getLogger("jobpipe.classifier")
    log_event(log, "multi\nline\r\nevent", title="Koch\n(m/w/d)\x00", raw=b"\xff\xfe", lone="\udc80x")
    log.info("message with\nnewline")
    recs = _records(out)
    assert len(recs) == 2
    assert recs[0]["event"] == "multi\nline\r\nevent"
    assert recs[0]["title"] == "Koch\n(m/w/d)\x00"
    assert recs[0]["lone"] == "\ufffdx"  # a lone surrogate cannot be UTF-8: replaced, not lost
    assert recs[1]["event"] == "message with\nnewline"


def test_giant_values_are_capped_below_journald_line_limit():
    out = io.StringIO()
    setup_logging("fetcher", stream=out)
    log_event(logging.getLogger("jobpipe.fetcher"), "page", body="x" * 1_000_000, items=["y" * 100_000])
    (line,) = _lines(out)
    assert len(line) < 48 * 1024
    rec = orjson.loads(line)
    assert rec["body"].startswith("x" * MAX_FIELD_CHARS)
    assert rec["body"].endswith("chars cut]")


def test_reserved_keys_cannot_be_overwritten_by_fields():
    out = io.StringIO()
    setup_logging("embedder", stream=out)
    logging.getLogger("jobpipe.embedder").info("real", extra={"daemon": "fake", "event": "fake", "time": 0})
    (rec,) = _records(out)
    assert rec["daemon"] == "embedder" and rec["event"] == "real"
    assert rec["daemon_"] == "fake" and rec["event_"] == "fake" and rec["time_"] == 0


def test_setup_is_idempotent_and_no_line_is_written_twice():
    first, second = io.StringIO(), io.StringIO()
    basic = io.StringIO()
    logging.basicConfig(stream=basic, force=True)  # a stray console handler, as a library might add
    setup_logging("embedder", stream=first)
    setup_logging("embedder", stream=first)
    setup_logging("embedder", stream=second)
    log = logging.getLogger("jobpipe.embedder.deep.child")
    log_event(log, "once")
    assert _lines(first) == []
    assert [r["event"] for r in _records(second)] == ["once"]
    assert basic.getvalue() == ""
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_JobpipeHandler"]
    assert len(ours) == 1


def test_many_threads_each_record_exactly_once_and_whole():
    out = io.StringIO()
    setup_logging("embedder", stream=out)
    log = logging.getLogger("jobpipe.embedder")
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        start.wait(timeout=10)
        for i in range(200):
            log_event(log, "tick", thread=t, i=i, pad="z" * 200)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    recs = _records(out)
    assert len(recs) == 1600
    assert {(r["thread"], r["i"]) for r in recs} == {(t, i) for t in range(8) for i in range(200)}


def test_exception_is_one_json_field_on_one_line():
    out = io.StringIO()
    setup_logging("classifier", stream=out)
    log = logging.getLogger("jobpipe.classifier")
    try:
        raise ValueError("bad answer:\n{not json")
    except ValueError:
        log.exception("verify_failed")
        log_event(log, "verify_failed_again", level="error", exc_info=True, title_id=5)
    lines = _lines(out)
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["event"] == "verify_failed"
    assert first["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad answer:\n{not json" in first["exc"]
    assert second["exc"] == first["exc"].replace(
        f"line {_line_of(first['exc'])}", f"line {_line_of(second['exc'])}"
    )
    assert second["title_id"] == 5 and second["level"] == "ERROR"


def _line_of(tb: str) -> str:
    return re.findall(r"line (\d+)", tb)[0]


def test_registered_secrets_never_reach_the_stream():
    key = "sk-live-0c1b2a9e8f7d"
    phone = "+4915112345678"
    quoted = 'pa"ss\\word-77'
    for secret in (key, phone, quoted, "", None):
        register_secret(secret)
    out = io.StringIO()
    setup_logging("alerts", stream=out)
    log = logging.getLogger("jobpipe.alerting")
    log_event(log, f"sending to {phone}", api_key=key, nested={"to": [phone]}, quoted=quoted)
    log.warning("gateway said: unknown recipient %s", phone, extra={"header": f"Bearer {key}"})
    try:
        raise RuntimeError(f"401 for key {key}")
    except RuntimeError:
        log.exception("signal_failed")
    text = out.getvalue()
    for secret in (key, phone, quoted, orjson.dumps(quoted).decode()[1:-1]):
        assert secret not in text
    recs = _records(out)
    assert recs[0]["event"] == "sending to ***"
    assert recs[0]["api_key"] == "***" and recs[0]["nested"] == {"to": ["***"]} and recs[0]["quoted"] == "***"
    assert recs[1]["event"] == "gateway said: unknown recipient ***" and recs[1]["header"] == "Bearer ***"
    assert "401 for key ***" in recs[2]["exc"]


def test_text_format_on_a_pseudo_terminal():
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w", encoding="utf-8")
    try:
        setup_logging("embedder", stream=tty)  # auto: it is a terminal, so text
        log = logging.getLogger("jobpipe.embedder")
        log_event(log, "batch_done", n=32, rate=41.2, model="multilingual e5")
        register_secret("tty-secret-123")
        log_event(log, "auth", level="warning", key="tty-secret-123")
        tty.flush()
        data = _read_until(master, b"auth", timeout=10).decode()
    finally:
        tty.close()
        os.close(master)
    lines = data.replace("\r\n", "\n").splitlines()
    assert re.fullmatch(
        r'\d\d:\d\d:\d\d INFO  embedder batch_done n=32 rate=41.2 model="multilingual e5"', lines[0]
    )
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING embedder auth key=\*\*\*", lines[1])


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data or not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"terminal output incomplete: {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data += os.read(fd, 65536)
    return data


def test_text_format_exception_and_explicit_format_choice():
    out = io.StringIO()
    setup_logging("fetcher", fmt="text", stream=out)
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("jobpipe.fetcher").exception("page_failed")
    lines = _lines(out)
    assert re.fullmatch(r"\d\d:\d\d:\d\d ERROR fetcher page_failed exc=\"KeyError: 'missing'\"", lines[0])
    assert lines[1:] and all(line.startswith("  | ") for line in lines[1:])
    out2 = io.StringIO()
    setup_logging("fetcher", fmt="json", stream=out2)
    logging.getLogger("jobpipe.fetcher").info("x")
    assert orjson.loads(out2.getvalue())["event"] == "x"
