"""Generated hostile input for the BA-side parsers (issue 15): oversized, deeply nested, wrong
types, control characters, invalid UTF-8, NUL, lone surrogates, Unicode digits. Whatever comes in,
a parser returns or raises SchemaError (a clear one-line reason) - never another exception, never
for long - and a bad item costs only itself: every good item of the page is parsed as it was sent
and stored in the real database."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobpipe import postings
from jobpipe.ba.wire import (
    MAX_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
    SchemaError,
    SearchPage,
    decode_refnr,
    error_messages,
    is_gone,
    parse_beruf_detail,
    parse_berufe_page,
    parse_details,
    parse_search_page,
)

pytestmark = pytest.mark.slow

# Deadline per example: "no hang". Generous for a loaded 2-core machine, far below a hang.
FAST = settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
WITH_DB = settings(
    max_examples=40,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

NASTY_CHARS = ["\x00", "\x1b[31m", "\x07", "\u202e", "\ud800", "²", "٣", "\ufffd", "\n\t", " "]

nasty_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(NASTY_CHARS) | st.text(max_size=5), max_size=12).map("".join),
    st.integers(1, 300_000).map(lambda n: "x" * n),  # oversized
    st.sampled_from(["²", "١٢٣", "9" * 5000, "-1", "1e309", "NaN"]),  # Unicode digits, huge numbers
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    nasty_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(nasty_text, inner, max_size=5),
    max_leaves=30,
)
FIELDS = [
    "referenznummer",
    "stellenangebotsTitel",
    "firma",
    "hauptberuf",
    "alleBerufe",
    "stellenlokationen",
    "veroeffentlichungszeitraum",
    "datumErsteVeroeffentlichung",
    "aenderungsdatum",
    "eintrittszeitraum",
    "externeURL",
    "gehaltsspanneVon",
    "verguetungsangabe",
    "arbeitszeitVollzeit",
    "stellenangebotsBeschreibung",
]
hostile_items = st.dictionaries(st.sampled_from(FIELDS) | nasty_text, json_values, max_size=10)
DEEP = st.integers(min_value=0, max_value=3000)


def dumps(value: Any) -> bytes:
    """JSON bytes as a hostile server could send them: any integer size, NUL and lone surrogates
    as escapes (the stdlib writes what orjson refuses to)."""
    return json.dumps(value, default=str).encode("ascii")


def good_item(n: int) -> dict[str, Any]:
    return {"referenznummer": f"good-{n}", "stellenangebotsTitel": f"Koch {n}", "firma": "Firma"}


def corrupt(body: bytes, where: int, kind: int) -> bytes:
    """Byte-level damage inside the hostile part: invalid UTF-8, a NUL escape, a raw control byte."""
    insert = [b"\xff\xfe", b"\\u0000", b"\x1b", b"\\ud800"][kind % 4]
    marker = body.find(b'"HOSTILE', where % max(1, len(body)))
    if marker < 0:
        marker = body.find(b'"HOSTILE')
    if marker < 0:
        return body
    return body[: marker + 1] + insert + body[marker + 1 :]


def page_body(hostile: dict[str, Any], depth: int, damage: tuple[int, int] | None) -> bytes:
    hostile = {**hostile, "HOSTILE": "x"}
    item = dumps(hostile)
    if depth:
        item = item[:-1] + b',"tief":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    goods = [dumps(good_item(n)) for n in range(5)]
    items = b",".join([goods[0], goods[1], item, *goods[2:]])
    body = b'{"maxErgebnisse":6,"page":1,"size":100,"ergebnisliste":[' + items + b"]}"
    if damage is not None:
        body = corrupt(body, *damage)
    return body


def check_page(page: SearchPage) -> None:
    ids = [r.external_id for r in page.items]
    # every good item is there, as sent; the hostile one at most once more
    goods = sorted((r.external_id, r.title) for r in page.items if r.external_id.startswith("good-"))
    assert goods == [(f"good-{n}", f"Koch {n}") for n in range(5)] or any(
        not i.startswith("good-")
        for i in ids  # the hostile item may itself be called good-N
    )
    assert {f"good-{n}" for n in range(5)} <= set(ids)
    assert len(page.items) <= 6
    for r in page.items:
        assert len(r.external_id) <= MAX_ID_CHARS
        assert r.title is None or (len(r.title) <= MAX_TITLE_CHARS and "\x1b" not in r.title)
        for text in (r.employer, r.occupation_label, r.external_url, r.salary):
            assert text is None or (len(text) <= MAX_TEXT_CHARS and "\x00" not in text)
        orjson.dumps(r.raw)  # storable as jsonb: no lone surrogate, not nested beyond orjson's limit


@FAST
@given(
    hostile=hostile_items, depth=DEEP, damage=st.none() | st.tuples(st.integers(0, 10**6), st.integers(0, 3))
)
def test_search_page_with_one_hostile_item(hostile, depth, damage):
    body = page_body(hostile, depth, damage)
    try:
        page = parse_search_page(body)
    except SchemaError as exc:
        assert "\n" not in exc.reason and exc.reason
        return
    check_page(page)


@WITH_DB
@given(hostile=hostile_items, depth=st.integers(0, 1000))
def test_a_hostile_item_never_costs_the_page_its_storage(db_conn, hostile, depth):
    """Parsed pages are stored in the real database: the good items always, nothing raises."""
    try:
        page = parse_search_page(page_body(hostile, depth, None))
    except SchemaError:
        return  # e.g. the hostile item lacks referenznummer: drift, the whole page is refused
    postings.upsert_postings(db_conn, page.items)
    stored = {
        r[0] for r in db_conn.execute("SELECT external_id FROM postings WHERE external_id LIKE 'good-%'")
    }
    assert stored == {f"good-{n}" for n in range(5)}


@FAST
@given(details=hostile_items, depth=DEEP, cap=st.integers(1, 50_000))
def test_details_answer(details, depth, cap):
    body = dumps({"referenznummer": "r-1", **details})
    if depth:
        body = body[:-1] + b',"tief":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    try:
        d = parse_details(body, cap)
    except SchemaError as exc:
        assert exc.reason
        return
    assert d.description is None or 0 < len(d.description) <= cap
    orjson.dumps(d.raw)
    if "stellenangebotsBeschreibung" in d.raw:
        assert d.raw["stellenangebotsBeschreibung"] == d.description


@FAST
@given(body=st.binary(max_size=2000) | json_values.map(dumps))
def test_every_parser_takes_any_bytes(body):
    """Arbitrary bytes or JSON values: each parser returns or raises SchemaError, nothing else."""
    for parse in (
        parse_search_page,
        lambda b: parse_details(b, 1000),
        parse_berufe_page,
        parse_beruf_detail,
    ):
        try:
            parse(body)
        except SchemaError:
            pass
    error_messages(body)
    is_gone(404, body)


@FAST
@given(
    items=st.lists(json_values, max_size=5),
    meta=st.dictionaries(st.sampled_from(["number", "size", "totalElements", "totalPages"]), scalars),
    depth=DEEP,
)
def test_berufenet_answers(items, meta, depth):
    page = {"_embedded": {"berufSucheList": items}, "page": meta}
    body = dumps(page)
    if depth:
        body = body[:-1] + b',"tief":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    try:
        parsed = parse_berufe_page(body)
        for item in parsed.items:
            orjson.dumps(item.raw)
    except SchemaError as exc:
        assert exc.reason
    try:
        for d in parse_beruf_detail(dumps(items)):
            assert d.kldb2010 is None or (d.kldb2010.isascii() and d.kldb2010.isdigit())
    except SchemaError as exc:
        assert exc.reason


@FAST
@given(segment=nasty_text)
def test_decode_refnr(segment):
    try:
        decode_refnr(segment)
    except ValueError as exc:
        assert "not a base64 referenznummer" in str(exc)
