"""Posting embeddings in pgvector: the text that is embedded, its hash, the HNSW index per model,
the one-round-trip batch upsert, the re-embedding sweep after a model change, and the
determinism check.

Shared by the embedder daemon (daemons/embedder.py), `jobpipe search` and `jobpipe embeddings
check`, so all three agree on what a posting's text is and where its vector lives.

Storage: `posting_embeddings (posting_id, model)` holds one vector per posting and model, with
the sha256 of the embedded text (model-independent, without role prefix) and the dimension. The
HNSW index is an expression index per (model, dimension) over `embedding::vector(DIM)`, partial on
`model = '<model>'`, because the column itself is untyped `vector` (several models coexist while a
model change is rolled out).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from jobpipe import sweep
from jobpipe.config import Config
from jobpipe.errors import ConfigError, ItemError
from jobpipe.models import make_embedding_client
from jobpipe.models.base import EmbeddingClient
from jobpipe.text import clean_text

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]

INDEX_PREFIX = "posting_emb_hnsw_"
STAGE = "embed"
# Postings found by the re-embedding sweep go below new postings (priority 0) in the queue.
REEMBED_PRIORITY = -1


# ------------------------------------------------------------------ text and hash


def posting_text(title: str | None, occupation: str | None, description: str | None, max_chars: int) -> str:
    """The text embedded for a posting: title, occupation name, start of the description.

    Cleaned (NUL bytes, invalid UTF-8, lone surrogates), every run of whitespace collapsed to one
    space (line structure means nothing to an embedding model, and str.split is ten times faster
    than a per-line regex on the hot path), the parts joined by line breaks and cut to `max_chars`
    (at a word boundary when one is near), so no input exceeds the model's context. An empty
    result means: nothing to embed.
    """
    parts = []
    for value in (title, occupation, description):
        text = " ".join((clean_text(value) or "").split())
        if text:
            parts.append(text)
    # The title must not repeat as the occupation ("Koch/Köchin" posting of occupation "Koch/Köchin").
    if len(parts) >= 2 and title and occupation and parts[0].casefold() == parts[1].casefold():
        del parts[1]
    text = "\n".join(parts)
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = max(cut.rfind(" "), cut.rfind("\n"))
        text = (cut[:space] if space >= max_chars * 0.9 else cut).rstrip()
    return text


def text_hash(text: str) -> str:
    """sha256 of the embedded text (without role prefix, so it does not depend on the model)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ client from config


def client_from_config(
    cfg: Config, *, concurrency: int | None = None, observer: Any = None
) -> EmbeddingClient:
    """The embedding client the `embedder` section describes (model, provider, prefixes, dims)."""
    e, o = cfg.embedder, cfg.ollama
    provider = e.provider or o.provider
    return make_embedding_client(
        provider,
        e.urls or o.urls,  # the embedder's own servers, else the shared ones
        e.model,
        concurrency=concurrency or e.workers,
        connect_timeout=o.connect_timeout_s,
        read_timeout=o.read_timeout_s,
        deadline_s=o.deadline_s,
        max_response_bytes=o.max_response_bytes,
        api_key=o.api_key or None,
        dimensions=e.dimensions,
        query_prefix=e.query_prefix,
        document_prefix=e.document_prefix,
        observer=observer,
        input_type=e.input_type and provider == "openai",
    )


# ------------------------------------------------------------------ the HNSW index


def index_name(model: str, dimensions: int) -> str:
    """`posting_emb_hnsw_<slug>_<hash8>_<dim>`: readable, unique per model, within 63 bytes."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:24] or "model"
    digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]
    return f"{INDEX_PREFIX}{slug}_{digest}_{dimensions}"


def _model_indexes(conn: Conn, model: str) -> dict[str, bool]:
    """{index name: valid} of this model's HNSW indexes (any dimension)."""
    stem = index_name(model, 0)[: -len("_0")] + "_"
    rows = conn.execute(
        """SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = 'posting_embeddings'::regclass AND starts_with(c.relname, %s)""",
        (stem,),
    ).fetchall()
    return {name: valid for name, valid in rows}


def check_index_conflicts(conn: Conn, model: str, dimensions: int) -> dict[str, bool]:
    """ConfigError when `model` has an index for another dimension; else {index name: valid}."""
    name = index_name(model, dimensions)
    existing = _model_indexes(conn, model)
    others = sorted(n for n in existing if n != name)
    if others:
        raise ConfigError(
            f"embedder.dimensions = {dimensions}, but the model {model!r} already has vectors indexed "
            f"with another dimension ({', '.join(others)}); fix embedder.dimensions, or remove the old "
            f"vectors: DELETE FROM posting_embeddings WHERE model = '{model}'; DROP INDEX {others[0]};"
        )
    return existing


def ensure_index(conn: Conn, model: str, dimensions: int, *, concurrently: bool = True) -> str:
    """Create this model's HNSW index if it is missing; return its name.

    `concurrently` builds without blocking writes (the daemon keeps embedding meanwhile); a build
    that was interrupted leaves an INVALID index, which is dropped and rebuilt. An index of the
    same model for another dimension means the configured dimension is wrong, or the model's rows
    were made with another one: a ConfigError, because every write would fail against it.
    Needs an autocommit connection when `concurrently`.
    """
    name = index_name(model, dimensions)
    existing = check_index_conflicts(conn, model, dimensions)
    if existing.get(name) is True:
        return name
    how = sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL("")
    if name in existing:  # left INVALID by an interrupted concurrent build
        conn.execute(sql.SQL("DROP INDEX {}{}").format(how, sql.Identifier(name)))
    conn.execute(
        sql.SQL(
            "CREATE INDEX {how}IF NOT EXISTS {name} ON posting_embeddings "
            "USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WHERE model = {model}"
        ).format(how=how, name=sql.Identifier(name), dim=sql.Literal(dimensions), model=sql.Literal(model))
    )
    return name


def index_valid(conn: Conn, model: str, dimensions: int) -> bool:
    return _model_indexes(conn, model).get(index_name(model, dimensions)) is True


# ------------------------------------------------------------------ load and write


@dataclass(frozen=True, slots=True)
class PostingDoc:
    """What the embedder loaded for one posting."""

    posting_id: int
    text: str
    text_hash: str
    stored_hash: str | None  # hash of the stored embedding of this model, if any


def load_docs(
    conn: Conn, posting_ids: Sequence[int], model: str, dimensions: int, max_chars: int
) -> list[PostingDoc]:
    """Texts of `posting_ids` with the hash of their stored vector (one query; missing ids absent).

    The description is cut in SQL, so a 1 MB description never crosses the wire.
    """
    rows = conn.execute(
        """
        SELECT p.id, p.title, o.name, left(p.description, %(chars)s),
               CASE WHEN e.dimensions = %(dims)s THEN e.text_hash END
          FROM unnest(%(ids)s::bigint[]) AS u(id)
          JOIN postings p ON p.id = u.id
          LEFT JOIN occupations o ON o.id = p.occupation_id
          LEFT JOIN posting_embeddings e ON e.posting_id = p.id AND e.model = %(model)s
        """,
        {"ids": list(posting_ids), "chars": max_chars, "dims": dimensions, "model": model},
    ).fetchall()
    out = []
    for pid, title, occupation, description, stored in rows:
        text = posting_text(title, occupation, description, max_chars)
        out.append(PostingDoc(pid, text, text_hash(text), stored))
    return out


def as_vector(values: Any, dimensions: int | None = None) -> np.ndarray:
    """A float32 array (what the binary vector dumper sends fastest); checks the length."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 1 or (dimensions is not None and arr.shape[0] != dimensions):
        raise ItemError(f"vector has shape {arr.shape}, expected ({dimensions},)", kind="dimension")
    if not np.all(np.isfinite(arr)):
        raise ItemError("vector contains NaN or infinity", kind="bad_vector")
    return arr


def upsert(
    conn: Conn,
    rows: Sequence[tuple[PostingDoc, np.ndarray]],
    model: str,
    dimensions: int,
) -> set[int]:
    """Write a batch of vectors in ONE statement; return the posting ids written.

    The vectors go as one binary `vector[]` parameter (text-formatting 30k floats per batch would
    cost more than the database work). Postings deleted since load are skipped (not written). A
    posting changed while its vector was computed needs nothing here: the change re-queued it
    (the queue's `rerun`), so its new text is embedded next.
    """
    if not rows:
        return set()
    cur = conn.execute(
        """
        INSERT INTO posting_embeddings AS pe (posting_id, model, text_hash, dimensions, embedding)
        SELECT u.posting_id, %(model)s, u.text_hash, %(dims)s, u.embedding
          FROM unnest(%(ids)s::bigint[], %(hashes)s::text[], %(vecs)b::vector[])
               AS u(posting_id, text_hash, embedding)
          JOIN postings p ON p.id = u.posting_id
        ON CONFLICT (posting_id, model) DO UPDATE
           SET text_hash = excluded.text_hash, dimensions = excluded.dimensions,
               embedding = excluded.embedding, created_at = now()
        RETURNING pe.posting_id
        """,
        {
            "ids": [d.posting_id for d, _ in rows],
            "hashes": [d.text_hash for d, _ in rows],
            "vecs": [v for _, v in rows],
            "model": model,
            "dims": dimensions,
        },
    )
    return {pid for (pid,) in cur.fetchall()}


# ------------------------------------------------------------------ re-embedding sweep


def reembed_sweep(model: str, backlog: int, window: int = 20_000) -> sweep.Sweep:
    """The re-embedding sweep: postings without a vector of `model` (a model change; postings that
    never got queued: restored data, triggers disabled during a bulk load), below new postings."""
    return sweep.Sweep(
        STAGE,
        "NOT EXISTS (SELECT 1 FROM posting_embeddings e WHERE e.posting_id = p.id AND e.model = %(model)s)",
        backlog,
        params={"model": model},
        priority=REEMBED_PRIORITY,
        window=window,
    )


# ------------------------------------------------------------------ determinism check


@dataclass(frozen=True, slots=True)
class CheckResult:
    n: int  # texts compared
    failed: int  # texts that got an ItemError in either pass (not compared)
    max_distance: float
    mean_distance: float
    worst_index: int | None
    tolerance: float
    single_seconds: float
    batched_seconds: float

    @property
    def ok(self) -> bool:
        return self.n > 0 and self.max_distance <= self.tolerance


def cosine_distance(a: Any, b: Any) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(va), np.linalg.norm(vb)
    if na == 0 or nb == 0:
        return 1.0
    return max(0.0, float(1.0 - np.dot(va, vb) / (na * nb)))  # rounding can dip below 0


def determinism_check(
    client: EmbeddingClient,
    texts: Sequence[str],
    *,
    batch_size: int,
    workers: int,
    tolerance: float,
    role: str = "document",
) -> CheckResult:
    """Embed `texts` one per request (sequentially), then in batches of `batch_size` with `workers`
    requests in flight, and compare each text's two vectors by cosine distance.

    DependencyDown propagates (the check cannot run); per-text ItemErrors are counted, not compared.
    """
    t0 = time.perf_counter()
    single = [client.embed_batch([t], role=role)[0] for t in texts]  # type: ignore[arg-type]
    t1 = time.perf_counter()
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        parts = list(pool.map(lambda b: client.embed_batch(b, role=role), batches))  # type: ignore[arg-type]
    batched = [v for part in parts for v in part]
    t2 = time.perf_counter()
    dists: dict[int, float] = {}
    for i, (a, b) in enumerate(zip(single, batched, strict=True)):
        if not isinstance(a, ItemError) and not isinstance(b, ItemError):
            dists[i] = cosine_distance(a, b)
    worst = max(dists, key=dists.__getitem__) if dists else None
    return CheckResult(
        n=len(dists),
        failed=len(texts) - len(dists),
        max_distance=dists[worst] if worst is not None else 0.0,
        mean_distance=float(np.mean(list(dists.values()))) if dists else 0.0,
        worst_index=worst,
        tolerance=tolerance,
        single_seconds=t1 - t0,
        batched_seconds=t2 - t1,
    )


def sample_texts(conn: Conn, n: int, max_chars: int, seed: float = 0.42) -> list[str]:
    """Up to `n` non-empty posting texts, a repeatable pseudo-random sample."""
    conn.execute("SELECT setseed(%s)", (seed,))
    rows = conn.execute(
        """SELECT p.title, o.name, left(p.description, %s)
             FROM postings p LEFT JOIN occupations o ON o.id = p.occupation_id
            ORDER BY random() LIMIT %s""",
        (max_chars, n * 2),
    ).fetchall()
    texts = [posting_text(t, o, d, max_chars) for t, o, d in rows]
    return [t for t in texts if t.strip()][:n]
