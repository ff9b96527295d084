"""The extractor: a structured summary of every posting's description, made by a local LLM.

Stage `extract` (subject = posting id), queued by a trigger when a posting gets a fetched
description, its description changes, or it turns out to be external (migration 0080):
- load (two queries per claim): the description, cut to `extractor.max_chars`, and its hash;
  external postings are completed as "skipped_external", empty texts as "empty", both without a
  model call; a text whose summary (same schema version and model) is already stored for another
  posting, or was made by this process recently, is copied ("reused");
- call (per posting, `extractor.workers` LLM calls in flight): one chat call with the JSON schema
  as `format` / `response_format`; identical texts in flight at once share one call (the later
  ones wait for it without holding a model slot); the answer is validated field by field
  (jobpipe.extraction): not JSON / breaks the schema -> ItemError (invalid_json /
  schema_violation, the answer's first 200 characters in last_error), ungrounded values
  dropped and counted ("partial");
- write (one statement per batch): summary, schema version, model and text hash per posting.

A model or schema change in the config is rolled out by a bounded sweep in `tick` (as the
embedder's model change is): postings without a summary of this version and model are queued
below new postings.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
from typing import Any

from prometheus_client import Counter

from jobpipe import extraction, sweep
from jobpipe.alerts.conditions import WARN, Condition, Thresholds, count_condition
from jobpipe.errors import ItemError
from jobpipe.logs import log_event
from jobpipe.queue import Item
from jobpipe.runtime import Context, Daemon, Skip, Stage


class ExtractorDaemon(Daemon):
    name = "extractor"
    dependencies = ("ollama",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        x = ctx.cfg.extractor
        self.model: str = x.model.strip()
        self.max_chars: int = x.max_chars
        self.schema = extraction.load_schema()
        self.chat = extraction.chat_client_from_config(ctx.cfg, observer=ctx.metrics.observe_model_call)
        predicate, params = extraction.sweep_predicate(self.schema.version, self.model)
        self.sweep = sweep.Sweep(
            extraction.STAGE,
            predicate,
            x.resweep_backlog,
            params=params,
            priority=extraction.RESWEEP_PRIORITY,
        )
        # The stage gets four times `workers` threads so postings waiting for an identical text's
        # call never take a model slot from distinct ones; the semaphore keeps calls at `workers`.
        self._slots = threading.BoundedSemaphore(x.workers)
        self._lock = threading.Lock()
        self._in_flight: dict[str, cf.Future[Any]] = {}  # text hash -> its one call
        self._recent: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._recent_max: int = x.reuse_cache
        m = ctx.metrics
        self.answers = Counter(
            f"{m.prefix}answers",
            "Model answers by outcome (extracted, partial, invalid_json, schema_violation), "
            "and postings completed without a call (reused, skipped_external, empty)",
            ["daemon", "outcome"],
            registry=m.registry,
        )
        self.dropped = Counter(
            f"{m.prefix}dropped_values",
            "Values of model answers dropped by validation (not grounded in the text, over a cap)",
            ["daemon", "field"],
            registry=m.registry,
        )
        self.resweep_queued = Counter(
            f"{m.prefix}resweep_queued",
            "Postings queued by the sweep (model or schema change, or never queued)",
            ["daemon"],
            registry=m.registry,
        )
        for outcome in extraction.OUTCOMES:  # exist at 0, so rules and panels never see them absent
            self.answers.labels(m.daemon, outcome)
        for name in self.schema.fields:
            self.dropped.labels(m.daemon, name)
        self.resweep_queued.labels(m.daemon)

    def stages(self) -> list[Stage]:
        x = self.ctx.cfg.extractor
        return [
            Stage(
                name=extraction.STAGE,
                load=self.load,
                call=self.call,
                write=self.write,
                batch_size=x.batch_size,
                workers=4 * x.workers,
                per_item=True,
                max_attempts=x.max_attempts,
            )
        ]

    # -- the stage --------------------------------------------------------------------------------

    def load(self, conn: Any, items: list[Item]) -> dict[int, Any]:
        jobs = extraction.load_jobs(
            conn,
            list({it.subject for it in items}),
            max_chars=self.max_chars,
            version=self.schema.version,
            model=self.model,
        )
        out: dict[int, Any] = {}
        skips: collections.Counter[str] = collections.Counter()
        for it in items:
            job = jobs.get(it.subject)
            if job is None:
                continue  # deleted meanwhile: completed as "missing"
            if isinstance(job, str):
                out[it.id] = Skip(job)
                skips[job] += 1
                continue
            with self._lock:
                recent = self._recent.get(job.text_hash)
            if recent is not None and job.reuse is None:
                job = extraction.Job(job.posting_id, job.text, job.text_hash, recent)
            out[it.id] = job
        for outcome, n in skips.items():
            self.answers.labels(self.ctx.metrics.daemon, outcome).inc(n)
        return out

    def call(self, jobs: list[extraction.Job]) -> list[Any]:
        (job,) = jobs
        if job.reuse is not None:
            return [("reused", job.reuse)]
        with self._lock:
            # Summarised since this posting was loaded (the call finished, its write is pending)?
            recent = self._recent.get(job.text_hash)
            if recent is not None:
                return [("reused", recent)]
            leader = self._in_flight.get(job.text_hash)
            if leader is None:
                mine: cf.Future[Any] = cf.Future()
                self._in_flight[job.text_hash] = mine
        if leader is not None:  # an identical text is being summarised: share its answer
            res = leader.result()
            if isinstance(res, BaseException):
                raise res  # the leader's DependencyDown: defer this one too
            if isinstance(res, ItemError):
                return [res]
            return [("reused", res.summary)]
        res: Any
        try:
            with self._slots:
                res = extraction.extract(self.chat, self.schema, job.text)
        except ItemError as exc:
            res = exc
        except BaseException as exc:  # DependencyDown or a bug: followers must not wait forever
            mine.set_result(exc)
            with self._lock:
                self._in_flight.pop(job.text_hash, None)
            raise
        mine.set_result(res)
        with self._lock:
            self._in_flight.pop(job.text_hash, None)
            if not isinstance(res, ItemError) and self._recent_max:
                self._recent[job.text_hash] = res.summary
                while len(self._recent) > self._recent_max:
                    self._recent.popitem(last=False)
        d = self.ctx.metrics.daemon
        if isinstance(res, ItemError):
            self.answers.labels(d, res.kind).inc()
            log_event(
                self.ctx.log,
                "answer_rejected",
                level="warning",
                posting_id=job.posting_id,
                kind=res.kind,
                error=str(res)[:300],
            )
            return [res]
        self.answers.labels(d, res.outcome).inc()
        for path in res.dropped:
            self.dropped.labels(d, path.split("[")[0].split(".")[0]).inc()
        return [(res.outcome, res.summary)]

    def write(self, conn: Any, done: list[tuple[Item, extraction.Job, Any]]) -> dict[int, str]:
        rows = {job.posting_id: (job.posting_id, job.text_hash, summary) for _, job, (_, summary) in done}
        written = extraction.write_summaries(conn, list(rows.values()), version=self.schema.version,
                                             model=self.model)  # fmt: skip
        reused = sum(1 for _, _, (outcome, _) in done if outcome == "reused")
        if reused:
            self.answers.labels(self.ctx.metrics.daemon, "reused").inc(reused)
        return {it.id: (outcome if it.subject in written else "missing") for it, _, (outcome, _) in done}

    # -- periodic work ----------------------------------------------------------------------------

    def tick(self, conn: Any) -> None:
        if not self.sweep.done:
            n = self.sweep.step(conn)
            if n:
                self.resweep_queued.labels(self.ctx.metrics.daemon).inc(n)
        text = f"model {self.model}, schema {self.schema.version}"
        if not self.sweep.done and self.sweep.end:
            text += f", sweep {100 * self.sweep.cursor // max(1, self.sweep.end)}%"
        self.ctx.set_status_extra(text)

    def pending_work(self, conn: Any) -> int:
        return 0 if self.sweep.done else 1

    def alert_conditions(self, conn: Any) -> list[Condition]:
        """Summaries left stale by a model or schema change (the sweep re-queues them), and a stage
        that completes postings but never summarises one (see `no_summary_condition`)."""
        stale = extraction.count_stale(conn, self.schema.version, self.model)
        return [
            count_condition(
                "stale_summaries",
                "summaries made with another model or schema version",
                stale,
                1,
                what="stale summaries",
                hint=f"the extractor's sweep re-queues them for {self.model} / schema {self.schema.version}",
            ),
            no_summary_condition(conn, Thresholds.from_config(self.ctx.cfg, self.name)),
        ]

    def close(self) -> None:
        self.chat.close()


# Outcomes that complete a posting without a model call, and those that leave it with a summary.
WITHOUT_CALL = ("skipped_external", "empty")
WITH_SUMMARY = ("extracted", "partial", "reused")


def no_summary_condition(conn: Any, th: Thresholds) -> Condition:
    """WARN when, in the last 24 h, at least `failure_min_count` postings were completed without
    a model call (external, empty) and not one got a summary. Such a stage fails nothing, so the
    failure-ratio rules never see it: this is the predecessor's silent failure in another form
    (descriptions all stored as external or empty upstream, a cut that leaves nothing), and
    `jobpipe health` shows it through the alert. From the per-minute counts: one indexed query."""
    counts = dict(
        conn.execute(
            """SELECT outcome, sum(n)::bigint FROM stage_counts
                WHERE stage = %s AND minute >= now() - interval '24 hours' AND outcome = ANY(%s)
                GROUP BY outcome""",
            (extraction.STAGE, [*WITHOUT_CALL, *WITH_SUMMARY]),
        ).fetchall()
    )
    skipped = sum(int(counts.get(o, 0)) for o in WITHOUT_CALL)
    summarised = sum(int(counts.get(o, 0)) for o in WITH_SUMMARY)
    detail = ", ".join(f"{o} {int(counts.get(o, 0)):,}" for o in WITHOUT_CALL)
    return Condition(
        "no_summaries",
        "extractor completes postings but summarises none",
        skipped >= th.failure_min_count and summarised == 0,
        f"{skipped:,} postings completed without a model call in 24 h ({detail}), {summarised:,} summarised "
        f"(threshold {th.failure_min_count:,})",
        WARN,
        hint="check why every description is external or empty (the fetcher's description_state, "
        "extractor.max_chars)",
        stage=extraction.STAGE,
    )


DAEMON = ExtractorDaemon
