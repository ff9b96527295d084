"""The extractor on the real runtime, a real PostgreSQL and the fake Ollama (whose summary answers
come from jobpipe/sim/extraction_llm.py): the trigger, dedupe by description hash, grounding,
every kind of bad answer, a model change, the description budget, and the "every answer is
invalid" case end to end with Signal and `jobpipe health`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobpipe import config, extraction, health, runtime
from jobpipe.daemons.extractor import ExtractorDaemon
from jobpipe.errors import DependencyDown, ItemError
from jobpipe.metrics import DaemonMetrics
from jobpipe.models import make_chat_client
from jobpipe.sim import extraction_llm
from jobpipe.sim.ollama import FakeOllama
from jobpipe.sim.signal import DEFAULT_ACCOUNT, FakeSignalGateway
from tests.waiting import in_thread, wait_until

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen2.5:7b"

KOCH = """Koch (m/w/d) in Vollzeit für unser Hotelrestaurant in Freiburg

Ihre Aufgaben:
- Zubereitung von regionalen Gerichten à la carte
- Mitarbeit bei Bankett und Frühstück
- Einhaltung der HACCP-Richtlinien

Ihr Profil:
- Abgeschlossene Ausbildung als Koch
- Mindestens 2 Jahre Berufserfahrung in der gehobenen Gastronomie
- Gute Deutschkenntnisse (B2)
- Englischkenntnisse wünschenswert

Wir bieten:
- Unbefristete Festanstellung
- Vergütung von 2.900 € bis 3.400 € brutto im Monat
- Kostenlose Verpflegung und 30 Tage Urlaub

Start: ab sofort."""

PFLEGE = """Pflegefachkraft (m/w/d) Intensivstation, Teilzeit

Ihre Aufgaben:
- Pflege und Überwachung intensivpflichtiger Patienten
- Dokumentation im digitalen Pflegesystem

Ihr Profil:
- Examen als Pflegefachkraft
- Fachweiterbildung Intensivpflege von Vorteil

Wir bieten:
- Betriebliche Altersvorsorge
- Jobticket

Die Stelle ist befristet auf 24 Monate, Beginn zum 01.04.2026."""

DEV = """Softwareentwickler Python (m/w/d), hybrid oder remote

Ihre Aufgaben:
- Entwicklung von Backend-Diensten mit Python und PostgreSQL
- Code-Reviews im agilen Team

Ihr Profil:
- Studium der Informatik oder vergleichbare Qualifikation
- Mehrjährige Erfahrung mit Python
- Fließende Deutsch- und Englischkenntnisse

Wir bieten:
- Homeoffice an drei Tagen pro Woche
- Weiterbildungsbudget"""


@pytest.fixture
def fake():
    with FakeOllama() as f:
        yield f


def make_cfg(fake: FakeOllama, **over: Any) -> config.Config:
    base = dict(
        ollama__urls=[fake.url],
        ollama__connect_timeout_s=1.0,
        extractor__read_timeout_s=5.0,
        extractor__model=MODEL,
        extractor__batch_size=8,
        extractor__workers=2,
        extractor__max_attempts=2,
        queue__poll_interval_s=0.05,
        queue__backoff_base_s=60.0,  # a failed item stays scheduled: --once does not retry it
        runtime__status_interval_s=0.2,
        runtime__dependency_backoff_s=0.05,
        runtime__dependency_backoff_max_s=0.2,
    )
    base.update(over)
    return config.load(environ={}).with_overrides(**base)


def add_posting(conn: Any, description: str | None, state: str = "fetched", ext: str | None = None) -> int:
    return conn.execute(
        """INSERT INTO postings (external_id, title, description, description_state)
           VALUES (coalesce(%s, gen_random_uuid()::text), 'Stelle', %s, %s) RETURNING id""",
        (ext, description, state),
    ).fetchone()[0]


def run_once(cfg: config.Config, pg_url: str, metrics: DaemonMetrics | None = None) -> int:
    return runtime.run_daemon(ExtractorDaemon, cfg, once=True, db_url=pg_url, metrics=metrics)


def item(conn: Any, posting_id: int) -> dict[str, Any]:
    row = conn.execute(
        """SELECT status, attempts, outcome, last_error FROM queue
            WHERE stage = 'extract' AND subject = %s ORDER BY id DESC LIMIT 1""",
        (posting_id,),
    ).fetchone()
    return dict(zip(("status", "attempts", "outcome", "last_error"), row, strict=True))


def summary_of(conn: Any, posting_id: int) -> tuple[Any, ...]:
    return conn.execute(
        "SELECT summary, summary_version, summary_model, summary_hash FROM postings WHERE id = %s",
        (posting_id,),
    ).fetchone()


def chat_texts(fake: FakeOllama) -> list[str]:
    return [
        req["messages"][-1]["content"]
        for _, path, req in fake.requests_log
        if path in ("/api/chat", "/v1/chat/completions")
    ]


# ------------------------------------------------------------------ validation (no database)


def test_ungrounded_values_are_dropped_and_counted():
    answer = extraction.load_schema()  # noqa: F841  # the schema loads (package data is shipped)
    good = {
        "summary": "Koch in Vollzeit für ein Hotelrestaurant in Freiburg.",
        "tasks": ["Zubereitung von regionalen Gerichten", "Leitung einer Raumstation"],
        "requirements": {"must": ["Ausbildung als Koch"], "nice": ["Englischkenntnisse"]},
        "languages": [{"language": "Deutsch", "level": "B2"}, {"language": "Japanisch", "level": "C1"}],
        "experience_level": "professional",
        "years_experience": 5,  # the text says 2
        "education": "vocational",
        "working_time": "full_time",
        "work_location": "remote",  # the text says nothing about remote work
        "contract_type": "permanent",
        "contract_duration_months": None,
        "start_date": "sofort",
        "salary": {"min": 2900, "max": 3600, "period": "month", "currency": "EUR"},  # 3.600 not stated
        "benefits": ["30 Tage Urlaub"],
    }
    v = extraction.validate(good, extraction.cut_description(KOCH, 6000))
    s = v.summary
    assert v.outcome == "partial"
    assert sorted(v.dropped) == sorted(
        ["tasks[1]", "languages[1]", "years_experience", "work_location", "salary.max"]
    )
    assert s["tasks"] == ["Zubereitung von regionalen Gerichten"]
    assert s["languages"] == [{"language": "Deutsch", "level": "B2"}]
    assert s["work_location"] == "unspecified" and s["years_experience"] is None
    assert s["salary"] == {"min": 2900, "max": None, "period": "month", "currency": "EUR"}
    assert s["working_time"] == "full_time" and s["contract_type"] == "permanent"
    assert s["start_date"] == "sofort" and s["benefits"] == ["30 Tage Urlaub"]

    # A salary the text never states at all: the whole salary goes, and nothing else changes.
    no_pay = dict(good, salary={"min": 55000, "max": None, "period": "year", "currency": "EUR"})
    v2 = extraction.validate(no_pay, extraction.cut_description(PFLEGE, 6000))
    assert v2.summary["salary"] is None and "salary.min" in v2.dropped
    # "befristet auf 24 Monate, Beginn zum 01.04.2026" grounds a fixed term, its length and start.
    pflege = dict(good, contract_type="fixed_term", contract_duration_months=24, start_date="2026-04-01",
                  salary=None, work_location="on_site")  # fmt: skip
    v3 = extraction.validate(pflege, extraction.cut_description(PFLEGE, 6000))
    assert v3.summary["contract_type"] == "fixed_term"
    assert v3.summary["contract_duration_months"] == 24 and v3.summary["start_date"] == "2026-04-01"
    assert "contract_type" not in v3.dropped and "start_date" not in v3.dropped
    # "unbefristet" must not ground "fixed_term".
    v4 = extraction.validate(dict(good, contract_type="fixed_term"), extraction.cut_description(KOCH, 6000))
    assert v4.summary["contract_type"] == "unspecified" and "contract_type" in v4.dropped


def test_numbers_and_words_that_only_look_like_facts_ground_nothing():
    """Hostile review of issue 19: a salary "found" in a phone number, postcode or date, years of
    experience or a contract length taken from "30 Tage Urlaub", a start date or language that is
    any substring of the text ("e", "Ung") were all kept as grounded."""
    text = extraction.cut_description(
        KOCH + "\nKontakt: Tel. 0761 4500 123, Bewerbung bis 15.03.2026, 79098 Freiburg", 6000
    )
    base = dict.fromkeys(extraction.load_schema().doc["required"], None)
    base.update(summary="Koch in Freiburg.", tasks=[], requirements={"must": [], "nice": []}, languages=[],
                benefits=[], experience_level="unspecified", education="unspecified",
                working_time="unspecified", work_location="unspecified",
                contract_type="unspecified")  # fmt: skip

    def kept(**fields: Any) -> dict[str, Any]:
        v = extraction.validate(dict(base, **fields), text)
        return {k: v.summary[k] for k in fields}

    for amount, period in ((4500, "month"), (123, "hour"), (79098, "year"), (15, "hour"), (761, "month")):
        salary = {"min": amount, "max": None, "period": period, "currency": "EUR"}
        assert kept(salary=salary) == {"salary": None}, amount
    # The stated range still grounds, in either field, and "2 Jahre Berufserfahrung" grounds 2.
    stated = {"min": 2900, "max": 3400, "period": "month", "currency": "EUR"}
    assert kept(salary=stated, years_experience=2) == {"salary": stated, "years_experience": 2}
    assert kept(years_experience=30, contract_duration_months=360) == {
        "years_experience": None, "contract_duration_months": None}  # fmt: skip
    for start in ("e", "Koch", "rei"):
        assert kept(start_date=start) == {"start_date": None}, start
    assert kept(start_date="15.03.2026") == {"start_date": "15.03.2026"}
    langs = [{"language": x, "level": "C2"} for x in ("Ung", "Deu", "Deutsch", "Englisch", "ung_")]
    assert kept(languages=langs) == {"languages": [{"language": "Deutsch", "level": "C2"},
                                                   {"language": "Englisch", "level": "C2"}]}  # fmt: skip
    # Quantities named in words and with a cue before the number ground as before.
    words = extraction.cut_description("Lagerhelfer. Drei Jahre Erfahrung. Befristet auf zwei Jahre. "
                                       "Stundenlohn: 15,50 Euro. Jahresgehalt ab 45k.", 1000)  # fmt: skip
    v = extraction.validate(dict(base, years_experience=3, contract_duration_months=24,
                                 salary={"min": 45000, "max": None, "period": "year", "currency": "EUR"}),
                            words)  # fmt: skip
    assert (v.summary["years_experience"], v.summary["contract_duration_months"]) == (3, 24)
    assert v.summary["salary"]["min"] == 45000
    hourly = {"min": 15.5, "max": None, "period": "hour", "currency": "EUR"}
    v = extraction.validate(dict(base, salary=hourly), words)
    assert v.summary["salary"]["min"] == 15.5
    # The period and currency must stand beside the amount: "Euro" is there, "im Monat" is not;
    # "eur" in "Friseur" or "Europa" is no currency, "2 Jahre" elsewhere no yearly salary.
    v = extraction.validate(dict(base, salary=dict(hourly, period="month")), words)
    assert v.summary["salary"] == hourly | {"period": None} and "salary.period" in v.dropped
    friseur = extraction.cut_description(
        "Friseur (m/w/d) in Europa, 2 Jahre Erfahrung. Stundenlohn: 15,50.", 500
    )
    v = extraction.validate(dict(base, salary=dict(hourly, period="year")), friseur)
    assert v.summary["salary"] == {"min": 15.5, "max": None, "period": None, "currency": None}
    assert {"salary.period", "salary.currency"} <= set(v.dropped)


@pytest.mark.parametrize(
    ("content", "reason", "kind"),
    [
        ('Gerne! Hier ist die Zusammenfassung: {"summary": "x', "stop", "invalid_json"),
        ("", "stop", "invalid_json"),
        ('{"summary": "abgeschnitten"', "length", "invalid_json"),
        ('{"summary": 42}', "stop", "schema_violation"),
        ("[1, 2, 3]", "stop", "schema_violation"),
        ('{"a": ' * 40 + "1" + "}" * 40, "stop", "schema_violation"),  # too deep
        ('{"summary": "' + "x" * 100_000 + '"}', "stop", "schema_violation"),  # too large
    ],
)
def test_unusable_answers_are_item_errors_quoting_the_answer(content, reason, kind):
    schema = extraction.load_schema()
    with pytest.raises(ItemError) as err:
        extraction.parse_answer(content, reason, schema, MODEL)
    assert err.value.kind == kind
    assert repr(content[:200]) in str(err.value)
    assert len(str(err.value)) < 600  # the model's first 200 characters, not the whole answer


def test_a_nullable_field_of_the_wrong_type_breaks_the_schema():
    schema = extraction.load_schema()
    doc = dict.fromkeys(schema.doc["required"], None)
    doc.update(summary="s", tasks=[], requirements={"must": [], "nice": []}, languages=[], benefits=[],
               experience_level="unspecified", education="unspecified", working_time="unspecified",
               work_location="unspecified", contract_type="unspecified")  # fmt: skip
    assert extraction.parse_answer(orjson.dumps(doc).decode(), "stop", schema, MODEL) == doc
    with pytest.raises(ItemError, match=r"years_experience is str"):
        extraction.parse_answer(
            orjson.dumps(dict(doc, years_experience="drei")).decode(), "stop", schema, MODEL
        )
    with pytest.raises(ItemError, match=r"salary.currency is missing"):
        extraction.parse_answer(
            orjson.dumps(dict(doc, salary={"min": 1, "max": 2, "period": "month"})).decode(),
            "stop",
            schema,
            MODEL,
        )


def test_description_cut_to_the_budget_nul_and_invalid_utf8_cleaned():
    raw = b"Koch\x00 gesucht \xff\xfe in Freiburg. " + b"Wort " * 100_000
    text = extraction.cut_description(raw, 500)
    assert len(text) <= 500 and "\x00" not in text and text.startswith("Koch gesucht \ufffd\ufffd in")
    assert not text.endswith(" ") and text.endswith("Wort")  # cut at a word boundary
    assert extraction.cut_description("  \n\t \x00 ", 500) == ""


# ------------------------------------------------------------------ the daemon


def test_trigger_queues_fetched_and_changed_descriptions_only(db_conn):
    pid = add_posting(db_conn, None, state="pending")
    assert db_conn.execute("SELECT count(*) FROM queue WHERE stage = 'extract'").fetchone()[0] == 0
    db_conn.execute("UPDATE postings SET description = %s, description_state = 'fetched' WHERE id = %s",
                    (KOCH, pid))  # fmt: skip
    assert item(db_conn, pid)["status"] == "pending"
    db_conn.execute("UPDATE queue SET status = 'done' WHERE stage = 'extract'")
    db_conn.execute("UPDATE postings SET verified_at = now(), salary = 'x' WHERE id = %s", (pid,))
    assert (
        db_conn.execute(
            "SELECT count(*) FROM queue WHERE stage = 'extract' AND status = 'pending'"
        ).fetchone()[0]
        == 0
    ), "an unrelated change queued the posting"
    db_conn.execute("UPDATE postings SET description = %s WHERE id = %s", (PFLEGE, pid))
    assert item(db_conn, pid)["status"] == "pending"
    ext = add_posting(db_conn, None, state="external")
    assert item(db_conn, ext)["status"] == "pending"


def test_summaries_stored_identical_descriptions_extracted_once(fake, pg_url, db_conn):
    # Three distinct texts, each at four places (one employer, many cities), plus an external
    # posting and one whose description is only whitespace and a NUL.
    ids = {name: [add_posting(db_conn, text) for _ in range(4)] for name, text in
           (("koch", KOCH), ("pflege", PFLEGE), ("dev", DEV))}  # fmt: skip
    external = add_posting(db_conn, None, state="external")
    empty = add_posting(db_conn, " \n\x00 ".replace("\x00", ""))
    m = DaemonMetrics("extractor")
    assert run_once(make_cfg(fake), pg_url, m) == 0

    assert fake.counters()["chat_calls"] == 3, "one LLM call per distinct description"
    for name, group in ids.items():
        rows = [summary_of(db_conn, p) for p in group]
        assert all(r[1] == "v1" and r[2] == MODEL for r in rows)
        assert len({r[3] for r in rows}) == 1 and len({json.dumps(r[0], sort_keys=True) for r in rows}) == 1
        outcomes = sorted(item(db_conn, p)["outcome"] for p in group)
        assert outcomes.count("reused") == 3 and outcomes[0] in ("extracted", "partial"), (name, outcomes)
    koch = summary_of(db_conn, ids["koch"][0])[0]
    assert koch["salary"] == {"min": 2900, "max": 3400, "period": "month", "currency": "EUR"}
    assert koch["working_time"] == "full_time" and koch["contract_type"] == "permanent"
    assert {"language": "Deutsch", "level": "B2"} in koch["languages"]
    assert koch["start_date"] == "sofort" and koch["years_experience"] == 2
    pflege = summary_of(db_conn, ids["pflege"][0])[0]
    assert pflege["salary"] is None, "no salary in the text, none in the summary"
    assert pflege["contract_duration_months"] == 24 and pflege["start_date"] == "2026-04-01"
    assert summary_of(db_conn, ids["dev"][0])[0]["work_location"] == "hybrid"

    assert item(db_conn, external)["outcome"] == "skipped_external"
    assert item(db_conn, empty)["outcome"] == "empty"
    assert summary_of(db_conn, external)[0] is None and summary_of(db_conn, empty)[0] is None

    def answers(outcome: str) -> float:
        return m.registry.get_sample_value(
            "jobpipe_extractor_answers_total", {"daemon": "extractor", "outcome": outcome}
        )

    assert answers("reused") == 9 and answers("skipped_external") == 1 and answers("empty") == 1
    assert answers("extracted") + answers("partial") == 3 and answers("invalid_json") == 0

    # The same text arriving later (a new city) is copied from the stored summary: no call.
    late = add_posting(db_conn, KOCH)
    assert run_once(make_cfg(fake), pg_url) == 0
    assert fake.counters()["chat_calls"] == 3 and item(db_conn, late)["outcome"] == "reused"
    assert summary_of(db_conn, late)[0] == koch


def test_description_budget_and_openai_flavour(fake, pg_url, db_conn):
    giant = "Lagerhelfer (m/w/d) in Vollzeit.\t\t " + "Kommissionierung von Waren im Lager. " * 20_000
    pid = add_posting(db_conn, giant)
    assert run_once(make_cfg(fake, extractor__max_chars=1000, ollama__provider="openai"), pg_url) == 0
    (sent,) = chat_texts(fake)
    text = extraction.cut_description(giant, 1000)
    assert len(text) <= 1000 and sent == extraction.render_prompt(text)
    assert [p for _, p, _ in fake.requests_log] == ["/v1/chat/completions"]
    assert item(db_conn, pid)["outcome"] in ("extracted", "partial")
    assert summary_of(db_conn, pid)[3] == extraction.description_hash(text)


def test_a_text_behind_a_giant_run_of_whitespace_is_summarised_not_empty(fake, pg_url, db_conn):
    """Hostile review of issue 19: the description was cut in SQL to 2 x max_chars + 1,000
    characters before whitespace was collapsed, so a posting whose text came after 20,000 blanks
    or newlines was completed as "empty" without a call, and one with a long run of blanks inside
    lost everything behind it. The text sent is now cut_description(the whole description)."""
    descriptions = [
        " " * 20_000 + KOCH,
        "\n" * 20_000 + KOCH,
        "Koch gesucht." + " \t" * 10_000 + KOCH,
        "Koch gesucht.\n \n\n" + " \n" * 10_000 + PFLEGE,  # paragraph breaks as Python keeps them
    ]
    ids = [add_posting(db_conn, d) for d in descriptions]
    assert run_once(make_cfg(fake, extractor__max_chars=1000), pg_url) == 0
    sent = chat_texts(fake)
    for pid, d in zip(ids, descriptions, strict=True):
        assert item(db_conn, pid)["outcome"] in ("extracted", "partial", "reused"), item(db_conn, pid)
        assert extraction.render_prompt(extraction.cut_description(d, 1000)) in sent
    assert summary_of(db_conn, ids[0])[0]["salary"]["min"] == 2900
    assert summary_of(db_conn, ids[2])[0]["salary"]["min"] == 2900


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("invalid_json", "invalid_json"),
        ("schema_violation", "schema_violation"),
        ("huge", "schema_violation"),
    ],
)
def test_bad_answers_fail_with_the_kind_and_the_answer_start(fake, pg_url, db_conn, mode, kind):
    fake.extraction.mode = mode
    pid = add_posting(db_conn, KOCH)
    m = DaemonMetrics("extractor")
    assert run_once(make_cfg(fake), pg_url, m) == 0
    it = item(db_conn, pid)
    assert it["status"] == "pending" and it["attempts"] == 1  # retried later, with backoff
    assert it["last_error"].startswith(f"{kind}: model '{MODEL}'")
    if mode == "huge":  # a megabyte of answer is not even read whole
        assert "not read further" in it["last_error"] and len(it["last_error"]) < 1000
    assert summary_of(db_conn, pid)[0] is None, "nothing stored from an unusable answer"
    assert (
        m.registry.get_sample_value(
            "jobpipe_extractor_answers_total", {"daemon": "extractor", "outcome": kind}
        )
        == 1
    )
    (stage,) = [s for s in health.collect(db_conn, make_cfg(fake)).stages if s.stage == "extract"]
    assert stage.outcomes == {kind: 1}, stage.outcomes  # what `jobpipe health` shows as the outcomes row


def test_nul_and_control_characters_in_an_answer_are_cleaned_and_stored(fake, pg_url, db_conn):
    """Hostile review of issue 19: a NUL in any string of the answer ("\\u0000" is valid JSON) made
    the summary's jsonb write fail, so the posting never got a summary; ESC and bidi overrides
    went into the database and onto the operator's terminal."""
    plain = fake.extraction.answer

    def dirty(view: dict[str, Any]) -> str:
        doc = orjson.loads(plain(view))
        doc["summary"] = "Koch\x00 gesucht \x1b[2J\u202ein Freiburg."
        doc["tasks"] = [t + "\x00" for t in doc["tasks"]]
        doc["languages"] = [dict(x, language=x["language"] + "\x00") for x in doc["languages"]]
        doc["start_date"] = "sofort\x07"
        return orjson.dumps(doc).decode()

    fake.extraction.answer = dirty
    pid = add_posting(db_conn, KOCH)
    assert run_once(make_cfg(fake), pg_url) == 0
    it = item(db_conn, pid)
    assert it["status"] == "done" and it["outcome"] == "extracted", it
    s = summary_of(db_conn, pid)[0]
    assert s["summary"] == "Koch gesucht [2J in Freiburg."
    assert s["tasks"] and not any("\x00" in t for t in s["tasks"])
    assert {"language": "Deutsch", "level": "B2"} in s["languages"] and s["start_date"] == "sofort"
    stored = db_conn.execute("SELECT summary::text FROM postings WHERE id = %s", (pid,)).fetchone()[0]
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E for c in stored)


def test_ungrounded_answer_is_partial_and_counted(fake, pg_url, db_conn):
    fake.extraction.mode = "ungrounded"
    pid = add_posting(db_conn, PFLEGE)
    m = DaemonMetrics("extractor")
    assert run_once(make_cfg(fake), pg_url, m) == 0
    assert item(db_conn, pid)["outcome"] == "partial"
    s = summary_of(db_conn, pid)[0]
    assert s["salary"] is None and "Dienstwagen mit Chauffeur" not in s["benefits"]
    assert all(x["language"] != "Klingonisch" for x in s["languages"])

    def dropped(f: str) -> float:
        return m.registry.get_sample_value(
            "jobpipe_extractor_dropped_values_total", {"daemon": "extractor", "field": f}
        )

    assert dropped("salary") == 1 and dropped("benefits") == 1 and dropped("languages") == 1


def test_model_change_requeues_through_the_sweep(fake, pg_url, db_conn):
    ids = [add_posting(db_conn, t) for t in (KOCH, PFLEGE, DEV, KOCH)]
    assert run_once(make_cfg(fake), pg_url) == 0
    assert fake.counters()["chat_calls"] == 3
    cfg = make_cfg(fake, extractor__model="llama3.2:3b", extractor__resweep_backlog=2)
    assert run_once(cfg, pg_url) == 0
    assert fake.counters()["chat_calls"] == 6, "each distinct text once more, with the new model"
    assert {summary_of(db_conn, p)[2] for p in ids} == {"llama3.2:3b"}
    n = db_conn.execute(
        "SELECT count(*) FROM queue WHERE stage = 'extract' AND priority = %s",
        (extraction.RESWEEP_PRIORITY,),
    ).fetchone()[0]
    assert n == 4, "the old summaries were queued by the sweep, below new postings"
    assert run_once(cfg, pg_url) == 0
    assert fake.counters()["chat_calls"] == 6, "a finished rollout queues nothing again"


def test_answer_body_cap_stops_reading_and_leaves_the_endpoint_healthy(fake):
    fake.extraction.mode = "huge"
    schema = extraction.load_schema()
    text = extraction.cut_description(KOCH, 6000)
    with make_chat_client("ollama", [fake.url], MODEL, concurrency=1, connect_timeout=1, read_timeout=5,
                          max_answer_bytes=100_000) as chat:  # fmt: skip
        with pytest.raises(ItemError) as err:
            extraction.extract(chat, schema, text)
        assert err.value.kind == "schema_violation" and "more than 100,000 bytes" in str(err.value)
        # The same client's next answer is read as usual: an answer too large is not an outage.
        fake.extraction.mode = None
        assert extraction.extract(chat, schema, text).summary["salary"]["min"] == 2900


@pytest.fixture
def trickling_server() -> Any:
    """A model server that sends its headers at once and then a valid answer one byte every
    50 ms (some 20 s in all): every socket read is quick, the answer is not."""
    content = orjson.dumps(extraction_llm.summarise(KOCH)).decode()
    body = orjson.dumps({"model": MODEL, "message": {"role": "assistant", "content": content},
                         "done": True, "done_reason": "stop"})  # fmt: skip
    body = body[:400] + b" " * max(0, 400 - len(body)) + body[400:]
    stop = threading.Event()
    sent: list[int] = []
    srv = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(1 << 20)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
            try:
                for i in range(len(body)):
                    if stop.wait(0.05):
                        return
                    conn.sendall(body[i : i + 1])
                    sent.append(i)
            except OSError:
                return  # the client hung up: what the deadline is for

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", body, sent
    finally:
        stop.set()
        srv.close()


def test_a_trickling_model_server_is_cut_at_the_total_deadline(trickling_server):
    """Hostile review of issue 19: `extractor.read_timeout_s` was a per-read timeout only, so a
    server (or proxy) trickling its answer held one model slot - and, through the lease
    heartbeat, its posting - forever. Now it is the most one summary may take in all (the bounded
    reader, jobpipe.httpio, checks the deadline between the pieces a trickle delivers)."""
    url, body, sent = trickling_server
    cfg = config.load(environ={}).with_overrides(
        ollama__urls=[url], extractor__model=MODEL, extractor__read_timeout_s=1.0, extractor__workers=1
    )
    chat = extraction.chat_client_from_config(cfg)
    t0 = time.monotonic()
    try:
        with pytest.raises(DependencyDown) as err:
            extraction.extract(chat, extraction.load_schema(), extraction.cut_description(KOCH, 6000))
    finally:
        chat.close()
    elapsed = time.monotonic() - t0
    assert err.value.kind == "timeout" and "not complete in time" in str(err.value)
    assert 1.0 <= elapsed < 10, elapsed  # the whole body would take len(body) * 50 ms
    assert len(sent) < len(body), "the answer was read to its end"


# ------------------------------------------------------------------ every answer is invalid


@pytest.mark.system
def test_every_answer_invalid_one_signal_message_and_health_fails(fake, pg_url, db_conn, tmp_path):
    """The predecessor's "56 of 56 failed in silence": with no success ever, the stage is FAIL in
    `jobpipe health` (exit 2) and exactly one Signal message names the cause."""
    fake.extraction.mode = "invalid_json"
    for i in range(30):  # distinct texts: dedupe must not hide the failures
        add_posting(db_conn, f"{KOCH}\nReferenz {i}")
    with FakeSignalGateway() as gw:
        cfg = make_cfg(
            fake,
            extractor__max_attempts=1,
            queue__backoff_base_s=0,
            alerts__channel="signal-rest",
            alerts__gateway_url=gw.url,
            alerts__sender=DEFAULT_ACCOUNT,
            alerts__recipients=["+4917612345678"],
            alerts__eval_interval_s=0.3,
            alerts__given_up_min=100000,
            alerts__timeout_s=2.0,
        )
        runner = runtime.Runner(ExtractorDaemon, cfg, db_url=pg_url, serve=False,
                                metrics=DaemonMetrics("extractor"))  # fmt: skip
        thread, _ = in_thread(runner.run)
        try:
            wait_until(
                lambda: (
                    db_conn.execute(
                        "SELECT count(*) FROM queue WHERE stage = 'extract' AND status = 'given_up'"
                    ).fetchone()[0]
                    == 30
                ),
                60,
                what="30 items given up",
            )
            msgs = gw.wait_for_messages(1, timeout=20)
            assert len(msgs) == 1
            text = msgs[0].message
            assert "FIRING failure ratio on stage extract" in text.splitlines()[0]
            assert "invalid_json" in text and "answered invalid JSON" in text, text
            env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
            env.update(PYTHONPATH=str(ROOT), JOBPIPE_DATABASE_URL=pg_url)
            res = subprocess.run([sys.executable, "-m", "jobpipe.cli", "health"], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert res.returncode == 2, res.stdout + res.stderr
            assert "stage extract (extractor): FAIL" in res.stdout
            assert "invalid_json 30" in res.stdout, res.stdout  # the outcome row names the cause
            target = runner.alerter.evaluations + 5
            assert runner.alerter.wait_for_evaluations(target, timeout=30)
            assert len(gw.messages) == 1, "the firing alert was repeated"
        finally:
            runner.stop.set()
            thread.join(30)
        assert not thread.is_alive()


# ------------------------------------------------------------------ evaluation and the labelled set


LABELLED = ROOT / "bench" / "data" / "labelled_descriptions.jsonl"


@pytest.mark.system
def test_labelled_set_is_the_generators_output_with_both_splits():
    built = subprocess.run([sys.executable, str(ROOT / "bench" / "data" / "build_labelled_descriptions.py")],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert LABELLED.read_text(encoding="utf-8") == built, "run the generator (see its docstring)"
    rows = extraction.read_labelled(str(LABELLED))
    assert len(rows) >= 40 and len({r.id for r in rows}) == len(rows)
    assert {r.split for r in rows} == {"dev", "test"} and sum(r.split == "test" for r in rows) >= 10
    for r in rows:  # every expected scalar is a value the schema allows, every salary is in the text
        for f in ("working_time", "work_location", "contract_type", "education", "experience_level"):
            if f in r.expected:
                assert r.expected[f] in extraction.load_schema().doc["properties"][f]["enum"], (r.id, f)
        if "salary.min" in r.expected:
            assert extraction.Facts(r.description).has_number(r.expected["salary.min"]), r.id


def run_eval(fake: FakeOllama, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(PYTHONPATH=str(ROOT), JOBPIPE_OLLAMA_URLS=json.dumps([fake.url]))
    return subprocess.run([sys.executable, "-m", "jobpipe.cli", "extract", "eval", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.system
def test_extract_eval_scores_fields_and_sees_grounding(fake, tmp_path):
    res = run_eval(fake, str(LABELLED), "--json")
    assert res.returncode == 0, res.stderr
    good = json.loads(res.stdout)
    # The simulated model reads one monthly salary as yearly ("zwei Jahre" in the same sentence):
    # validation drops that period (partial), so no period in the scores is a wrong one.
    assert good["n"] == 48 and good["outcomes"] == {"extracted": 47, "partial": 1}
    assert good["fields"]["salary.period"]["fp"] == 0 and good["dropped"] == 1
    assert fake.counters()["chat_calls"] == 48
    assert set(good["fields"]) == set(extraction.SCALAR_FIELDS) | set(extraction.LIST_FIELDS)
    for f in ("salary.min", "contract_type", "start_date", "languages"):
        assert good["fields"][f]["precision"] > 0.9 and good["fields"][f]["recall"] > 0.9, f
    assert 0.5 < good["micro"]["precision"] < 1 and 0.5 < good["micro"]["recall"] < 1  # a weak model

    # A model that invents a salary and a language: validation drops them, precision holds.
    fake.extraction.mode = "ungrounded"
    inventing = json.loads(run_eval(fake, str(LABELLED), "--json", "--split", "test").stdout)
    assert inventing["n"] == 12 and inventing["dropped"] >= 2 * 12
    assert inventing["fields"]["salary.min"]["fp"] == 0
    # A model whose answers are unusable: every expected value is missed, and the outcomes say why.
    fake.extraction.mode = "invalid_json"
    broken = run_eval(fake, str(LABELLED), "--model", "llama3.2:3b")
    assert broken.returncode == 0 and "invalid_json 48" in broken.stdout
    assert "all fields (micro)" in broken.stdout and "model llama3.2:3b" in broken.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "description": "x", "expected": {}}\nnot json\n')
    res = run_eval(fake, str(bad))
    assert res.returncode == 2 and f"{bad}:2: not a labelled description" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.system
@pytest.mark.parametrize(
    ("row", "says"),
    [
        (b'{"id": "a", "description": null, "expected": {}}', "description must be a non-empty string"),
        (b'{"id": "a", "description": "Koch", "expected": {"tasks": "Kochen"}}', "list of keywords"),
        (b'{"id": "a", "description": "Koch", "expected": {"tasks": 5}}', "list of keywords"),
        (b'{"id": "a", "description": "Koch", "expected": {"task": ["Kochen"]}}', "did you mean 'tasks'"),
        (b'{"id": "a", "description": "Koch", "expected": {"salary": {"min": 1}}}', "'salary.min'"),
        (b'{"id": "a", "description": "Koch", "expected": [["tasks", 1]]}', "expected must be an object"),
        (b'{"id": "a", "description": "Koch", "expected": {"salary.min": [1]}}', "a number or null"),
        (b'{"id": true, "description": "Koch", "expected": {}}', "id must be"),
        (b"\xff\xfe not utf-8", "not valid UTF-8"),
    ],
)
def test_extract_eval_rejects_a_malformed_row_before_any_model_call(fake, tmp_path, row, says):
    """Hostile review of issue 19: a row whose description is null was evaluated as the text
    "None"; labels under an unknown field ("task") or of the wrong shape ("tasks": "Kochen", scored
    letter by letter; "tasks": 5, a crash after every model call) were accepted; invalid UTF-8
    was reported without the file and line."""
    good = b'{"id": "ok", "description": "Koch in Vollzeit.", "expected": {"working_time": "full_time"}}'
    path = tmp_path / "labels.jsonl"
    path.write_bytes(good + b"\n\n" + row + b"\n")
    res = run_eval(fake, str(path))
    assert res.returncode == 2, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"jobpipe: {path}:3: not a labelled description") and says in line, line
    assert fake.counters()["chat_calls"] == 0, "a bad file is reported before any model call"


def test_a_stage_that_completes_postings_but_never_summarises_one_warns(fake, pg_url, db_conn):
    """Hostile review of issue 19: with every description external or empty (a fetcher bug, a
    cut that leaves nothing), the stage completed everything as skipped_external / empty, failed
    nothing, called no model - and every rule and `jobpipe health` stayed green."""
    import logging

    for i in range(15):
        add_posting(db_conn, None, state="external")
        add_posting(db_conn, f" \n\t{' ' * i}")
    cfg = make_cfg(fake)
    assert run_once(cfg, pg_url) == 0
    assert fake.counters()["chat_calls"] == 0
    ctx = runtime.Context(
        cfg, DaemonMetrics("extractor"), "test", pg_url, threading.Event(), logging.getLogger()
    )
    daemon = ExtractorDaemon(ctx)
    try:
        silent = {c.key: c for c in daemon.alert_conditions(db_conn)}["no_summaries"]
        assert silent.active and silent.severity == "warn" and silent.stage == "extract"
        assert "30 postings completed without a model call" in silent.numbers
        assert "skipped_external 15, empty 15" in silent.numbers and "0 summarised" in silent.numbers
        # One posting that gets a summary ends it: external postings beside real ones are normal.
        add_posting(db_conn, KOCH)
        assert run_once(cfg, pg_url) == 0
        assert not {c.key: c for c in daemon.alert_conditions(db_conn)}["no_summaries"].active
    finally:
        daemon.close()
