"""Structured summaries of posting descriptions by an LLM: the schema, the prompt, the field-by-field
validation with grounding checks, the dedupe by description hash, storage, and the evaluation.

Shared by the extractor daemon (daemons/extractor.py), `jobpipe extract eval` and bench/extractor.py,
so all three agree on what is sent, what counts as an answer and what is stored.

What is sent: the description only, cleaned (NULs, invalid UTF-8), whitespace-normalised and cut to
`extractor.max_chars` (at a word boundary when one is near). Its sha256 is the dedupe key: postings
with the same text (one employer, many cities) share one model call, and a summary is reused for
any posting whose text hash, schema version and model match.

What counts as an answer (`parse_answer`, then `validate`):
- not JSON, or cut at the model's length limit            -> ItemError kind "invalid_json"
- JSON that breaks the schema, is too large or too deep    -> ItemError kind "schema_violation"
  (an HTTP answer beyond MAX_ANSWER_BYTES is not even read whole);
  (both carry the model's first 200 characters, which end up in the queue's last_error);
- a valid answer is checked field by field against the text: a value the text does not ground
  (a salary number that does not occur in it as an amount of money - beside a currency or a pay
  word, not in a phone number, postcode or date -, years or months without "Jahre"/"Monate" beside
  them, "remote" with no word about remote work, a language it never names at a word start, a
  task none of whose words occur, a start date that is not a date in it) is dropped - set to
  null / "unspecified" / removed from its list - and counted. Nothing dropped: outcome
  "extracted"; else "partial".
- every string kept is one clean line (no NUL, which jsonb rejects, no control characters or bidi
  overrides, which act on the operator's terminal).
"""

from __future__ import annotations

import concurrent.futures as cf
import difflib
import hashlib
import importlib.resources
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobpipe.errors import ItemError
from jobpipe.models import chat_client_for_role
from jobpipe.models.base import ChatClient, schema_problem
from jobpipe.models.endpoints import ANSWER_TOO_LARGE
from jobpipe.text import clean_line, clean_text, normalise_whitespace, read_capped

STAGE = "extract"
DATA_PACKAGE = "jobpipe.data"
SCHEMA_FILE = "summary_schema_v1.json"
# Postings found by the re-extraction sweep go below new postings (priority 0) in the queue.
RESWEEP_PRIORITY = -1

# Caps on a model's answer (a runaway or hostile answer must not cost memory or the database).
MAX_ANSWER_CHARS = 32_000  # larger answers are a schema violation, not parsed
# The HTTP body is not read past this (content JSON-escaped in its envelope: up to 6 bytes a char).
MAX_ANSWER_BYTES = 6 * MAX_ANSWER_CHARS + 65_536
MAX_DEPTH = 4  # nesting of the schema is 3 (object > object/array > object); one level of slack
MAX_LIST_ITEMS = 15  # items beyond are dropped (and counted)
MAX_ITEM_CHARS = 200  # list items and start_date longer than this are dropped (and counted)
MAX_SUMMARY_CHARS = 400  # the one-sentence summary is cut to this
ERROR_SNIPPET = 200  # characters of the model's answer quoted in an item error
LOAD_SCAN_FACTOR = 20  # a giant description's whitespace is collapsed in its first 20 x cut bound

# The outcomes of the stage: done ones are queue outcomes, the two failures are ItemError kinds.
OUTCOMES = ("extracted", "partial", "reused", "invalid_json", "schema_violation", "skipped_external", "empty")
INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"

SYSTEM_PROMPT = (
    "Du liest deutsche Stellenanzeigen und fasst sie strukturiert zusammen. Antworte nur mit JSON "
    "nach dem vorgegebenen Schema. Übernimm nur, was im Text steht: keine Schätzungen, kein "
    "Gehalt, das nicht als Zahl im Text genannt ist (dann salary = null), keine Sprache, die nicht "
    'genannt ist. Unbekanntes ist "unspecified" oder null. tasks, requirements und benefits sind '
    "kurze Stichpunkte mit den Worten des Textes. summary ist ein einziger deutscher Satz."
)
USER_TEMPLATE = "Stellenbeschreibung:\n<<<\n{text}\n>>>"


# ------------------------------------------------------------------ schema and prompt


@dataclass(frozen=True)
class Schema:
    """The versioned answer schema shipped in jobpipe/data; `version` is stored with every summary."""

    version: str
    doc: dict[str, Any]
    name: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.doc["properties"])


def load_schema(name: str = SCHEMA_FILE) -> Schema:
    """The schema file parsed; its `x-version` names the schema + prompt version ("v1")."""
    doc = orjson.loads((importlib.resources.files(DATA_PACKAGE) / name).read_bytes())
    version = doc.get("x-version")
    if not isinstance(version, str) or not version:
        raise ValueError(f"{name}: no x-version")
    return Schema(version, doc, name)


def cut_description(description: Any, max_chars: int) -> str:
    """The text sent to the model: cleaned, whitespace-normalised, cut to `max_chars` (at a word
    boundary when one is within the last 10 %). Empty means: nothing to extract."""
    text = normalise_whitespace(clean_text(description) or "")
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = max(cut.rfind(" "), cut.rfind("\n"))
        text = (cut[:space] if space >= max_chars * 0.9 else cut).rstrip()
    return text


def description_hash(text: str) -> str:
    """sha256 of the text sent (the dedupe key; model- and version-independent)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def render_prompt(text: str) -> str:
    return USER_TEMPLATE.format(text=text)


# ------------------------------------------------------------------ answer parsing


def _snippet(content: str) -> str:
    return repr(content[:ERROR_SNIPPET])


def _depth(value: Any, level: int = 1) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def parse_answer(content: str, done_reason: str | None, schema: Schema, model: str) -> dict[str, Any]:
    """The answer as a dict that fits the schema, or ItemError(kind invalid_json / schema_violation)
    whose message quotes the model's first 200 characters."""
    if done_reason == "length":
        raise ItemError(
            f"model {model!r} stopped at its length limit: {_snippet(content)}", kind=INVALID_JSON
        )
    if len(content) > MAX_ANSWER_CHARS:
        raise ItemError(
            f"model {model!r} answered {len(content):,} characters (cap {MAX_ANSWER_CHARS:,}): "
            f"{_snippet(content)}",
            kind=SCHEMA_VIOLATION,
        )
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ItemError(f"model {model!r} answered invalid JSON ({exc}): {_snippet(content)}",
                        kind=INVALID_JSON) from exc  # fmt: skip
    if _depth(answer) > MAX_DEPTH:
        raise ItemError(f"model {model!r} answer nested deeper than {MAX_DEPTH}: {_snippet(content)}",
                        kind=SCHEMA_VIOLATION)  # fmt: skip
    problem = schema_problem(answer, schema.doc) or _nullable_problems(answer, schema.doc)
    if problem:
        raise ItemError(f"model {model!r} answer breaks the schema: {problem}: {_snippet(content)}",
                        kind=SCHEMA_VIOLATION)  # fmt: skip
    return answer


def _nullable_problems(value: Any, schema: dict[str, Any], path: str = "$") -> str | None:
    """What models.schema_problem leaves out: `"type": [..., "null"]` lists (it checks one type)."""
    typ = schema.get("type")
    if isinstance(typ, list):
        ok = any(
            (t == "null" and value is None)
            or (t == "integer" and isinstance(value, int) and not isinstance(value, bool))
            or (t == "number" and isinstance(value, int | float) and not isinstance(value, bool))
            or (t == "string" and isinstance(value, str))
            or (t == "object" and isinstance(value, dict))
            for t in typ
        )
        if not ok:
            return f"{path} is {type(value).__name__}, not {' or '.join(typ)}"
        if isinstance(value, dict):
            for key in schema.get("required", ()):
                if key not in value:
                    return f"{path}.{key} is missing"
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and isinstance(sub, dict):
                problem = _nullable_problems(value[key], sub, f"{path}.{key}")
                if problem:
                    return problem
    return None


# ------------------------------------------------------------------ grounding


_NUMBER = re.compile(
    r"(?<![\w.,])(\d{1,3}(?:[.\u202f\u00a0 ]\d{3})+|\d+)(?:,(\d{1,2}))?(\s*(?:k|tsd\.?|t€|tausend)\b)?", re.I
)
_NUMBER_WORDS = {
    "ein": 1, "einem": 1, "einen": 1, "eine": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5,
    "sechs": 6, "sieben": 7, "acht": 8, "neun": 9, "zehn": 10, "zwölf": 12,
}  # fmt: skip
_WORD = re.compile(r"[a-zäöüß0-9+#]+", re.I)
_STOP_WORDS = (
    "und oder mit für von der die das den dem des ein eine einer eines einem sowie bei auf aus im in "
    "zu zur zum als auch sie wir ihr ihre ihren unser unsere unseren sehr gute guter gutes gut "
    "kenntnisse erfahrung bereich arbeit"
)
_STOP = frozenset(_STOP_WORDS.split())
MONTHS = ("januar", "februar", "märz", "april", "mai", "juni", "juli", "august", "september", "oktober",
          "november", "dezember")  # fmt: skip

# Enum values that need a word in the text; a value without a pattern here needs none.
_ENUM_EVIDENCE: dict[str, dict[str, re.Pattern[str]]] = {
    "work_location": {
        "remote": re.compile(
            r"remote|home.?office|mobile[sn]? arbeit|mobil arbeiten|ortsunabhängig|von zu hause"
        ),
        "hybrid": re.compile(r"hybrid|home.?office|mobile[sn]? arbeit|mobil arbeiten|remote"),
    },
    "working_time": {
        "full_time": re.compile(r"vollzeit|\b(3[5-9]|40)(,\d)?[ -]*(std|stunden)"),
        "part_time": re.compile(r"teilzeit|\b([5-9]|[12]\d|3[0-4])(,\d)?[ -]*(std|stunden)"),
        "full_or_part_time": re.compile(r"(vollzeit.*teilzeit|teilzeit.*vollzeit|voll- oder teilzeit)", re.S),
        "minijob": re.compile(r"minijob|geringfügig|midijob|auf 5\d\d"),
    },
    "contract_type": {
        "permanent": re.compile(r"unbefristet|festanstellung|feste anstellung|dauerhaft|fest angestellt"),
        "fixed_term": re.compile(r"(?<!un)befrist|elternzeitvertretung|projektlaufzeit"),
        "temporary_agency": re.compile(r"arbeitnehmerüberlassung|zeitarbeit|personaldienstleist|überlassung"),
        "freelance": re.compile(r"freiberuf|freelance|selbstständig|selbständig|honorarbasis"),
        "apprenticeship": re.compile(r"ausbildung"),
        "internship": re.compile(r"praktik"),
    },
    "education": {
        "vocational": re.compile(r"ausbildung|ausgebildet|gesell|facharbeiter|examen|examiniert"),
        "advanced_vocational": re.compile(r"meister|techniker|fachwirt|betriebswirt|weiterbildung"),
        "bachelor": re.compile(r"bachelor|studium|hochschul|universit|diplom|\bfh\b"),
        "master": re.compile(r"master|diplom|universit"),
        "doctorate": re.compile(r"promotion|promoviert|\bdr\."),
        "none": re.compile(r"ohne (berufs)?ausbildung|quereinst|keine ausbildung|ungelernt|angelernt"),
    },
    "experience_level": {
        "entry": re.compile(r"berufseinst|einsteiger|junior|absolvent|quereinst|ohne berufserfahrung"),
        "senior": re.compile(r"senior|mehrjährig|langjährig|\b([3-9]|\d\d)\+? jahre|(drei|vier|fünf) jahre"),
        "lead": re.compile(r"leitung|leiter|führung|teamlead|head of|verantwortung für .*team"),
        "none": re.compile(r"quereinst|keine (berufs)?erfahrung|ohne (berufs)?erfahrung"),
    },
}
# What a free-text start date must contain to read as one: a digit, a month, a season or a phrase.
_DATE_WORDS = re.compile(
    r"\d|januar|februar|märz|april|mai\b|juni|juli|august|september|oktober|november|dezember"
    r"|frühjahr|sommer|herbst|winter|quartal|sofort|möglich|vereinbarung|absprache"
)
_SOFORT = re.compile(r"sofort|schnellstmöglich|baldmöglichst|nächstmöglich")
_UNSET = {
    "experience_level": "unspecified",
    "education": "unspecified",
    "working_time": "unspecified",
    "work_location": "unspecified",
    "contract_type": "unspecified",
}


# What makes a number in the text an amount of money, a number of years or of months: the words
# right after it ("2.900 € bis", "3 Jahre", "24 Monate") or shortly before it ("Gehalt ab 45.000",
# "Stundenlohn: 15,50"). Without such a cue a number is a phone number, a postcode, a date, a
# count of days off... and grounds no salary, experience or duration (a model that "finds" a
# salary of 4,500 in "Tel. 0761 4500 123" is inventing one).
_CURRENCY = r"(?:€|eur\b|euro|chf|brutto|netto)"
_MONEY_AFTER = re.compile(
    rf"\s*(?:,-+|,\d{{1,2}})?\s*(?:{_CURRENCY}"
    rf"|(?:€|eur|euro)?\s*(?:-|–|bis)\s*\d[\d.\u202f\u00a0 ]*(?:,\d{{1,2}})?\s*{_CURRENCY})"
)
_MONEY_BEFORE = re.compile(
    r"(?:€|\beur\b|euro|chf|gehalt|lohn|vergütung|entgelt|verdienst|bezahlung|stundensatz|brutto|netto)"
    r"\W*(?:[^\W\d]+\W+){0,3}$"
)
_YEARS_AFTER = re.compile(r"\+?\s*(?:(?:-|–|bis)\s*\d+\s*)?(?:jahr|jähr)")
_MONTHS_AFTER = re.compile(r"\s*(?:(?:-|–|bis)\s*\d+\s*)?monat")
_CUE_WINDOW = 40  # characters either side of a number in which its cue is looked for
_CUES = {
    "money": (_MONEY_AFTER, _MONEY_BEFORE),
    "years": (_YEARS_AFTER, None),
    "months": (_MONTHS_AFTER, None),
}


@dataclass
class Facts:
    """What grounding needs of one text, computed once: its casefolded form, numbers (each with
    the kinds of quantity its context makes it: money, years, months), word stems."""

    text: str
    low: str = ""
    numbers: set[float] = field(default_factory=set)
    stems: set[str] = field(default_factory=set)
    quantities: dict[str, set[float]] = field(default_factory=dict)
    money_spans: dict[float, list[tuple[int, int]]] = field(default_factory=dict)  # where each amount is

    def __post_init__(self) -> None:
        self.low = self.text.casefold()
        self.quantities = {kind: set() for kind in _CUES}
        for m in _NUMBER.finditer(self.low):
            whole = re.sub(r"[.\u202f\u00a0 ]", "", m.group(1))
            value = float(whole + ("." + m.group(2) if m.group(2) else ""))
            self.numbers.add(value)
            if m.group(3):  # "45k", "45 Tsd.": the thousands are meant, and money
                self.numbers.add(value * 1000)
                self.quantities["money"].add(value * 1000)
                self.money_spans.setdefault(value * 1000, []).append((m.start(), m.end()))
            self._classify(value, m.start(), m.end())
        for m in _WORD.finditer(self.low):
            w = m.group()
            if w in _NUMBER_WORDS:
                self.numbers.add(float(_NUMBER_WORDS[w]))
                self._classify(float(_NUMBER_WORDS[w]), m.start(), m.end())
            self.stems.add(w[:5])

    def _classify(self, value: float, start: int, end: int) -> None:
        after = self.low[end : end + _CUE_WINDOW]
        before = self.low[max(0, start - _CUE_WINDOW) : start]
        for kind, (after_cue, before_cue) in _CUES.items():
            if after_cue.match(after) or (before_cue is not None and before_cue.search(before)):
                self.quantities[kind].add(value)
                if kind == "money":
                    self.money_spans.setdefault(value, []).append((start, end))

    def has_number(self, value: float, kind: str | None = None) -> bool:
        """Whether `value` occurs in the text; with `kind` ("money", "years", "months"), only as
        such a quantity (a cue word beside it), not as any number."""
        pool = self.numbers if kind is None else self.quantities[kind]
        return any(abs(value - n) < 0.005 for n in pool)

    def near_amount(self, amounts: Iterable[float], pattern: re.Pattern[str]) -> bool:
        """Whether `pattern` occurs within _CUE_WINDOW characters of one of `amounts` as money in the
        text ("3.400 € brutto im Monat"): the period or currency of that salary, not of another
        number."""
        for value, spans in self.money_spans.items():
            if any(abs(value - a) < 0.005 for a in amounts):
                for start, end in spans:
                    if pattern.search(self.low[max(0, start - _CUE_WINDOW) : end + _CUE_WINDOW]):
                        return True
        return False

    def grounds_phrase(self, phrase: str) -> bool:
        """At least half of the phrase's content words (their first five letters) occur in the text."""
        words = [w for w in _WORD.findall(phrase.casefold()) if len(w) >= 3 and w not in _STOP]
        if not words:
            return False
        hits = sum(1 for w in words if w[:5] in self.stems)
        return hits * 2 >= len(words)

    def grounds_language(self, name: str) -> bool:
        """The language is named in the text: its first six letters (at least four: "Deutsch" in
        "Deutschkenntnisse") begin a word of it. "Ung" or "Deu" ground nothing."""
        stem = name.casefold()[:6]
        if len(stem) < 4 or not stem.isalpha():
            return False
        return re.search(rf"(?<!\w){re.escape(stem)}", self.low) is not None

    def grounds_date(self, value: str) -> bool:
        v = value.strip().casefold()
        if v in ("sofort", "ab sofort"):
            return bool(_SOFORT.search(self.low))
        m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", v)
        if not m:
            # Free text ("nach Vereinbarung", "01.08.2026", "Herbst 2026") must read as a date and
            # stand in the text as whole words: "e" or "Koch" occur in any text and date nothing.
            if not _DATE_WORDS.search(v):
                return False
            phrase = re.escape(" ".join(v.split()))
            return re.search(rf"(?<!\w){phrase}(?!\w)", " ".join(self.low.split())) is not None
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (1 <= mo <= 12):
            return False
        forms = [f"{d}.{mo}.{y}", f"{d:02d}.{mo:02d}.{y}", f"{d:02d}.{mo:02d}.{y % 100:02d}",
                 f"{d}. {MONTHS[mo - 1]} {y}", f"{d:02d}. {MONTHS[mo - 1]} {y}"]  # fmt: skip
        if d == 1:  # "ab März 2025", "01.03." without a year
            forms += [f"{MONTHS[mo - 1]} {y}", f"{mo:02d}/{y}", f"{mo}/{y}"]
        squeezed = " ".join(self.low.split())
        return any(f in squeezed for f in forms)


@dataclass
class Validated:
    """A validated summary and what was dropped from the model's answer (field paths)."""

    summary: dict[str, Any]
    dropped: list[str]

    @property
    def outcome(self) -> str:
        return "partial" if self.dropped else "extracted"


def _str_list(values: Any, facts: Facts, path: str, dropped: list[str]) -> list[str]:
    out: list[str] = []
    for i, v in enumerate(values or []):
        text = clean_line(v, MAX_ITEM_CHARS + 1) or ""  # NUL breaks jsonb; controls act on terminals
        if i >= MAX_LIST_ITEMS or not text or len(text) > MAX_ITEM_CHARS or not facts.grounds_phrase(text):
            dropped.append(f"{path}[{i}]")
        elif text not in out:
            out.append(text)
    return out


def validate(answer: dict[str, Any], text: str) -> Validated:
    """Check a schema-valid answer field by field against `text`; drop what the text does not ground.

    Guarantees: every value kept is grounded as described in the module docstring; lists hold at
    most MAX_LIST_ITEMS items of at most MAX_ITEM_CHARS characters; a salary is kept only with a
    min or max that occurs as an amount of money in the text; every string is a clean line
    (jobpipe.text.clean_line: storable in jsonb, no control characters); the result has every
    schema field.
    """
    facts = Facts(text)
    dropped: list[str] = []
    out: dict[str, Any] = {}
    summary = clean_line(answer.get("summary"), MAX_SUMMARY_CHARS) or ""
    out["summary"] = summary
    if not summary:
        dropped.append("summary")
    out["tasks"] = _str_list(answer.get("tasks"), facts, "tasks", dropped)
    req = answer.get("requirements") or {}
    out["requirements"] = {
        "must": _str_list(req.get("must"), facts, "requirements.must", dropped),
        "nice": _str_list(req.get("nice"), facts, "requirements.nice", dropped),
    }
    langs: list[dict[str, str]] = []
    for i, entry in enumerate(answer.get("languages") or []):
        name = clean_line(entry.get("language"), MAX_ITEM_CHARS) or ""
        if i >= MAX_LIST_ITEMS or not facts.grounds_language(name):
            dropped.append(f"languages[{i}]")
        elif all(x["language"] != name for x in langs):
            langs.append({"language": name, "level": entry.get("level") or "unspecified"})
    out["languages"] = langs
    for key, unset in _UNSET.items():
        value = answer.get(key, unset)
        pattern = _ENUM_EVIDENCE.get(key, {}).get(value)
        if pattern is not None and not pattern.search(facts.low):
            dropped.append(key)
            value = unset
        out[key] = value
    for key in ("years_experience", "contract_duration_months"):
        n = answer.get(key)
        ok = n is None or (
            0 < n <= 600
            and (
                facts.has_number(n, "years" if key == "years_experience" else "months")
                or (key == "contract_duration_months" and n % 12 == 0 and facts.has_number(n // 12, "years"))
            )
        )
        if not ok:
            dropped.append(key)
        out[key] = n if ok else None
    start = answer.get("start_date")
    if start is not None:
        start = clean_line(start, MAX_ITEM_CHARS + 1)
    if start is not None and (len(start) > MAX_ITEM_CHARS or not facts.grounds_date(start)):
        dropped.append("start_date")
        start = None
    out["start_date"] = start
    out["salary"] = _salary(answer.get("salary"), facts, dropped)
    out["benefits"] = _str_list(answer.get("benefits"), facts, "benefits", dropped)
    return Validated(out, dropped)


# What grounds a salary's period and currency: these words beside one of its amounts.
_PERIOD_EVIDENCE = {  # singular or compound forms: "3 Monate", "40 Stunden", "2 Jahre" are no period
    "hour": re.compile(r"stunde(?!n\b)|stundenlohn|stundensatz|(?:/|pro)\s*(?:std|h)\b"),
    "month": re.compile(r"monat(?!en?\b)|mtl\b"),
    "year": re.compile(r"jahr(?!en?\b)|jährl|p\.\s?a\.|\d\s*k\b|tsd|tausend"),
}
_CURRENCY_EVIDENCE = {"EUR": re.compile(r"€|\beuro?\b"), "CHF": re.compile(r"\bchf\b|franken")}


def _salary(value: Any, facts: Facts, dropped: list[str]) -> dict[str, Any] | None:
    """Kept only with an amount that occurs in the text as money; min <= max; the period and the
    currency only when stated beside an amount kept."""
    if value is None:
        return None
    kept: dict[str, Any] = {"min": None, "max": None, "period": value.get("period"), "currency": None}
    for key in ("min", "max"):
        n = value.get(key)
        if n is None:
            continue
        if n > 0 and facts.has_number(float(n), "money"):
            kept[key] = n
        else:
            dropped.append(f"salary.{key}")
    if kept["min"] is None and kept["max"] is None:
        return None
    if kept["min"] is not None and kept["max"] is not None and kept["min"] > kept["max"]:
        kept["min"], kept["max"] = kept["max"], kept["min"]
    amounts = [float(n) for n in (kept["min"], kept["max"]) if n is not None]
    period = kept["period"]
    if period is not None and not facts.near_amount(amounts, _PERIOD_EVIDENCE[period]):
        dropped.append("salary.period")  # "hour" for "3.400 € im Monat" is worse than no period
        kept["period"] = None
    currency = value.get("currency")
    if currency is not None and facts.near_amount(amounts, _CURRENCY_EVIDENCE[currency]):
        kept["currency"] = currency
    elif currency is not None:  # "eur" in "Friseur" or "Europa" is no currency
        dropped.append("salary.currency")
    return kept


def extract(chat: ChatClient, schema: Schema, text: str) -> Validated:
    """One model call for one description; ItemError for an answer that is not usable at all.
    DependencyDown (server away, model not pulled) propagates: the text is not at fault."""
    try:
        content, reason = chat.answer_text(SYSTEM_PROMPT, render_prompt(text), schema.doc)
    except ItemError as exc:
        if exc.kind != ANSWER_TOO_LARGE:
            raise
        raise ItemError(f"model {chat.model!r} answer too large: {exc}", kind=SCHEMA_VIOLATION) from exc
    return validate(parse_answer(content, reason, schema, chat.model), text)


# ------------------------------------------------------------------ load and write


@dataclass(frozen=True, slots=True)
class Job:
    """What the extractor loaded for one posting."""

    posting_id: int
    text: str
    text_hash: str
    reuse: dict[str, Any] | None = None  # the summary of another posting with this text, version, model


def load_jobs(
    conn: Any, posting_ids: Sequence[int], *, max_chars: int, version: str, model: str
) -> dict[int, Job | str]:
    """{posting id: Job, or "skipped_external" / "empty"} for the postings that exist (one query for
    the texts, one for summaries to reuse). The description is cut in SQL to a bound of the budget,
    so a giant description never crosses the wire whole. One longer than the bound has its runs of
    whitespace collapsed first, as normalise_whitespace would: else a text behind 20,000 blanks was
    cut to blanks and completed as "empty" without a call. So the text sent is
    cut_description(the whole description) - for any text whose first LOAD_SCAN_FACTOR x bound
    characters hold the budget (the regular expressions cost ~0.1 ms per kB: 0.5 s for 5 MB
    unbounded, so they read at most that much)."""
    rows = conn.execute(
        r"""SELECT p.id, p.description_state,
                   CASE WHEN length(p.description) <= %(chars)s THEN p.description
                        ELSE left(regexp_replace(regexp_replace(left(p.description, %(scan)s),
                                  '[ \t\r\f\v\u00a0]+', ' ', 'g'), ' ?\n[ \n]*\n ?', E'\n\n', 'g'),
                                  %(chars)s) END
             FROM unnest(%(ids)s::bigint[]) AS u(id) JOIN postings p ON p.id = u.id""",
        # room for what normalising removes; what the expressions may read
        {
            "ids": list(posting_ids),
            "chars": max_chars * 2 + 1000,
            "scan": LOAD_SCAN_FACTOR * (max_chars * 2 + 1000),
        },
    ).fetchall()
    out: dict[int, Job | str] = {}
    texts: dict[int, tuple[str, str]] = {}
    for pid, state, description in rows:
        if state == "external":
            out[pid] = "skipped_external"
            continue
        text = cut_description(description, max_chars)
        if not text:
            out[pid] = "empty"
            continue
        texts[pid] = (text, description_hash(text))
    reusable = dict(
        conn.execute(
            """SELECT DISTINCT ON (summary_hash) summary_hash, summary FROM postings
                WHERE summary_hash = ANY(%s) AND summary_version = %s AND summary_model = %s""",
            (list({h for _, h in texts.values()}), version, model),
        ).fetchall()
    ) if texts else {}  # fmt: skip
    for pid, (text, h) in texts.items():
        out[pid] = Job(pid, text, h, reusable.get(h))
    return out


def write_summaries(
    conn: Any, rows: Sequence[tuple[int, str, dict[str, Any]]], *, version: str, model: str
) -> set[int]:
    """Store (posting id, text hash, summary) in ONE statement; return the posting ids written
    (postings deleted meanwhile are skipped). A posting whose description changed meanwhile was
    re-queued by the change itself (the queue's `rerun`)."""
    if not rows:
        return set()
    cur = conn.execute(
        """UPDATE postings p SET summary = r.summary, summary_version = %(v)s, summary_model = %(m)s,
                  summary_hash = r.hash, summarized_at = now()
             FROM unnest(%(ids)s::bigint[], %(hashes)s::text[], %(docs)s::jsonb[]) AS r(id, hash, summary)
            WHERE p.id = r.id
        RETURNING p.id""",
        {
            "ids": [r[0] for r in rows],
            "hashes": [r[1] for r in rows],
            "docs": [orjson.dumps(r[2]).decode() for r in rows],
            "v": version,
            "m": model,
        },
    )
    return {pid for (pid,) in cur.fetchall()}


def sweep_predicate(version: str, model: str) -> tuple[str, dict[str, Any]]:
    """SQL (over postings `p`) for "needs a summary of this version and model", for the Sweep."""
    return (
        "p.description_state = 'fetched' AND p.description IS NOT NULL AND p.description <> '' AND "
        "(p.summary_version IS DISTINCT FROM %(version)s OR p.summary_model IS DISTINCT FROM %(model)s)",
        {"version": version, "model": model},
    )


def count_stale(conn: Any, version: str, model: str) -> int:
    """Postings with a summary made by another model or schema version."""
    return conn.execute(
        """SELECT count(*) FROM postings WHERE summary IS NOT NULL
             AND (summary_version <> %s OR summary_model <> %s)""",
        (version, model),
    ).fetchone()[0]


# ------------------------------------------------------------------ client from config


def chat_client_from_config(cfg: Any, *, observer: Any = None) -> ChatClient:
    """The LLM client the `extractor` section describes (its own servers, else ollama.urls), with
    the extractor's own timeout (a summary takes longer than an embedding): `read_timeout_s` is
    the most one summary may take, including a body that trickles in."""
    x = cfg.extractor
    return chat_client_for_role(
        x,
        cfg.ollama,
        observer=observer,
        read_timeout=x.read_timeout_s,
        deadline_s=x.read_timeout_s,  # the whole exchange, however slowly the body trickles in
        max_answer_bytes=MAX_ANSWER_BYTES,
    )


# ------------------------------------------------------------------ evaluation


SCALAR_FIELDS = ("experience_level", "years_experience", "education", "working_time", "work_location",
                 "contract_type", "contract_duration_months", "start_date", "salary.min", "salary.max",
                 "salary.period")  # fmt: skip
LIST_FIELDS = ("tasks", "requirements.must", "requirements.nice", "languages", "benefits")
_ABSENT = (None, "unspecified", [], "")


@dataclass
class Labelled:
    """One labelled description: `expected` holds scalar values (absent = not stated) and, for
    list fields, keywords each of which one predicted item should contain."""

    id: str
    description: str
    expected: dict[str, Any]
    split: str = "dev"


MAX_LABELLED_LINE = 1 << 20  # bytes of one labelled row (a description is a few kB)


def read_labelled(path: str) -> list[Labelled]:
    """A JSON Lines file of {"id", "description", "expected", "split"?}; a bad line is a one-line
    ValueError naming the file, the line and what is wrong - before any model call, so a typo in
    row 40 does not cost 39 calls and a label under an unknown field ("task") or of the wrong
    shape ("tasks": "Kochen", scored letter by letter) is never silently scored. The file is read
    bounded (read_capped: `extract eval /dev/zero` read until memory ran out; InputTooLarge is a
    ValueError), and one that is not UTF-8 names its line."""
    body = read_capped(path)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = body[: exc.start].count(b"\n") + 1
        why = f"not valid UTF-8 at byte {exc.start}"
        raise ValueError(f"{path}:{line_no}: not a labelled description ({why})") from None
    out: list[Labelled] = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LABELLED_LINE:
                raise ValueError(f"line longer than {MAX_LABELLED_LINE:,} characters")
            out.append(_labelled_row(orjson.loads(line)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}:{n}: not a labelled description ({type(exc).__name__}: {exc})"
            ) from None
    return out


def _labelled_row(doc: Any) -> Labelled:
    if not isinstance(doc, dict):
        raise TypeError(f"a row is an object, not {type(doc).__name__}")
    rid, description, expected = doc["id"], doc["description"], doc["expected"]
    if not isinstance(rid, str | int) or isinstance(rid, bool) or not str(rid).strip():
        raise TypeError(f"id must be a non-empty string or integer, not {rid!r}"[:200])
    if not isinstance(description, str) or not description.strip():
        raise TypeError("description must be a non-empty string")
    if not isinstance(expected, dict):
        raise TypeError(f"expected must be an object, not {type(expected).__name__}")
    for key, value in expected.items():
        if key in LIST_FIELDS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise TypeError(f"expected[{key!r}] must be a list of keywords (strings)")
        elif key in SCALAR_FIELDS:
            if not (value is None or isinstance(value, str | int | float)) or isinstance(value, bool):
                raise TypeError(f"expected[{key!r}] must be a string, a number or null")
        else:
            hint = difflib.get_close_matches(str(key), (*SCALAR_FIELDS, *LIST_FIELDS), n=1)
            raise ValueError(
                f"expected has unknown field {str(key)[:60]!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; fields: {', '.join((*SCALAR_FIELDS, *LIST_FIELDS))}"
            )
    split = doc.get("split", "dev")
    if not isinstance(split, str):
        raise TypeError("split must be a string")
    return Labelled(str(rid), description, expected, split)


def _get(doc: dict[str, Any] | None, path: str) -> Any:
    value: Any = doc or {}
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _list_texts(field_name: str, values: Any) -> list[str]:
    if field_name == "languages":
        return [str(v.get("language", "")).casefold() for v in values or [] if isinstance(v, dict)]
    return [str(v).casefold() for v in values or []]


@dataclass
class FieldScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


@dataclass
class EvalReport:
    model: str
    n: int
    fields: dict[str, FieldScore]
    outcomes: Counter[str]
    dropped: int
    seconds: float

    @property
    def micro(self) -> FieldScore:
        total = FieldScore()
        for s in self.fields.values():
            total.tp, total.fp, total.fn = total.tp + s.tp, total.fp + s.fp, total.fn + s.fn
        return total


def score(fields: dict[str, FieldScore], predicted: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """Add one description's field-level counts. Scalars: a stated value right is a TP, a value
    where none is expected or a wrong one an FP, an expected value missed or wrong an FN. Lists:
    each expected keyword found in some predicted item is a TP, else an FN; each predicted item
    containing no expected keyword is an FP."""
    for f in SCALAR_FIELDS:
        s = fields.setdefault(f, FieldScore())
        want, got = expected.get(f), _get(predicted, f)
        want_set, got_set = want not in _ABSENT, got not in _ABSENT
        if got_set and want_set and got == want:
            s.tp += 1
            continue
        s.fp += got_set
        s.fn += want_set
    for f in LIST_FIELDS:
        s = fields.setdefault(f, FieldScore())
        keys = [str(k).casefold() for k in expected.get(f) or []]
        items = _list_texts(f, _get(predicted, f))
        for k in keys:
            if any(k in it for it in items):
                s.tp += 1
            else:
                s.fn += 1
        s.fp += sum(1 for it in items if not any(k in it for k in keys))


def evaluate(
    chat: ChatClient, schema: Schema, rows: Iterable[Labelled], *, max_chars: int, workers: int = 2
) -> EvalReport:
    """Run the model over labelled descriptions (`workers` calls in flight) and score field by field.
    An answer that is not usable counts every expected value as missed (and is an outcome)."""
    rows = list(rows)
    t0 = time.perf_counter()

    def one(row: Labelled) -> tuple[Labelled, Validated | ItemError]:
        try:
            return row, extract(chat, schema, cut_description(row.description, max_chars))
        except ItemError as exc:
            return row, exc

    fields: dict[str, FieldScore] = {}
    outcomes: Counter[str] = Counter()
    dropped = 0
    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for row, res in pool.map(one, rows):
            if isinstance(res, ItemError):
                outcomes[res.kind] += 1
                score(fields, None, row.expected)
            else:
                outcomes[res.outcome] += 1
                dropped += len(res.dropped)
                score(fields, res.summary, row.expected)
    return EvalReport(chat.model, len(rows), fields, outcomes, dropped, time.perf_counter() - t0)
