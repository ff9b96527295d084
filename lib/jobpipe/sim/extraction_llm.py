"""A simulated LLM for the extractor's summary schema (labelled as simulated wherever it runs).

It reads a German job description with regular expressions (section headings such as "Ihre
Aufgaben" / "Ihr Profil" / "Wir bieten", bullet lines, keywords for working time, remote work,
contract, salary amounts...) and answers the summary schema. Deterministic and instant; right
where the text is conventional and wrong in the ways a weak model is (it misses what is phrased
unusually). Plugged into the fake Ollama (jobpipe/sim/ollama.py) for `/api/chat` with a JSON-schema
`format` and `/v1/chat/completions` with `response_format`, whenever the schema is the summary's.

Fault injection (`mode`, settable at any time): None (plausible answers) | "invalid_json" (prose
around a cut object) | "schema_violation" (JSON missing fields, wrong types) | "ungrounded" (a
plausible answer plus a salary, a benefit and a language the text does not state) | "huge" (a
megabyte of deeply nested JSON). Slowness and limited capacity are the fake server's own switches
(`latency_per_request`, `capacity`).
"""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson

SCHEMA_TITLE = "jobpipe posting summary"
MODES = (None, "invalid_json", "schema_violation", "ungrounded", "huge")

_SECTIONS = {
    "tasks": re.compile(
        r"^(ihre aufgaben|deine aufgaben|aufgaben|das erwartet (sie|dich)|ihr aufgabengebiet"
        r"|was (sie|du) tun)",
        re.I,
    ),
    "profile": re.compile(
        r"^(ihr profil|dein profil|profil|das bringen (sie|du) mit|anforderungen|was (sie|du) mitbring)", re.I
    ),
    "benefits": re.compile(
        r"^(wir bieten|das bieten wir|unser angebot|was wir bieten|benefits|ihre vorteile|deine vorteile)",
        re.I,
    ),
}
_NICE = re.compile(r"wünschenswert|von vorteil|idealerweise|optional|ein plus|gerne auch", re.I)
_BULLET = re.compile(r"^\s*(?:[-•*·–]|\d+\.)\s+(.*\S)")
_LANGS = ("Deutsch", "Englisch", "Französisch", "Spanisch", "Italienisch", "Polnisch", "Türkisch",
          "Russisch", "Arabisch", "Niederländisch")  # fmt: skip
_LEVEL = (
    (re.compile(r"\b([abc][12])\b", re.I), None),
    (re.compile(r"muttersprach", re.I), "native"),
    (re.compile(r"fließend|verhandlungssicher|sehr gut", re.I), "fluent"),
    (re.compile(r"grundkenntnisse|basis", re.I), "basic"),
    (re.compile(r"gut", re.I), "good"),
)
_AMOUNT = r"(\d{1,3}(?:\.\d{3})+|\d+)(?:,(\d{1,2}))?"
_SALARY_RANGE = re.compile(
    _AMOUNT + r"\s*(?:€|euro|eur)?\s*(?:-|–|bis|und)\s*" + _AMOUNT + r"\s*(?:€|euro|eur)", re.I
)
_SALARY_ONE = re.compile(r"(?:ab|mindestens|von)?\s*" + _AMOUNT + r"\s*(?:€|euro\b|eur\b)", re.I)
_YEARS = re.compile(
    r"(?:mindestens\s+)?(\d+|zwei|drei|vier|fünf)\+?\s*jahre?n?\s+(?:\w+\s+)?(?:berufs)?erfahrung", re.I
)
_WORDS = {"zwei": 2, "drei": 3, "vier": 4, "fünf": 5}
_DURATION = re.compile(r"befristet\s+(?:auf|für)\s+(\d+|zwei|drei)\s+(monate|jahre)", re.I)
_DATE = re.compile(r"(?:ab|zum|am)\s+(\d{1,2})\.(\d{1,2})\.(\d{4})")


def handles(view: dict[str, Any]) -> bool:
    """Whether a chat request asks for the summary schema."""
    schema = view.get("schema")
    return isinstance(schema, dict) and schema.get("title") == SCHEMA_TITLE


def _description(view: dict[str, Any]) -> str:
    last = next((m.get("content", "") for m in reversed(view["messages"]) if m.get("role") == "user"), "")
    m = re.search(r"<<<\n(.*)\n>>>", str(last), re.S)
    return m.group(1) if m else str(last)


def _number(whole: str, cents: str | None) -> float | int:
    value = float(whole.replace(".", "") + ("." + cents if cents else ""))
    return int(value) if value.is_integer() else value


def summarise(text: str) -> dict[str, Any]:
    """The simulated model's reading of one description (every field of the schema)."""
    low = text.casefold()
    lines = [ln.strip() for ln in text.splitlines()]
    section: str | None = None
    lists: dict[str, list[str]] = {"tasks": [], "profile": [], "benefits": []}
    for ln in lines:
        head = ln.strip("*: \t").strip()
        hit = next((k for k, rx in _SECTIONS.items() if rx.match(head) and len(head) < 40), None)
        if hit:
            section = hit
            continue
        b = _BULLET.match(ln)
        if b and section:
            lists[section].append(b.group(1).rstrip(".;"))
        elif not ln:
            continue
        elif not b and len(ln) > 60:
            section = None if section != "profile" or not ln.endswith(":") else section
    must = [x for x in lists["profile"] if not _NICE.search(x)]
    nice = [x for x in lists["profile"] if _NICE.search(x)]
    languages = []
    for lang in _LANGS:
        m = re.search(r"([^.\n]{0,40})" + lang.casefold()[:6] + r"[^.\n]{0,40}", low)
        if not m:
            continue
        level = "unspecified"
        for rx, name in _LEVEL:
            lm = rx.search(m.group(0))
            if lm:
                level = name or lm.group(1).upper()
                break
        languages.append({"language": lang, "level": level})
    years = None
    if ym := _YEARS.search(low):
        years = _WORDS.get(ym.group(1)) or int(ym.group(1))
    salary: dict[str, Any] | None = None
    if sm := _SALARY_RANGE.search(text):
        salary = {"min": _number(sm.group(1), sm.group(2)), "max": _number(sm.group(3), sm.group(4))}
    elif sm := _SALARY_ONE.search(text):
        salary = {"min": _number(sm.group(1), sm.group(2)), "max": None}
    if salary is not None and sm is not None:  # a salary was read from sm
        ctx = low[max(0, sm.start() - 80) : sm.end() + 60]
        period = (
            "hour" if re.search(r"stunde|std\.|/h\b", ctx)
            else "year" if re.search(r"jahr|p\.\s?a\.|jährlich", ctx)
            else "month" if re.search(r"monat", ctx)
            else None
        )  # fmt: skip
        salary.update(period=period, currency="EUR")
    duration = None
    if dm := _DURATION.search(low):
        n = _WORDS.get(dm.group(1)) or int(dm.group(1))
        duration = n * 12 if dm.group(2).startswith("jahr") else n
    start = None
    if date_m := _DATE.search(text):
        d, mo, y = date_m.groups()
        start = f"{int(y):04d}-{int(mo):02d}-{int(d):02d}"
    elif re.search(r"ab sofort|zum nächstmöglichen|schnellstmöglich", low):
        start = "sofort"
    first = next((ln for ln in lines if ln), "")
    return {
        "summary": f"Gesucht wird: {first[:160]}",
        "tasks": lists["tasks"][:10],
        "requirements": {"must": must[:10], "nice": nice[:10]},
        "languages": languages,
        "experience_level": (
            "lead"
            if re.search(r"leitung|teamleit|führungserfahrung", low)
            else "senior"
            if re.search(r"mehrjährig|langjährig|senior", low)
            else "entry"
            if re.search(r"berufseinst|quereinst|junior|absolvent", low)
            else "professional"
            if "berufserfahrung" in low
            else "unspecified"
        ),
        "years_experience": years,
        "education": (
            "doctorate"
            if "promotion" in low
            else "master"
            if "master" in low
            else "bachelor"
            if re.search(r"studium|bachelor|hochschul", low)
            else "advanced_vocational"
            if re.search(r"meister|techniker|fachwirt", low)
            else "vocational"
            if re.search(r"ausbildung|examen|examiniert", low)
            else "unspecified"
        ),
        "working_time": (
            "full_or_part_time"
            if "vollzeit" in low and "teilzeit" in low
            else "full_time"
            if "vollzeit" in low
            else "part_time"
            if "teilzeit" in low
            else "minijob"
            if re.search(r"minijob|geringfügig", low)
            else "unspecified"
        ),
        "work_location": (
            "remote"
            if re.search(r"100 ?% remote|vollständig remote|komplett remote|ortsunabhängig", low)
            else "hybrid"
            if re.search(r"home.?office|mobiles arbeiten|hybrid|remote", low)
            else "on_site"
        ),
        "contract_type": (
            "apprenticeship"
            if re.search(r"ausbildung zum|ausbildung zur|ausbildungsplatz", low)
            else "internship"
            if "praktikum" in low
            else "temporary_agency"
            if re.search(r"arbeitnehmerüberlassung|zeitarbeit", low)
            else "freelance"
            if re.search(r"freiberuf|freelance", low)
            else "fixed_term"
            if re.search(r"(?<!un)befristet", low)
            else "permanent"
            if re.search(r"unbefristet|festanstellung", low)
            else "unspecified"
        ),
        "contract_duration_months": duration,
        "start_date": start,
        "salary": salary,
        "benefits": lists["benefits"][:10],
    }


class ExtractionLLM:
    """The answering side, with its fault switch and a count of answers per mode."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self._lock = threading.Lock()
        self.answers = 0

    def answer(self, view: dict[str, Any]) -> str:
        with self._lock:
            self.answers += 1
            mode = self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        text = _description(view)
        if mode == "invalid_json":
            return 'Gerne! Hier ist die Zusammenfassung der Stelle: {"summary": "Eine Stelle'
        if mode == "schema_violation":
            return orjson.dumps({"summary": 42, "tasks": "viele", "salary": "gut"}).decode()
        doc = summarise(text)
        if mode == "ungrounded":
            doc["salary"] = {"min": 98765, "max": None, "period": "year", "currency": "EUR"}
            doc["benefits"] = [*doc["benefits"], "Dienstwagen mit Chauffeur"]
            doc["languages"] = [*doc["languages"], {"language": "Klingonisch", "level": "C2"}]
        if mode == "huge":
            nested: Any = "x" * 1000
            for _ in range(50):
                nested = {"a": nested, "b": ["y" * 1000] * 20}
            doc["tasks"] = [nested]
        return orjson.dumps(doc).decode()
