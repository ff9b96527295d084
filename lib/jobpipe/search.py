"""Search over postings: hybrid (vector + lexical, fused by reciprocal rank), through indexes.

A query is normalised like a posting title first (titles.normalise: "Koch in Vollzeit" -> "koch";
employment type, gender markers, seniority and places are not what anyone searches the *meaning*
of). Then three ranked lists of candidates, each at most POOL long and each already filtered
(active postings only unless asked otherwise, `region`, `occupation`):

1. **vector**: the nearest posting vectors of the configured model to the query embedded with role
   "query", through the embedder's partial HNSW expression index (pgvector's iterative scan keeps
   reading the index when filters drop rows, so a filter does not starve the list);
2. **title**: trigram matches of the normalised query and the normalised posting title
   (`postings_title_norm_trgm`, pg_trgm `%>` and `%`): the posting that says "Koch";
3. **occupation**: postings of the OCCUPATIONS occupations the query names, found by the
   classifier's own candidate stage run on the query (classify.search_candidates: occupation-name
   vectors blended with trigram matches on every name an occupation is known by): "Brot backen"
   names Bäcker/in even where no posting title says "Brot"; the "Koch/Köchin" posting titled
   "Jungkoch Restaurant" is found by its classified occupation.

Fusion is reciprocal-rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009):
score(p) = sum over the lists that contain p of 1 / (RRF_K + rank), rank from 1. Ranks, not
scores, are fused because a cosine distance and a trigram similarity have no common scale;
RRF_K = 60 is the paper's constant (a larger k flattens the head of each list). Ties are broken
by vector distance, then by posting id, so results are deterministic. `mode="vector"` is the
vector list alone (what search was before issue 18; the benchmark compares both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from jobpipe import classify
from jobpipe.errors import ItemError, UserError
from jobpipe.models.base import EmbeddingClient
from jobpipe.text import clean_line, clean_text, normalise_whitespace, parse_int
from jobpipe.titles import normalise

Conn = psycopg.Connection[Any]

MAX_LIMIT = 1000  # hnsw.ef_search cannot go above 1000: more results than that cannot come from the index
MAX_QUERY_CHARS = 300  # what is embedded and trigram-matched of a query (as for titles)
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
POOL = 100  # candidates per list before fusion (at least `limit`)
TITLE_MIN_WORD_SIMILARITY = 0.5  # pg_trgm.word_similarity_threshold: the query within a title
TITLE_MIN_SIMILARITY = 0.3  # pg_trgm.similarity_threshold: a title like the whole query
OCCUPATION_MIN_SIMILARITY = 0.3  # trigram similarity an occupation name needs (no vectors yet)
OCCUPATIONS = 3  # occupations the query is taken to name (the occupation list holds their postings)
MODES = ("hybrid", "vector")


@dataclass(frozen=True, slots=True)
class Hit:
    """One result. `distance` is the cosine distance to the query (None when the posting has no
    vector of this model yet); `ranks` the posting's rank in each list it came from."""

    posting_id: int
    title: str | None
    score: float
    distance: float | None
    ranks: dict[str, int]
    occupation: str | None
    region: str | None
    city: str | None
    active: bool

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(self.score, 6)
        d["distance"] = None if self.distance is None else round(self.distance, 6)
        return d


def nearest_sql(model: str, dimensions: int) -> sql.Composed:
    """The k-nearest query over `posting_embeddings` of `model` (params: vector, limit), unfiltered.

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


def _filters(include_inactive: bool) -> sql.Composed:
    """The WHERE conditions on `postings p` every list shares (params: region, occupations)."""
    parts = [
        sql.SQL("(%(region)s::text IS NULL OR p.region = %(region)s)"),
        sql.SQL("(%(occupations)s::bigint[] IS NULL OR p.occupation_id = ANY(%(occupations)s))"),
    ]
    if not include_inactive:
        parts.append(sql.SQL("p.active"))
    return sql.SQL(" AND ").join(parts)


def _vector_list(conn: Conn, q: np.ndarray, model: str, dimensions: int, where: sql.Composed,
                 params: dict[str, Any], pool: int) -> list[tuple[int, float]]:  # fmt: skip
    vec = sql.SQL("(e.embedding::vector({dim}))").format(dim=sql.Literal(dimensions))
    query = sql.SQL(
        """SELECT e.posting_id, {vec} <=> %(q)s::vector({dim}) AS distance
             FROM posting_embeddings e JOIN postings p ON p.id = e.posting_id
            WHERE e.model = {model} AND {where}
            ORDER BY {vec} <=> %(q)s::vector({dim})
            LIMIT %(pool)s"""
    ).format(vec=vec, dim=sql.Literal(dimensions), model=sql.Literal(model), where=where)
    # relaxed_order: the index scan goes on past ef_search while filters drop rows; the few rows
    # it returns slightly out of order are sorted again below.
    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(min(1000, max(40, pool)))))
    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
    rows = conn.execute(query, {**params, "q": q, "pool": pool}).fetchall()
    return sorted(((int(pid), float(d)) for pid, d in rows), key=lambda r: (r[1], r[0]))


def _title_list(conn: Conn, text: str, where: sql.Composed, params: dict[str, Any], pool: int) -> list[int]:
    """Postings whose normalised title contains the query (`%>`, word similarity) or resembles it
    as a whole (`%`, similarity), both through the trigram index; ranked by similarity plus the
    larger word similarity of the two directions, so "Altenpfleger" (its name all in the query)
    comes before "Fachkraft für Pflegeassistenz" (half the query in it) for "Pflegefachkraft
    Altenpflege", and "Koch für unser Restaurant" (the query all in it) still ranks high for "Koch"."""
    conn.execute(
        "SELECT set_config('pg_trgm.word_similarity_threshold', %s, true), "
        "set_config('pg_trgm.similarity_threshold', %s, true)",
        (str(TITLE_MIN_WORD_SIMILARITY), str(TITLE_MIN_SIMILARITY)),
    )
    query = sql.SQL(
        """SELECT p.id FROM postings p
            WHERE (p.title_norm %%> %(text)s OR p.title_norm %% %(text)s) AND {where}
            ORDER BY similarity(%(text)s, p.title_norm)
                     + greatest(word_similarity(%(text)s, p.title_norm),
                                word_similarity(p.title_norm, %(text)s)) DESC,
                     p.id
            LIMIT %(pool)s"""
    ).format(where=where)
    return [int(r[0]) for r in conn.execute(query, {**params, "text": text, "pool": pool})]


def _nearest_occupations(conn: Conn, q: np.ndarray, text: str, model: str, dimensions: int) -> list[int]:
    """The occupations the query names, best first: the classifier's candidate stage run on the
    query (vector + trigram blend over the catalogue, classify.search_candidates), or, before the
    catalogue has vectors of this model, the names nearest by trigrams alone."""
    found = classify.search_candidates(conn, {0: q}, model, dimensions, OCCUPATIONS, texts={0: text})[0]
    if found:
        return [occ for occ, _ in found]
    rows = conn.execute(
        """SELECT occupation_id FROM (SELECT occupation_id, term FROM occupation_terms
                                        ORDER BY term <-> %(text)s LIMIT 40) t
            WHERE similarity(term, %(text)s) >= %(min)s
            GROUP BY occupation_id
            ORDER BY max(similarity(term, %(text)s) + word_similarity(term, %(text)s)) DESC, occupation_id
            LIMIT %(k)s""",
        {"text": text, "min": OCCUPATION_MIN_SIMILARITY, "k": OCCUPATIONS},
    )
    return [int(r[0]) for r in rows]


def _occupation_list(conn: Conn, occupations: list[int], text: str, where: sql.Composed,
                     params: dict[str, Any], pool: int) -> list[int]:  # fmt: skip
    """Postings of `occupations` in their order; within one, best title match first, then newest."""
    if not occupations:
        return []
    query = sql.SQL(
        """SELECT p.id FROM unnest(%(occs)s::bigint[]) WITH ORDINALITY AS o(id, ord)
             JOIN postings p ON p.occupation_id = o.id
            WHERE {where}
            ORDER BY o.ord, word_similarity(%(text)s, coalesce(p.title_norm, '')) DESC,
                     p.published_at DESC NULLS LAST, p.id
            LIMIT %(pool)s"""
    ).format(where=where)
    return [
        int(r[0]) for r in conn.execute(query, {**params, "occs": occupations, "text": text, "pool": pool})
    ]


def resolve_occupations(conn: Conn, wanted: str | None) -> list[int] | None:
    """`--occupation`: an id, or a name that identifies occupations exactly (as written, normalised,
    or one of its aliases). None for no filter; UserError naming close names when nothing fits."""
    # A command-line argument is any text: invalid UTF-8 (a lone surrogate after Python's
    # surrogateescape), "²" (str.isdigit() but not int()), 5,000 digits, 100 kB. clean_line makes it
    # text PostgreSQL takes and caps it; parse_int takes ASCII digits within bigint only.
    wanted = clean_line(wanted, MAX_QUERY_CHARS)
    if wanted is None:
        return None
    if (ident := parse_int(wanted)) is not None:
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM occupations WHERE id = %s", (ident,))]
    else:
        norm = normalise(wanted)
        ids = [
            int(r[0])
            for r in conn.execute(
                """SELECT id FROM occupations
                    WHERE name = %(raw)s OR name_norm = %(norm)s OR %(norm)s = ANY(aliases) ORDER BY id""",
                {"raw": wanted, "norm": norm},
            )
        ]
    if ids:
        return ids
    close = [
        r[0]
        for r in conn.execute(
            """SELECT o.name FROM (SELECT occupation_id, term <-> %s AS d FROM occupation_terms
                                     ORDER BY d LIMIT 20) t
                 JOIN occupations o ON o.id = t.occupation_id
                GROUP BY o.name ORDER BY min(t.d), o.name LIMIT 3""",
            (normalise(wanted),),
        )
    ]
    hint = f"; did you mean: {', '.join(close)}?" if close else " (the catalogue is empty)"
    raise UserError(f"no occupation is called {wanted!r}{hint}")


def region_code(region: str | None) -> str | None:
    """`--region` as the BA's federal-state enum: 'Baden-Württemberg' -> 'BADEN_WUERTTEMBERG'."""
    region = clean_line(region, MAX_QUERY_CHARS)  # any argv text: no lone surrogate reaches SQL
    if region is None:
        return None
    r = region.upper()
    for a, b in (("Ä", "AE"), ("Ö", "OE"), ("Ü", "UE"), ("ß", "SS"), ("-", "_"), (" ", "_")):
        r = r.replace(a, b)
    return r


def query_text(text: str) -> str:
    """The normalised query; the cleaned text as typed when normalising leaves nothing ("(m/w/d)")."""
    raw = normalise_whitespace(clean_text(text, MAX_QUERY_CHARS) or "")
    return normalise(raw)[:MAX_QUERY_CHARS] or raw


def search(
    conn: Conn,
    client: EmbeddingClient,
    text: str,
    limit: int = 10,
    *,
    region: str | None = None,
    occupation: str | None = None,
    include_inactive: bool = False,
    mode: str = "hybrid",
) -> list[Hit]:
    """Postings that match `text`, best first (at most `limit`).

    Read only, one transaction. Raises UserError for an empty query, a bad limit or mode, or an
    unknown occupation (before any model call), DependencyDown when the model server is away.
    Uses the client's model and configured dimension (`client.dimensions`).
    """
    if not 1 <= limit <= MAX_LIMIT:  # before the model call: a bad argument costs nothing
        raise UserError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    query = query_text(text)
    if not query:
        raise UserError("the search text is empty")
    if client.dimensions is None:
        raise UserError("the embedding client has no dimension configured (embedder.dimensions)")
    occupations = resolve_occupations(conn, occupation)
    try:
        vector = client.embed([query], role="query")[0]
    except ItemError as exc:
        raise UserError(f"the model server rejected the search text: {exc}") from None
    q = np.asarray(vector, dtype=np.float32)
    if q.shape != (client.dimensions,):
        raise UserError(
            f"query vector has {q.size} dimensions, the model {client.model!r} is configured with "
            f"{client.dimensions}"
        )
    params = {"region": region_code(region), "occupations": occupations}
    where = _filters(include_inactive)
    pool = max(POOL, limit)
    with conn.transaction():
        near = _vector_list(conn, q, client.model, client.dimensions, where, params, pool)
        lists: dict[str, Sequence[int]] = {"vector": [pid for pid, _ in near]}
        if mode == "hybrid":
            lists["title"] = _title_list(conn, query, where, params, pool)
            occupations_named = _nearest_occupations(conn, q, query, client.model, client.dimensions)
            lists["occupation"] = _occupation_list(conn, occupations_named, query, where, params, pool)
        distance = dict(near)
        ranks: dict[int, dict[str, int]] = {}
        for name, ids in lists.items():
            for rank, pid in enumerate(ids, 1):
                ranks.setdefault(pid, {})[name] = rank
        scored = sorted(
            ((sum(1.0 / (RRF_K + r) for r in rk.values()), pid) for pid, rk in ranks.items()),
            key=lambda s: (-s[0], distance.get(s[1], 2.0), s[1]),
        )[:limit]
        top = [pid for _, pid in scored]
        details = sql.SQL(
            """SELECT p.id, p.title, o.name, p.region, p.city, p.active,
                      (SELECT e.embedding::vector({dim}) <=> %(q)s::vector({dim})
                         FROM posting_embeddings e WHERE e.posting_id = p.id AND e.model = {model})
                 FROM postings p LEFT JOIN occupations o ON o.id = p.occupation_id
                WHERE p.id = ANY(%(ids)s)"""
        ).format(dim=sql.Literal(client.dimensions), model=sql.Literal(client.model))
        rows = {int(r[0]): r[1:] for r in conn.execute(details, {"ids": top, "q": q})}
    out = []
    for score, pid in scored:
        if pid not in rows:
            continue  # deleted between the lists and the details
        title, occ, reg, city, active, dist = rows[pid]
        out.append(
            Hit(pid, title, score, None if dist is None else float(dist), ranks[pid], occ, reg, city, active)
        )
    return out
