"""jobpipe.ba.wire: the v6 wire format, with hand-written bodies (independent of the fake)."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import pytest

from jobpipe.ba.wire import (
    MAX_TITLE_CHARS,
    SchemaError,
    decode_refnr,
    encode_refnr,
    error_messages,
    is_gone,
    parse_beruf_detail,
    parse_berufe_page,
    parse_details,
    parse_search_page,
)


def item(refnr: str = "10001-1003112368-S", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "referenznummer": refnr,
        "stellenangebotsTitel": "Koch (m/w/d) in Vollzeit",
        "stellenangebotsart": "ARBEIT",
        "firma": "Gasthaus Müller GmbH",
        "hauptberuf": "Koch/Köchin",
        "alleBerufe": ["Koch/Köchin", "Beikoch/Beiköchin"],
        "stellenlokationen": [
            {
                "adresse": {
                    "strasse": "Türkenstraße",
                    "hausnummer": "5",
                    "plz": "80333",
                    "ort": "München",
                    "region": "BAYERN",
                    "land": "Deutschland",
                },
                "breite": 48.15,
                "laenge": 11.58,
            },
            {
                "adresse": {
                    "plz": "23552",
                    "ort": "Lübeck",
                    "region": "SCHLESWIG_HOLSTEIN",
                    "land": "Deutschland",
                }
            },
        ],
        "eintrittszeitraum": {"von": "2026-10-01"},
        "veroeffentlichungszeitraum": {"von": "2026-09-14"},
        "datumErsteVeroeffentlichung": "2026-09-10",
        "aenderungsdatum": "2026-09-14T07:57:38.033",
        "homeofficemoeglich": False,
        "arbeitszeitVollzeit": True,
        "arbeitszeitSchichtNachtarbeitWochenende": True,
        "verguetungsangabe": "GEHALTSSPANNE",
        "gehaltsspanneVon": 2800,
        "gehaltsspanneBis": 3400,
    }
    base.update(overrides)
    return base


def page(items: list[Any] | None, total: int | None = None, ascii: bool = False, **extra: Any) -> bytes:
    body: dict[str, Any] = {"page": 1, "size": 100, **extra}
    if items is not None:
        body["ergebnisliste"] = items
    body["maxErgebnisse"] = len(items or []) if total is None else total
    return json.dumps(body, ensure_ascii=ascii).encode()


# ---------------------------------------------------------------- search pages


def test_full_item_is_mapped_field_by_field() -> None:
    facets = {"angebotsart": {"counts": {"1": 40, "4": 2}, "maxCount": 40}}
    result = parse_search_page(page([item()], total=42, facetten=facets))
    assert result.total == 42 and result.page == 1 and result.size == 100
    assert result.problems == []
    assert result.facets == {"angebotsart": {"1": 40, "4": 2}}
    (rec,) = result.items
    assert rec.source == "ba"
    assert rec.external_id == "10001-1003112368-S"
    assert rec.title == "Koch (m/w/d) in Vollzeit"
    assert rec.employer == "Gasthaus Müller GmbH"
    assert rec.occupation_label == "Koch/Köchin"
    assert rec.occupations == ("Koch/Köchin", "Beikoch/Beiköchin")
    assert rec.offer_type == "ARBEIT"
    assert rec.published_from == date(2026, 9, 14)
    assert rec.first_published == date(2026, 9, 10)
    assert rec.entry_from == date(2026, 10, 1)
    assert rec.modified_at == datetime(2026, 9, 14, 7, 57, 38, 33000)
    assert rec.salary == "2800 - 3400 EUR" and rec.has_salary
    assert rec.homeoffice is False
    assert rec.working_time == ("vz", "snw")
    assert rec.external_url is None
    munich, luebeck = rec.locations
    assert (munich.city, munich.postcode, munich.region, munich.street) == (
        "München",
        "80333",
        "BAYERN",
        "Türkenstraße 5",
    )
    assert (munich.lat, munich.lon) == (48.15, 11.58)
    assert (luebeck.city, luebeck.region, luebeck.lat, luebeck.street) == (
        "Lübeck",
        "SCHLESWIG_HOLSTEIN",
        None,
        None,
    )
    assert rec.raw["referenznummer"] == rec.external_id


def test_salary_variants_and_partner_url() -> None:
    no_salary = item("a", gehaltsspanneVon=None, gehaltsspanneBis=None, verguetungsangabe="KEINE_ANGABEN")
    text_salary = item(
        "b", gehaltsspanneVon=None, gehaltsspanneBis=None, verguetungsangabe="nach Tarifvertrag TVöD"
    )
    only_low = item("c", gehaltsspanneBis=None, externeURL="https://partner.example/job/1")
    recs = parse_search_page(page([no_salary, text_salary, only_low])).items
    assert [(r.salary, r.has_salary) for r in recs] == [
        (None, False),
        ("nach Tarifvertrag TVöD", True),
        ("ab 2800 EUR", True),
    ]
    assert recs[2].external_url == "https://partner.example/job/1"


def test_empty_result_without_ergebnisliste_is_a_valid_empty_page() -> None:
    result = parse_search_page(b'{"maxErgebnisse": 0, "page": 1, "size": 50}')
    assert result.items == () and result.total == 0 and result.facets == {}


def test_page_beyond_the_end_is_empty_not_drift() -> None:
    result = parse_search_page(b'{"maxErgebnisse": 150, "page": 3, "size": 100}')
    assert result.items == () and result.total == 150


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"stellenangebote": [], "maxErgebnisse": 3}', "v4 key"),
        (b'{"ergebnisse": [], "anzahl": 3}', "neither"),
        (b'{"maxErgebnisse": 150, "page": 1, "size": 100}', "no 'ergebnisliste'"),
        (b'{"ergebnisliste": [], "page": 1}', "maxErgebnisse"),
        (b'{"ergebnisliste": {"a": 1}, "maxErgebnisse": 1}', "not a list"),
        (b"[1, 2, 3]", "not an object"),
        (b"<html><body>Wartungsarbeiten</body></html>", "malformed JSON"),
        (b'{"ergebnisliste": [{"referenznummer": "10001-1', "malformed JSON"),
        (b"", "malformed JSON"),
        (b'{"ergebnisliste": [{"refnr": "1", "titel": "Koch"}], "maxErgebnisse": 1}', "no 'referenznummer'"),
    ],
)
def test_shape_drift_raises_schema_error_with_a_sample(body: bytes, reason: str) -> None:
    with pytest.raises(SchemaError) as caught:
        parse_search_page(body)
    assert reason in caught.value.reason
    assert caught.value.sample == body[:300].decode("utf-8", "replace")
    if body:
        assert caught.value.sample in str(caught.value)


def test_one_item_without_referenznummer_is_dropped_not_the_page() -> None:
    """Issue 15's review: one posting without the key failed the whole page (and so the partition's
    every run, the posting being there next time), while one whose referenznummer is null was
    dropped as a problem. A missing key is drift only with v4 keys or on every item of a page."""
    body = page([item("a"), {"stellenangebotsTitel": "Koch", "deep": "DEEP"}, item("b")])
    body = body.replace(b'"DEEP"', b"[" * 2000 + b'"x"' + b"]" * 2000)  # beyond any recursion limit
    got = parse_search_page(body)
    assert [r.external_id for r in got.items] == ["a", "b"]
    assert any("item 1: no 'referenznummer'" in p for p in got.problems), got.problems
    with pytest.raises(SchemaError, match="item 0 has no 'referenznummer'"):  # renamed on every item
        parse_search_page(page([{"stellenangebotsTitel": "Koch"}, {"stellenangebotsTitel": "Kellner"}]))
    with pytest.raises(SchemaError, match="v4 keys"):  # a v4 item among v6 ones is still drift
        parse_search_page(page([item("a"), {"refnr": "1", "titel": "Koch"}]))


def test_schema_error_sample_is_short_and_clean() -> None:
    body = b"\x00\xff<html>" + b"x" * 100_000
    with pytest.raises(SchemaError) as caught:
        parse_search_page(body)
    assert len(caught.value.sample) <= 300
    assert "\x00" not in caught.value.sample and "\ufffd" in caught.value.sample


def test_item_level_bad_data_is_skipped_or_nulled_and_recorded() -> None:
    items = [
        item("ok-1"),
        None,
        "not an object",
        item("no-title", stellenangebotsTitel=None),
        item("blank-title", stellenangebotsTitel="   "),
        item(
            "bad-dates",
            datumErsteVeroeffentlichung="2026-13-45",
            aenderungsdatum="gestern",
            veroeffentlichungszeitraum={"von": "31.02.2026"},
            eintrittszeitraum={"von": 20261001},
        ),
        item(
            "bad-coords",
            stellenlokationen=[
                {"adresse": {"ort": "Köln"}, "breite": 123.4, "laenge": -999},
                {"adresse": {"ort": "Bonn"}, "breite": "abc", "laenge": float("nan")},
                "garbage",
            ],
        ),
        item("ok-1", stellenangebotsTitel="duplicate"),
        item(""),
        item("weird-types", alleBerufe="Koch", stellenlokationen={"ort": "x"}, homeofficemoeglich="ja"),
    ]
    result = parse_search_page(page(items, total=10))
    by_id = {r.external_id: r for r in result.items}
    assert list(by_id) == ["ok-1", "no-title", "blank-title", "bad-dates", "bad-coords", "weird-types"]
    assert by_id["ok-1"].title == "Koch (m/w/d) in Vollzeit"  # the first of the duplicates wins
    assert by_id["no-title"].title is None and by_id["blank-title"].title is None
    bad = by_id["bad-dates"]
    assert (bad.first_published, bad.modified_at, bad.published_from, bad.entry_from) == (
        None,
        None,
        None,
        None,
    )
    cologne, bonn = by_id["bad-coords"].locations
    assert (cologne.city, cologne.lat, cologne.lon) == ("Köln", None, None)
    assert (bonn.city, bonn.lat, bonn.lon) == ("Bonn", None, None)
    weird = by_id["weird-types"]
    assert weird.occupations == () and weird.locations == () and weird.homeoffice is None
    text = "\n".join(result.problems)
    for expected in [
        "item 1: null item skipped",
        "item 2: str item skipped",
        "(no-title): missing title",
        "invalid date in datumErsteVeroeffentlichung",
        "invalid timestamp in aenderungsdatum",
        "breite out of range",
        "laenge out of range",
        "location 2 is not an object",
        "duplicate referenznummer ok-1",
        "item 8: empty or invalid referenznummer",
    ]:
        assert expected in text, expected


def test_invalid_utf8_bytes_do_not_lose_the_page() -> None:
    body = page([item("a", stellenangebotsTitel="Koch PLACEHOLDER"), item("b")])
    body = body.replace(b"PLACEHOLDER", b"\xff\xfe\xc3")
    result = parse_search_page(body)
    assert [r.external_id for r in result.items] == ["a", "b"]
    assert result.items[0].title is not None and result.items[0].title.startswith("Koch \ufffd")
    assert any("invalid UTF-8" in p for p in result.problems)


def test_nul_characters_and_lone_surrogates_are_cleaned_everywhere_including_raw() -> None:
    body = page(
        [item("a", stellenangebotsTitel="Ko\x00ch", firma="\x00Firma", hauptberuf="\ud800Koch")], ascii=True
    )
    assert b"\\u0000" in body and b"\\ud800" in body
    (rec,) = parse_search_page(body).items
    assert rec.title == "Koch" and rec.employer == "Firma"
    assert rec.occupation_label is not None and rec.occupation_label.endswith("Koch")
    rec.occupation_label.encode("utf-8")  # the lone surrogate was replaced
    # raw goes into a jsonb column: no NUL and encodable as UTF-8 anywhere
    dumped = json.dumps(rec.raw, ensure_ascii=False)
    assert "\x00" not in dumped and "\\u0000" not in dumped
    dumped.encode("utf-8")


def test_raw_nul_byte_inside_a_string_is_tolerated() -> None:
    body = page([item("a", stellenangebotsTitel="KochXY")]).replace(b"KochXY", b"Koch\x00")
    (rec,) = parse_search_page(body).items
    assert rec.title == "Koch"


def test_a_large_page_with_giant_fields_parses() -> None:
    items = [item(f"id-{n}", stellenangebotsTitel="x" * 50_000) for n in range(100)]
    result = parse_search_page(page(items))
    # every item is kept; the title is cut to its cap, and the cut is written down
    assert len(result.items) == 100 and result.items[0].title == "x" * MAX_TITLE_CHARS
    assert sum("title of 50000 characters cut" in p for p in result.problems) == 100


# ---------------------------------------------------------------- details


def details_body(**overrides: Any) -> bytes:
    data = item(**overrides)
    data.setdefault(
        "stellenangebotsBeschreibung", "**Ihre Aufgaben:**\n-   Kochen  \n\n\n\n- Abwaschen\r\nEnde "
    )
    return json.dumps(data, ensure_ascii=False).encode()


def test_details_description_is_normalised_and_record_parsed() -> None:
    d = parse_details(details_body(), max_description_chars=10_000)
    assert d.description == "**Ihre Aufgaben:**\n- Kochen\n\n- Abwaschen\nEnde"
    assert d.record is not None and d.record.external_id == "10001-1003112368-S"
    assert d.external_url is None and not d.is_external
    assert d.raw["stellenangebotsBeschreibung"].startswith("**Ihre")


def test_details_description_cut_nul_free_and_one_megabyte() -> None:
    huge = ("Zeile mit Text\x00 und mehr   Leerzeichen\n" * 30_000)[:1_048_576]
    d = parse_details(details_body(stellenangebotsBeschreibung=huge), max_description_chars=5_000)
    assert d.description is not None and len(d.description) <= 5_000
    assert "\x00" not in d.description and "  " not in d.description
    assert any("cut from" in p for p in d.problems)


def test_partner_posting_without_description_is_external() -> None:
    body = details_body(externeURL="https://partner.example/1", stellenangebotsBeschreibung=None)
    d = parse_details(body, max_description_chars=100)
    assert d.description is None and d.is_external and d.external_url == "https://partner.example/1"
    blank = parse_details(details_body(stellenangebotsBeschreibung=" \n\t "), max_description_chars=100)
    assert blank.description is None and not blank.is_external


def test_details_with_invalid_utf8_and_bad_item_fields() -> None:
    body = details_body(stellenangebotsBeschreibung="Text BAD", aenderungsdatum="nie").replace(
        b"BAD", b"\xff"
    )
    d = parse_details(body, max_description_chars=100)
    assert d.description == "Text \ufffd"
    assert d.record is not None and d.record.modified_at is None
    assert any("aenderungsdatum" in p for p in d.problems)


@pytest.mark.parametrize(
    "body", [b"[]", b"null", b'{"refnr": "1", "titel": "Koch"}', b'{"stellenangebotsTitel": "x"', b"\xff\xfe"]
)
def test_details_drift_raises_schema_error(body: bytes) -> None:
    with pytest.raises(SchemaError):
        parse_details(body, max_description_chars=100)


def test_details_rejects_a_nonsense_limit() -> None:
    with pytest.raises(ValueError):
        parse_details(details_body(), max_description_chars=0)


# ---------------------------------------------------------------- refnr, errors, gone


def test_encode_refnr_matches_the_contract_example_and_round_trips() -> None:
    assert encode_refnr("10001-1002716922-S") == "MTAwMDEtMTAwMjcxNjkyMi1T"
    for refnr in ["10001-1002716922-S", "12265-4a1b2c3d-S", "1-a", "ab", "Ä-1"]:
        encoded = encode_refnr(refnr)
        assert decode_refnr(encoded) == refnr
        assert decode_refnr(encoded.rstrip("=")) == refnr
    with pytest.raises(ValueError):
        decode_refnr("not base64!")


def test_is_gone_only_for_the_exact_signal() -> None:
    gone = b'{"messages":[{"code":"STELLENANGEBOT_NICHT_GEFUNDEN"}]}'
    assert is_gone(404, gone)
    assert not is_gone(200, gone)
    assert not is_gone(404, b"")
    assert not is_gone(404, b'{"status":404,"error":"Not Found"}')
    assert not is_gone(404, b"<html>404</html>")
    assert not is_gone(404, b'{"messages":[{"code":"ANDERER_FEHLER"}]}')
    assert not is_gone(404, b'{"messages":"STELLENANGEBOT_NICHT_GEFUNDEN"}')


def test_error_messages_of_the_gateway_format() -> None:
    body = (
        b'{"timestamp":"2026-09-14T07:57:38","logref":"98c19","messages":[{"code":'
        b'"EINGABEN_UNVOLLSTAENDIG_ODER_FEHLERHAFT","path":"size","detail":"zu gro\xc3\x9f"}]}'
    )
    assert error_messages(body) == [
        {"code": "EINGABEN_UNVOLLSTAENDIG_ODER_FEHLERHAFT", "path": "size", "detail": "zu groß"}
    ]
    assert error_messages(b"") == [] and error_messages(b"[1]") == []


# ---------------------------------------------------------------- BERUFENET


def test_berufe_page_and_empty_page() -> None:
    body = {
        "_embedded": {
            "berufSucheList": [
                {"id": 58765, "kurzBezeichnungNeutral": "Softwareentwickler/in"},
                {"id": None, "kurzBezeichnungNeutral": "kaputt"},
            ]
        },
        "page": {"size": 20, "totalElements": 3571, "totalPages": 179, "number": 0},
        "_links": {"next": {"href": "..."}},
    }
    p = parse_berufe_page(json.dumps(body).encode())
    assert [(b.id, b.name) for b in p.items] == [(58765, "Softwareentwickler/in")]
    assert (p.number, p.size, p.total_elements, p.total_pages, p.is_last) == (0, 20, 3571, 179, False)
    assert p.problems == ["item 1: no id or name, skipped"]
    last = parse_berufe_page(
        b'{"page": {"size": 20, "totalElements": 3571, "totalPages": 179, "number": 179}}'
    )
    assert last.items == () and last.is_last
    with pytest.raises(SchemaError):
        parse_berufe_page(b'{"_embedded": {}}')


def test_beruf_detail_array() -> None:
    body = json.dumps(
        [
            {
                "id": 58765,
                "kurzBezeichnungNeutral": "Softwareentwickler/in",
                "bezeichnungNeutral": "Softwareentwickler/in",
                "kldb2010": "B 43412",
                "codenr": "B 43412-101",
                "steckbrief": {"kurz": "<p>x</p>"},
            },
            {"id": 58766, "kurzBezeichnungNeutral": "Anwendungsentwickler/in", "kldb2010": "kaputt"},
        ]
    ).encode()
    first, second = parse_beruf_detail(body)
    assert (first.id, first.name, first.kldb2010, first.codenr) == (
        58765,
        "Softwareentwickler/in",
        "43412",
        "B 43412-101",
    )
    assert second.kldb2010 is None and second.full_name is None
    with pytest.raises(SchemaError):
        parse_beruf_detail(b'[{"id": 1}]')
    with pytest.raises(SchemaError):
        parse_beruf_detail(b'"x"')
