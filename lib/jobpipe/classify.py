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

import hashlib
import importlib.resources
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg import sql

from jobpipe.catalogue import DATA_PACKAGE
from jobpipe.db import Conn
from jobpipe.errors import ItemError
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


def load_exact_index(conn: Conn) -> ExactIndex:
    return ExactIndex.from_rows(
        conn.execute("SELECT id, name, full_name, name_norm, aliases FROM occupations")
    )


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


def load_title_jobs(conn: Conn, title_ids: Sequence[int]) -> dict[int, TitleJob]:
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
# term, and so is each part of a coordinated compound, "maschinenführer" of "Maschinen- und
# Anlagenführer/in": migration 0090, +4.8 held-out points of recall@1, +1.4 of recall@5), ranked by
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
# The lexical half: the LEXICAL_POOL occupations nearest by their nearest term, read from the
# LEXICAL_TERMS nearest terms (one GiST index-ordered scan). Not "the 40 nearest terms": since the
# curated search terms (data/occupation_terms.csv) an occupation has up to ~30 terms, and the 40
# nearest terms of "java developer" named 4 occupations (of the tuned split's titles, 88 of 366 got
# fewer than 20; before the curated terms the 40 nearest terms named ~27, at least 18).
LEXICAL_POOL = 30  # what the 40 nearest terms named before the curated terms (median 27)
LEXICAL_TERMS = 8 * CANDIDATE_POOL  # 160 terms: 30 occupations even when the nearest have many terms
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
                                  SELECT m.occupation_id FROM (
                                         SELECT l.occupation_id FROM (
                                                SELECT t.occupation_id, t.term <-> q.txt AS d
                                                  FROM occupation_terms t
                                                 WHERE coalesce(q.txt, '') <> ''
                                                 ORDER BY t.term <-> q.txt
                                                 LIMIT {terms}) l
                                          GROUP BY l.occupation_id
                                          ORDER BY min(l.d), l.occupation_id
                                          LIMIT {lexical_pool}) m) u
                            JOIN occupation_embeddings e
                              ON e.occupation_id = u.occupation_id AND e.model = {model}) s
                   ORDER BY score DESC, s.occupation_id
                   LIMIT %(k)s) f"""
    ).format(
        dim=sql.Literal(dimensions),
        model=sql.Literal(model),
        pool=sql.Literal(CANDIDATE_POOL),
        terms=sql.Literal(LEXICAL_TERMS),
        lexical_pool=sql.Literal(LEXICAL_POOL),
        wl=sql.Literal(LEXICAL_WEIGHT),
    )


def search_candidates(
    conn: Conn,
    vectors: Mapping[int, np.ndarray],
    model: str,
    dimensions: int,
    k: int,
    texts: Mapping[int, str] | None = None,
) -> dict[int, list[tuple[int, float]]]:
    """{key: [(occupation id, cosine similarity), ...] best fused score first} for each query
    vector (read only). `texts` (the normalised titles, by the same keys) adds the lexical
    candidates; without them the candidates are the nearest vectors only."""
    scored = scored_candidates(conn, vectors, model, dimensions, k, texts)
    return {key: [(occ, sim) for occ, sim, _ in cands] for key, cands in scored.items()}


def scored_candidates(
    conn: Conn,
    vectors: Mapping[int, np.ndarray],
    model: str,
    dimensions: int,
    k: int,
    texts: Mapping[int, str] | None = None,
) -> dict[int, list[tuple[int, float, float]]]:
    """search_candidates with each candidate's fused score: {key: [(occupation id, cosine
    similarity, fused score), ...] best score first}."""
    if not vectors:
        return {}
    texts = texts or {}
    query = sql.SQL(
        "WITH q AS (SELECT * FROM unnest(%(ids)s::bigint[], %(vecs)b::vector[], %(txts)s::text[]) "
        "AS q(title_id, vec, txt)) {search}"
    ).format(search=_search_sql(model, dimensions))
    params = {
        "ids": list(vectors),
        "vecs": list(vectors.values()),
        "txts": [texts.get(key, "") for key in vectors],
        "k": k,
    }
    rows = conn.execute(query, params).fetchall()
    out: dict[int, list[tuple[int, float, float]]] = {key: [] for key in vectors}
    for key, occ, sim, score, _best in rows:
        out[key].append((occ, float(sim), float(score)))
    for cands in out.values():
        cands.sort(key=lambda c: (-c[2], c[0]))
    return out


def write_vector_stage(
    conn: Conn,
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


def load_llm_jobs(conn: Conn, title_ids: Sequence[int]) -> dict[int, LLMJob]:
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
    conn: Conn,
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


def count_stale(conn: Conn, current: Versions) -> int:
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
    conn: Conn,
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


def outcome_counts(conn: Conn) -> dict[str, int]:
    return {
        o or "unclassified": n for o, n in conn.execute("SELECT outcome, count(*) FROM titles GROUP BY 1")
    }


def chat_client_from_config(cfg: Any, *, observer: Any = None) -> Any:
    """The LLM client the `classifier` section describes (its own servers, else ollama.urls)."""
    return chat_client_for_role(cfg.classifier, cfg.ollama, observer=observer)
