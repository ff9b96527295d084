"""A faithful fake of the BA Jobsuche (v6 search, v4 details) and BERUFENET APIs.

Follows docs/contracts/ba-jobsuche.md. Used by tests, bench/ and `jobpipe demo`;
free of pytest. Routes (each under its own base path, like the real hosts):

- `{url}/pc/v6/jobs` - search with `wo` (federal state with umlauts, city or postcode, `umkreis`
  km, default 25), `berufsfeld`, `angebotsart`, `arbeitgeber`, `veroeffentlichtseit` (days
  before the settable `population.today`; > 100 ignored), `arbeitszeit` (vz;tz;snw;ho;mj, any
  of), `befristung` (1;2), `zeitarbeit`, `homeoffice`, `was` (substring of title, occupation,
  employer). `page` 1-based, `size` <= `max_size` (100), page * size <= 10,000, else 400 in the
  gateway format. `ergebnisliste` and `facetten` are absent when nothing matches; facet values
  are valid values of the parameter of the same name (`bundesland` values go into `wo`).
  Stable order: newest publication first, then creation order.
- `{url}/pc/v4/jobs` - 404 (retired in August 2026).
- `{url}/pc/v4/jobdetails/{base64(referenznummer)}` padded or not; expired postings answer
  404 STELLENANGEBOT_NICHT_GEFUNDEN; partner postings carry `externeURL` and no description.
- `{berufenet_url}/berufe?page=N` (0-based, 20 per page) and `{berufenet_url}/berufe/{id}`.
- Every route checks `X-API-Key` (jobboerse-jobsuche / infosysbub-berufenet): missing -> 401,
  wrong -> 403 with an empty body (as the firewall does).

Fault injection (`fake.faults`, thread-safe, settable at any time; see Faults): 403/429/503
bursts for the next N requests or with a seeded probability, latency, truncated JSON, a
malformed (non-JSON) 200, a page with a `null` item, shape drift ("v4" field names or
"no_keys"). Dirty data lives in the population (`Population.generate(dirty_share=...)`,
`population.make_dirty(refnr, kind)`): NUL, invalid UTF-8, lone surrogates, 1 MB descriptions,
missing titles, invalid dates, coordinates out of range, duplicates in one page.

Counters: `fake.count(route=None, status=None)`, `fake.arrivals` (monotonic request times),
`fake.max_inflight`. A control API serves a fake running as a process: `GET /_fake/state`,
`POST /_fake/faults` (JSON: {"fail_next": {"n": 3, "status": 403}, "latency": 0.1, ...}),
`POST /_fake/reset`, `POST /_fake/population` ({"expire": [...], "modify": [...], "add": n,
"today": "YYYY-MM-DD", "expire_share": 0.1, "dirty": {"<refnr>": "<kind>"}}: kinds of DIRTY_KINDS
or HOSTILE_KINDS), `GET /_fake/refnrs?<search parameters>` (the live referenznummern a search
with them finds, without paging or cap: {"active": [...]}).

Run: `jobpipe sim ba --port 0 --postings 100000 --seed 1` (or `python -m jobpipe.sim.ba`) prints
the Jobsuche URL (first line) and the BERUFENET URL (second line), then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from jobpipe.sim.ba_data import (
    DIRTY_KINDS,
    HOSTILE_KINDS,
    OFFER_TYPES,
    STATES,
    Catalogue,
    FakePosting,
    Occupation,
    Population,
    SearchResult,
)
from jobpipe.sim.server import Listener, SimHandler, count, port_number, seconds, share, stop_on_signals

__all__ = ["DIRTY_KINDS", "HOSTILE_KINDS", "STATES", "Catalogue", "FakeBA", "Faults", "Population"]

JOBSUCHE_PREFIX = "/jobboerse/jobsuche-service"
BERUFENET_PREFIX = "/infosysbub/bnet/pc/v1"
JOBSUCHE_KEY = "jobboerse-jobsuche"
BERUFENET_KEY = "infosysbub-berufenet"
MAX_RESULTS = 10_000
BERUFE_PAGE_SIZE = 20
BAD_INPUT = "EINGABEN_UNVOLLSTAENDIG_ODER_FEHLERHAFT"
GONE = "STELLENANGEBOT_NICHT_GEFUNDEN"
ROUTES = ("search", "details", "berufe", "beruf", "control", "other")
_FAULT_BODIES = {
    403: (b"", "text/plain"),  # the web firewall: empty body
    429: (b'{"message":"Too Many Requests"}', "application/json"),
    500: (b'{"status":500,"error":"Internal Server Error"}', "application/json"),
    502: (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    503: (b"No server is available to handle this request.", "text/html"),
}


# ---------------------------------------------------------------- faults


@dataclass
class _Burst:
    remaining: int
    status: int
    route: str | None
    retry_after: str | None


@dataclass
class Decision:
    """What the fake does to one request (taken atomically when the request arrives)."""

    status: int | None = None  # answer this status instead of the real answer
    retry_after: str | None = None
    latency: float = 0.0
    truncate: bool = False
    malformed: bool = False
    null_item: bool = False
    drift: str | None = None


@dataclass
class Faults:
    """Fault switches. Methods and attributes are safe to use from any thread at any time.

    `route` arguments restrict a fault to "search", "details", "berufe" or "beruf" (None: all).
    """

    latency: float = 0.0  # seconds added to every answer
    latency_route: str | None = None
    drift: str | None = None  # None | "v4" (retired field names) | "no_keys" (neither key)
    drift_route: str | None = None
    _bursts: list[_Burst] = field(default_factory=list)
    _rate: tuple[float, int, str | None, random.Random] | None = None
    _once: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(
        self, n: int, status: int = 403, *, route: str | None = None, retry_after: float | str | None = None
    ) -> None:
        """The next `n` requests (of `route`) get `status` (403 empty body, 429, 5xx).

        `retry_after`: a Retry-After header, seconds or an HTTP date string.
        """
        with self._lock:
            ra = None if retry_after is None else str(retry_after)
            self._bursts.append(_Burst(n, status, route, ra))

    def fail_rate(
        self, probability: float, status: int = 403, *, seed: int = 0, route: str | None = None
    ) -> None:
        """Each request (of `route`) fails with `status` with this probability (seeded; 0 = off)."""
        with self._lock:
            self._rate = (probability, status, route, random.Random(seed)) if probability > 0 else None

    def set_latency(self, seconds: float, route: str | None = None) -> None:
        with self._lock:
            self.latency, self.latency_route = seconds, route

    def set_drift(self, mode: str | None, route: str | None = None) -> None:
        if mode not in (None, "v4", "no_keys"):
            raise ValueError(f"unknown drift mode {mode!r}")
        with self._lock:
            self.drift, self.drift_route = mode, route

    def truncate_next(self, n: int = 1, route: str | None = "search") -> None:
        """The next `n` 200 answers are cut in the middle (Content-Length matches the cut body)."""
        self._add_once("truncate", n, route)

    def malformed_next(self, n: int = 1, route: str | None = "search") -> None:
        """The next `n` 200 answers are an HTML page instead of JSON."""
        self._add_once("malformed", n, route)

    def null_item_next(self, n: int = 1) -> None:
        """The next `n` search pages with items carry a `null` item in the middle."""
        self._add_once("null_item", n, "search")

    def _add_once(self, kind: str, n: int, route: str | None) -> None:
        with self._lock:
            self._once.setdefault(kind, []).append((n, route))

    def clear(self) -> None:
        with self._lock:
            self.latency, self.latency_route, self.drift, self.drift_route = 0.0, None, None, None
            self._bursts.clear()
            self._rate = None
            self._once.clear()

    def pending(self) -> dict[str, int]:
        """How many one-shot faults are still armed, by kind (for tests and /_fake/state)."""
        with self._lock:
            out = {"fail": sum(b.remaining for b in self._bursts)}
            for kind, entries in self._once.items():
                out[kind] = sum(n for n, _ in entries)
            return out

    def take(self, route: str) -> Decision:
        d = Decision()
        with self._lock:
            if self.latency and self.latency_route in (None, route):
                d.latency = self.latency
            if self.drift and self.drift_route in (None, route):
                d.drift = self.drift
            for burst in self._bursts:
                if burst.remaining > 0 and burst.route in (None, route):
                    burst.remaining -= 1
                    d.status, d.retry_after = burst.status, burst.retry_after
                    break
            self._bursts = [b for b in self._bursts if b.remaining > 0]
            if d.status is None and self._rate is not None:
                probability, status, rate_route, rng = self._rate
                if rate_route in (None, route) and rng.random() < probability:
                    d.status = status
            if d.status is None:
                for kind in ("truncate", "malformed"):
                    if self._consume(kind, route):
                        setattr(d, kind, True)
        return d

    def take_null_item(self) -> bool:
        with self._lock:
            return self._consume("null_item", "search")

    def _consume(self, kind: str, route: str) -> bool:
        entries = self._once.get(kind)
        if not entries:
            return False
        for i, (n, r) in enumerate(entries):
            if r in (None, route):
                entries[i] = (n - 1, r)
                self._once[kind] = [e for e in entries if e[0] > 0]
                return True
        return False


# ---------------------------------------------------------------- server


class _BadRequest(Exception):
    def __init__(self, path: str, detail: str) -> None:
        super().__init__(detail)
        self.path, self.detail = path, detail


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(SimHandler):
    server_version = "FakeBA/1.0"


class FakeBA:
    """The fake BA server. Use as a context manager; `.url` is the Jobsuche base URL."""

    def __init__(
        self,
        population: Population | None = None,
        *,
        postings: int = 1000,
        seed: int = 0,
        catalogue: Catalogue | None = None,
        max_size: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = JOBSUCHE_KEY,
        berufenet_key: str = BERUFENET_KEY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.population = population or Population.generate(postings, seed)
        self.catalogue = catalogue or self.population.catalogue
        self.max_size = max_size
        self.api_key, self.berufenet_key = api_key, berufenet_key
        self.faults = Faults()
        self._clock = clock
        self._host = host
        self._listener = Listener(self, _Handler, host, port, name="fake-ba", poll_interval=0.02)
        self._stopping = threading.Event()
        self._stats_lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self.arrivals: collections.deque[float] = collections.deque(maxlen=100_000)
        self.inflight = 0
        self.max_inflight = 0
        self.errors: list[str] = []  # handler exceptions (a bug in the fake), for debugging
        self.last_headers: dict[str, str] = {}  # headers of the latest request (User-Agent checks)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeBA:
        self._listener.open()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()

    def __enter__(self) -> FakeBA:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._listener.is_open, "not started"
        return self._listener.port

    @property
    def root(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """Jobsuche base URL (the client appends /pc/v6/jobs, /pc/v4/jobdetails/...)."""
        return self.root + JOBSUCHE_PREFIX

    @property
    def berufenet_url(self) -> str:
        return self.root + BERUFENET_PREFIX

    # ------------------------------------------------------------ counters

    def count(self, route: str | None = None, status: int | None = None) -> int:
        """Requests answered, optionally only of one route and/or status."""
        with self._stats_lock:
            return sum(
                n
                for (r, s), n in self._counts.items()
                if (route is None or r == route) and (status is None or s == status)
            )

    def counts(self) -> dict[str, dict[int, int]]:
        with self._stats_lock:
            out: dict[str, dict[int, int]] = {}
            for (r, s), n in sorted(self._counts.items()):
                out.setdefault(r, {})[s] = n
            return out

    def reset_counters(self) -> None:
        with self._stats_lock:
            self._counts.clear()
            self.arrivals.clear()
            self.max_inflight = 0

    # ------------------------------------------------------------ dispatch

    def _route(self, path: str) -> tuple[str, str]:
        if path.startswith(JOBSUCHE_PREFIX + "/"):
            rest = path[len(JOBSUCHE_PREFIX) :]
            if rest == "/pc/v6/jobs":
                return "search", rest
            if rest.startswith("/pc/v4/jobdetails/"):
                return "details", rest
            return "other", rest
        if path.startswith(BERUFENET_PREFIX + "/"):
            rest = path[len(BERUFENET_PREFIX) :]
            if rest == "/berufe":
                return "berufe", rest
            if rest.startswith("/berufe/"):
                return "beruf", rest
            return "other", rest
        if path.startswith("/_fake/"):
            return "control", path
        return "other", path

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        route, rest = self._route(parts.path)
        with self._stats_lock:
            self.arrivals.append(self._clock())
            self.last_headers = dict(handler.headers.items())
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            answer = self._answer(handler, method, route, rest, parts.query)
        except Exception as exc:  # a bug in the fake: answer 500 and keep it for the test to see
            self.errors.append(f"{route} {handler.path}: {exc!r}")
            answer = Answer(500, b'{"error":"fake BA bug"}')
        finally:
            with self._stats_lock:
                self.inflight -= 1
        with self._stats_lock:
            self._counts[(route, answer.status)] += 1
        try:
            handler.send_response(answer.status)
            handler.send_header("Content-Type", answer.content_type)
            handler.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if answer.body:
                handler.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def _answer(
        self, handler: BaseHTTPRequestHandler, method: str, route: str, rest: str, query: str
    ) -> Answer:
        if route == "control":
            if method == "GET" and rest == "/_fake/refnrs":
                # the live postings a search with these parameters finds (no paging, no cap)
                params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
                found = self.population.search(self._filters(params)).indices
                active = [self.population.postings[i].refnr for i in found]
                return Answer(200, orjson.dumps({"active": active}))
            return self._control(handler, method, rest)
        decision = self.faults.take(route)
        if decision.latency > 0:
            self._stopping.wait(decision.latency)
        if decision.status is not None:
            body, ctype = _FAULT_BODIES.get(decision.status, (b"", "text/plain"))
            headers = {"Retry-After": decision.retry_after} if decision.retry_after else {}
            return Answer(decision.status, body, ctype, headers)
        if method != "GET":
            return Answer(405, b"", "text/plain", {"Allow": "GET"})
        expected = self.berufenet_key if route in ("berufe", "beruf") else self.api_key
        key = handler.headers.get("X-API-Key")
        if key is None:
            return Answer(401, b'{"code":401,"message":"Unauthorized: X-API-Key missing"}')
        if key != expected:
            return Answer(403, b"", "text/plain")
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            if route == "search":
                answer = self._search(params, decision)
            elif route == "details":
                answer = self._details(rest[len("/pc/v4/jobdetails/") :], decision)
            elif route == "berufe":
                answer = self._berufe(params)
            elif route == "beruf":
                answer = self._beruf(rest[len("/berufe/") :])
            elif rest == "/pc/v4/jobs":
                answer = Answer(404, b'{"status":404,"error":"Not Found","path":"/pc/v4/jobs"}')
            else:
                answer = Answer(404, b'{"status":404,"error":"Not Found"}')
        except _BadRequest as exc:
            answer = self._bad_request(exc.path, exc.detail)
        if answer.status == 200:
            if decision.malformed:
                answer = Answer(
                    200,
                    b"<html><body>Wartungsarbeiten - bitte versuchen Sie es sp\xc3\xa4ter "
                    b"erneut</body></html>",
                    "application/json",
                )
            elif decision.truncate:
                answer = Answer(200, answer.body[: max(1, len(answer.body) // 2)], answer.content_type)
        return answer

    @staticmethod
    def _bad_request(path: str, detail: str) -> Answer:
        body = {
            "timestamp": datetime.now().isoformat(timespec="milliseconds"),
            "logref": f"{random.getrandbits(20):05x}",
            "messages": [{"code": BAD_INPUT, "path": path, "detail": detail}],
        }
        return Answer(400, orjson.dumps(body))

    # ------------------------------------------------------------ Jobsuche

    @staticmethod
    def _int_param(params: dict[str, str], name: str, default: int | None) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise _BadRequest(name, f"'{raw}' ist keine gültige Zahl") from None

    def _filters(self, params: dict[str, str]) -> dict[str, Any]:
        f: dict[str, Any] = {}
        for name in ("wo", "berufsfeld", "arbeitgeber", "was"):
            if params.get(name, "").strip():
                f[name] = params[name].strip()
        if "wo" in f and (umkreis := self._int_param(params, "umkreis", None)) is not None:
            if not 0 <= umkreis <= 200:
                raise _BadRequest("umkreis", "umkreis muss zwischen 0 und 200 liegen")
            f["umkreis"] = umkreis
        if (offer := self._int_param(params, "angebotsart", None)) is not None:
            if offer not in OFFER_TYPES:
                raise _BadRequest("angebotsart", f"unbekannte angebotsart {offer}")
            f["angebotsart"] = offer
        days = self._int_param(params, "veroeffentlichtseit", None)
        if days is not None:
            if days < 0:
                raise _BadRequest("veroeffentlichtseit", "veroeffentlichtseit muss >= 0 sein")
            if days <= 100:  # larger values are silently ignored, as the live API does
                f["veroeffentlichtseit"] = days
        if params.get("arbeitszeit"):
            codes = tuple(sorted({c.strip() for c in params["arbeitszeit"].split(";") if c.strip()}))
            unknown = [c for c in codes if c not in ("vz", "tz", "snw", "ho", "mj")]
            if unknown:
                raise _BadRequest("arbeitszeit", f"unbekannte arbeitszeit {unknown}")
            f["arbeitszeit"] = codes
        if params.get("befristung"):
            try:
                values = tuple(sorted({int(c) for c in params["befristung"].split(";") if c.strip()}))
            except ValueError:
                raise _BadRequest("befristung", "befristung: 1;2") from None
            if any(v not in (1, 2) for v in values):
                raise _BadRequest("befristung", "befristung: 1;2")
            f["befristung"] = values
        if params.get("zeitarbeit") in ("true", "false"):
            f["zeitarbeit"] = params["zeitarbeit"] == "true"
        if params.get("homeoffice") == "nv_true":
            f["homeoffice"] = True
        return f

    def _search(self, params: dict[str, str], decision: Decision) -> Answer:
        page = self._int_param(params, "page", 1)
        size = self._int_param(params, "size", 25)
        assert page is not None and size is not None
        if page < 1:
            raise _BadRequest("page", "page muss größer oder gleich 1 sein")
        if not 1 <= size <= self.max_size:
            raise _BadRequest("size", f"size muss zwischen 1 und {self.max_size} liegen")
        if page * size > MAX_RESULTS:
            raise _BadRequest("page", f"page * size darf {MAX_RESULTS} nicht überschreiten")
        result = self.population.search(self._filters(params))
        if decision.drift == "no_keys":
            return Answer(200, orjson.dumps({"ergebnisse": [], "anzahl": len(result.indices)}))
        if decision.drift == "v4":
            return Answer(200, self._v4_page(result, page, size))
        return Answer(200, self._page(result, page, size))

    def _page(self, result: SearchResult, page: int, size: int) -> bytes:
        total = len(result.indices)
        pop = self.population
        chosen = result.indices[(page - 1) * size : page * size]
        parts = [b"{"]
        if chosen:
            items = []
            postings = pop.postings
            distances = result.distances
            for idx in chosen:
                p = postings[idx]
                data = pop.item_json(p)
                if distances is not None:
                    data = b'{"entfernung":"%d",' % distances[idx] + data[1:]
                items.append(data)
                if p.dirty == "duplicate":
                    items.append(data)
            if self.faults.take_null_item():
                items.insert(len(items) // 2, b"null")
            parts += [b'"ergebnisliste":[', b",".join(items), b"],"]
        parts.append(b'"maxErgebnisse":%d,"page":%d,"size":%d' % (total, page, size))
        if result.wo_output is not None:
            parts += [b',"woOutput":', orjson.dumps(result.wo_output)]
        if total:
            parts += [b',"facetten":', result.facet_bytes()]
        parts.append(b"}")
        return b"".join(parts)

    def _v4_item(self, p: FakePosting) -> dict[str, Any]:
        item = self.population.item_dict(p)
        renames = {
            "referenznummer": "refnr",
            "stellenangebotsTitel": "titel",
            "firma": "arbeitgeber",
            "aenderungsdatum": "modifikationsTimestamp",
            "externeURL": "externeUrl",
        }
        out = {renames.get(k, k): v for k, v in item.items() if k != "stellenlokationen"}
        locations = item.get("stellenlokationen") or []
        if locations:
            out["arbeitsort"] = {
                **locations[0]["adresse"],
                "koordinaten": {"lat": locations[0]["breite"], "lon": locations[0]["laenge"]},
            }
        return out

    def _v4_page(self, result: SearchResult, page: int, size: int) -> bytes:
        postings = self.population.postings
        chosen = result.indices[(page - 1) * size : page * size]
        body: dict[str, Any] = {"maxErgebnisse": len(result.indices), "page": page, "size": size}
        if chosen:
            body["stellenangebote"] = [self._v4_item(postings[i]) for i in chosen]
        return orjson.dumps(body)

    def _details(self, segment: str, decision: Decision) -> Answer:
        try:
            refnr = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=False)
            refnr_text = refnr.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise _BadRequest("referenznummer", "ungültige Referenznummer") from None
        p = self.population.get(refnr_text)
        if p is None or p.expired:
            return Answer(404, orjson.dumps({"messages": [{"code": GONE}]}))
        if decision.drift == "v4":
            item = self._v4_item(p)
            if p.external_url is None:
                item["stellenbeschreibung"] = self.population.description(p)
            return Answer(200, orjson.dumps(item))
        if decision.drift == "no_keys":
            return Answer(200, orjson.dumps({"stellenangebot": {"titel": p.title}}))
        return Answer(200, self.population.details_json(p))

    # ------------------------------------------------------------ BERUFENET

    def _berufe(self, params: dict[str, str]) -> Answer:
        page = self._int_param(params, "page", 0)
        assert page is not None
        if page < 0:
            raise _BadRequest("page", "page muss >= 0 sein")
        words = params.get("suchwoerter", "*").strip()
        occupations = self.catalogue.occupations
        if words and words != "*":
            needle = words.replace("*", "").casefold()
            occupations = tuple(o for o in occupations if needle in o.name.casefold())
        total = len(occupations)
        pages = (total + BERUFE_PAGE_SIZE - 1) // BERUFE_PAGE_SIZE
        chosen = occupations[page * BERUFE_PAGE_SIZE : (page + 1) * BERUFE_PAGE_SIZE]
        base = f"{self.berufenet_url}/berufe?suchwoerter={words}"
        body: dict[str, Any] = {}
        if chosen:
            body["_embedded"] = {"berufSucheList": [self._beruf_summary(o) for o in chosen]}
        links: dict[str, Any] = {"self": {"href": f"{base}&page={page}"}}
        if page + 1 < pages:
            links["next"] = {"href": f"{base}&page={page + 1}"}
        body["_links"] = links
        body["page"] = {"size": BERUFE_PAGE_SIZE, "totalElements": total, "totalPages": pages, "number": page}
        return Answer(200, orjson.dumps(body), "application/hal+json")

    def _beruf_summary(self, o: Occupation) -> dict[str, Any]:
        group = o.kldb[:4]
        return {
            "id": o.id,
            "kurzBezeichnungNeutral": o.name,
            "bkgr": {"id": int(group), "bezeichnung": self.catalogue.kldb_labels.get(group, "")},
        }

    def _beruf_object(self, o: Occupation) -> dict[str, Any]:
        label = self.catalogue.kldb_labels.get(o.kldb, "")
        return {
            "id": o.id,
            "kurzBezeichnungNeutral": o.name,
            "bezeichnungNeutral": o.name,
            "kldb2010": o.kldb2010,
            "codenr": o.codenr,
            "steckbrief": {
                "kurz": f"<p>{o.masculine} bzw. {o.feminine}: ein Beruf aus dem Bereich {o.berufsfeld}.</p>",
                "lang": f"<p>{o.name} arbeiten im Bereich <b>{label}</b>.</p><ul><li>Aufgaben</li></ul>",
            },
            "infofelder": [
                {
                    "id": "a01",
                    "ueberschrift": "Aufgaben und Tätigkeiten kompakt",
                    "content": f"<p>{o.name} übernehmen Aufgaben im Bereich {label}.</p>",
                },
                {
                    "id": "a02",
                    "ueberschrift": "Arbeitsorte",
                    "content": "<p>Betriebe, Büros, Werkstätten</p>",
                },
            ],
        }

    def _beruf(self, segment: str) -> Answer:
        try:
            ident = int(segment)
        except ValueError:
            raise _BadRequest("id", f"'{segment}' ist keine gültige id") from None
        o = self.catalogue.by_id.get(ident)
        if o is None:
            return Answer(404, b'{"messages":[{"code":"BERUF_NICHT_GEFUNDEN"}]}')
        objects = [self._beruf_object(o)]
        if ident % 20 == 0:  # some occupations answer with two objects (a related entry)
            related = [x for x in self.catalogue.by_kldb.get(o.kldb, ()) if x is not o]
            if related:
                objects.append(self._beruf_object(related[0]))
        return Answer(200, orjson.dumps(objects))

    # ------------------------------------------------------------ control API (fake as a process)

    def _control(self, handler: BaseHTTPRequestHandler, method: str, path: str) -> Answer:
        if method == "GET" and path == "/_fake/state":
            state = {
                "counts": {r: {str(s): n for s, n in c.items()} for r, c in self.counts().items()},
                "postings": len(self.population),
                "active": len(self.population.refnrs(active=True)),
                "today": self.population.today.isoformat(),
                "max_inflight": self.max_inflight,
                "faults": self.faults.pending(),
                "errors": self.errors[-10:],
            }
            return Answer(200, orjson.dumps(state))
        if method != "POST":
            return Answer(405, b"", "text/plain")
        length = int(handler.headers.get("Content-Length") or 0)
        try:
            data = orjson.loads(handler.rfile.read(length) or b"{}")
        except orjson.JSONDecodeError as exc:
            return Answer(400, orjson.dumps({"error": str(exc)}))
        if path == "/_fake/reset":
            self.faults.clear()
            self.reset_counters()
            return Answer(200, b"{}")
        if path == "/_fake/faults":
            f = self.faults
            if "fail_next" in data:
                f.fail_next(**data["fail_next"])
            if "fail_rate" in data:
                f.fail_rate(**data["fail_rate"])
            if "latency" in data:
                f.set_latency(float(data["latency"]), data.get("latency_route"))
            if "drift" in data:
                f.set_drift(data["drift"], data.get("drift_route"))
            for kind in ("truncate_next", "malformed_next"):
                if kind in data:
                    getattr(f, kind)(**data[kind])
            if "null_item_next" in data:
                f.null_item_next(int(data["null_item_next"]))
            return Answer(200, orjson.dumps(f.pending()))
        if path == "/_fake/population":
            pop, out = self.population, {}
            if "today" in data:
                pop.today = date.fromisoformat(data["today"])
            if "expire" in data:
                pop.expire(data["expire"])
            if "expire_share" in data:
                out["expired"] = pop.expire_share(float(data["expire_share"]), int(data.get("seed", 0)))
            for refnr in data.get("modify", []):
                pop.modify(refnr)
            if "add" in data:
                out["added"] = pop.add(int(data["add"]))
            for refnr, kind in data.get("dirty", {}).items():
                pop.make_dirty(refnr, kind)
            return Answer(200, orjson.dumps(out))
        return Answer(404, b"{}")


# ---------------------------------------------------------------- process entry point


def _catalogue(parser: argparse.ArgumentParser, path: str) -> Catalogue:
    """--catalogue's file, or argparse's one-line error (exit 2) naming what is wrong with it."""
    try:
        return Catalogue.from_berufenet_file(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        parser.error(f"--catalogue {path}: {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobpipe sim ba", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=0)
    parser.add_argument("--postings", type=count, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expired-share", type=share, default=0.05)
    parser.add_argument("--partner-share", type=share, default=0.08)
    parser.add_argument("--dirty-share", type=share, default=0.0)
    parser.add_argument("--occupations", type=count, default=None, help="catalogue size (default: all names)")
    parser.add_argument("--today", type=date.fromisoformat, default=None, help="YYYY-MM-DD (default: today)")
    parser.add_argument("--max-size", type=count, default=100)
    parser.add_argument("--latency", type=seconds, default=0.0)
    parser.add_argument("--catalogue", help="BERUFENET detail objects (JSON list) to draw occupations from")
    parser.add_argument(
        "--label-share",
        type=share,
        default=1.0,
        help="share of postings that carry their occupation label (hauptberuf)",
    )
    args = parser.parse_args(argv)
    population = Population.generate(
        args.postings,
        args.seed,
        expired_share=args.expired_share,
        partner_share=args.partner_share,
        dirty_share=args.dirty_share,
        occupations=args.occupations,
        catalogue=_catalogue(parser, args.catalogue) if args.catalogue else None,
        today=args.today,
    )
    population.label_share = args.label_share
    stop = stop_on_signals()
    with FakeBA(population, max_size=args.max_size, host=args.host, port=args.port) as fake:
        fake.faults.set_latency(args.latency)
        print(fake.url, flush=True)
        print(fake.berufenet_url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
