"""`jobpipe classifier eval`: the live classification pipeline run offline on labelled titles.

Labelled titles (CSV: title, occupation id) go through the same evidence, candidate search and
LLM verdict as the daemon's stages (jobpipe.classify), and the report gives accuracy by outcome,
candidate recall and the mistakes.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jobpipe.catalogue import search_terms_with
from jobpipe.classify import (
    Candidate,
    Decision,
    LLMJob,
    Prompt,
    ask_llm,
    chat_client_from_config,
    load_prompt,
    search_candidates,
)
from jobpipe.db import Conn
from jobpipe.embeddings import as_vector, client_from_config
from jobpipe.errors import ItemError, UserError
from jobpipe.occupation_vectors import CatalogueSync
from jobpipe.text import clean_text, parse_int
from jobpipe.titles import normalise


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
    conn: Conn,
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
    search_terms: Mapping[str, Sequence[str]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> EvalReport:
    """The classifier's pipeline on labelled titles, without the queue and without writing titles.

    The occupation vectors are brought up to date first (as the daemon would); titles are
    deduplicated by normalised form like postings are. chat None: no LLM stage (outcome
    "needs_llm"), for measuring the candidate stage alone.
    """
    sync = CatalogueSync(embed_client, embedding_model, dimensions, search_terms=search_terms)
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


def evaluate_from_config(conn: Conn, cfg: Any, rows: Sequence[Labelled]) -> EvalReport:
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
            search_terms=search_terms_with(c.search_terms_file),
        )
