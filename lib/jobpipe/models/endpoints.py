"""HTTP mechanics shared by every model-server client: a fleet of base URLs, least-busy routing,
a per-endpoint circuit breaker, one pooled session, timeouts, error classification, an observer.

Why one place: the Ollama and OpenAI-compatible clients must behave the same under failure
(issue 11), so the flavour modules only build payloads and read answers; everything about
*getting* an answer lives here.

Error classification (what the queue needs to know):
- 2xx with a JSON body                -> the parsed body
- 400 / 413 / 422                     -> ItemError(kind="bad_input"): the input is at fault
- 404 naming a model                  -> DependencyDown(kind="model_missing"), message says `ollama pull`
- 401 / 403                           -> DependencyDown(kind="auth")
- 5xx / 429 / other statuses          -> DependencyDown(kind="http_<status>")
- timeout / refused / reset           -> DependencyDown(kind="timeout" / "connection")
- truncated or non-JSON body          -> DependencyDown(kind="bad_response")
- body over `max_response_bytes`      -> DependencyDown(kind="too_large")
- 2xx body over `max_answer_bytes`    -> ItemError(kind="answer_too_large") (a per-client cap, below
                                         max_response_bytes: a runaway answer to one input)
- body not complete within `deadline_s` (from sending the request) -> DependencyDown(kind="timeout")
Every DependencyDown opens that endpoint's breaker for a backoff period and the call fails over
to the next endpoint not yet tried; only when every endpoint failed (or is still backing off)
does the caller see DependencyDown.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter

from jobpipe.backoff import Backoff
from jobpipe.errors import DependencyDown, ItemError
from jobpipe.httpio import BodyLimitExceeded, deadline_after, read_body
from jobpipe.logs import redact

log = logging.getLogger("jobpipe.endpoints")  # its name before models/ (journal filters use it)
# Defaults when a caller does not say: generous for a batch of embeddings, far below "read it all".
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20

# (op, endpoint base URL, seconds, outcome "ok" or an error kind). The runtime feeds Prometheus with it.
Observer = Callable[[str, str, float, str], None]

OK = "ok"
BAD_INPUT = "bad_input"
ANSWER_TOO_LARGE = "answer_too_large"

_MODEL_NOT_FOUND = re.compile(r"model\b.*\bnot found|not found.*\bmodel\b|no such model|does not exist", re.I)


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    started: int = 0
    failures: int = 0  # consecutive DependencyDown outcomes; 0 = healthy
    down_until: float = 0.0
    last_error: DependencyDown | None = None


def error_message(body: bytes) -> str:
    """The server's error text from `{"error": "..."}` (Ollama) or `{"error": {"message": ...}}` (OpenAI)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", errors="replace").strip()
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    if isinstance(err, str):
        return err
    return body[:200].decode("utf-8", errors="replace").strip()


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare enough to ignore, the breaker's backoff applies
        return None


def _transport_kind(exc: requests.RequestException) -> str:
    """Map a requests exception to an error kind."""
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return "bad_response"  # the server cut the body short
    # urllib3 sometimes wraps a read timeout in a ConnectionError.
    if "timed out" in str(exc).lower():
        return "timeout"
    return "connection"


class EndpointPool:
    """Routes JSON requests over one or more base URLs of the same kind of server.

    Thread-safe; meant to be shared by all worker threads of a daemon. `concurrency` sizes the
    connection pool per endpoint, so N workers never wait for a socket (requests' default is 10
    and silently drops connections above it, which costs a TCP handshake per call).
    """

    def __init__(
        self,
        dependency: str,
        urls: Sequence[str],
        *,
        concurrency: int,
        connect_timeout: float,
        read_timeout: float,
        headers: dict[str, str] | None = None,
        observer: Observer | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        deadline_s: float | None = None,
        max_answer_bytes: int | None = None,
    ) -> None:
        """`deadline_s` bounds a whole exchange (request sent to body read), default twice the read
        timeout; `max_response_bytes` bounds a body. Both guard against a misbehaving server (a
        trickle never trips the per-read timeout; a huge answer would be held in memory)."""
        cleaned = [u.strip().rstrip("/") for u in urls if u and u.strip()]
        if not cleaned:
            raise ValueError(f"{dependency}: no base URL given")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError(f"{dependency}: duplicate base URLs in {cleaned}")
        for u in cleaned:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"{dependency}: base URL must start with http:// or https://: {redact(u)!r}")
        if concurrency < 1:
            raise ValueError(f"{dependency}: concurrency must be >= 1, got {concurrency}")
        self.dependency = dependency
        self.timeout = (connect_timeout, read_timeout)
        self.max_response_bytes = max_response_bytes
        self.deadline_s = deadline_s if deadline_s is not None else 2 * read_timeout
        # None: only max_response_bytes. Else a 2xx body beyond this is the input's fault (a
        # runaway generation), not the server's: ItemError "answer_too_large", no breaker.
        self.max_answer_bytes = max_answer_bytes
        self.observer = observer
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._breaker = Backoff(backoff_base, backoff_max)  # per endpoint: its failures in a row
        self._clock = clock
        self._lock = threading.Lock()
        self._endpoints = [_Endpoint(u) for u in cleaned]
        self.session = session if session is not None else requests.Session()
        # max_retries=0: retries are this class's decision (failover), never urllib3's behind our back.
        adapter = HTTPAdapter(pool_connections=len(cleaned), pool_maxsize=concurrency, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Content-Type": "application/json", "Accept": "application/json"})
        if headers:
            self.session.headers.update(headers)
        # Proxies and the CA bundle come from the environment as usual, but are read once here:
        # requests re-reads them (and looks for ~/.netrc) on every call, ~0.2 ms of CPU each.
        self._proxies: dict[str, dict[str, str]] = {}
        if session is None:
            self._proxies = {u: requests.utils.get_environ_proxies(u) for u in cleaned}
            ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if ca_bundle:
                self.session.verify = ca_bundle
            self.session.trust_env = False

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self._endpoints]

    def close(self) -> None:
        self.session.close()

    # -- routing and breaker ---------------------------------------------------------------------

    def _acquire(self, tried: set[str]) -> _Endpoint:
        with self._lock:
            now = self._clock()
            ready = [e for e in self._endpoints if e.down_until <= now and e.url not in tried]
            if not ready:
                raise self._all_down(now)
            # Least busy first; among equals the one that got fewest requests, so a sequential
            # caller still spreads over the fleet.
            ep = min(ready, key=lambda e: (e.in_flight, e.started))
            ep.in_flight += 1
            ep.started += 1
            return ep

    def _all_down(self, now: float) -> DependencyDown:
        failed = [e for e in self._endpoints if e.last_error is not None]
        latest = max(failed, key=lambda e: e.down_until) if failed else None
        kind = latest.last_error.kind if latest and latest.last_error else "unavailable"
        waiting = [e.down_until - now for e in self._endpoints if e.down_until > now]
        retry_after = min(waiting) if waiting else None
        prefix = f"{self.dependency}: "
        reasons = [str(e.last_error).removeprefix(prefix) for e in failed]
        if len(self._endpoints) == 1:
            message = reasons[0] if reasons else f"{self._endpoints[0].url} did not answer"
        else:
            message = f"all {len(self._endpoints)} endpoints are down: " + ("; ".join(reasons) or "no answer")
        return DependencyDown(self.dependency, message, kind=kind, retry_after=retry_after)

    def _release(self, ep: _Endpoint, error: DependencyDown | None) -> None:
        with self._lock:
            ep.in_flight -= 1
            if error is None:
                ep.failures = 0
                ep.down_until = 0.0
                ep.last_error = None
                return
            ep.failures += 1
            backoff = self._breaker.delay(ep.failures)
            if error.retry_after is not None:
                backoff = min(self.backoff_max, max(backoff, error.retry_after))
            ep.down_until = self._clock() + backoff
            ep.last_error = error

    def status(self) -> list[dict[str, Any]]:
        """A snapshot per endpoint (for STATUS lines, gauges and `jobpipe doctor`)."""
        with self._lock:
            now = self._clock()
            return [
                {
                    "url": e.url,
                    "up": e.down_until <= now and e.failures == 0,
                    "in_flight": e.in_flight,
                    "requests": e.started,
                    "consecutive_failures": e.failures,
                    "retry_in": max(0.0, e.down_until - now),
                    "last_error": str(e.last_error) if e.last_error else None,
                }
                for e in self._endpoints
            ]

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return {e.url: e.in_flight for e in self._endpoints}

    # -- calls -----------------------------------------------------------------------------------

    def post_json(self, op: str, path: str, payload: dict[str, Any], *, model: str | None = None) -> Any:
        """POST `payload` to the least busy endpoint; fail over on DependencyDown. Returns parsed JSON."""
        body = orjson.dumps(payload)
        return self._call(op, "POST", path, body, model)

    def get_json(self, op: str, path: str) -> Any:
        return self._call(op, "GET", path, None, None)

    def _call(self, op: str, method: str, path: str, body: bytes | None, model: str | None) -> Any:
        tried: set[str] = set()
        while True:
            ep = self._acquire(tried)  # raises DependencyDown when nothing is left to try
            tried.add(ep.url)
            try:
                result = self._once(ep.url, op, method, path, body, model)
            except DependencyDown as exc:
                self._release(ep, exc)
                log.debug("%s %s failed on %s: %s", op, path, ep.url, exc)
                continue
            except ItemError:
                self._release(ep, None)  # the endpoint is fine; the input is not
                raise
            self._release(ep, None)
            return result

    def _once(self, base: str, op: str, method: str, path: str, body: bytes | None, model: str | None) -> Any:
        start = time.perf_counter()
        outcome = OK
        try:
            return self._exchange(base, method, path, body, model, raw=False)
        except (DependencyDown, ItemError) as exc:
            outcome = exc.kind
            raise
        finally:
            self._observe(op, base, time.perf_counter() - start, outcome)

    def _exchange(
        self, base: str, method: str, path: str, body: bytes | None, model: str | None, *, raw: bool
    ) -> Any:
        url = base + path
        deadline = deadline_after(self.deadline_s)
        answer_cap: int | None = None
        try:
            resp = self.session.request(
                method, url, data=body, timeout=self.timeout, proxies=self._proxies.get(base), stream=True
            )
            with resp:  # read whole (bounded), then the connection goes back to the pool
                answer_cap = self.max_answer_bytes if 200 <= resp.status_code < 300 else None
                cap = min(self.max_response_bytes, answer_cap or self.max_response_bytes)
                content = read_body(resp, max_bytes=cap, deadline=deadline)
        except BodyLimitExceeded as exc:
            if exc.kind == "too_large" and answer_cap is not None and answer_cap <= self.max_response_bytes:
                head = exc.head.decode("utf-8", errors="replace")
                raise ItemError(
                    f"{redact(url)} answered more than {answer_cap:,} bytes (not read further): {head!r}",
                    kind=ANSWER_TOO_LARGE,
                ) from None
            kind = "timeout" if exc.kind == "deadline" else exc.kind
            raise DependencyDown(self.dependency, f"{method} {redact(url)}: {exc}", kind=kind) from None
        except requests.RequestException as exc:
            kind = _transport_kind(exc)
            raise DependencyDown(
                self.dependency, f"{method} {redact(url)}: {kind}: {redact(str(exc))}", kind=kind
            ) from None
        status = resp.status_code
        if 200 <= status < 300:
            if raw:
                return content
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError as exc:
                snippet = content[:80].decode("utf-8", errors="replace")
                raise DependencyDown(
                    self.dependency,
                    f"{url} answered {status} with a body that is not JSON: {snippet!r}",
                    kind="bad_response",
                ) from exc
        message = error_message(content)
        if status in (400, 413, 422):
            raise ItemError(f"{url} rejected the input ({status}): {message}", kind=BAD_INPUT)
        if status == 404 and (model is not None and _MODEL_NOT_FOUND.search(message)):
            raise DependencyDown(
                self.dependency,
                f"model {model!r} is not available on {base} ({message}); "
                f"run `ollama pull {model}` there (or fix the model name in the config)",
                kind="model_missing",
            )
        if status == 404:
            raise DependencyDown(
                self.dependency,
                f"{url} does not exist (404: {message}); is the provider flavour right?",
                kind="not_found",
            )
        if status in (401, 403):
            raise DependencyDown(
                self.dependency, f"{url} refused the credentials ({status}): {message}", kind="auth"
            )
        raise DependencyDown(
            self.dependency,
            f"{url} answered {status}: {message}",
            kind=f"http_{status}",
            retry_after=_retry_after(resp),
        )

    def _observe(self, op: str, endpoint: str, seconds: float, outcome: str) -> None:
        if self.observer is None:
            return
        try:
            self.observer(op, endpoint, seconds, outcome)
        except Exception:  # metrics must never break a model call
            log.exception("model-call observer failed")

    def probe(self, path: str, op: str = "ping") -> dict[str, dict[str, Any]]:
        """GET `path` on every endpoint, bypassing routing; a success closes that endpoint's breaker.

        Returns {url: {"ok": bool, "seconds": float, "error": str | None, "body": bytes | None}}.
        """
        out: dict[str, dict[str, Any]] = {}
        for ep in self._endpoints:
            start = time.perf_counter()
            try:
                content = self._exchange(ep.url, "GET", path, None, None, raw=True)
            except (DependencyDown, ItemError) as exc:
                seconds = time.perf_counter() - start
                self._observe(op, ep.url, seconds, exc.kind)
                out[ep.url] = {"ok": False, "seconds": seconds, "error": str(exc), "body": None}
                continue
            seconds = time.perf_counter() - start
            self._observe(op, ep.url, seconds, OK)
            with self._lock:
                ep.failures = 0
                ep.down_until = 0.0
                ep.last_error = None
            out[ep.url] = {"ok": True, "seconds": seconds, "error": None, "body": content}
        return out
