"""Classifying normalised titles into BERUFENET occupations: evidence, candidates, the LLM's verdict.

The classifier daemon (daemons/classifier.py) and `jobpipe classifier eval` share this module.
Cheapest evidence first, each with its own outcome:

1. `matched_label` / `matched_exact` / `matched_alias`: the source's own occupation label (BA
   `hauptberuf`), or the normalised title itself, names exactly one catalogue occupation (name or
   alias). No model call. An ambiguous name (two occupations) is no evidence.
2. `no_match`: the title (embedded as a *query*) is below `classifier.min_similarity` to every
   occupation name (embedded once per model as *passages*). No LLM call.
3. `matched` / `llm_no` / `llm_uncertain`: the LLM gets the title and the top-K candidates and answers
   in a JSON schema. An answer naming an occupation that is not among the candidates is an
   ItemError (retried, then `error`), never stored.

Every result stores the embedding model, and for LLM results the LLM and the prompt version, so a
change of either can re-queue exactly the affected titles (`requeue(..., stale=...)`).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import io
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg import sql

from jobpipe.catalogue import DATA_PACKAGE, embedding_text
from jobpipe.embeddings import as_vector, client_from_config, text_hash
from jobpipe.errors import DependencyDown, ItemError, UserError
from jobpipe.models import chat_client_for_role
from jobpipe.text import clean_text, normalise_whitespace, parse_int
from jobpipe.titles import normalise

STAGE = "classify"  # subject = titles.id: evidence, then the vector search (batched)
LLM_STAGE = "classify_llm"  # subject = titles.id: one LLM call per title, `classifier.workers` at once
PROMPT_FILE = "classifier_prompt_v1.txt"
USER_MARKER = "\n=== user ===\n"
EXACT_OUTCOMES = ("matched_label", "matched_exact", "matched_alias")
LLM_OUTCOMES = ("matched", "llm_no", "llm_uncertain")
ALL_OUTCOMES = (*EXACT_OUTCOMES, "no_match", *LLM_OUTCOMES, "empty", "error")
CANDIDATES = "candidates"  # queue outcome of a title handed on to the LLM stage
MAX_TITLE_CHARS = 300  # what the LLM and the embedding model see of a title
INDEX_PREFIX = "occ_emb_hnsw_"

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "occupation_id": {"type": ["integer", "null"]},
        "verdict": {"type": "string", "enum": ["yes", "no", "uncertain"]},
    },
    "required": ["occupation_id", "verdict"],
}


# ------------------------------------------------------------------ the prompt


@dataclass(frozen=True, slots=True)
class Prompt:
    system: str
    user: str  # template with {title}, {title_norm}, {candidates}
    version: str  # "v1-<sha8 of the file>": any edit is a new version

    def render(self, title: str, title_norm: str, candidates: Sequence[Candidate]) -> str:
        listing = "\n".join(f"{c.id}: {c.name}" for c in candidates)
        # str.replace, not format(): the system text shows JSON with braces.
        return (
            self.user.replace("{title}", title)
            .replace("{title_norm}", title_norm)
            .replace("{candidates}", listing)
        )


def parse_prompt(text: str, name: str) -> Prompt:
    if USER_MARKER not in text:
        raise ValueError(f"prompt file {name} has no '=== user ===' line between system and user part")
    system, user = text.split(USER_MARKER, 1)
    stem = re.sub(r"^classifier_prompt_|\.txt$", "", name)
    return Prompt(system.strip(), user.strip(), f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}")


def load_prompt(name: str = PROMPT_FILE) -> Prompt:
    """The versioned prompt shipped in jobpipe/data (system part, '=== user ===', user template)."""
    text = (importlib.resources.files(DATA_PACKAGE) / name).read_text(encoding="utf-8")
    return parse_prompt(text, name)


# ------------------------------------------------------------------ exact evidence


@dataclass
class ExactIndex:
    """Exact names of the catalogue in memory: raw names, normalised names, aliases -> ids."""

    by_name: dict[str, set[int]] = field(default_factory=dict)
    by_norm: dict[str, set[int]] = field(default_factory=dict)
    by_alias: dict[str, set[int]] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, str, str | None, str, Sequence[str]]]) -> ExactIndex:
        """rows: (id, name, full_name, name_norm, aliases)."""
        idx = cls()
        for ident, name, full_name, name_norm, aliases in rows:
            idx.size += 1
            for raw in (name, full_name):
                if raw:
                    idx.by_name.setdefault(raw.strip(), set()).add(ident)
            if name_norm:
                idx.by_norm.setdefault(name_norm, set()).add(ident)
            for alias in aliases or ():
                idx.by_alias.setdefault(alias, set()).add(ident)
        return idx

    @staticmethod
    def _one(ids: set[int] | None) -> int | None:
        return next(iter(ids)) if ids and len(ids) == 1 else None

    def evidence(self, title_norm: str, source_label: str | None) -> tuple[str, int] | None:
        """(outcome, occupation id) from exact evidence, or None."""
        if source_label and source_label.strip():
            label = source_label.strip()
            label_norm = normalise(label)
            for ids in (self.by_name.get(label), self.by_norm.get(label_norm), self.by_alias.get(label_norm)):
                hit = self._one(ids)
                if hit is not None:
                    return "matched_label", hit
        hit = self._one(self.by_norm.get(title_norm))
        if hit is not None:
            return "matched_exact", hit
        hit = self._one(self.by_alias.get(title_norm))
        if hit is not None:
            return "matched_alias", hit
        return None


def load_exact_index(conn: Any) -> ExactIndex:
    return ExactIndex.from_rows(
        conn.execute("SELECT id, name, full_name, name_norm, aliases FROM occupations")
    )


# ------------------------------------------------------------------ occupation embeddings


def occupation_index_name(model: str, dimensions: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:24] or "model"
    return f"{INDEX_PREFIX}{slug}_{hashlib.sha256(model.encode()).hexdigest()[:8]}_{dimensions}"


def ensure_occupation_index(conn: Any, model: str, dimensions: int) -> str:
    """An HNSW index over this model's occupation vectors (partial, by expression, like the postings').

    Small (thousands of rows): built in place in about a second, not concurrently.
    """
    name = occupation_index_name(model, dimensions)
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON occupation_embeddings "
            "USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WHERE model = {model}"
        ).format(name=sql.Identifier(name), dim=sql.Literal(dimensions), model=sql.Literal(model))
    )
    return name


@dataclass(frozen=True, slots=True)
class OccupationText:
    id: int
    text: str
    hash: str


def occupations_to_embed(conn: Any, model: str, dimensions: int) -> tuple[list[OccupationText], int]:
    """(occupations whose vector for `model` is missing, of another text or dimension; total count)."""
    rows = conn.execute(
        """SELECT o.id, o.name, o.full_name, e.text_hash, vector_dims(e.embedding)
             FROM occupations o
             LEFT JOIN occupation_embeddings e ON e.occupation_id = o.id AND e.model = %s
            ORDER BY o.id""",
        (model,),
    ).fetchall()
    todo = []
    for ident, name, full_name, stored_hash, dims in rows:
        text = embedding_text(name, full_name)
        h = text_hash(text)
        if stored_hash != h or dims != dimensions:
            todo.append(OccupationText(ident, text, h))
    return todo, len(rows)


def store_occupation_embeddings(
    conn: Any, model: str, rows: Sequence[tuple[OccupationText, np.ndarray]]
) -> int:
    """Upsert a chunk of occupation vectors in one statement (occupations deleted meanwhile skipped)."""
    if not rows:
        return 0
    cur = conn.execute(
        """INSERT INTO occupation_embeddings AS oe (occupation_id, model, text_hash, embedding)
           SELECT u.id, %(model)s, u.h, u.v
             FROM unnest(%(ids)s::bigint[], %(hashes)s::text[], %(vecs)b::vector[]) AS u(id, h, v)
             JOIN occupations o ON o.id = u.id
           ON CONFLICT (occupation_id, model) DO UPDATE
              SET text_hash = excluded.text_hash, embedding = excluded.embedding, created_at = now()""",
        {
            "model": model,
            "ids": [o.id for o, _ in rows],
            "hashes": [o.hash for o, _ in rows],
            "vecs": [v for _, v in rows],
        },
    )
    return cur.rowcount


class CatalogueSync:
    """Keeps the occupation vectors of the current embedding model complete, and the exact index fresh.

    `step(conn)` does one bounded piece of work (a signature check, or one chunk of names embedded);
    the daemon runs it in its own thread so the work loop never waits for the model server, and
    `jobpipe classifier eval` runs it to completion. A model change re-embeds (rows are per model);
    a changed name (text hash) re-embeds that occupation only.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        dimensions: int,
        *,
        chunk: int = 64,
        check_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.model = model
        self.dimensions = dimensions
        self.chunk = chunk
        self.check_interval_s = check_interval_s
        self.clock = clock
        self.index: ExactIndex = ExactIndex()
        self.total = 0
        self.todo: list[OccupationText] = []
        self.failed: dict[int, str] = {}  # occupations the model refused (kept out of the search)
        self.ready_event = threading.Event()  # every occupation embedded: the vector search may run
        self.index_event = threading.Event()  # the exact-name index is loaded
        self._signature: tuple[Any, ...] | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.ready_event.is_set()

    @property
    def pending(self) -> int:
        return len(self.todo) if self._signature is not None else max(1, self.total)

    def describe(self) -> str:
        if self._signature is None:
            return "catalogue: not checked yet"
        if self.total == 0:
            return "catalogue: EMPTY (run jobpipe occupations load/fetch)"
        if self.todo:
            return f"catalogue: embedding {self.total - len(self.todo)}/{self.total}"
        return f"catalogue: {self.total} occupations"

    def _current_signature(self, conn: Any) -> tuple[Any, ...]:
        row = conn.execute(
            """SELECT (SELECT count(*) FROM occupations), (SELECT max(updated_at) FROM occupations),
                      (SELECT count(*) FROM occupation_embeddings WHERE model = %s)""",
            (self.model,),
        ).fetchone()
        return tuple(row)

    def step(self, conn: Any, *, force_check: bool = False) -> bool:
        """One piece of work; True when it did something worth repeating at once."""
        now = self.clock()
        if not self.todo and (force_check or self._signature is None or now >= self._next_check):
            self._next_check = now + self.check_interval_s
            sig = self._current_signature(conn)
            if sig == self._signature:
                if self.total and not self.ready_event.is_set():
                    self._finish(conn)  # a finish cut short (e.g. the database restarted) is redone
                return False
            todo, total = occupations_to_embed(conn, self.model, self.dimensions)
            index = load_exact_index(conn)
            with self._lock:
                self.index, self.total = index, total
                self.todo = [t for t in todo if t.id not in self.failed]
                self._signature = sig
            self.index_event.set()
            if self.todo:
                self.ready_event.clear()  # a catalogue change: search only once it is complete again
            else:
                self._finish(conn)
            return bool(self.todo)
        if not self.todo:
            return False
        chunk = self.todo[: self.chunk]
        results = self.client.embed_batch(
            [t.text for t in chunk], role="document"
        )  # DependencyDown propagates
        rows = []
        for occ, res in zip(chunk, results, strict=True):
            if isinstance(res, ItemError):
                self.failed[occ.id] = str(res)
                continue
            try:
                rows.append((occ, as_vector(res, self.dimensions)))
            except ItemError as exc:
                self.failed[occ.id] = str(exc)
        with conn.transaction():
            stored = store_occupation_embeddings(conn, self.model, rows)
        with self._lock:
            self.todo = self.todo[len(chunk) :]
            if self._signature is not None:  # our own writes are not a catalogue change
                self._signature = (*self._signature[:2], self._signature[2] + stored)
        if not self.todo:
            self._finish(conn)
        return bool(self.todo)

    def _finish(self, conn: Any) -> None:
        # Every model's rows differ in dimension possibly: delete this model's wrong-dimension rows first.
        conn.execute(
            "DELETE FROM occupation_embeddings WHERE model = %s AND vector_dims(embedding) <> %s",
            (self.model, self.dimensions),
        )
        if self.total:
            ensure_occupation_index(conn, self.model, self.dimensions)
            self.ready_event.set()
        else:
            self.ready_event.clear()

    def run_until_ready(self, conn: Any, *, retries: int = 5, pause: threading.Event | None = None) -> None:
        """Embed until complete (commands and benchmarks); a model server that drops a connection
        now and then is retried `retries` times in a row with a growing pause, then DependencyDown."""
        wait = pause or threading.Event()  # never set: wait() is a pause that a caller may cut short
        failures = 0
        self.step(conn, force_check=True)
        while self.todo:
            try:
                self.step(conn)
                failures = 0
            except DependencyDown as exc:
                failures += 1
                if failures > retries:
                    raise
                wait.wait(min(30.0, exc.retry_after or 2.0**failures))


# ------------------------------------------------------------------ the vector stage


@dataclass(frozen=True, slots=True)
class TitleJob:
    title_id: int
    title_norm: str
    sample: str
    source_label: str | None


def title_text(title_norm: str | None, sample: str | None) -> str:
    """What is embedded for a title: its normalised form (of the sample when none is stored), cut."""
    text = (clean_text(title_norm) or "").strip() or normalise(sample or "")
    return text[:MAX_TITLE_CHARS]


def load_title_jobs(conn: Any, title_ids: Sequence[int]) -> dict[int, TitleJob]:
    """One query for a batch (exact evidence is looked up later, in memory, by the caller)."""
    out: dict[int, TitleJob] = {}
    for tid, norm, sample, label in conn.execute(
        "SELECT id, title_norm, sample_title, source_label FROM titles WHERE id = ANY(%s)", (list(title_ids),)
    ):
        out[tid] = TitleJob(tid, title_text(norm, sample), clean_text(sample, MAX_TITLE_CHARS) or "", label)
    return out


# Candidate fusion (issue 18, measured by bench/matching_quality.py on the full 7,625-name catalogue):
# the union of the POOL nearest occupation vectors and the occupations of the 2 * POOL terms nearest
# to the title by trigram distance (pg_trgm `<->`, GiST; every name an occupation is known by is a
# term), ranked by
#     (1 - LEXICAL_WEIGHT) * cosine(title, occupation) + LEXICAL_WEIGHT * lexical,
#     lexical = max over the occupation's terms of
#               (similarity(term, title) + word_similarity(term, title)) / 2
# (pg_trgm: Jaccard of the trigram sets, and the share of the term's trigrams found in the title).
# Taking the nearest terms by Jaccard alone and re-ranking them by the blend loses nothing against
# a pool ranked by the lexical score itself (same recall on both splits). A linear blend beat
# reciprocal-rank fusion here (recall@5 0.984 vs 0.978 at its best k=10 on the
# tuned split): both scores live on [0, 1] and the cosine of an e5 model varies little, so ranks
# throw away what the lexical score knows. The weights are per method, not per model: a model
# whose cosines spread wider only gains weight, which is what a better model deserves.
CANDIDATE_POOL = 20  # per source; the tuned split could not tell 10/20/40 apart (10 lost 0.7 held-out points)
LEXICAL_WEIGHT = 0.5  # tuned split: 0.4 lost 0.3 points of recall@5, 0.6 tied (and lost 0.7 held out)


def _search_sql(model: str, dimensions: int) -> sql.Composed:
    """Top-K fused candidates per query (CTE `q(title_id, vec, txt)`): (title_id, occupation_id,
    sim, score, best), where `sim` is the cosine similarity, `score` the blended score and `best`
    the highest cosine among the pool (what `classifier.min_similarity` is compared with).

    An empty `txt` (or a NULL one) gives vector candidates only.
    """
    return sql.SQL(
        """SELECT q.title_id, f.occupation_id, f.sim, f.score, f.best
             FROM q CROSS JOIN LATERAL (
                  SELECT s.occupation_id, s.sim,
                         (1 - {wl}) * s.sim + {wl} * s.lex AS score, max(s.sim) OVER () AS best
                    FROM (SELECT u.occupation_id,
                                 1 - (e.embedding::vector({dim}) <=> q.vec::vector({dim})) AS sim,
                                 coalesce((SELECT max(similarity(t.term, q.txt)
                                                      + word_similarity(t.term, q.txt))
                                             FROM occupation_terms t
                                            WHERE t.occupation_id = u.occupation_id) / 2, 0) AS lex
                            FROM (SELECT v.occupation_id FROM (
                                         SELECT e.occupation_id FROM occupation_embeddings e
                                          WHERE e.model = {model}
                                          ORDER BY e.embedding::vector({dim}) <=> q.vec::vector({dim})
                                          LIMIT {pool}) v
                                  UNION
                                  SELECT l.occupation_id FROM (
                                         SELECT t.occupation_id FROM occupation_terms t
                                          WHERE coalesce(q.txt, '') <> ''
                                          ORDER BY t.term <-> q.txt
                                          LIMIT {terms}) l) u
                            JOIN occupation_embeddings e
                              ON e.occupation_id = u.occupation_id AND e.model = {model}) s
                   ORDER BY score DESC, s.occupation_id
                   LIMIT %(k)s) f"""
    ).format(
        dim=sql.Literal(dimensions),
        model=sql.Literal(model),
        pool=sql.Literal(CANDIDATE_POOL),
        terms=sql.Literal(2 * CANDIDATE_POOL),  # an occupation has about two terms (its gender forms)
        wl=sql.Literal(LEXICAL_WEIGHT),
    )


def search_candidates(
    conn: Any,
    vectors: Mapping[int, np.ndarray],
    model: str,
    dimensions: int,
    k: int,
    texts: Mapping[int, str] | None = None,
) -> dict[int, list[tuple[int, float]]]:
    """{key: [(occupation id, cosine similarity), ...] best fused score first} for each query
    vector (read only). `texts` (the normalised titles, by the same keys) adds the lexical
    candidates; without them the candidates are the nearest vectors only."""
    if not vectors:
        return {}
    texts = texts or {}
    query = sql.SQL(
        "WITH q AS (SELECT * FROM unnest(%(ids)s::bigint[], %(vecs)b::vector[], %(txts)s::text[]) "
        "AS q(title_id, vec, txt)) {search}"
    ).format(search=_search_sql(model, dimensions))
    out: dict[int, list[tuple[int, float]]] = {key: [] for key in vectors}
    params = {
        "ids": list(vectors),
        "vecs": list(vectors.values()),
        "txts": [texts.get(key, "") for key in vectors],
        "k": k,
    }
    rows = conn.execute(query, params).fetchall()
    scored: dict[int, list[tuple[float, int, float]]] = {key: [] for key in vectors}
    for key, occ, sim, score, _best in rows:
        scored[key].append((float(score), occ, float(sim)))
    for key, cands in scored.items():
        cands.sort(key=lambda c: (-c[0], c[1]))
        out[key] = [(occ, sim) for _, occ, sim in cands]
    return out


def write_vector_stage(
    conn: Any,
    decided: Sequence[tuple[int, int | None, str, float | None]],
    vectors: Sequence[tuple[int, np.ndarray]],
    *,
    model: str,
    dimensions: int,
    k: int,
    min_similarity: float,
    texts: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """One statement per batch: store exact decisions, search candidates for the rest, store
    `no_match` below the threshold, keep the candidates and hand the others to the LLM stage.

    decided: (title id, occupation id | None, outcome, confidence). texts: {title id: normalised
    title} for the lexical candidates (absent: vector candidates only). Candidates are stored best
    fused score first, each with its cosine similarity; `no_match` compares the best cosine of the
    pool with `min_similarity`. Returns {title id: outcome}
    ("candidates" for titles queued for the LLM); titles deleted meanwhile are absent.
    """
    query = sql.SQL(
        """
        WITH d AS (
            SELECT * FROM unnest(%(d_ids)s::bigint[], %(d_occ)s::bigint[], %(d_out)s::text[],
                                 %(d_conf)s::real[]) AS d(title_id, occupation_id, outcome, confidence)
        ), q AS (
            SELECT * FROM unnest(%(q_ids)s::bigint[], %(q_vecs)b::vector[], %(q_txts)s::text[])
                          AS q(title_id, vec, txt)
        ), c AS ({search}
        ), a AS (
            SELECT q.title_id,
                   jsonb_agg(jsonb_build_object('id', c.occupation_id, 'sim', round(c.sim::numeric, 4))
                             ORDER BY c.score DESC, c.occupation_id)
                             FILTER (WHERE c.occupation_id IS NOT NULL) AS cands,
                   max(c.best) AS best
              FROM q LEFT JOIN c ON c.title_id = q.title_id GROUP BY q.title_id
        ), r AS (
            SELECT title_id, occupation_id, outcome, confidence, NULL::jsonb AS cands, false AS llm,
                   NULL::text AS emodel
              FROM d
            UNION ALL
            SELECT title_id, NULL,
                   CASE WHEN coalesce(best, -2) < %(min)s THEN 'no_match' ELSE 'candidates' END,
                   best::real, coalesce(cands, '[]'), coalesce(best, -2) >= %(min)s, %(model)s
              FROM a
        ), u AS (
            UPDATE titles t
               SET occupation_id = CASE WHEN r.llm THEN t.occupation_id ELSE r.occupation_id END,
                   outcome = CASE WHEN r.llm THEN t.outcome ELSE r.outcome END,
                   confidence = CASE WHEN r.llm THEN t.confidence ELSE r.confidence END,
                   candidates = r.cands,
                   embedding_model = CASE WHEN r.llm THEN t.embedding_model ELSE r.emodel END,
                   model = CASE WHEN r.llm THEN t.model END,
                   prompt_version = CASE WHEN r.llm THEN t.prompt_version END,
                   classified_at = CASE WHEN r.llm THEN t.classified_at ELSE now() END
              FROM r WHERE t.id = r.title_id
            RETURNING t.id
        )
        SELECT r.title_id, r.outcome, e.queued
          FROM r JOIN u ON u.id = r.title_id
          LEFT JOIN LATERAL (SELECT true AS queued, jobpipe_enqueue({llm_stage}, r.title_id) WHERE r.llm) e
                 ON true
        """
    ).format(search=_search_sql(model, dimensions), llm_stage=sql.Literal(LLM_STAGE))
    params = {
        "d_ids": [r[0] for r in decided],
        "d_occ": [r[1] for r in decided],
        "d_out": [r[2] for r in decided],
        "d_conf": [r[3] for r in decided],
        "q_ids": [v[0] for v in vectors],
        "q_vecs": [v[1] for v in vectors],
        "q_txts": [(texts or {}).get(v[0], "") for v in vectors],
        "k": k,
        "min": min_similarity,
        "model": model,
    }
    rows = conn.execute(query, params).fetchall()
    return {tid: outcome for tid, outcome, _queued in rows}


# ------------------------------------------------------------------ the LLM stage


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    name: str
    similarity: float


@dataclass(frozen=True, slots=True)
class LLMJob:
    title_id: int
    title_norm: str
    sample: str
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: str  # matched | llm_no | llm_uncertain
    occupation_id: int | None
    confidence: float | None


def load_llm_jobs(conn: Any, title_ids: Sequence[int]) -> dict[int, LLMJob]:
    """One query: titles with their stored candidates and the candidates' names."""
    rows = conn.execute(
        """SELECT t.id, t.title_norm, t.sample_title,
                  (SELECT coalesce(jsonb_agg(jsonb_build_array(o.id, o.name, (c.v->>'sim')::real)
                                             ORDER BY c.ord), '[]')
                     FROM jsonb_array_elements(coalesce(t.candidates, '[]')) WITH ORDINALITY AS c(v, ord)
                     JOIN occupations o ON o.id = (c.v->>'id')::bigint)
             FROM titles t WHERE t.id = ANY(%s)""",
        (list(title_ids),),
    ).fetchall()
    out = {}
    for tid, norm, sample, cands in rows:
        out[tid] = LLMJob(
            tid,
            title_text(norm, sample),
            normalise_whitespace(clean_text(sample, MAX_TITLE_CHARS) or "") or (norm or ""),
            tuple(Candidate(int(i), n, float(s)) for i, n, s in cands),
        )
    return out


def decide(answer: Mapping[str, Any], job: LLMJob) -> Decision:
    """The LLM's answer as a decision; ItemError for anything that does not fit (never stored)."""
    verdict = answer.get("verdict")
    occ = answer.get("occupation_id")
    if verdict not in ("yes", "no", "uncertain"):
        raise ItemError(f"LLM verdict {verdict!r} is not yes/no/uncertain", kind="malformed_answer")
    if isinstance(occ, str) and (number := parse_int(occ)) is not None:
        occ = number  # tolerated: a number written as a string (ASCII digits only: "²" is no id)
    if occ is not None and (isinstance(occ, bool) or not isinstance(occ, int)):
        raise ItemError(f"LLM occupation_id {occ!r} is not an integer or null", kind="malformed_answer")
    by_id = {c.id: c for c in job.candidates}
    if occ is not None and occ not in by_id:
        raise ItemError(
            f"LLM named occupation {occ}, which is not among the candidates {sorted(by_id)}: rejected",
            kind="not_a_candidate",
        )
    if verdict == "yes":
        if occ is None:
            raise ItemError("LLM said yes without naming a candidate", kind="malformed_answer")
        return Decision("matched", occ, by_id[occ].similarity)
    if verdict == "no":
        return Decision("llm_no", None, None)
    return Decision("llm_uncertain", None, by_id[occ].similarity if occ is not None else None)


def ask_llm(chat: Any, prompt: Prompt, job: LLMJob) -> Decision:
    """One LLM call for one title. ItemError for a malformed answer; DependencyDown propagates."""
    if not job.candidates:
        raise ItemError("no candidates stored for this title", kind="no_candidates")
    answer = chat.generate_json(prompt.system, prompt.render(job.sample, job.title_norm, job.candidates),
                                ANSWER_SCHEMA)  # fmt: skip
    return decide(answer, job)


def write_llm_results(
    conn: Any,
    results: Sequence[tuple[int, Decision]],
    *,
    llm_model: str,
    prompt_version: str,
    embedding_model: str,
) -> dict[int, str]:
    """One statement per batch; returns {title id: outcome} for titles that still exist."""
    if not results:
        return {}
    rows = conn.execute(
        """UPDATE titles t
              SET occupation_id = r.occ, outcome = r.outcome, confidence = r.conf, model = %(llm)s,
                  prompt_version = %(pv)s, embedding_model = %(em)s, classified_at = now()
             FROM unnest(%(ids)s::bigint[], %(occ)s::bigint[], %(out)s::text[], %(conf)s::real[])
                  AS r(id, occ, outcome, conf)
            WHERE t.id = r.id
        RETURNING t.id, r.outcome""",
        {
            "ids": [tid for tid, _ in results],
            "occ": [d.occupation_id for _, d in results],
            "out": [d.outcome for _, d in results],
            "conf": [d.confidence for _, d in results],
            "llm": llm_model,
            "pv": prompt_version,
            "em": embedding_model,
        },
    ).fetchall()
    return dict(rows)


# ------------------------------------------------------------------ re-queueing


@dataclass(frozen=True, slots=True)
class Versions:
    """What a current result rests on: a result made with anything else is stale."""

    llm_model: str
    prompt_version: str
    embedding_model: str


# A result is stale when it rests on another LLM, prompt or embedding model than the current ones.
_STALE = sql.SQL(
    "(t.outcome = ANY(%(llm_outcomes)s) AND (t.model IS DISTINCT FROM %(llm)s"
    " OR t.prompt_version IS DISTINCT FROM %(pv)s OR t.embedding_model IS DISTINCT FROM %(em)s))"
    " OR (t.outcome = 'no_match' AND t.embedding_model IS DISTINCT FROM %(em)s)"
)


def count_stale(conn: Any, current: Versions) -> int:
    """Titles whose result was made with another LLM, prompt version or embedding model."""
    query = sql.SQL("SELECT count(*) FROM titles t WHERE {stale}").format(stale=_STALE)
    params = {
        "llm_outcomes": list(LLM_OUTCOMES),
        "llm": current.llm_model,
        "pv": current.prompt_version,
        "em": current.embedding_model,
    }
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def requeue(
    conn: Any,
    *,
    stale: Versions | None = None,
    outcomes: Sequence[str] = (),
    unclassified: bool = False,
    everything: bool = False,
) -> int:
    """Queue titles for classification again; returns how many were queued.

    stale: LLM results made with another LLM, prompt version or embedding model, and `no_match`
    results of another embedding model. outcomes: every title with one of these outcomes.
    unclassified: titles without any outcome. everything: all titles.
    """
    unknown = sorted(set(outcomes) - set(ALL_OUTCOMES))
    if unknown:
        raise ValueError(f"unknown outcome(s) {unknown}; known: {', '.join(ALL_OUTCOMES)}")
    conds: list[sql.Composable] = []
    params: dict[str, Any] = {"outcomes": list(outcomes), "llm_outcomes": list(LLM_OUTCOMES)}
    if everything:
        conds.append(sql.SQL("true"))
    if outcomes:
        conds.append(sql.SQL("t.outcome = ANY(%(outcomes)s)"))
    if unclassified:
        conds.append(sql.SQL("t.outcome IS NULL"))
    if stale is not None:
        params.update(llm=stale.llm_model, pv=stale.prompt_version, em=stale.embedding_model)
        conds.append(_STALE)
    if not conds:
        return 0
    query = sql.SQL(
        "SELECT count(*) FROM (SELECT jobpipe_enqueue({stage}, t.id) FROM titles t WHERE {cond}) s"
    ).format(
        stage=sql.Literal(STAGE), cond=sql.SQL(" OR ").join(sql.SQL("(") + c + sql.SQL(")") for c in conds)
    )
    with conn.transaction():
        row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def outcome_counts(conn: Any) -> dict[str, int]:
    return {
        o or "unclassified": n for o, n in conn.execute("SELECT outcome, count(*) FROM titles GROUP BY 1")
    }


# ------------------------------------------------------------------ evaluation on labelled titles


@dataclass(frozen=True, slots=True)
class Labelled:
    line: int
    title: str
    expected: int | None  # None: the title should match no occupation


def parse_labelled_csv(body: bytes, source: str) -> list[Labelled]:
    """`title,occupation_id[,...]` rows (a header row naming `title` is skipped; other columns ignored).

    An empty id (or "none", "0") means: no occupation expected. NUL bytes and invalid UTF-8 are
    cleaned, not fatal; a row without a title column or with a non-numeric id is a UserError
    naming the line.
    """
    text = clean_text(body) or ""
    reader = csv.reader(io.StringIO(text))
    rows: list[list[str]] = []
    try:
        rows.extend(reader)
    except csv.Error as exc:  # a field over csv's 128 kB limit (e.g. an unclosed quote), ...
        raise UserError(f"{source}: line {reader.line_num}: not a CSV row ({exc})") from None
    out: list[Labelled] = []
    for n, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if n == 1 and row[0].strip().lower() == "title":
            continue
        if len(row) < 2:
            raise UserError(f"{source}: line {n}: expected 'title,occupation_id', got {len(row)} column(s)")
        raw = row[1].strip().lower()
        if raw in ("", "none", "null", "0", "-"):
            expected = None
        elif (number := parse_int(raw)) is not None:
            expected = number
        else:
            raise UserError(f"{source}: line {n}: occupation id {row[1][:40]!r} is not a number (or empty)")
        out.append(Labelled(n, row[0], expected))
    if not out:
        raise UserError(f"{source}: no labelled titles found")
    return out


@dataclass
class EvalReport:
    rows: int = 0
    unique_titles: int = 0
    correct: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # per row
    llm_calls: int = 0
    llm_errors: int = 0
    candidate_hits: int = 0  # rows whose expected occupation was among the top-K (exact rows count)
    with_expected: int = 0
    seconds: float = 0.0
    llm_model: str = ""
    embedding_model: str = ""
    prompt_version: str = ""
    mistakes: list[tuple[str, int | None, int | None, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "unique_titles": self.unique_titles,
            "accuracy": round(self.correct / self.rows, 4) if self.rows else None,
            "outcomes": dict(sorted(self.outcomes.items())),
            "llm_calls": self.llm_calls,
            "llm_errors": self.llm_errors,
            "llm_calls_per_title": round(self.llm_calls / self.rows, 4) if self.rows else None,
            "candidate_recall": round(self.candidate_hits / self.with_expected, 4)
            if self.with_expected
            else None,
            "titles_per_s": round(self.rows / self.seconds, 2) if self.seconds > 0 else None,
            "seconds": round(self.seconds, 3),
            "llm_model": self.llm_model,
            "embedding_model": self.embedding_model,
            "prompt_version": self.prompt_version,
        }

    def table(self) -> str:
        d = self.as_dict()
        lines = [
            f"labelled titles   {d['rows']} ({d['unique_titles']} unique after normalisation)",
            f"accuracy          {d['accuracy']:.3f}" if d["accuracy"] is not None else "accuracy          -",
            f"candidate recall  {d['candidate_recall']}  (expected occupation among the top-K)",
            f"LLM calls         {d['llm_calls']} ({d['llm_calls_per_title']} per title, "
            f"{d['llm_errors']} errors)",
            f"titles/s          {d['titles_per_s']}  ({d['seconds']} s)",
            f"models            LLM {self.llm_model}, prompt {self.prompt_version}, "
            f"embeddings {self.embedding_model}",
            "outcomes:",
        ]
        lines += [f"  {k:<16} {v}" for k, v in d["outcomes"].items()]
        if self.mistakes:
            lines.append("first mistakes (title | expected | got | outcome):")
            lines += [f"  {t[:60]} | {e} | {g} | {o}" for t, e, g, o in self.mistakes[:15]]
        return "\n".join(lines)


def evaluate(
    conn: Any,
    rows: Sequence[Labelled],
    *,
    embed_client: Any,
    chat: Any | None,
    prompt: Prompt,
    embedding_model: str,
    dimensions: int,
    top_k: int,
    min_similarity: float,
    workers: int,
    clock: Callable[[], float] = time.monotonic,
) -> EvalReport:
    """The classifier's pipeline on labelled titles, without the queue and without writing titles.

    The occupation vectors are brought up to date first (as the daemon would); titles are
    deduplicated by normalised form like postings are. chat None: no LLM stage (outcome
    "needs_llm"), for measuring the candidate stage alone.
    """
    sync = CatalogueSync(embed_client, embedding_model, dimensions)
    sync.run_until_ready(conn)
    if sync.total == 0:
        raise UserError("the occupation catalogue is empty: run `jobpipe occupations load` or `fetch` first")
    report = EvalReport(
        llm_model=getattr(chat, "model", "") if chat is not None else "",
        embedding_model=embedding_model,
        prompt_version=prompt.version,
    )
    start = clock()
    norms = {r.line: normalise(r.title) for r in rows}
    unique = sorted(set(norms.values()))
    report.rows, report.unique_titles = len(rows), len(unique)
    result: dict[str, tuple[str, int | None]] = {}
    candidates: dict[str, list[tuple[int, float]]] = {}
    need: list[str] = []
    for norm in unique:
        ev = sync.index.evidence(norm, None)
        if ev is not None:
            result[norm] = ev
        elif not norm:
            result[norm] = ("empty", None)
        else:
            need.append(norm)
    for lo in range(0, len(need), 64):
        part = need[lo : lo + 64]
        vecs = embed_client.embed_batch(part, role="query")
        ok = {}
        for i, (norm, vec) in enumerate(zip(part, vecs, strict=True)):
            if isinstance(vec, ItemError):
                result[norm] = ("error", None)
            else:
                ok[lo + i] = as_vector(vec, dimensions)
        found = search_candidates(
            conn, ok, embedding_model, dimensions, top_k, texts={key: need[key] for key in ok}
        )
        for key, cands in found.items():
            candidates[need[key]] = cands
    llm_jobs: list[tuple[str, LLMJob]] = []
    names = dict(conn.execute("SELECT id, name FROM occupations").fetchall())
    for norm, cands in candidates.items():
        if not cands or max(sim for _, sim in cands) < min_similarity:
            result[norm] = ("no_match", None)
        elif chat is None:
            result[norm] = ("needs_llm", None)
        else:
            job = LLMJob(0, norm, norm, tuple(Candidate(i, names.get(i, str(i)), s) for i, s in cands))
            llm_jobs.append((norm, job))

    def run(job: LLMJob) -> tuple[Decision | None, int, int]:
        calls = errors = 0
        for _attempt in range(2):  # one retry for a malformed answer, as the queue would
            calls += 1
            try:
                return ask_llm(chat, prompt, job), calls, errors
            except ItemError:
                errors += 1
        return None, calls, errors

    if llm_jobs:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for (norm, _job), (decision, calls, errors) in zip(
                llm_jobs, pool.map(run, [j for _, j in llm_jobs]), strict=True
            ):
                report.llm_calls += calls
                report.llm_errors += errors
                result[norm] = (
                    ("error", None) if decision is None else (decision.outcome, decision.occupation_id)
                )
    report.seconds = clock() - start
    for r in rows:
        norm = norms[r.line]
        outcome, got = result[norm]
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        if r.expected is not None:
            report.with_expected += 1
            if got == r.expected or r.expected in {i for i, _ in candidates.get(norm, [])}:
                report.candidate_hits += 1
        if got == r.expected:
            report.correct += 1
        elif len(report.mistakes) < 50:
            report.mistakes.append((r.title, r.expected, got, outcome))
    return report


def chat_client_from_config(cfg: Any, *, observer: Any = None) -> Any:
    """The LLM client the `classifier` section describes (its own servers, else ollama.urls)."""
    return chat_client_for_role(cfg.classifier, cfg.ollama, observer=observer)


def evaluate_from_config(conn: Any, cfg: Any, rows: Sequence[Labelled]) -> EvalReport:
    """`jobpipe classifier eval`: the configured embedding model, LLM, prompt and thresholds."""
    c = cfg.classifier
    with client_from_config(cfg, concurrency=2) as embed_client, chat_client_from_config(cfg) as chat:
        return evaluate(
            conn,
            rows,
            embed_client=embed_client,
            chat=chat,
            prompt=load_prompt(),
            embedding_model=cfg.embedder.model.strip(),
            dimensions=cfg.embedder.dimensions,
            top_k=c.top_k,
            min_similarity=c.min_similarity,
            workers=c.workers,
        )
