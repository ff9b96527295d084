"""The postings store against a real PostgreSQL: batched upsert, change detection, the queue triggers,
description outcomes and the give-up mirror. Pages are built by the fake BA's population and
parsed by the real wire parser, so the records are exactly what a crawl stores."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import orjson
import pytest

from jobpipe import queue
from jobpipe.ba.wire import PostingRecord, SearchPage, parse_search_page
from jobpipe.postings import (
    EXTERNAL,
    FETCHED,
    GONE,
    DescriptionResult,
    description_counts,
    row_of,
    store_descriptions,
    upsert_postings,
)
from jobpipe.sim.ba_data import Population
from jobpipe.titles import normalise

TODAY = date(2026, 9, 14)


@pytest.fixture(scope="module")
def pop() -> Population:
    return Population.generate(300, seed=7, occupations=200, today=TODAY, expired_share=0.0)


def page_body(pop: Population, postings: list[Any], extra: list[bytes] = ()) -> bytes:
    items = [pop.item_json(p) for p in postings] + list(extra)
    return b'{"maxErgebnisse":%d,"ergebnisliste":[%s]}' % (len(items), b",".join(items))


def parse(pop: Population, postings: list[Any], extra: list[bytes] = ()) -> SearchPage:
    return parse_search_page(page_body(pop, postings, extra))


def live(conn: Any, stage: str) -> set[int]:
    rows = conn.execute(
        "SELECT subject FROM queue WHERE stage = %s AND status IN ('pending', 'running')", (stage,)
    ).fetchall()
    return {r[0] for r in rows}


def ids(conn: Any) -> dict[str, int]:
    return dict(conn.execute("SELECT external_id, id FROM postings").fetchall())


def test_insert_maps_fields_and_queues_work(db_conn, pop):
    page = parse(pop, pop.postings[:50])
    stats = upsert_postings(db_conn, page.items)
    assert (stats.inserted, stats.updated, stats.unchanged) == (50, 0, 0)
    p = pop.postings[0]
    row = db_conn.execute(
        """SELECT title, title_norm, title_id IS NOT NULL, employer, occupation_label, region, city, postcode,
                  lat, lon, jsonb_array_length(locations), published_at, modified_at, raw->>'referenznummer',
                  description_state, active, source
             FROM postings WHERE external_id = %s""",
        (p.refnr,),
    ).fetchone()
    item = pop.item_dict(p)  # what the wire carried
    loc = item["stellenlokationen"][0]
    assert row[0] == item["stellenangebotsTitel"]
    assert row[1] == normalise(row[0]) and row[2]
    assert row[3] == item["firma"] and row[4] == item["hauptberuf"]
    assert (row[5], row[6], row[7]) == (
        loc["adresse"]["region"],
        loc["adresse"]["ort"],
        loc["adresse"]["plz"],
    )
    assert row[8] == pytest.approx(loc["breite"]) and row[9] == pytest.approx(loc["laenge"])
    assert row[10] == len(item["stellenlokationen"])
    assert row[11] == date.fromisoformat(item["veroeffentlichungszeitraum"]["von"])
    assert row[12] == datetime.fromisoformat(item["aenderungsdatum"])
    assert row[13] == p.refnr
    assert (row[14], row[15], row[16]) == ("pending", True, "ba")
    everyone = set(ids(db_conn).values())
    assert live(db_conn, "description") == everyone
    assert live(db_conn, "embed") == everyone
    # every distinct normalised title got one titles row and a classify item
    n_titles = db_conn.execute("SELECT count(*) FROM titles").fetchone()[0]
    assert n_titles == len({normalise(x.title) for x in pop.postings[:50]} - {""})
    assert len(live(db_conn, "classify")) == n_titles


def test_unchanged_only_bumps_last_seen(db_conn, pop):
    items = parse(pop, pop.postings[:40]).items
    upsert_postings(db_conn, items)
    db_conn.execute("UPDATE postings SET last_seen_at = now() - interval '1 day', updated_at = '2000-01-01'")
    # downstream work finished: nothing live in the queue
    db_conn.execute("UPDATE queue SET status = 'done', finished_at = now()")
    before = db_conn.execute("SELECT external_id, xmin::text, raw FROM postings ORDER BY 1").fetchall()
    stats = upsert_postings(db_conn, parse(pop, pop.postings[:40]).items)
    assert (stats.inserted, stats.updated, stats.unchanged, stats.bumped) == (0, 0, 40, 40)
    rows = db_conn.execute(
        "SELECT count(*) FILTER (WHERE last_seen_at > now() - interval '1 minute'), "
        "count(*) FILTER (WHERE updated_at = '2000-01-01') FROM postings"
    ).fetchone()
    assert rows == (40, 40)  # seen now, but not "updated"
    after = db_conn.execute("SELECT external_id, raw FROM postings ORDER BY 1").fetchall()
    assert [(e, r) for e, _, r in before] == after
    for stage in ("embed", "description", "classify"):
        assert live(db_conn, stage) == set(), stage


def test_seen_resolution_skips_recent_rewrites(db_conn, pop):
    items = parse(pop, pop.postings[:30]).items
    upsert_postings(db_conn, items)
    before = db_conn.execute("SELECT max(last_seen_at), max(xmin::text::bigint) FROM postings").fetchone()
    stats = upsert_postings(db_conn, items, seen_resolution_s=3600)
    assert (stats.unchanged, stats.bumped, stats.inserted, stats.updated) == (30, 0, 0, 0)
    after = db_conn.execute("SELECT max(last_seen_at), max(xmin::text::bigint) FROM postings").fetchone()
    assert after == before  # not a single row written
    db_conn.execute("UPDATE postings SET last_seen_at = now() - interval '2 hours' WHERE id % 2 = 0")
    stats = upsert_postings(db_conn, items, seen_resolution_s=3600)
    assert stats.unchanged == 30 and stats.bumped == 15
    assert db_conn.execute(
        "SELECT count(*) FROM postings WHERE last_seen_at > now() - interval '1 minute'"
    ).fetchone() == (30,)


def test_changed_title_requeues_embedding_and_description(db_conn, pop):
    pop2 = Population.generate(20, seed=11, occupations=50, today=TODAY, expired_share=0.0)
    upsert_postings(db_conn, parse(pop2, pop2.postings).items)
    db_conn.execute("UPDATE postings SET description_state = 'fetched', description = 'alt'")
    db_conn.execute("UPDATE queue SET status = 'done', finished_at = now()")
    target, other = pop2.postings[3], pop2.postings[4]
    pop2.modify(target.refnr, title="Völlig neuer Titel Kältetechniker (m/w/d)")
    stats = upsert_postings(db_conn, parse(pop2, pop2.postings).items)
    assert (stats.inserted, stats.updated, stats.unchanged) == (0, 1, 19)
    pid = ids(db_conn)[target.refnr]
    assert live(db_conn, "embed") == {pid}
    assert live(db_conn, "description") == {pid}  # aenderungsdatum changed: fetch the text again
    row = db_conn.execute(
        "SELECT title, title_norm, description_state, modified_at FROM postings WHERE id = %s", (pid,)
    ).fetchone()
    assert row[0] == "Völlig neuer Titel Kältetechniker (m/w/d)"
    assert row[1] == normalise(row[0])
    assert row[2] == "pending"
    assert row[3] == datetime.fromisoformat(pop2.item_dict(target)["aenderungsdatum"])
    assert db_conn.execute(
        "SELECT description_state FROM postings WHERE external_id = %s", (other.refnr,)
    ).fetchone() == ("fetched",)


def test_changed_description_requeues_embedding(db_conn, pop):
    upsert_postings(db_conn, parse(pop, pop.postings[:5]).items)
    pid = ids(db_conn)[pop.postings[0].refnr]
    store_descriptions(db_conn, [DescriptionResult(pid, FETCHED, "Erste Fassung")])
    db_conn.execute("UPDATE queue SET status = 'done', finished_at = now()")
    store_descriptions(db_conn, [DescriptionResult(pid, FETCHED, "Erste Fassung")])
    assert live(db_conn, "embed") == set()  # same text: nothing to do
    store_descriptions(db_conn, [DescriptionResult(pid, FETCHED, "Zweite Fassung")])
    assert live(db_conn, "embed") == {pid}


def test_duplicates_in_one_batch_and_across_batches_stored_once(db_conn, pop):
    items = list(parse(pop, pop.postings[:10]).items)
    stats = upsert_postings(db_conn, [*items, items[2], items[5]])
    assert stats.inserted == 10 and stats.duplicates == 2
    # the same posting seen again through another partition: stored once, only seen
    stats = upsert_postings(db_conn, items[:3])
    assert (stats.inserted, stats.updated, stats.unchanged) == (0, 0, 3)
    assert db_conn.execute("SELECT count(*) FROM postings").fetchone()[0] == 10
    # a duplicate inside a page is already collapsed by the wire parser; the store agrees
    dup = pop.item_json(pop.postings[0])
    page = parse(pop, pop.postings[:3], [dup])
    assert len(page.items) == 3


def test_query_dependent_fields_do_not_count_as_change(db_conn, pop):
    p = pop.postings[0]
    plain = page_body(pop, [p])
    with_distance = plain.replace(b'"ergebnisliste":[{', b'"ergebnisliste":[{"entfernung":"12",', 1)
    assert plain != with_distance
    upsert_postings(db_conn, parse_search_page(plain).items)
    stats = upsert_postings(db_conn, parse_search_page(with_distance).items)
    assert stats.unchanged == 1


def test_bad_input_stored_cleanly(db_conn):
    """Dirty items (NUL, invalid UTF-8, lone surrogates, missing title, invalid dates, bad coordinates,
    a null item) reach the database cleaned or nulled, and nothing of the page is lost."""
    dirty = Population.generate(64, seed=3, occupations=50, today=TODAY, expired_share=0.0, dirty_share=1.0)
    kinds = {p.dirty for p in dirty.postings}
    assert {"nul", "invalid_utf8", "surrogate", "missing_title", "invalid_date", "bad_coords"} <= kinds
    page = parse(dirty, dirty.postings, [b"null"])
    assert any("null item" in pr for pr in page.problems)
    stats = upsert_postings(db_conn, page.items)
    assert stats.inserted == len(dirty.postings)
    by_kind = {p.dirty: p for p in dirty.postings}
    row = lambda p, cols: db_conn.execute(  # noqa: E731
        f"SELECT {cols} FROM postings WHERE external_id = %s", (p.refnr,)
    ).fetchone()
    title, employer, raw = row(by_kind["nul"], "title, employer, raw::text")
    assert "\x00" not in title and "\x00" not in employer and "\\u0000" not in raw
    assert title == dirty.get(by_kind["nul"].refnr).title
    assert "\ufffd" in row(by_kind["invalid_utf8"], "title")[0]
    surrogate_title = row(by_kind["surrogate"], "title")[0]
    assert surrogate_title[1:] == by_kind["surrogate"].title and surrogate_title[0] in "?\ufffd"
    assert row(by_kind["missing_title"], "title, title_norm, title_id") == (None, None, None)
    assert row(by_kind["invalid_date"], "first_published, modified_at, published_at") == (None, None, None)
    lat, lon, locs = row(by_kind["bad_coords"], "lat, lon, locations")
    assert lat is None and lon is None and locs[0]["lat"] is None


def test_giant_and_hostile_records(db_conn, pop):
    """A record built outside the wire parser with NUL in raw and a 1 MB title still stores."""
    base = parse(pop, pop.postings[:1]).items[0]
    hostile = PostingRecord(
        **{
            **{f: getattr(base, f) for f in base.__slots__ if f != "__weakref__"},
            "external_id": "X-1\x00",
            "title": "Koch " * 200_000,
            "raw": {"referenznummer": "X-1\x00", "bad\x00key": "a\x00b", "nested": [{"x": "\ud800"}]},
        }
    )
    stats = upsert_postings(db_conn, [hostile])
    assert stats.inserted == 1
    ext, title_len, norm_len, raw = db_conn.execute(
        "SELECT external_id, length(title), length(title_norm), raw FROM postings"
    ).fetchone()
    assert ext == "X-1" and title_len == len("Koch " * 200_000)
    assert norm_len <= 200
    assert raw["badkey"] == "ab" and raw["nested"][0]["x"] in ("?", "\ufffd")


def test_description_outcomes_and_counts(db_conn, pop):
    upsert_postings(db_conn, parse(pop, pop.postings[:4]).items)
    a, b, c, d = (ids(db_conn)[p.refnr] for p in pop.postings[:4])
    got = store_descriptions(
        db_conn,
        [
            DescriptionResult(a, FETCHED, "Text"),
            DescriptionResult(b, EXTERNAL),
            DescriptionResult(c, GONE),
            DescriptionResult(999_999, FETCHED, "x"),
        ],
    )
    assert got == {a: FETCHED, b: EXTERNAL, c: GONE}
    rows = {
        r[0]: r[1:]
        for r in db_conn.execute(
            "SELECT id, description, description_state, active, inactive_since IS NOT NULL, "
            "verified_at IS NOT NULL FROM postings"
        ).fetchall()
    }
    assert rows[a] == ("Text", "fetched", True, False, True)
    assert rows[b] == (None, "external", True, False, True)
    assert rows[c] == (None, "gone", False, True, False)
    assert rows[d][1] == "pending"
    assert description_counts(db_conn) == {
        "pending": 1,
        "fetched": 1,
        "external": 1,
        "gone": 1,
        "given_up": 0,
    }
    with pytest.raises(ValueError):
        store_descriptions(db_conn, [DescriptionResult(a, "weird")])


def test_gone_posting_comes_back_when_it_changes(db_conn, pop):
    pop2 = Population.generate(3, seed=5, occupations=20, today=TODAY, expired_share=0.0)
    upsert_postings(db_conn, parse(pop2, pop2.postings).items)
    pid = ids(db_conn)[pop2.postings[0].refnr]
    store_descriptions(db_conn, [DescriptionResult(pid, GONE)])
    upsert_postings(db_conn, parse(pop2, pop2.postings).items)  # unchanged: stays inactive
    assert db_conn.execute("SELECT active FROM postings WHERE id = %s", (pid,)).fetchone() == (False,)
    pop2.modify(pop2.postings[0].refnr)
    upsert_postings(db_conn, parse(pop2, pop2.postings).items)
    assert db_conn.execute(
        "SELECT active, inactive_since, description_state FROM postings WHERE id = %s", (pid,)
    ).fetchone() == (True, None, "pending")


def test_given_up_description_is_mirrored_and_requeue_resets(db_conn, pop):
    upsert_postings(db_conn, parse(pop, pop.postings[:3]).items)
    a, b, _ = (ids(db_conn)[p.refnr] for p in pop.postings[:3])
    policy = queue.RetryPolicy(max_attempts=2, backoff_base_s=0)
    for _ in range(2):
        items = queue.claim(db_conn, "description", "w", 10, 60)
        errs = {i.id: "boom" for i in items if i.subject == a}
        queue.fail(db_conn, "description", "w", errs, policy)
        queue.release(db_conn, "w")
    states = dict(db_conn.execute("SELECT id, description_state FROM postings").fetchall())
    assert states[a] == "given_up" and states[b] == "pending"
    assert description_counts(db_conn)["given_up"] == 1
    # an expired lease at the last attempt gives up the same way
    db_conn.execute("UPDATE queue SET attempts = 1 WHERE subject = %s AND stage = 'description'", (b,))
    queue.claim(db_conn, "description", "w", 10, 60)
    db_conn.execute("UPDATE queue SET lease_expires = now() - interval '1 second' WHERE status = 'running'")
    queue.reclaim_expired(db_conn, "description", policy)
    states = dict(db_conn.execute("SELECT id, description_state FROM postings").fetchall())
    assert states[b] == "given_up"
    assert queue.requeue_given_up(db_conn, "description") == 2
    states = dict(db_conn.execute("SELECT id, description_state FROM postings").fetchall())
    assert states[a] == states[b] == "pending"
    assert {a, b} <= live(db_conn, "description")


def test_row_hash_is_stable_and_sensitive(pop):
    r = parse(pop, pop.postings[:1]).items[0]
    again = parse(pop, pop.postings[:1]).items[0]
    assert row_of(r)["content_hash"] == row_of(again)["content_hash"]
    changed = PostingRecord(
        **{**{f: getattr(r, f) for f in r.__slots__}, "modified_at": r.modified_at + timedelta(seconds=1)}
    )
    assert row_of(changed)["content_hash"] != row_of(r)["content_hash"]
    assert orjson.loads(orjson.dumps(row_of(r)["raw"]))["referenznummer"] == r.external_id
    assert isinstance(row_of(r)["modified_at"], datetime)
