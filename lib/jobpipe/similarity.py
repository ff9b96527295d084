"""Occupation similarity: for each occupation its top-K most similar occupations, in PostgreSQL.

Each occupation gets one vector:
- the centroid (pgvector avg()) of the embeddings of its active postings - demand-weighted by
  construction: an occupation's typical postings, each counted once, so what employers ask for
  shapes the vector - when it has at least `min_postings` embedded active postings;
- else its name embedding (occupation_embeddings, same model) when there is one;
- else the centroid of the few postings it has.
Vectors are normalised, so the cosine similarity is the inner product (pgvector `<#>` is its
negative, and cheaper than `<=>`). The all-pairs top-K is a LATERAL scan over half-precision copies
that keeps 2K candidates per occupation, ranked exactly in full precision (see migration 0041: the
result equals the exact full scan); with the vectors stored inline (no TOAST) 3,600 occupations
take seconds.

Atomic: occupation_vectors and occupation_similarity are replaced in one transaction (readers
see the previous result until the commit, never half a table), under an advisory lock so two
instances never compute at once. "Due" uses the database clock (similarity_runs.finished_at).
When no vectors exist at all (e.g. right after a model change) the previous result is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from jobpipe import db
from jobpipe.config import Config
from jobpipe.db import Conn

SIMILARITY_LOCK = 0x6A700041
AGGREGATE_WORK_MEM = "128MB"
DONE = "done"
SKIPPED_LOCKED = "skipped_locked"
SKIPPED_FRESH = "skipped_fresh"  # computed meanwhile by another instance
NO_VECTORS = "no_vectors"  # nothing to compare: the previous result is kept


@dataclass(frozen=True, slots=True)
class SimilarityResult:
    status: str
    occupations: int = 0
    from_postings: int = 0
    from_names: int = 0
    pairs: int = 0
    seconds: float = 0.0
    vectors_s: float = 0.0  # of which: centroids and the name fallback
    pairs_s: float = 0.0  # of which: the all-pairs top-K


# A run that found no vectors is retried after this long (or the interval, if shorter): vectors
# appear once the embedder catches up, and the result should not wait a whole interval for them.
NO_VECTORS_RETRY_S = 3600.0


def is_due(conn: Conn, interval_h: float, model: str) -> bool:
    """True when no similarity run of `model` finished within `interval_h` hours (database clock)."""
    interval_s = interval_h * 3600.0
    row = db.one(
        conn,
        """SELECT NOT EXISTS (
               SELECT 1 FROM similarity_runs
                WHERE model = %s AND finished_at > now() - make_interval(secs => %s)
                  AND (occupations > 0 OR finished_at > now() - make_interval(secs => %s)))""",
        (model, interval_s, min(interval_s, NO_VECTORS_RETRY_S)),
    )
    return bool(row[0])


_VECTORS_SQL = """
WITH cent AS (
    SELECT p.occupation_id AS id, avg(e.embedding) AS v, count(*) AS n
      FROM postings p
      JOIN posting_embeddings e ON e.posting_id = p.id AND e.model = %(model)s AND e.dimensions = %(dims)s
     WHERE p.active AND p.occupation_id IS NOT NULL
     GROUP BY p.occupation_id
),
names AS (
    SELECT occupation_id AS id, embedding AS v FROM occupation_embeddings
     WHERE model = %(model)s AND vector_dims(embedding) = %(dims)s
),
chosen AS (
    SELECT o.id, coalesce(c.n, 0) AS n,
           CASE WHEN c.n >= %(min)s OR nm.v IS NULL THEN 'postings' ELSE 'names' END AS basis,
           CASE WHEN c.n >= %(min)s OR nm.v IS NULL THEN c.v ELSE nm.v END AS v
      FROM occupations o
      LEFT JOIN cent c ON c.id = o.id
      LEFT JOIN names nm ON nm.id = o.id
     WHERE c.v IS NOT NULL OR nm.v IS NOT NULL
),
ins AS (
    INSERT INTO occupation_vectors (occupation_id, model, basis, postings, embedding, computed_at)
    SELECT id, %(model)s, basis, n, l2_normalize(v), now() FROM chosen WHERE vector_norm(v) > 0
    RETURNING basis
)
SELECT count(*) FILTER (WHERE basis = 'postings'), count(*) FILTER (WHERE basis = 'names') FROM ins
"""

# Top-K per occupation; ties broken by id so a recomputation of the same data is identical.
# Candidates: the 2K nearest by half precision (cheap scan); ranking: exact, over the candidates.
_PAIRS_SQL = """
WITH cand AS (
    SELECT a.occupation_id, c.similar_id
      FROM occupation_vectors_half a
     CROSS JOIN LATERAL (
        SELECT o.occupation_id AS similar_id
          FROM occupation_vectors_half o
         WHERE o.occupation_id <> a.occupation_id
         ORDER BY o.embedding <#> a.embedding, o.occupation_id
         LIMIT %(candidates)s
     ) c
),
exact AS (
    SELECT c.occupation_id, c.similar_id, x.basis, -(x.embedding <#> y.embedding) AS score
      FROM cand c
      JOIN occupation_vectors x ON x.occupation_id = c.occupation_id
      JOIN occupation_vectors y ON y.occupation_id = c.similar_id
),
ranked AS (
    SELECT occupation_id, similar_id, basis, score,
           row_number() OVER (PARTITION BY occupation_id ORDER BY score DESC, similar_id) AS rank
      FROM exact
),
ins AS (
    INSERT INTO occupation_similarity (occupation_id, similar_id, rank, score, basis, computed_at)
    SELECT occupation_id, similar_id, rank, score::real, basis, now()
      FROM ranked WHERE rank <= %(k)s AND score >= %(min_score)s
    RETURNING 1
)
SELECT count(*) FROM ins
"""
# halfvec holds at most 4,000 dimensions: beyond that, one exact full-precision scan.
HALFVEC_MAX_DIMS = 4000
_EXACT_PAIRS_SQL = """
WITH nn AS (
    SELECT a.occupation_id, a.basis, b.similar_id, b.score
      FROM occupation_vectors a
     CROSS JOIN LATERAL (
        SELECT o.occupation_id AS similar_id, -(o.embedding <#> a.embedding) AS score
          FROM occupation_vectors o
         WHERE o.occupation_id <> a.occupation_id
         ORDER BY o.embedding <#> a.embedding, o.occupation_id
         LIMIT %(k)s
     ) b
),
ins AS (
    INSERT INTO occupation_similarity (occupation_id, similar_id, rank, score, basis, computed_at)
    SELECT occupation_id, similar_id,
           row_number() OVER (PARTITION BY occupation_id ORDER BY score DESC, similar_id),
           score::real, basis, now()
      FROM nn WHERE score >= %(min_score)s
    RETURNING 1
)
SELECT count(*) FROM ins
"""


def compute(
    conn: Conn,
    *,
    model: str,
    dims: int,
    top_k: int,
    min_postings: int,
    min_score: float = -1.0,
    only_if_due_h: float | None = None,
    wait: bool = False,
    statement_timeout_s: float | None = None,
) -> SimilarityResult:
    """Recompute the vectors and the top-K pairs in one transaction.

    `only_if_due_h`: skip when a run finished within that many hours (checked inside the lock, so
    a second instance that was waiting does not redo it). `wait`: wait for the lock instead of
    skipping. `conn` must be in autocommit mode (the function owns the transaction).
    """
    started = time.perf_counter()
    with conn.transaction():
        if wait:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SIMILARITY_LOCK,))
        elif not db.one(conn, "SELECT pg_try_advisory_xact_lock(%s)", (SIMILARITY_LOCK,))[0]:
            return SimilarityResult(SKIPPED_LOCKED)
        if only_if_due_h is not None and not is_due(conn, only_if_due_h, model):
            return SimilarityResult(SKIPPED_FRESH)
        if statement_timeout_s:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", (f"{int(statement_timeout_s * 1000)}",)
            )
        # The centroid aggregation keeps one float8 accumulator per occupation (6 KB at 768
        # dimensions, 22 MB for 3,600): with the default 4 MB it spills to disk.
        conn.execute("SELECT set_config('work_mem', %s, true)", (AGGREGATE_WORK_MEM,))
        # TRUNCATE, not DELETE: the pairs query scans this table once per occupation, and the
        # previous run's rows deleted in this transaction would still be read (twice the work).
        conn.execute("TRUNCATE occupation_vectors")
        params = {"model": model, "dims": dims, "min": min_postings, "k": top_k, "min_score": min_score}
        from_postings, from_names = db.one(conn, _VECTORS_SQL, params)
        vectors_s = time.perf_counter() - started
        n = from_postings + from_names
        if n == 0:
            # Keep the previous result (and its vectors): roll back by leaving through an exception.
            raise _NoVectors
        conn.execute("ANALYZE occupation_vectors")
        conn.execute("DELETE FROM occupation_similarity")
        if dims <= HALFVEC_MAX_DIMS:
            conn.execute("TRUNCATE occupation_vectors_half")
            conn.execute(
                """INSERT INTO occupation_vectors_half (occupation_id, embedding)
                   SELECT occupation_id, embedding::halfvec FROM occupation_vectors"""
            )
            conn.execute("ANALYZE occupation_vectors_half")
            pairs = db.one(conn, _PAIRS_SQL, {**params, "candidates": 2 * top_k})[0]
        else:
            pairs = db.one(conn, _EXACT_PAIRS_SQL, params)[0]
        seconds = time.perf_counter() - started
        pairs_s = seconds - vectors_s
        conn.execute(
            """INSERT INTO similarity_runs (model, occupations, from_postings, from_names, pairs, started_at,
                                            finished_at, seconds)
               VALUES (%s, %s, %s, %s, %s, now(), clock_timestamp(), %s)""",
            (model, n, from_postings, from_names, pairs, seconds),
        )
    return SimilarityResult(
        DONE, n, from_postings, from_names, pairs, time.perf_counter() - started, vectors_s, pairs_s
    )


class _NoVectors(Exception):
    pass


def compute_or_keep(conn: Conn, **kwargs: Any) -> SimilarityResult:
    """`compute`, but a run without any vector records itself and keeps the previous result."""
    started = time.perf_counter()
    try:
        return compute(conn, **kwargs)
    except _NoVectors:
        conn.execute(
            """INSERT INTO similarity_runs (model, occupations, from_postings, from_names, pairs, started_at,
                                            seconds)
               VALUES (%s, 0, 0, 0, 0, now(), %s)""",
            (kwargs["model"], time.perf_counter() - started),
        )
        return SimilarityResult(NO_VECTORS, seconds=time.perf_counter() - started)


def compute_configured(conn: Conn, cfg: Config, **kwargs: Any) -> SimilarityResult:
    """`compute_or_keep` with the model of [embedder] and the parameters of [snapshotter].

    One place maps the settings to the computation, so the daemon and `jobpipe snapshot
    --similarity` cannot drift apart; callers add only how they run (`only_if_due_h`, `wait`).
    """
    sec, emb = cfg.snapshotter, cfg.embedder
    return compute_or_keep(
        conn,
        model=emb.model,
        dims=emb.dimensions,
        top_k=sec.similarity_top_k,
        min_postings=sec.min_postings_for_centroid,
        min_score=sec.similarity_min_score,
        statement_timeout_s=sec.statement_timeout_s,
        **kwargs,
    )


@dataclass(frozen=True, slots=True)
class Similar:
    rank: int
    occupation_id: int
    name: str | None
    score: float
    basis: str


def similar_to(conn: Conn, occupation_id: int, limit: int = 50) -> list[Similar]:
    rows = conn.execute(
        """SELECT s.rank, s.similar_id, o.name, s.score, s.basis
             FROM occupation_similarity s LEFT JOIN occupations o ON o.id = s.similar_id
            WHERE s.occupation_id = %s ORDER BY s.rank LIMIT %s""",
        (occupation_id, limit),
    ).fetchall()
    return [Similar(*r) for r in rows]


def result_age_s(conn: Conn, model: str) -> float | None:
    """Seconds since the last run of `model` that produced a result; None if there never was one."""
    row = db.one(
        conn,
        """SELECT extract(epoch FROM now() - max(finished_at)) FROM similarity_runs
            WHERE model = %s AND occupations > 0""",
        (model,),
    )
    return None if row[0] is None else max(0.0, float(row[0]))


def last_run(conn: Conn) -> dict[str, Any] | None:
    row = conn.execute(
        """SELECT model, occupations, from_postings, from_names, pairs, finished_at,
                  extract(epoch FROM now() - finished_at)
             FROM similarity_runs ORDER BY finished_at DESC LIMIT 1"""
    ).fetchone()
    if row is None:
        return None
    keys = ("model", "occupations", "from_postings", "from_names", "pairs", "finished_at", "age_s")
    return dict(zip(keys, row, strict=True))
