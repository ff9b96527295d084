"""HTTP client for the BA Jobsuche and BERUFENET APIs: politeness, retries, error mapping.

What it does (the wire format itself lives in jobpipe.ba.wire):
- a global request-rate limit (shared by all threads) and a small concurrency cap, because the
  BA's web firewall answers bursts with 403;
- exponential backoff with full jitter on 403/429/5xx, a plain 404 and network errors,
  honouring Retry-After; after `max_retries` it raises DependencyDown("ba_api", kind=...);
- a 400 is our bug (a bad query), raised at once as BAQueryError naming the BA's code and path;
- details: 404 STELLENANGEBOT_NICHT_GEFUNDEN is `Gone` (the posting expired); a 404 without
  that code is *not* gone (a gateway or routing problem) and is retried like an outage.
Clocks, sleep and the random source are arguments so tests never wait for real backoff.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from jobpipe.ba.wire import (
    BerufDetail,
    BerufePage,
    PostingDetails,
    SchemaError,
    SearchPage,
    encode_refnr,
    error_messages,
    is_gone,
    parse_beruf_detail,
    parse_berufe_page,
    parse_details,
    parse_search_page,
    sample_of,
)
from jobpipe.errors import DependencyDown, ItemError
from jobpipe.httpio import BodyLimitExceeded, deadline_after, read_body

JOBSUCHE_URL = "https://rest.arbeitsagentur.de/jobboerse/jobsuche-service"
BERUFENET_URL = "https://rest.arbeitsagentur.de/infosysbub/bnet/pc/v1"
JOBSUCHE_KEY = "jobboerse-jobsuche"
BERUFENET_KEY = "infosysbub-berufenet"
DEFAULT_USER_AGENT = "jobpipe/0.1 (+https://example.invalid/jobpipe)"
MAX_RESULTS = 10_000  # page * size must not exceed this (the API answers 400)
DEPENDENCY = "ba_api"

# Statuses worth retrying: the firewall (403), throttling (429), the gateway (5xx) and a 404
# without the gone code (an endpoint that vanished or a flaky gateway, never "expired").
_RETRY_STATUSES = frozenset({403, 404, 408, 425, 429, 500, 502, 503, 504})

Observer = Callable[[str, float, str], None]


class BAQueryError(ItemError):
    """The BA rejected our request with 400: a bug in the query, not an outage. Never retried."""

    def __init__(self, message: str, code: str | None = None, path: str | None = None) -> None:
        super().__init__(message, kind="http_400")
        self.code = code
        self.path = path


@dataclass(frozen=True, slots=True)
class Gone:
    """The details endpoint said 404 STELLENANGEBOT_NICHT_GEFUNDEN: the posting expired."""

    refnr: str


class RateLimiter:
    """A token bucket shared by threads (GCRA form: each caller reserves the next free slot).

    `rate_per_s` None or <= 0 disables it. `burst` requests may go back to back after a pause.
    Sleeping happens outside the lock, so reservations stay in arrival order.
    """

    def __init__(
        self,
        rate_per_s: float | None,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s and rate_per_s > 0 else 0.0
        self._tolerance = max(0, burst - 1) * self.interval
        self._clock, self._sleep = clock, sleep
        self._tat: float | None = None  # theoretical arrival time of the next request
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self._clock()
            tat = now if self._tat is None else max(self._tat, now)
            wait = max(0.0, tat - self._tolerance - now)
            self._tat = tat + self.interval
        if wait > 0:
            self._sleep(wait)
        return wait


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent/garbage."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_wall)


class BAClient:
    """Client for the BA Jobsuche (search, details) and BERUFENET (occupations) APIs.

    Thread-safe: one instance is shared by a daemon's worker threads, which is what makes the
    rate limit and the concurrency cap global.
    """

    def __init__(
        self,
        base_url: str = JOBSUCHE_URL,
        api_key: str = JOBSUCHE_KEY,
        *,
        berufenet_url: str = BERUFENET_URL,
        berufenet_api_key: str = BERUFENET_KEY,
        user_agent: str = DEFAULT_USER_AGENT,
        session: requests.Session | None = None,
        max_concurrency: int = 2,
        rate_limit_per_s: float | None = 5.0,
        rate_burst: int = 1,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        deadline_s: float | None = None,
        max_response_bytes: int = 16 << 20,
        max_retries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_description_chars: int = 100_000,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        observer: Observer | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.berufenet_url = berufenet_url.rstrip("/")
        self._keys = {"jobsuche": api_key, "berufenet": berufenet_api_key}
        self.user_agent = user_agent
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            # The default pool keeps 10 connections; more threads than that would reconnect.
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(10, max_concurrency))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.timeout = (connect_timeout, read_timeout)
        # Per attempt: the whole exchange, body included, by the deadline (default 3 read timeouts),
        # and no answer bigger than the cap: a trickling or runaway server is a failed attempt.
        self.deadline_s = deadline_s if deadline_s is not None else 3 * read_timeout
        self.max_response_bytes = max_response_bytes
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_description_chars = max_description_chars
        self._sleep, self._clock, self._wall_clock = sleep, clock, wall_clock
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._observer = observer
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self.limiter = RateLimiter(rate_limit_per_s, rate_burst, clock=clock, sleep=sleep)

    # ------------------------------------------------------------ public API

    def search(self, params: Mapping[str, Any], page: int, size: int) -> SearchPage:
        """One page of `GET /pc/v6/jobs`. `page` is 1-based; page * size must stay <= 10,000."""
        if "page" in params or "size" in params:
            raise ValueError("pass page and size as arguments, not in params")
        if page < 1 or size < 1:
            raise BAQueryError(f"page and size must be >= 1 (page={page}, size={size})", path="page")
        if page * size > MAX_RESULTS:
            raise BAQueryError(
                f"page * size = {page * size} exceeds the BA cap of {MAX_RESULTS}: "
                "split the query into smaller partitions",
                path="page",
            )
        query = {**params, "page": page, "size": size}
        return self._call(
            "search", "jobsuche", f"{self.base_url}/pc/v6/jobs", query, parse_search_page
        )

    def details(self, refnr: str) -> PostingDetails | Gone:
        """`GET /pc/v4/jobdetails/{base64}`: the posting with its description, or Gone."""
        url = f"{self.base_url}/pc/v4/jobdetails/{encode_refnr(refnr)}"

        def parse(body: bytes) -> PostingDetails:
            return parse_details(body, self.max_description_chars)

        return self._call("details", "jobsuche", url, None, parse, gone=refnr)

    def berufe_page(self, n: int, params: Mapping[str, Any] | None = None) -> BerufePage:
        """`GET /berufe?page=n` (0-based, 20 per page) of BERUFENET; all occupations by default."""
        if n < 0:
            raise ValueError("BERUFENET pages are 0-based: n must be >= 0")
        query = {"suchwoerter": "*", **(params or {}), "page": n}
        return self._call(
            "berufe_page", "berufenet", f"{self.berufenet_url}/berufe", query, parse_berufe_page
        )

    def beruf_detail(self, beruf_id: int) -> list[BerufDetail]:
        """`GET /berufe/{id}` of BERUFENET: the occupation's objects (usually one)."""
        url = f"{self.berufenet_url}/berufe/{int(beruf_id)}"
        return self._call("beruf_detail", "berufenet", url, None, parse_beruf_detail)

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> BAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _observe(self, op: str, seconds: float, outcome: str) -> None:
        if self._observer is not None:
            try:
                self._observer(op, seconds, outcome)
            except Exception:  # metrics must never break a request
                pass

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^attempt)]."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        with self._rng_lock:
            return self._rng.uniform(0.0, ceiling)

    def _call(
        self,
        op: str,
        api: str,
        url: str,
        params: Mapping[str, Any] | None,
        parse: Callable[[bytes], Any],
        gone: str | None = None,
    ) -> Any:
        headers = {"X-API-Key": self._keys[api], "User-Agent": self.user_agent, "Accept": "application/json"}
        kind, detail, retry_after = "connection", "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self._backoff(attempt - 1)
                if retry_after is not None:
                    if retry_after > self.backoff_max_s:
                        # Told to stay away longer than we would wait in a call: let the daemon
                        # back off as a whole instead of blocking a worker.
                        raise DependencyDown(
                            DEPENDENCY,
                            f"{op}: {detail}; Retry-After {retry_after:.0f}s",
                            kind=kind,
                            retry_after=retry_after,
                        )
                    delay = retry_after
                self._sleep(delay)
            self.limiter.acquire()
            retry_after = None
            with self._slots:
                started = self._clock()
                try:
                    deadline = deadline_after(self.deadline_s)
                    response = self.session.get(
                        url, params=params, headers=headers, timeout=self.timeout, stream=True
                    )
                    with response:
                        body = read_body(response, max_bytes=self.max_response_bytes, deadline=deadline)
                except BodyLimitExceeded as exc:
                    kind = "timeout" if exc.kind == "deadline" else exc.kind
                    detail = f"{exc} ({self.deadline_s:g} s deadline)" if exc.kind == "deadline" else str(exc)
                except requests.Timeout as exc:
                    kind, detail = "timeout", f"timeout after {self.timeout}: {exc.__class__.__name__}"
                except requests.RequestException as exc:
                    kind, detail = "connection", f"{exc.__class__.__name__}: {str(exc)[:200]}"
                else:
                    kind = ""
                seconds = self._clock() - started
            if kind:
                self._observe(op, seconds, kind)
                continue
            status = response.status_code
            if status == 200:
                try:
                    result = parse(body)
                except SchemaError as exc:
                    self._observe(op, seconds, "schema_error")
                    raise SchemaError(f"{op} {response.url}: {exc.reason}", exc.sample) from None
                self._observe(op, seconds, "ok")
                return result
            if gone is not None and is_gone(status, body):
                self._observe(op, seconds, "gone")
                return Gone(gone)
            kind = f"http_{status}"
            self._observe(op, seconds, kind)
            if status == 400:
                raise self._query_error(op, response, body)
            if status == 401:
                raise DependencyDown(DEPENDENCY, f"{op}: 401 unauthorised: check the API key", kind=kind)
            if status not in _RETRY_STATUSES and status < 500:
                raise DependencyDown(
                    DEPENDENCY, f"{op}: unexpected HTTP {status} from {response.url}", kind=kind
                )
            detail = f"HTTP {status} from {response.url}: {sample_of(body, 120)!r}"
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
        raise DependencyDown(
            DEPENDENCY,
            f"{op}: giving up after {self.max_retries + 1} attempts: {detail}",
            kind=kind,
            retry_after=retry_after,
        )

    @staticmethod
    def _query_error(op: str, response: requests.Response, body: bytes) -> BAQueryError:
        messages = error_messages(body)
        first = messages[0] if messages else {}
        text = "; ".join(
            f"{m.get('code', '?')} at {m.get('path', '?')}" + (f" ({m['detail']})" if m.get("detail") else "")
            for m in messages
        )
        text = text or sample_of(body, 200) or "empty body"
        return BAQueryError(
            f"{op}: the BA rejected the request as invalid (400 {text}) for {response.url}",
            code=first.get("code"),
            path=first.get("path"),
        )
