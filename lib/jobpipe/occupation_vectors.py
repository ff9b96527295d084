"""The occupation vectors of the catalogue, kept complete for the configured embedding model.

`CatalogueSync` (run by the classifier daemon as a background job, and to completion by
`jobpipe classifier eval` and the benchmarks) embeds each occupation's text once per embedding
model (as a *passage*), keeps the exact-evidence index of the catalogue's names in memory
(jobpipe.classify.ExactIndex), and builds the HNSW index the vector stage searches. A new
catalogue or a new model is picked up by a signature check; titles needing the vector search
wait for it (`ready_event`).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql

from jobpipe import db
from jobpipe.backoff import Backoff
from jobpipe.catalogue import embedding_text, refresh_lexical_terms
from jobpipe.classify import ExactIndex, load_exact_index
from jobpipe.db import Conn
from jobpipe.embeddings import as_vector, text_hash
from jobpipe.errors import DependencyDown, ItemError

INDEX_PREFIX = "occ_emb_hnsw_"
READY_RETRY = Backoff(2.0, 30.0)  # run_until_ready: pause after a model server error (2 s, 4 s .. 30 s)


def occupation_index_name(model: str, dimensions: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:24] or "model"
    return f"{INDEX_PREFIX}{slug}_{hashlib.sha256(model.encode()).hexdigest()[:8]}_{dimensions}"


def ensure_occupation_index(conn: Conn, model: str, dimensions: int) -> str:
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


def occupations_to_embed(conn: Conn, model: str, dimensions: int) -> tuple[list[OccupationText], int]:
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
    conn: Conn, model: str, rows: Sequence[tuple[OccupationText, np.ndarray]]
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
        search_terms: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.client = client
        self.search_terms = search_terms  # None: the shipped file
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

    def _current_signature(self, conn: Conn) -> tuple[Any, ...]:
        row = db.one(
            conn,
            """SELECT (SELECT count(*) FROM occupations), (SELECT max(updated_at) FROM occupations),
            (SELECT count(*) FROM occupation_embeddings WHERE model = %s)""",
            (self.model,),
        )
        return tuple(row)

    def step(self, conn: Conn, *, force_check: bool = False) -> bool:
        """One piece of work; True when it did something worth repeating at once."""
        now = self.clock()
        if not self.todo and (force_check or self._signature is None or now >= self._next_check):
            self._next_check = now + self.check_interval_s
            if self._signature is None:
                # A release's curated search terms (data/occupation_terms.csv) reach a catalogue
                # that an older release loaded: once per start, writing only changed rows.
                refresh_lexical_terms(conn, self.search_terms)
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

    def _finish(self, conn: Conn) -> None:
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

    def run_until_ready(self, conn: Conn, *, retries: int = 5, pause: threading.Event | None = None) -> None:
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
                wait.wait(min(READY_RETRY.max_s, exc.retry_after or READY_RETRY.delay(failures)))
