"""Semantic search over posting embeddings, through the model's HNSW index.

The query is embedded with role "query" (e5 and nomic models want a different prefix for queries
than for the documents they are compared with), then the nearest posting vectors of the same model
are read with the exact expression and predicate of the embedder's partial expression index, so
PostgreSQL can answer from the index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from jobpipe.errors import ItemError, UserError
from jobpipe.models import EmbeddingClient
from jobpipe.text import clean_text, normalise_whitespace

Conn = psycopg.Connection[Any]

MAX_LIMIT = 1000  # hnsw.ef_search cannot go above 1000: more results than that cannot come from the index


def nearest_sql(model: str, dimensions: int) -> sql.Composed:
    """The k-nearest query over `posting_embeddings` of `model` (params: vector, limit).

    Model and dimension are literals, not parameters: the planner must see them to match the
    partial expression index (a generic plan with `model = $1` could not use it).
    """
    vec = sql.SQL("(e.embedding::vector({dim}))").format(dim=sql.Literal(dimensions))
    return sql.SQL(
        """
        SELECT n.posting_id, p.title, n.distance
          FROM (SELECT e.posting_id, {vec} <=> %(q)s::vector({dim}) AS distance
                  FROM posting_embeddings e
                 WHERE e.model = {model}
                 ORDER BY {vec} <=> %(q)s::vector({dim})
                 LIMIT %(limit)s) AS n
          JOIN postings p ON p.id = n.posting_id
         ORDER BY n.distance, n.posting_id
        """
    ).format(vec=vec, dim=sql.Literal(dimensions), model=sql.Literal(model))


def search_vector(
    conn: Conn, vector: Any, model: str, dimensions: int, limit: int = 10
) -> list[tuple[int, str | None, float]]:
    """Nearest postings to `vector` among `model`'s vectors: [(posting_id, title, cosine distance)]."""
    if not 1 <= limit <= MAX_LIMIT:
        raise UserError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    q = np.asarray(vector, dtype=np.float32)
    if q.shape != (dimensions,):
        raise UserError(
            f"query vector has {q.size} dimensions, the model {model!r} is configured with {dimensions}"
        )
    with conn.transaction():
        # The index scan returns at most ef_search candidates (default 40).
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(40, limit))))
        rows = conn.execute(nearest_sql(model, dimensions), {"q": q, "limit": limit}).fetchall()
    return [(int(pid), title, float(dist)) for pid, title, dist in rows]


def search(
    conn: Conn, client: EmbeddingClient, text: str, limit: int = 10
) -> list[tuple[int, str | None, float]]:
    """Postings most similar to `text`: [(posting_id, title, cosine distance)], nearest first.

    Uses the client's model and configured dimension (`client.dimensions`); raises UserError for
    an empty query, DependencyDown when the model server is away.
    """
    if not 1 <= limit <= MAX_LIMIT:  # before the model call: a bad argument costs nothing
        raise UserError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    query = normalise_whitespace(clean_text(text) or "")
    if not query:
        raise UserError("the search text is empty")
    if client.dimensions is None:
        raise UserError("the embedding client has no dimension configured (embedder.dimensions)")
    try:
        vector = client.embed([query], role="query")[0]
    except ItemError as exc:
        raise UserError(f"the model server rejected the search text: {exc}") from None
    return search_vector(conn, vector, client.model, client.dimensions, limit)
