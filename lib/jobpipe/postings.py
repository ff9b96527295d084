"""The postings store: batched upsert of parsed postings, and the outcome of description fetches.

Why it looks like this:
- A page is stored with at most two round trips, the second only when needed. First the page's
  (external id, content hash) pairs: one statement looks every posting up by its unique index,
  bumps `last_seen_at` of the unchanged ones and returns the ids that are new or changed. Then
  only those are sent in full (one JSON array through jsonb_to_recordset) and upserted (INSERT ...
  ON CONFLICT DO UPDATE). A re-crawl of unchanged data so costs one small statement per page, and
  the client skips the expensive parts (title normalisation, serialising the raw item) for it.
- "Changed" means the content hash differs: a hash over every mapped field (title, employer,
  locations, dates incl. `aenderungsdatum`, ...), computed here and kept in postings.content_hash.
  Fields that depend on the query (e.g. `entfernung`, only present with `wo`) are not mapped, so
  the same posting seen through two partitions is not "changed" back and forth.
- Unchanged postings are not rewritten, so the triggers that queue downstream work (embedding on
  a new title or description, the description fetch on a new posting) fire only for real changes.
  Even the bump of last_seen_at rewrites the whole (wide, many times indexed) row, so it has a
  resolution (fetcher.seen_resolution_s): a posting re-seen within it is not written at all.
  A new `aenderungsdatum` also sets description_state back to 'pending', which re-queues the
  description fetch (the text may have changed; if it did, the embedding is re-queued in turn).
- Texts go through jobpipe.text.clean_text (PostgreSQL rejects NUL and invalid UTF-8), the raw
  item is kept as jsonb for later re-parsing, and the title is normalised with
  jobpipe.titles.normalise (the triggers link it to its `titles` row).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from jobpipe import titles
from jobpipe.ba.wire import Location, PostingRecord, bounded
from jobpipe.text import clean_text

Conn = psycopg.Connection[Any]

# Description states (postings.description_state); 'pending' is the default of a new posting.
FETCHED = "fetched"
EXTERNAL = "external"
GONE = "gone"
GIVEN_UP = "given_up"
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class UpsertStats:
    inserted: int = 0
    updated: int = 0  # changed postings rewritten
    unchanged: int = 0  # same content: at most last_seen_at bumped
    duplicates: int = 0  # the same external id twice in one batch (stored once)
    bumped: int = 0  # unchanged ones whose last_seen_at was bumped (older than the resolution)

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def __add__(self, other: UpsertStats) -> UpsertStats:
        return UpsertStats(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.duplicates + other.duplicates,
            self.bumped + other.bumped,
        )


@dataclass(frozen=True, slots=True)
class DescriptionResult:
    """What the details endpoint said about one posting."""

    posting_id: int
    state: str  # fetched, external or gone
    description: str | None = None  # only for 'fetched' (None: the posting has no text)


@functools.lru_cache(maxsize=16384)
def _normalised(title: str) -> str:
    # Titles repeat a lot ("Pflegefachkraft (m/w/d)"); the normaliser is regex-heavy (~30 µs).
    return titles.normalise(title)


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and "\x00" not in value:
        return value  # the common case, already clean (clean_text would re-encode it to check)
    return clean_text(value)


def _location(loc: Location) -> dict[str, Any]:
    return {
        "postcode": _text(loc.postcode),
        "city": _text(loc.city),
        "region": _text(loc.region),
        "country": _text(loc.country),
        "street": _text(loc.street),
        "lat": loc.lat,
        "lon": loc.lon,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATACLASS)


def _payload(rows: list[dict[str, Any]]) -> str:
    """The rows as one JSON array for jsonb_to_recordset.

    jsonb rejects `\\u0000` and orjson rejects lone surrogates. jobpipe.ba.wire already cleans both, so
    the page is serialised once and checked once; only a page that fails (records built
    elsewhere) has its raw items cleaned and is serialised again.
    """
    try:
        dumped = _dumps(rows)
    except (TypeError, orjson.JSONEncodeError):
        dumped = b"\\u0000"
    if b"\\u0000" in dumped:
        dumped = _dumps([{**row, "raw": _deep_clean(row["raw"])} for row in rows])
    return dumped.decode("utf-8")


def _deep_clean(value: Any) -> Any:
    # Iterative and bounded (jobpipe.ba.wire.bounded): a raw item nested 10,000 deep costs no recursion.
    return bounded(value)[0]


def _fields(record: PostingRecord) -> tuple[dict[str, Any], str]:
    """The record's cleaned column values (without title_norm and raw) and its content hash."""
    locations = [_location(loc) for loc in record.locations]
    first = locations[0] if locations else {}
    fields: dict[str, Any] = {
        "external_id": clean_text(record.external_id),
        "title": _text(record.title),
        "occupation_label": _text(record.occupation_label),
        "employer": _text(record.employer),
        "offer_type": _text(record.offer_type),
        "postcode": first.get("postcode"),
        "city": first.get("city"),
        "region": first.get("region"),
        "country": first.get("country"),
        "lat": first.get("lat"),
        "lon": first.get("lon"),
        "locations": locations,
        "published_at": record.published_from,
        "first_published": record.first_published,
        "modified_at": record.modified_at,
        "entry_from": record.entry_from,
        "external_url": _text(record.external_url),
        "salary": _text(record.salary),
        "has_salary": bool(record.has_salary),
    }
    # The hash covers every mapped field, also those without a column of their own (they live in raw).
    extra = (record.occupations, record.homeoffice, record.working_time)
    digest = hashlib.blake2b(_dumps((fields, extra)), digest_size=16).hexdigest()
    return fields, digest


def _complete(
    record: PostingRecord, fields: dict[str, Any], digest: str, normalise: Callable[[str], str]
) -> dict[str, Any]:
    """The full row to write: the fields plus the normalised title, the hash and the raw item."""
    title = fields["title"]
    return {
        **fields,
        "title_norm": normalise(title) if title else None,
        "content_hash": digest,
        "raw": record.raw,
    }


def row_of(record: PostingRecord, normalise: Callable[[str], str] = _normalised) -> dict[str, Any]:
    """The postings row (as a JSON-able dict) of one record, with its content hash."""
    fields, digest = _fields(record)
    return _complete(record, fields, digest, normalise)


# The column list of jsonb_to_recordset and of the INSERT, in one place.
_COLUMNS = (
    ("external_id", "text"),
    ("title", "text"),
    ("title_norm", "text"),
    ("occupation_label", "text"),
    ("employer", "text"),
    ("offer_type", "text"),
    ("postcode", "text"),
    ("city", "text"),
    ("region", "text"),
    ("country", "text"),
    ("lat", "float8"),
    ("lon", "float8"),
    ("locations", "jsonb"),
    ("published_at", "date"),
    ("first_published", "date"),
    ("modified_at", "timestamp"),
    ("entry_from", "date"),
    ("external_url", "text"),
    ("salary", "text"),
    ("has_salary", "boolean"),
    ("content_hash", "text"),
    ("raw", "jsonb"),
)
_RECORDSET = ", ".join(f"{name} {typ}" for name, typ in _COLUMNS)
_INSERT_COLS = ", ".join(name for name, _ in _COLUMNS)
_SELECT_COLS = ", ".join(
    "decode(i.content_hash, 'hex')" if name == "content_hash" else f"i.{name}" for name, _ in _COLUMNS
)
_UPDATE_SET = ",\n            ".join(
    f"{name} = excluded.{name}" for name, _ in _COLUMNS if name != "external_id"
)

# Step 1: which postings of the page are new or changed; bump the unchanged ones.
# Lookups go through the (source, external_id) index row by row (LATERAL ... LIMIT 1) and the
# bump through the primary key (= ANY(array)): a hash join over all postings would be chosen by a
# planner with stale statistics while a first crawl fills the table, and cost O(table) per page.
_CHECK = """
WITH input AS (
    SELECT * FROM unnest(%(ids)s::text[], %(hashes)s::bytea[]) AS r(external_id, content_hash)
),
found AS MATERIALIZED (
    SELECT i.external_id, q.id, q.content_hash = i.content_hash AS same,
           q.last_seen_at >= now() - make_interval(secs => %(resolution)s) AS fresh
      FROM input i
      LEFT JOIN LATERAL (
          SELECT p.id, p.content_hash, p.last_seen_at FROM postings p
           WHERE p.source = %(source)s AND p.external_id = i.external_id LIMIT 1
      ) q ON true
),
touched AS (
    UPDATE postings p SET last_seen_at = now()
     WHERE p.id = ANY(ARRAY(SELECT f.id FROM found f WHERE f.same AND NOT f.fresh))
    RETURNING p.id
)
SELECT (SELECT count(*) FROM found WHERE same),
       (SELECT count(*) FROM touched),
       ARRAY(SELECT external_id FROM found WHERE same IS NOT TRUE)
"""

# Step 2: the new and changed postings, in full. The WHERE keeps a concurrent writer's identical
# content from being rewritten (and its triggers from firing) a second time.
_WRITE = f"""
INSERT INTO postings (source, {_INSERT_COLS})
SELECT %(source)s, {_SELECT_COLS}
  FROM jsonb_to_recordset(%(rows)s::jsonb) AS i({_RECORDSET})
ON CONFLICT (source, external_id) DO UPDATE SET
        {_UPDATE_SET},
        -- A new aenderungsdatum: fetch the description again (it may have changed too).
        description_state = CASE WHEN postings.modified_at IS DISTINCT FROM excluded.modified_at
                                 THEN 'pending' ELSE postings.description_state END,
        active = true,
        inactive_since = NULL,
        last_seen_at = now(),
        updated_at = now()
  WHERE postings.content_hash IS DISTINCT FROM excluded.content_hash
RETURNING (xmax = 0) AS inserted
"""


def upsert_postings(
    conn: Conn,
    records: Iterable[PostingRecord],
    *,
    source: str | None = None,
    seen_resolution_s: float = 0.0,
    normalise: Callable[[str], str] = _normalised,
) -> UpsertStats:
    """Store a batch (a page) of postings; return what happened to them.

    One round trip when nothing is new or changed, two otherwise (see the module docstring).
    The same external id twice in the batch is stored once (the last one wins). `source`
    defaults to the records' own source (all records of a batch must share it). An unchanged
    posting whose last_seen_at is younger than `seen_resolution_s` is not rewritten at all
    (a posting re-seen within the resolution, e.g. through a second partition or by the next
    incremental run, costs no row write); 0 bumps every unchanged posting.
    """
    batch: dict[str, tuple[PostingRecord, dict[str, Any], str]] = {}
    seen = 0
    src = source
    for record in records:
        seen += 1
        if src is None:
            src = record.source
        elif source is None and record.source != src:
            raise ValueError(f"one batch, one source: got {record.source!r} and {src!r}")
        fields, digest = _fields(record)
        key = fields["external_id"]
        batch.pop(key, None)  # keep the last one, in arrival order
        batch[key] = (record, fields, digest)
    if not batch:
        return UpsertStats(duplicates=seen)
    unchanged, bumped, todo = conn.execute(
        _CHECK,
        {
            "ids": list(batch),
            "hashes": [bytes.fromhex(digest) for _, _, digest in batch.values()],
            "source": src,
            "resolution": float(seen_resolution_s),
        },
    ).fetchone()
    inserted = updated = 0
    if todo:
        rows = [_complete(*batch[key], normalise) for key in todo]
        cur = conn.execute(_WRITE, {"rows": _payload(rows), "source": src})
        for (new,) in cur.fetchall():
            if new:
                inserted += 1
            else:
                updated += 1
    return UpsertStats(inserted, updated, unchanged, seen - len(batch), bumped)


def store_descriptions(conn: Conn, results: Sequence[DescriptionResult]) -> dict[int, str]:
    """Write description outcomes in one round trip; returns {posting_id: state} of the rows found.

    fetched: the text (None when the posting has none) is stored; external: a partner posting
    without text (terminal); gone: the posting expired, it becomes inactive. fetched and external
    also count as a verification (the details endpoint just confirmed the posting exists).
    """
    if not results:
        return {}
    for r in results:
        if r.state not in (FETCHED, EXTERNAL, GONE):
            raise ValueError(f"not a description outcome: {r.state!r}")
    cur = conn.execute(
        """
        UPDATE postings p SET
            description = CASE WHEN d.state = 'fetched' THEN d.description ELSE p.description END,
            description_state = d.state,
            description_fetched_at = now(),
            verified_at = CASE WHEN d.state = 'gone' THEN p.verified_at ELSE now() END,
            active = CASE WHEN d.state = 'gone' THEN false ELSE p.active END,
            inactive_since = CASE WHEN d.state = 'gone' THEN coalesce(p.inactive_since, now())
                                  ELSE p.inactive_since END,
            updated_at = now()
          FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS d(id, state, description)
         WHERE p.id = d.id
        RETURNING p.id, d.state
        """,
        (
            [r.posting_id for r in results],
            [r.state for r in results],
            [clean_text(r.description) for r in results],
        ),
    )
    return dict(cur.fetchall())


def description_counts(conn: Conn, source: str | None = None) -> dict[str, int]:
    """Postings per description state (given_up is kept apart from pending and failures)."""
    rows = conn.execute(
        "SELECT description_state, count(*) FROM postings WHERE %(src)s::text IS NULL OR source = %(src)s "
        "GROUP BY 1",
        {"src": source},
    ).fetchall()
    counts = {s: 0 for s in (PENDING, FETCHED, EXTERNAL, GONE, GIVEN_UP)}
    counts.update({state: n for state, n in rows})
    return counts
