"""The model-call interface: embeddings and JSON-answering chat, over Ollama or an OpenAI-compatible server.

Daemons depend only on `EmbeddingClient` and `ChatClient` (defined here) and get one from
`jobpipe.models.make_embedding_client` / `make_chat_client`; the flavour modules
(`jobpipe.models.ollama`, `jobpipe.models.openai`) only build payloads and read answers.
Transport, fleet routing, breaker, timeouts: `jobpipe.models.endpoints`.

Error contract (what the queue does with it):
- per item: `ItemError` kinds `bad_input` (the server answered 400 for this text), `dimension`
  (the vector has the wrong length), `empty_input` (nothing to embed), `malformed_answer`
  (the LLM's JSON is invalid, cut or misses required fields) -> charge that item an attempt;
- whole call: `DependencyDown("ollama", ..., kind=...)` -> back off, charge nothing.
"""

from __future__ import annotations

import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, Self, TypedDict, Unpack

import orjson

from jobpipe.errors import DependencyDown, ItemError
from jobpipe.models.endpoints import EndpointPool
from jobpipe.text import clean_text

Role = Literal["query", "document"]
ROLES: tuple[Role, ...] = ("query", "document")
PROVIDERS = ("ollama", "openai")
DEPENDENCY = "ollama"  # the dependency name in errors, metrics and STATUS, whatever the flavour

# Well-known role prefixes, first match on the model name wins. Retrieval models trained with
# prefixes lose a lot of quality without them; unknown models get none.
KNOWN_PREFIXES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"nomic-embed-text", re.I), "search_query: ", "search_document: "),
    # intfloat e5 family: multilingual-e5-small, e5-large-v2, jeffh/intfloat-multilingual-e5-large...
    (re.compile(r"(^|[/:_-])(multilingual-)?e5([-_.:]|$)", re.I), "query: ", "passage: "),
    (re.compile(r"mxbai-embed-large", re.I), "Represent this sentence for searching relevant passages: ", ""),
)


def known_prefixes(model: str) -> tuple[str, str]:
    """(query_prefix, document_prefix) for a model name from KNOWN_PREFIXES; ("", "") if unknown."""
    for pattern, query, document in KNOWN_PREFIXES:
        if pattern.search(model):
            return query, document
    return "", ""


def bad_response(what: str) -> DependencyDown:
    """The server answered, but not in the shape its API promises (for the flavour modules)."""
    return DependencyDown(DEPENDENCY, f"unexpected answer shape: {what}", kind="bad_response")


def _explicit(prefix: str | None) -> str | None:
    """None and "auto" mean: use the table."""
    return None if prefix is None or prefix == "auto" else prefix


class _ClientBase(ABC):
    """What both interfaces share: the endpoint pool, liveness and the model list."""

    provider: str
    model: str

    def __init__(self, pool: EndpointPool, model: str) -> None:
        if not model or not model.strip():
            raise ValueError("model name is empty")
        self.pool = pool
        self.model = model.strip()

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def ping(self) -> dict[str, dict[str, Any]]:
        """Cheap liveness of every endpoint: {url: {"ok", "seconds", "error", ...}}. Never raises."""

    @abstractmethod
    def list_models(self) -> list[dict[str, Any]]:
        """Models the server offers: [{"name": str, "digest": str | None, ...}]. Raises DependencyDown."""

    def model_digest(self) -> str | None:
        """The digest of `self.model` on the server (Ollama /api/tags), or None where the API has none."""
        for m in self.list_models():
            name = m.get("name") or ""
            if self.model in (name, name.removesuffix(":latest")):
                return m.get("digest")
        return None


class EmbeddingOptions(TypedDict, total=False):
    """What every embedding client takes, whatever the flavour (declared once for all of them)."""

    dimensions: int | None
    query_prefix: str | None
    document_prefix: str | None


class EmbeddingClient(_ClientBase):
    """Embeds texts in batches. Thread-safe: all workers of a daemon share one instance.

    `dimensions`: None is learnt from the first answer, then enforced. Prefixes: None or "auto" =
    KNOWN_PREFIXES by model name (unless `use_table_prefixes` is off), a string (even "") overrides.
    """

    dimensions: int | None

    def __init__(
        self,
        pool: EndpointPool,
        model: str,
        *,
        use_table_prefixes: bool = True,
        **options: Unpack[EmbeddingOptions],
    ) -> None:
        super().__init__(pool, model)
        dimensions = options.get("dimensions")
        if dimensions is not None and dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {dimensions}")
        # None: learnt from the first answer, then enforced (configure it: the index needs it anyway).
        self.dimensions = dimensions
        self._dim_lock = threading.Lock()
        table_q, table_d = known_prefixes(self.model) if use_table_prefixes else ("", "")
        q, d = _explicit(options.get("query_prefix")), _explicit(options.get("document_prefix"))
        self.prefixes: dict[Role, str] = {
            "query": table_q if q is None else q,
            "document": table_d if d is None else d,
        }

    @abstractmethod
    def _embed_request(self, texts: list[str], role: Role) -> list[Any]:
        """One HTTP call for `texts` (already prefixed). Returns the raw vectors in input order.

        Raises ItemError(kind="bad_input") on a 400 (the caller splits), DependencyDown otherwise.
        """

    def embed_batch(self, texts: Sequence[str], role: Role = "document") -> list[list[float] | ItemError]:
        """One result per input, in order: a vector, or the ItemError of that input alone.

        A 400 for the batch is narrowed down by halving it until only the offending inputs remain
        (about 2·log2(n) extra calls per bad input), so one bad text never costs its batch.
        DependencyDown propagates: nothing is the items' fault then.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        results: list[list[float] | ItemError | None] = [None] * len(texts)
        prefix = self.prefixes[role]
        send_idx: list[int] = []
        send_txt: list[str] = []
        for i, raw in enumerate(texts):
            text = clean_text(raw) or ""  # NULs and lone surrogates would break the JSON encoder
            if not text.strip():
                results[i] = ItemError("empty text: nothing to embed", kind="empty_input")
                continue
            send_idx.append(i)
            send_txt.append(prefix + text)
        self._embed_range(send_txt, send_idx, 0, len(send_txt), role, results)
        return results  # type: ignore[return-value]  # every slot is filled by now

    def _embed_range(
        self,
        texts: list[str],
        index: list[int],
        lo: int,
        hi: int,
        role: Role,
        results: list[list[float] | ItemError | None],
    ) -> None:
        if lo >= hi:
            return
        try:
            vectors = self._embed_request(texts[lo:hi], role)
        except ItemError as exc:
            if exc.kind != "bad_input":
                raise
            if hi - lo == 1:
                results[index[lo]] = ItemError(f"embedding model {self.model!r}: {exc}", kind="bad_input")
                return
            mid = (lo + hi) // 2
            self._embed_range(texts, index, lo, mid, role, results)
            self._embed_range(texts, index, mid, hi, role, results)
            return
        if len(vectors) != hi - lo:
            raise DependencyDown(
                DEPENDENCY,
                f"model {self.model!r} returned {len(vectors)} embeddings for {hi - lo} inputs",
                kind="bad_response",
            )
        expected = self._expected_dimension(vectors)
        for k, vec in enumerate(vectors):
            if not isinstance(vec, list) or len(vec) != expected:
                got = len(vec) if isinstance(vec, list) else type(vec).__name__
                results[index[lo + k]] = ItemError(
                    f"model {self.model!r} returned a vector of dimension {got}, expected {expected} "
                    "(wrong model loaded, or embedder.dimensions does not match the model)",
                    kind="dimension",
                )
            elif (clean := _finite_floats(vec)) is None:
                results[index[lo + k]] = ItemError(
                    f"model {self.model!r} returned a vector that is not all finite numbers: {str(vec)[:80]}",
                    kind="malformed_answer",
                )
            else:
                results[index[lo + k]] = clean

    def _expected_dimension(self, vectors: list[Any]) -> int:
        if self.dimensions is None:
            with self._dim_lock:
                if self.dimensions is None and vectors and isinstance(vectors[0], list) and vectors[0]:
                    self.dimensions = len(vectors[0])
        return self.dimensions or 0

    def embed(self, texts: Sequence[str], role: Role = "document") -> list[list[float]]:
        """Strict form of embed_batch: all vectors, or the first item's ItemError raised (with a count)."""
        results = self.embed_batch(texts, role)
        errors = [r for r in results if isinstance(r, ItemError)]
        if errors:
            first = errors[0]
            raise ItemError(f"{len(errors)} of {len(results)} inputs failed; first: {first}", kind=first.kind)
        return results  # type: ignore[return-value]


def _finite_floats(vec: list[Any]) -> list[float] | None:
    """`vec` as floats when every element is a finite number (JSON ints allowed), else None.

    A null, string, bool or NaN in an answer would otherwise reach pgvector and fail the whole
    batch's write. The common case (all floats) costs one pass and one sum: NaN and ±inf, and
    only they (or an overflow no embedding comes near), make the sum non-finite.
    """
    if all(type(x) is float for x in vec):
        return vec if math.isfinite(sum(vec)) else None
    out: list[float] = []
    for x in vec:
        if isinstance(x, bool) or not isinstance(x, int | float):
            return None
        try:
            out.append(float(x))
        except OverflowError:
            return None
    return out if math.isfinite(sum(out)) else None


class ChatClient(_ClientBase):
    """Asks an LLM for a JSON object that follows a schema. Thread-safe."""

    def __init__(self, pool: EndpointPool, model: str, *, seed: int = 42) -> None:
        super().__init__(pool, model)
        self.seed = seed

    @abstractmethod
    def _chat_request(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> tuple[str, str | None]:
        """One HTTP call; returns (answer content string, finish/done reason or None)."""

    def answer_text(self, system: str, prompt: str, schema: dict[str, Any]) -> tuple[str, str | None]:
        """The model's raw answer (content, done reason) to `prompt`, constrained by `schema`.

        For callers that judge the answer themselves (the extractor tells invalid JSON from a
        schema violation); `generate_json` is the strict form. DependencyDown propagates.
        """
        messages = []
        if system:
            messages.append({"role": "system", "content": clean_text(system) or ""})
        messages.append({"role": "user", "content": clean_text(prompt) or ""})
        return self._chat_request(messages, schema)

    def generate_json(self, system: str, prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
        """The model's answer parsed as a JSON object that has the schema's required fields.

        temperature 0 and a fixed seed (not bit-identical across hardware, but as stable as it gets).
        A cut, invalid or incomplete answer is ItemError(kind="malformed_answer").
        """
        content, reason = self.answer_text(system, prompt, schema)
        if reason == "length":
            raise ItemError(
                f"model {self.model!r} stopped at its length limit; answer cut: {content[:120]!r}",
                kind="malformed_answer",
            )
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ItemError(
                f"model {self.model!r} answered with invalid JSON ({exc}): {content[:120]!r}",
                kind="malformed_answer",
            ) from exc
        problem = schema_problem(answer, schema)
        if problem:
            raise ItemError(
                f"model {self.model!r} answer does not fit the schema: {problem}: {content[:120]!r}",
                kind="malformed_answer",
            )
        return answer


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def schema_problem(value: Any, schema: dict[str, Any], path: str = "$") -> str | None:
    """The first way `value` breaks `schema` (type, required, properties, items, enum), or None.

    A small subset of JSON Schema on purpose: enough to catch the incomplete answers small models
    produce, without a validator dependency. The top level must be an object.
    """
    if path == "$" and not isinstance(value, dict):
        return f"{path} is {type(value).__name__}, not an object"
    typ = schema.get("type")
    if isinstance(typ, str) and typ in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[typ])
        if typ in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            return f"{path} is {type(value).__name__}, not {typ}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} = {value!r} is not one of {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                return f"{path}.{key} is missing"
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and isinstance(sub, dict):
                problem = schema_problem(value[key], sub, f"{path}.{key}")
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = schema_problem(item, schema["items"], f"{path}[{i}]")
            if problem:
                return problem
    return None
