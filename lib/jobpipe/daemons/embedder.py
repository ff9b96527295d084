"""The embedder: keeps one vector per posting (for the configured model) in pgvector.

Stage `embed` (subject = posting id), queued by the postings triggers on insert and whenever the
title, description or occupation change:
- load (one query per batch): the posting's text (title + occupation + description start, cut
  to `embedder.max_chars`); empty text is completed as "empty" and never sent; a posting whose
  stored vector of this model was made from the same text is completed as "unchanged";
- call: one `embed_batch` request per batch (role "document"), `embedder.workers` in flight;
  a 400 is narrowed down to the offending posting by the client, a wrong dimension is that
  posting's ItemError, a server that is down defers the batch without charging it;
- write: one statement per batch (binary `vector[]` upsert) with model, text hash, dimension; a
  posting changed meanwhile was re-queued by the change itself (the queue's `rerun`).

A model change in the config is rolled out by a sweep in `tick`: postings without a vector of
the new model are queued in bounded steps, below new postings. The HNSW index for the model's
dimension is built in a background thread (CREATE INDEX CONCURRENTLY): at once in steady state,
after a backlog has drained when there is one (see `_maybe_build_index`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import Counter, Gauge

from jobpipe import embeddings
from jobpipe.errors import ItemError
from jobpipe.logs import log_event
from jobpipe.queue import Item
from jobpipe.runtime import Context, Daemon, Skip, Stage

INDEX_CHECK_S = 2.0  # how often a missing index checks whether the backlog has drained
INDEX_DEFER_MAX_S = 6 * 3600.0  # build it anyway after this long (a backlog that never drains)


class EmbedderDaemon(Daemon):
    name = "embedder"
    dependencies = ("ollama",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        e = ctx.cfg.embedder
        self.model: str = e.model.strip()
        self.dimensions: int = e.dimensions
        self.max_chars: int = e.max_chars
        self.client = embeddings.client_from_config(ctx.cfg, observer=ctx.metrics.observe_model_call)
        self.sweep = embeddings.reembed_sweep(self.model, backlog=e.reembed_backlog)
        self._index_thread: threading.Thread | None = None
        self._index_error: BaseException | None = None
        self._index_pid: int | None = None
        self._index_ok = False
        self._index_waiting = False
        self._index_checked = float("-inf")
        self._started = time.monotonic()
        self._catch_up = e.batch_size * e.workers * 4  # "caught up": a few batch cycles of work left
        self.index_memory_mb: int = e.index_build_memory_mb
        reg, m = ctx.metrics.registry, ctx.metrics
        self.dimension_errors = Counter(
            f"{m.prefix}dimension_errors",
            "Vectors of the wrong dimension from the model server (wrong model loaded or misconfigured)",
            ["daemon"],
            registry=reg,
        )
        self.dimension_errors.labels(m.daemon)  # exists at 0 so the alert rule never sees it absent
        self.reembed_queued = Counter(
            f"{m.prefix}reembed_queued",
            "Postings queued by the sweep (model change, or never queued)",
            ["daemon"],
            registry=reg,
        )
        self.index_ready = Gauge(
            f"{m.prefix}index_ready",
            "1 when the HNSW index of the configured model and dimension is built and valid",
            ["daemon"],
            registry=reg,
        )
        self.index_ready.labels(m.daemon).set(0)

    def stages(self) -> list[Stage]:
        e = self.ctx.cfg.embedder
        return [
            Stage(
                name=embeddings.STAGE,
                load=self.load,
                call=self.call,
                write=self.write,
                batch_size=e.batch_size,
                workers=e.workers,
                max_attempts=e.max_attempts,
            )
        ]

    # -- the index ---------------------------------------------------------------------------------

    def setup(self, conn: Any) -> None:
        """Check this model's index before READY: a dimension conflict is a ConfigError (exit, fix
        the config). A missing index is built by `tick`, in the background."""
        if embeddings.index_valid(conn, self.model, self.dimensions):
            self._index_done()
            return
        embeddings.check_index_conflicts(conn, self.model, self.dimensions)

    def _maybe_build_index(self, conn: Any, idle: bool = False) -> None:
        """Start the HNSW build once the embedder has caught up (or has waited too long).

        Why wait: inserting into an HNSW graph one vector at a time costs 2-4 ms per 768-d vector
        on the loop thread (measured), which caps a backfill at a few hundred postings/s; a bulk
        build of the same vectors afterwards takes about 0.5 ms each, in parallel workers, off
        the loop. In steady state (small backlog) the index is built at once and then maintained
        row by row, which is cheap at that rate.
        """
        if self._index_ok or (self._index_thread is not None and self._index_thread.is_alive()):
            return
        now = time.monotonic()
        if self._index_error is not None or (not idle and now - self._index_checked < INDEX_CHECK_S):
            return
        self._index_checked = now
        backlog = conn.execute(
            "SELECT count(*) FROM queue WHERE stage = %s AND status IN ('pending', 'running')",
            (embeddings.STAGE,),
        ).fetchone()[0]
        caught_up = idle or (self.sweep.done and backlog <= self._catch_up)
        if not caught_up and now - self._started < INDEX_DEFER_MAX_S:
            self._index_waiting = True
            return
        self._index_waiting = False
        self._index_thread = threading.Thread(target=self._build_index, name="embedder-index", daemon=True)
        self._index_thread.start()

    def _build_index(self) -> None:
        try:
            with self.ctx.connect() as conn:
                conn.execute("SET statement_timeout = 0")  # a build over many rows takes minutes
                if self.index_memory_mb:  # the graph should fit, or the build slows down badly
                    conn.execute(f"SET maintenance_work_mem = '{int(self.index_memory_mb)}MB'")
                self._index_pid = conn.info.backend_pid
                t0 = time.monotonic()
                name = embeddings.ensure_index(conn, self.model, self.dimensions, concurrently=True)
            self._index_done()
            log_event(
                self.ctx.log,
                "index_ready",
                index=name,
                model=self.model,
                dimensions=self.dimensions,
                seconds=round(time.monotonic() - t0, 2),
            )
        except Exception as exc:
            self._index_error = exc
            log_event(self.ctx.log, "index_failed", level="error", model=self.model, error=str(exc))

    def _index_done(self) -> None:
        self._index_ok = True
        self.index_ready.labels(self.ctx.metrics.daemon).set(1)

    # -- the stage --------------------------------------------------------------------------------

    def load(self, conn: Any, items: list[Item]) -> dict[int, Any]:
        by_posting: dict[int, list[Item]] = {}
        for it in items:
            by_posting.setdefault(it.subject, []).append(it)
        out: dict[int, Any] = {}
        for doc in embeddings.load_docs(conn, list(by_posting), self.model, self.dimensions, self.max_chars):
            if not doc.text.strip():
                result: Any = Skip("empty")
            elif doc.stored_hash == doc.text_hash:
                result = Skip("unchanged")
            else:
                result = doc
            for it in by_posting[doc.posting_id]:
                out[it.id] = result
        return out  # postings deleted meanwhile are absent: completed as "missing"

    def call(self, docs: list[embeddings.PostingDoc]) -> list[Any]:
        results = self.client.embed_batch([d.text for d in docs], role="document")
        out: list[Any] = []
        for doc, res in zip(docs, results, strict=True):
            if isinstance(res, ItemError):
                if res.kind == "dimension":
                    self.dimension_errors.labels(self.ctx.metrics.daemon).inc()
                    log_event(
                        self.ctx.log,
                        "wrong_dimension",
                        level="error",
                        posting_id=doc.posting_id,
                        model=self.model,
                        expected=self.dimensions,
                        error=str(res),
                    )
                out.append(res)
                continue
            try:  # to float32 here, in the worker thread, so the loop thread only writes
                out.append(embeddings.as_vector(res, self.dimensions))
            except ItemError as exc:
                out.append(exc)
        return out

    def write(self, conn: Any, done: list[tuple[Item, Any, Any]]) -> dict[int, str]:
        # Vectors can always be computed again, so this transaction need not wait for its WAL
        # flush (a few ms per batch on the loop thread). A crash can lose the last few hundred ms
        # of commits, never half of one: their items come back when the leases expire.
        conn.execute("SET LOCAL synchronous_commit = off")
        rows = {d.posting_id: (d, v) for _, d, v in done}  # one row per posting (duplicates collapse)
        written = embeddings.upsert(conn, list(rows.values()), self.model, self.dimensions)
        return {it.id: ("embedded" if it.subject in written else "missing") for it, _, _ in done}

    # -- periodic work ----------------------------------------------------------------------------

    def tick(self, conn: Any) -> None:
        if not self.sweep.done:
            n = self.sweep.step(conn)
            if n:
                self.reembed_queued.labels(self.ctx.metrics.daemon).inc(n)
        self._maybe_build_index(conn)
        self.ctx.set_status_extra(self._status_text())

    def pending_work(self, conn: Any) -> int:
        """Asked when no queue item is due: the sweep, a due index build."""
        if not self.sweep.done:
            return 1
        self._maybe_build_index(conn, idle=True)  # idle now: start it without waiting for the next check
        return 0

    def _status_text(self) -> str:
        text = f"model {self.model} ({self.dimensions}d)"
        if not self.sweep.done and self.sweep.end:
            text += f", sweep {100 * self.sweep.cursor // max(1, self.sweep.end)}%"
        if self._index_error is not None:
            text += ", INDEX FAILED"
        elif self._index_thread is not None and self._index_thread.is_alive():
            text += ", building index"
        elif self._index_waiting:
            text += ", index waits for the backlog"
        return text

    def close(self) -> None:
        thread = self._index_thread
        if thread is not None and thread.is_alive():
            if self.ctx.stop.is_set() and self._index_pid is not None:
                # Stopping: cancel the build rather than hold up the stop; the INVALID index it
                # leaves is dropped and rebuilt at the next start.
                try:
                    with self.ctx.connect() as conn:
                        conn.execute("SELECT pg_cancel_backend(%s)", (self._index_pid,))
                except Exception:
                    pass
            thread.join()
        self.client.close()


DAEMON = EmbedderDaemon
