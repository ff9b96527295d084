"""The classifier: maps each normalised posting title to a BERUFENET occupation, cheapest evidence first.

Work arrives by trigger: a posting with a new normalised title creates its `titles` row, which
queues stage `classify` (subject = titles.id). Postings take their title's occupation when it is
decided (another trigger), so thousands of postings share one classification.

Stage `classify` (batches of `classifier.batch_size`):
- load (one query): the titles; exact evidence (source label, catalogue name, alias) is looked
  up in an in-memory index of the catalogue;
- call: nothing for exact evidence; else one `embed_batch` request (titles as *queries*);
- write (one statement): exact outcomes, then a top-K pgvector search per title over the
  occupation vectors, `no_match` below `classifier.min_similarity`, and the rest handed to
  stage `classify_llm` with their candidates stored on the title.

Stage `classify_llm` (per item, `classifier.workers` LLM calls in flight):
- load (one query): title + candidates with names;
- call: the LLM (`classifier.model`, temperature 0, fixed seed, the versioned prompt in
  jobpipe/data) answers {"occupation_id", "verdict"}; an id not among the candidates or a
  malformed answer is an ItemError (retried, then the title's outcome is `error`);
- write (one statement per batch): matched / llm_no / llm_uncertain with model + prompt version.

The occupation vectors (one per occupation and embedding model) are kept complete by a
background thread (CatalogueSync): a new catalogue or a new embedding model is embedded once,
and titles needing the vector search wait for it (deferred, not charged, if it takes long).
A model that is not pulled (404) is a dependency problem: items are deferred, nothing charged.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import Gauge

from jobpipe import catalogue, classify, db, embeddings, occupation_vectors
from jobpipe.alerts.conditions import FAIL, Condition, count_condition
from jobpipe.db import Conn
from jobpipe.errors import DependencyDown, ItemError, first_line
from jobpipe.logs import log_event
from jobpipe.queue import Item
from jobpipe.runtime import Context, Daemon, Skip, Stage

log = logging.getLogger("jobpipe.classifier")
REPAIR_INTERVAL_S = 5.0  # how often postings that raced their title's classification are repaired


class ClassifierDaemon(Daemon):
    name = "classifier"
    dependencies = ("ollama",)
    ready_wait_s = 10.0  # how long a vector batch waits for the catalogue before it is deferred

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        c = ctx.cfg.classifier
        observer = ctx.metrics.observe_model_call
        self.embed_model: str = ctx.cfg.embedder.model.strip()
        self.dimensions: int = ctx.cfg.embedder.dimensions
        self.llm_model: str = c.model.strip()
        self.top_k: int = c.top_k
        self.min_similarity: float = c.min_similarity
        self.embed_client = embeddings.client_from_config(ctx.cfg, concurrency=2, observer=observer)
        self.chat = classify.chat_client_from_config(ctx.cfg, observer=observer)
        self.prompt = classify.load_prompt()
        self.versions = classify.Versions(self.llm_model, self.prompt.version, self.embed_model)
        self.sync = occupation_vectors.CatalogueSync(
            self.embed_client,
            self.embed_model,
            self.dimensions,
            search_terms=catalogue.search_terms_with(c.search_terms_file),  # a bad file stops the start
        )
        # The runtime's pool is shared by both stages; this keeps LLM calls at classifier.workers.
        self._llm_slots = threading.BoundedSemaphore(c.workers)
        # Repeats the sync while it has work, checks for a change every second otherwise; a model
        # server that is down is shown as that dependency down until a step succeeds.
        self.sync_job = ctx.job("catalogue_sync", self.sync.step, repeat_s=1.0)
        self._deferred: set[int] = set()  # titles waiting for the catalogue (counted by pending_work)
        self._last_repair = 0.0
        m = ctx.metrics
        self.catalogue_gauge = Gauge(
            f"{m.prefix}catalogue_occupations",
            "Occupations in the catalogue by embedding state for the configured embedding model",
            ["daemon", "state"],
            registry=m.registry,
        )
        for state in ("embedded", "pending", "failed"):
            self.catalogue_gauge.labels(m.daemon, state).set(0)

    def stages(self) -> list[Stage]:
        c = self.ctx.cfg.classifier
        return [
            Stage(
                name=classify.STAGE,
                load=self.load,
                call=self.call,
                write=self.write,
                batch_size=c.batch_size,
                workers=1,
                max_attempts=c.max_attempts,
            ),
            Stage(
                name=classify.LLM_STAGE,
                load=self.load_llm,
                call=self.call_llm,
                write=self.write_llm,
                # Small claims: the runtime's pool is shared and first-in-first-out, so a long row of
                # waiting LLM calls would hold up the next vector batch (and then starve the LLM).
                batch_size=min(c.batch_size, 4 * c.workers),
                workers=c.workers,
                per_item=True,
                max_attempts=c.max_attempts,
            ),
        ]

    # -- the catalogue, kept embedded in the background -------------------------------------------

    def setup(self, conn: Conn) -> None:
        if not self.sync_job.running:
            self.sync_job.start()

    def tick(self, conn: Conn) -> None:
        now = time.monotonic()
        if now - self._last_repair >= REPAIR_INTERVAL_S:
            self._last_repair = now
            # Postings that raced their title's classification (see migration 0061).
            fixed = db.one(conn, "SELECT jobpipe_repair_posting_occupations(interval '1 day')")[0]
            if fixed:
                log_event(log, "posting_occupations_repaired", n=fixed)
        s, m = self.sync, self.ctx.metrics
        self.catalogue_gauge.labels(m.daemon, "pending").set(len(s.todo))
        self.catalogue_gauge.labels(m.daemon, "failed").set(len(s.failed))
        self.catalogue_gauge.labels(m.daemon, "embedded").set(max(0, s.total - len(s.todo) - len(s.failed)))
        self.ctx.set_status_extra(f"{s.describe()}; llm {self.llm_model}")

    def pending_work(self, conn: Conn) -> int:
        return self.sync.pending + len(self._deferred)

    # -- stage classify: evidence and candidates ---------------------------------------------------

    def load(self, conn: Conn, items: list[Item]) -> dict[int, Any]:
        jobs = classify.load_title_jobs(conn, [it.subject for it in items])
        self._deferred.difference_update(it.subject for it in items if it.subject not in jobs)  # deleted
        return {it.id: jobs[it.subject] for it in items if it.subject in jobs}

    def call(self, jobs: list[classify.TitleJob]) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        if not self.sync.index_event.wait(self.ready_wait_s):
            down = DependencyDown("catalogue", self.sync.describe(), kind="not_ready")
            self._deferred.update(job.title_id for job in jobs)
            return [down for _ in jobs]
        index = self.sync.index  # the current catalogue's names (replaced whole on a change)
        need: list[int] = []
        for i, job in enumerate(jobs):
            evidence = index.evidence(job.title_norm, job.source_label)
            if evidence is not None:
                out[i] = evidence  # (outcome, occupation id): no model call
            elif not job.title_norm:
                out[i] = ("empty", None)  # a title of only noise: nothing to classify
            else:
                need.append(i)
        if not need:
            return out
        if not self.sync.ready_event.wait(self.ready_wait_s):
            down = DependencyDown(
                "catalogue",
                f"{self.sync.describe()} for embedding model {self.embed_model!r}",
                kind="not_ready",
            )
            for i in need:
                out[i] = down
                self._deferred.add(jobs[i].title_id)
            return out
        if self.sync.index is not index:  # the catalogue changed while we waited: look again
            index, still = self.sync.index, []
            for i in need:
                evidence = index.evidence(jobs[i].title_norm, jobs[i].source_label)
                if evidence is not None:
                    out[i] = evidence
                else:
                    still.append(i)
            need = still
            if not need:
                return out
        vectors = self.embed_client.embed_batch([jobs[i].title_norm for i in need], role="query")
        for i, vec in zip(need, vectors, strict=True):
            try:
                out[i] = vec if isinstance(vec, ItemError) else embeddings.as_vector(vec, self.dimensions)
            except ItemError as exc:
                out[i] = exc
        return out

    def write(self, conn: Conn, done: list[tuple[Item, classify.TitleJob, Any]]) -> dict[int, str]:
        decided, vectors = [], []
        for _item, job, res in done:
            self._deferred.discard(job.title_id)
            if isinstance(res, tuple):
                outcome, occ = res
                decided.append((job.title_id, occ, outcome, 1.0 if occ is not None else None))
            else:
                vectors.append((job.title_id, res))
        outcomes = classify.write_vector_stage(
            conn,
            decided,
            vectors,
            model=self.embed_model,
            dimensions=self.dimensions,
            k=self.top_k,
            min_similarity=self.min_similarity,
            texts={job.title_id: job.title_norm for _item, job, res in done if not isinstance(res, tuple)},
        )
        return {item.id: outcomes.get(job.title_id, "missing") for item, job, _ in done}

    # -- stage classify_llm: the LLM verifies or picks ---------------------------------------------

    def load_llm(self, conn: Conn, items: list[Item]) -> dict[int, Any]:
        jobs = classify.load_llm_jobs(conn, [it.subject for it in items])
        out: dict[int, Any] = {}
        for it in items:
            job = jobs.get(it.subject)
            if job is not None:
                out[it.id] = job if job.candidates else Skip("no_candidates")
        return out

    def call_llm(self, jobs: list[classify.LLMJob]) -> list[Any]:
        (job,) = jobs
        with self._llm_slots:
            try:
                return [classify.ask_llm(self.chat, self.prompt, job)]
            except ItemError as exc:
                log_event(
                    self.ctx.log,
                    "llm_answer_rejected",
                    level="warning",
                    title_id=job.title_id,
                    kind=exc.kind,
                    error=str(exc)[:300],
                )
                return [exc]

    def write_llm(
        self, conn: Conn, done: list[tuple[Item, classify.LLMJob, classify.Decision]]
    ) -> dict[int, str]:
        outcomes = classify.write_llm_results(
            conn,
            [(job.title_id, decision) for _, job, decision in done],
            llm_model=self.versions.llm_model,
            prompt_version=self.versions.prompt_version,
            embedding_model=self.versions.embedding_model,
        )
        return {item.id: outcomes.get(job.title_id, "missing") for item, job, _ in done}

    def alert_conditions(self, conn: Conn) -> list[Condition]:
        """Titles waiting on an empty catalogue; results left stale by a model or prompt change."""
        waiting, occupations = db.one(
            conn, "SELECT (SELECT count(*) FROM titles WHERE outcome IS NULL), (SELECT count(*) FROM occupations)"
        )
        stale = classify.count_stale(conn, self.versions)
        return [
            Condition(
                "catalogue_empty",
                "titles wait for an occupation catalogue",
                occupations == 0 and waiting > 0,
                f"{occupations} occupations, {waiting:,} titles waiting",
                FAIL,
                hint="load one: `jobpipe occupations fetch` (live BERUFENET) or "
                "`jobpipe occupations load FILE...` (saved answers)",
            ),
            count_condition(
                "stale_results",
                "classifications made with another LLM, prompt or embedding model",
                stale,
                1,
                what="stale titles",
                hint=f"`jobpipe classifier requeue --stale` re-classifies them with {self.llm_model} and "
                f"prompt {self.prompt.version}",
            ),
        ]

    def close(self) -> None:
        # Stopping: the step in flight is cancelled (redone at the next start). At the end of a
        # --once run it finishes instead: it may be the one building the occupation index.
        self.sync_job.stop(timeout=5.0, cancel=self.ctx.stop.is_set())
        self.embed_client.close()
        self.chat.close()


DAEMON = ClassifierDaemon
