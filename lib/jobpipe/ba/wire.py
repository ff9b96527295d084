"""The BA Jobsuche v6 and BERUFENET wire formats: the one module that knows field names.

The live API renamed most fields from v4 to v6 (August 2026) and will drift again, so every
field name lives here and nowhere else. Parsing is lenient per item and strict per page:
bad data in one posting (a `null` item, a missing title, an invalid date, coordinates out of
range, NUL bytes, invalid UTF-8) is skipped or nulled field by field and written down in
`problems`, while a page whose *shape* is not the expected one raises `SchemaError` with a
sample of the body - such a page must never be mistaken for "0 postings".

Hostile input is bounded here, before anything reaches the database: a referenznummer longer
than MAX_ID_CHARS drops its item (it could not be stored: the unique index has a row limit, and
a cut id would name another posting); titles, employers and other one-line fields lose control
characters and are cut (MAX_TITLE_CHARS, MAX_TEXT_CHARS); the raw item kept as jsonb is a copy
bounded in depth, string length and size (`bounded`), built without recursion; numbers are
ASCII digits only. Each of these is written down in `problems`. No input makes a parser raise
anything but SchemaError (or ValueError for a bad argument).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson

from jobpipe.errors import JobpipeError
from jobpipe.text import clean_line, clean_text, normalise_whitespace, parse_int

SOURCE = "ba"
GONE_CODE = "STELLENANGEBOT_NICHT_GEFUNDEN"
# Keys only the retired v4 format used: seeing one means the API changed under us.
_V4_PAGE_KEYS = ("stellenangebote",)
_V4_ITEM_KEYS = ("refnr", "titel", "arbeitsort", "modifikationsTimestamp")
_SAMPLE_CHARS = 300
# arbeitszeit* flags -> the codes the search filter `arbeitszeit` uses (vz;tz;snw;ho;mj).
_WORKING_TIME_CODES = {
    "arbeitszeitvollzeit": "vz",
    "arbeitszeitteilzeit": "tz",
    "arbeitszeitschichtnachtarbeitwochenende": "snw",
    "arbeitszeitheimtelearbeit": "ho",
    "arbeitszeitminijob": "mj",
}
_NO_SALARY = {"", "KEINE_ANGABEN", "KEINE_ANGABE", "KEINE"}

# Caps on what one item may put into the database (real values are far below each).
MAX_ID_CHARS = 200  # referenznummer, e.g. "10000-1198776543-S": longer drops the item
MAX_TITLE_CHARS = 500  # stellenangebotsTitel: cut (the normaliser reads at most 2,000 anyway)
MAX_TEXT_CHARS = 2000  # every other one-line field (employer, city, URL, salary text...): cut
MAX_LIST_ENTRIES = 100  # locations and occupations of one item: the rest ignored
MAX_RAW_DEPTH = 32  # raw jsonb: deeper containers are replaced by a marker string
MAX_RAW_TEXT_CHARS = 10_000  # raw jsonb: longer strings are cut (the description: its own cap)
MAX_RAW_NODES = 20_000  # raw jsonb: values beyond this many are left out


class SchemaError(JobpipeError):
    """A 200 answer whose shape is not the BA format we know (drift, truncation, garbage).

    Alert-worthy: it means the parser needs updating (or the API is broken), not that the
    query matched nothing. `sample` is the start of the body, cleaned for logs.
    """

    def __init__(self, message: str, sample: str = "") -> None:
        super().__init__(f"{message} (body starts: {sample!r})" if sample else message)
        self.reason = message
        self.sample = sample


@dataclass(frozen=True, slots=True)
class Location:
    postcode: str | None
    city: str | None
    region: str | None  # federal state enum, e.g. BADEN_WUERTTEMBERG
    country: str | None
    street: str | None
    lat: float | None
    lon: float | None


@dataclass(frozen=True, slots=True)
class PostingRecord:
    external_id: str  # referenznummer
    title: str | None  # None when the item had no usable title (recorded in problems)
    employer: str | None
    occupation_label: str | None  # hauptberuf
    occupations: tuple[str, ...]  # alleBerufe
    offer_type: str | None  # stellenangebotsart, e.g. ARBEIT
    locations: tuple[Location, ...]
    published_from: date | None  # veroeffentlichungszeitraum.von
    first_published: date | None  # datumErsteVeroeffentlichung
    modified_at: datetime | None  # aenderungsdatum, naive BA local time as sent
    external_url: str | None  # externeURL: a partner job board
    entry_from: date | None  # eintrittszeitraum.von
    salary: str | None
    has_salary: bool
    homeoffice: bool | None
    working_time: tuple[str, ...]  # codes vz/tz/snw/ho/mj (unknown flags: their lower-cased suffix)
    raw: dict[str, Any]  # the item as received (strings cleaned: safe for jsonb)
    source: str = SOURCE


@dataclass(frozen=True, slots=True)
class SearchPage:
    items: tuple[PostingRecord, ...]
    total: int  # maxErgebnisse: hits of the whole query, not of this page
    page: int | None
    size: int | None
    problems: list[str] = field(default_factory=list)
    # facetten: {"<name>": {"<value>": count}} - what a crawler splits partitions by.
    facets: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PostingDetails:
    description: str | None  # plain text, whitespace-normalised, NUL-free, cut; None if absent/empty
    external_url: str | None
    record: PostingRecord | None  # None when the item fields were unusable (see problems)
    raw: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def is_external(self) -> bool:
        """A partner posting without a description: terminal, not a failure to retry."""
        return self.description is None and self.external_url is not None


@dataclass(frozen=True, slots=True)
class BerufSummary:
    id: int
    name: str  # kurzBezeichnungNeutral
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BerufePage:
    items: tuple[BerufSummary, ...]
    number: int  # 0-based
    size: int
    total_elements: int
    total_pages: int
    problems: list[str] = field(default_factory=list)

    @property
    def is_last(self) -> bool:
        return self.number + 1 >= self.total_pages


@dataclass(frozen=True, slots=True)
class BerufDetail:
    id: int
    name: str  # kurzBezeichnungNeutral
    full_name: str | None  # bezeichnungNeutral
    kldb2010: str | None  # 5 digits, "B 28212" -> "28212"
    codenr: str | None
    raw: dict[str, Any]


# ---------------------------------------------------------------- helpers


def sample_of(body: bytes | str, limit: int = _SAMPLE_CHARS) -> str:
    """The start of a body, safe for a log line."""
    # Cut before decoding: a 1 MB body must not be decoded whole for a log line.
    return (clean_text(body[: limit * 4], max_chars=limit) or "").replace("\n", " ")


MAX_PARSE_DEPTH = 256  # containers nested deeper are replaced by _DEEP_MARK before parsing
_DEEP_MARK = f'"[cut: nested deeper than {MAX_PARSE_DEPTH} levels]"'.encode()
_JSON_STRUCTURE = re.compile(rb'["\\\[\]{}]')


def _cut_deep(body: bytes, max_depth: int = MAX_PARSE_DEPTH) -> bytes | None:
    """`body` with every container deeper than `max_depth` replaced by a marker string, scanned
    without recursion (only quotes, backslashes and brackets are visited); None when nothing is
    that deep or the brackets do not balance (then the parser's own error stands).

    Why: orjson refuses more than 1,024 levels and the stdlib parser recurses; either way the
    whole page was lost for one posting with a field nested 1,500 deep."""
    out = bytearray()
    depth, pos, in_string, escaped_at, cut_from = 0, 0, False, -1, -1
    for m in _JSON_STRUCTURE.finditer(body):
        i, c = m.start(), body[m.start()]
        if i == escaped_at:
            continue
        if c == 0x5C:  # backslash: escapes the next byte (inside a string; invalid JSON outside)
            escaped_at = i + 1
        elif c == 0x22:  # quote
            in_string = not in_string
        elif in_string:
            continue
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth == max_depth + 1 and cut_from < 0:
                cut_from = i
        else:  # ] }
            if depth == max_depth + 1 and cut_from >= 0:
                out += body[pos:cut_from] + _DEEP_MARK
                pos, cut_from = i + 1, -1
            depth -= 1
            if depth < 0:
                return None
    if pos == 0 or depth != 0 or cut_from >= 0:
        return None
    out += body[pos:]
    return bytes(out)


def _load_json(body: bytes) -> tuple[Any, bool]:
    """Parse a body; returns (value, needs_deep_clean).

    orjson is strict (invalid UTF-8, lone surrogates and raw control characters fail), so a
    body with a few bad bytes is decoded with replacement and parsed leniently instead of
    losing the whole page. A `\\u0000` escape parses fine but yields NUL: clean those too.
    Containers nested deeper than MAX_PARSE_DEPTH are cut to a marker first (`_cut_deep`), so
    one deep value costs its item's field, not the page.
    """
    try:
        return orjson.loads(body), b"\\u0000" in body
    except orjson.JSONDecodeError:
        # Also for a body that failed for its bytes: the lenient parser below recurses.
        cut = _cut_deep(body)
        if cut is not None:
            return _load_json(cut)
    text = bytes(body).decode("utf-8", errors="replace")
    try:
        return json.loads(text, strict=False), True
    except ValueError as exc:
        raise SchemaError(f"malformed JSON ({exc.__class__.__name__}: {exc})", sample_of(body)) from None
    except RecursionError:
        # orjson stops at 1,024 levels; the stdlib parser recurses and would take the thread down.
        raise SchemaError("JSON nested too deeply (over 1,000 levels)", sample_of(body)) from None


_CUT_MARK = f"[cut: nested deeper than {MAX_RAW_DEPTH} levels]"


def bounded(
    value: Any,
    *,
    max_depth: int = MAX_RAW_DEPTH,
    max_text: int | None = MAX_RAW_TEXT_CHARS,
    max_nodes: int = MAX_RAW_NODES,
    clean: bool = True,
) -> tuple[Any, bool]:
    """A copy of a parsed JSON value that is safe to store as jsonb and bounded in size.

    Every string (keys too) is cut to `max_text` (None: not cut) and, with `clean`, cleaned of NUL
    and lone surrogates (`clean=False` for values orjson parsed from a body without `\\u0000`:
    their strings are clean already); a container deeper than `max_depth` becomes a marker
    string; after `max_nodes` values the rest of every container is left out; integers beyond 64
    bits and non-JSON scalars become strings. Iterative: no input depth can raise RecursionError.
    Returns (copy, was_cut).
    """
    cut = False
    limit = max_text if max_text is not None else -1

    def text(v: str) -> str:
        nonlocal cut
        if 0 <= limit < len(v):
            cut = True
            v = v[:limit]
        return (clean_text(v) or "") if clean else v

    def scalar(v: Any) -> Any:
        nonlocal cut
        if isinstance(v, str):
            return text(v)
        if v is None or isinstance(v, bool | float):
            return v
        if isinstance(v, int):
            if -(2**63) <= v < 2**64:
                return v
            cut = True  # the stdlib parser reads any size; orjson (and the raw column) cannot
        return text(str(v))

    if not isinstance(value, dict | list):
        return scalar(value), cut
    if not clean and max_text is not None:
        # Fast path for the common item: orjson writes it (no int beyond 64 bits, no lone
        # surrogate, under its own depth limit), it is shorter than one string may be and has
        # fewer brackets than levels allowed: nothing to cut, so no copy is needed.
        try:
            dumped = orjson.dumps(value)
        except (orjson.JSONEncodeError, TypeError):
            dumped = None
        if (
            dumped is not None
            and len(dumped) <= max_text
            and len(dumped) <= max_nodes
            and dumped.count(b"[") + dumped.count(b"{") <= max_depth
        ):
            return value, False
    if max_depth < 1:
        return _CUT_MARK, True
    budget = max_nodes
    root: Any = {} if isinstance(value, dict) else []
    # (source container, its copy, depth of the source)
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        pairs = src.items() if isinstance(src, dict) else ((None, v) for v in src)
        for key, child in pairs:
            if budget <= 0:
                cut = True
                break
            budget -= 1
            if isinstance(child, dict | list):
                if depth >= max_depth:
                    cut = True
                    copy: Any = _CUT_MARK
                else:
                    copy = {} if isinstance(child, dict) else []
                    stack.append((child, copy, depth + 1))
            elif isinstance(child, str):
                copy = text(child)
            else:
                copy = scalar(child)
            if key is None:
                dst.append(copy)
            else:
                dst[text(key) if isinstance(key, str) else text(str(key))] = copy
    return root, cut


def _deep_clean(value: Any) -> Any:
    """Clean every string (keys too) of a parsed JSON value, so it fits jsonb; strings keep their
    length (the fields' own caps apply later), depth and size are bounded as in `bounded`."""
    return bounded(value, max_text=None)[0]


def _text(value: Any, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """A short text field: cleaned, without control characters, whitespace collapsed, cut to
    `max_chars`; None when empty or not a scalar."""
    if value is None or isinstance(value, dict | list | bool):
        return None
    return clean_line(value, max_chars)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, str):
        return parse_int(value)  # ASCII digits only: str.isdigit() takes "²", which int() rejects
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return None


def _date(value: Any, name: str, problems: list[str], where: str) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value[:10].isascii():
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    problems.append(f"{where}: invalid date in {name}: {sample_of(str(value), 40)!r}")
    return None


def _datetime(value: Any, name: str, problems: list[str], where: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= 40 and value.isascii():
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    problems.append(f"{where}: invalid timestamp in {name}: {sample_of(str(value), 40)!r}")
    return None


def _coordinate(value: Any, limit: float, name: str, problems: list[str], where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        long_text = isinstance(value, str) and len(value) > 40
        number = float(value) if not isinstance(value, bool) and not long_text else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if math.isfinite(number) and -limit <= number <= limit:
        return number
    problems.append(f"{where}: {name} out of range: {sample_of(str(value), 40)!r}")
    return None


def _sub(item: dict[str, Any], key: str) -> dict[str, Any]:
    value = item.get(key)
    return value if isinstance(value, dict) else {}


def _locations(item: dict[str, Any], problems: list[str], where: str) -> tuple[Location, ...]:
    value = item.get("stellenlokationen")
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: stellenlokationen is not a list")
        return ()
    if len(value) > MAX_LIST_ENTRIES:
        problems.append(f"{where}: {len(value)} locations, only the first {MAX_LIST_ENTRIES} kept")
        value = value[:MAX_LIST_ENTRIES]
    out = []
    for n, loc in enumerate(value):
        if not isinstance(loc, dict):
            problems.append(f"{where}: location {n} is not an object, skipped")
            continue
        address = _sub(loc, "adresse")
        street = " ".join(s for s in (_text(address.get("strasse")), _text(address.get("hausnummer"))) if s)
        out.append(
            Location(
                postcode=_text(address.get("plz")),
                city=_text(address.get("ort")),
                region=_text(address.get("region")),
                country=_text(address.get("land")),
                street=street or None,
                lat=_coordinate(loc.get("breite"), 90.0, "breite", problems, where),
                lon=_coordinate(loc.get("laenge"), 180.0, "laenge", problems, where),
            )
        )
    return tuple(out)


def _salary(item: dict[str, Any]) -> str | None:
    low, high = _int(item.get("gehaltsspanneVon")), _int(item.get("gehaltsspanneBis"))
    if low is not None and high is not None:
        return f"{low} - {high} EUR"
    if low is not None:
        return f"ab {low} EUR"
    if high is not None:
        return f"bis {high} EUR"
    text = _text(item.get("verguetungsangabe"))
    return None if text is None or text.upper() in _NO_SALARY else text


def _working_time(item: dict[str, Any]) -> tuple[str, ...]:
    codes: list[str] = []
    for key, value in item.items():
        if value is True and key.startswith("arbeitszeit") and len(key) > len("arbeitszeit"):
            lower = key.lower()
            code = next((c for prefix, c in _WORKING_TIME_CODES.items() if lower.startswith(prefix)), None)
            code = code or (clean_line(lower[len("arbeitszeit") :], 40) or "?")
            if code not in codes and len(codes) < 10:
                codes.append(code)
    return tuple(codes)


def _text_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(t for t in (_text(v) for v in value[:MAX_LIST_ENTRIES]) if t)


def _record(
    item: dict[str, Any], problems: list[str], where: str, raw_override: dict[str, Any] | None = None
) -> PostingRecord | None:
    """One v6 item -> PostingRecord; None (with a problem) when it has no usable referenznummer.

    `item` is the parsed item as received; the record's raw is a bounded copy of it, and `raw_override`
    replaces some of its keys (the details parser puts the cut description there)."""
    value = item.get("referenznummer")
    if isinstance(value, str | int) and not isinstance(value, bool) and len(str(value)) > MAX_ID_CHARS:
        problems.append(
            f"{where}: referenznummer of {len(str(value))} characters (max {MAX_ID_CHARS}), skipped: "
            f"{sample_of(str(value), 40)!r}"
        )
        return None
    refnr = _text(value, MAX_ID_CHARS)
    if refnr is None:
        problems.append(f"{where}: empty or invalid referenznummer, skipped")
        return None
    where = f"{where} ({refnr})"
    raw_title = item.get("stellenangebotsTitel")
    title = _text(raw_title, MAX_TITLE_CHARS)
    if title is None:
        problems.append(f"{where}: missing title")
    elif isinstance(raw_title, str) and len(raw_title) > MAX_TITLE_CHARS:
        problems.append(f"{where}: title of {len(raw_title)} characters cut to {MAX_TITLE_CHARS}")
    override = raw_override or {}
    # The item's strings are clean here (orjson parsed them, or the page was deep-cleaned first).
    source = {k: v for k, v in item.items() if k not in override} if override else item
    raw, cut = bounded(source, clean=False)
    raw.update(override)  # already cleaned and capped by the caller (the description: its own cap)
    if cut:
        problems.append(
            f"{where}: raw item cut (deeper than {MAX_RAW_DEPTH} levels, strings over "
            f"{MAX_RAW_TEXT_CHARS} characters or over {MAX_RAW_NODES} values)"
        )
    homeoffice = item.get("homeofficemoeglich")
    salary = _salary(item)
    return PostingRecord(
        external_id=refnr,
        title=title,
        employer=_text(item.get("firma")),
        occupation_label=_text(item.get("hauptberuf")),
        occupations=_text_list(item.get("alleBerufe")),
        offer_type=_text(item.get("stellenangebotsart")),
        locations=_locations(item, problems, where),
        published_from=_date(
            _sub(item, "veroeffentlichungszeitraum").get("von"), "veroeffentlichungszeitraum", problems, where
        ),
        first_published=_date(
            item.get("datumErsteVeroeffentlichung"), "datumErsteVeroeffentlichung", problems, where
        ),
        modified_at=_datetime(item.get("aenderungsdatum"), "aenderungsdatum", problems, where),
        external_url=_text(item.get("externeURL")),
        entry_from=_date(_sub(item, "eintrittszeitraum").get("von"), "eintrittszeitraum", problems, where),
        salary=salary,
        has_salary=salary is not None,
        homeoffice=homeoffice if isinstance(homeoffice, bool) else None,
        working_time=_working_time(item),
        raw=raw,
    )


def _facets(value: Any, problems: list[str]) -> dict[str, dict[str, int]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append("facetten is not an object, ignored")
        return {}
    out: dict[str, dict[str, int]] = {}
    for name, facet in value.items():
        counts = facet.get("counts") if isinstance(facet, dict) else None
        if not isinstance(counts, dict):
            problems.append(f"facet {name!r} has no counts, ignored")
            continue
        out[str(name)] = {str(k): n for k, v in counts.items() if (n := _int(v)) is not None}
    return out


# ---------------------------------------------------------------- public parsers


def parse_search_page(body: bytes) -> SearchPage:
    """Parse a 200 answer of `GET /pc/v6/jobs`.

    Raises SchemaError for shape drift: not an object, neither `ergebnisliste` nor
    `maxErgebnisse`, v4 keys, items without `referenznummer`, or hits announced but no list.
    """
    data, dirty = _load_json(body)
    if not isinstance(data, dict):
        raise SchemaError(f"search answer is a JSON {type(data).__name__}, not an object", sample_of(body))
    for key in _V4_PAGE_KEYS:
        if key in data:
            raise SchemaError(f"search answer has the retired v4 key {key!r}", sample_of(body))
    if "ergebnisliste" not in data and "maxErgebnisse" not in data:
        raise SchemaError("search answer has neither 'ergebnisliste' nor 'maxErgebnisse'", sample_of(body))
    problems: list[str] = []
    if dirty:
        problems.append("body had invalid UTF-8 or NUL characters (replaced)")
    total = _int(data.get("maxErgebnisse"))
    page, size = _int(data.get("page")), _int(data.get("size"))
    raw_items = data.get("ergebnisliste")
    if raw_items is None:
        # Absent (not []) is how the API says "nothing here"; it must agree with the total,
        # unless the page lies beyond the last hit.
        beyond_end = (
            page is not None and size is not None and total is not None and (page - 1) * size >= total
        )
        if total is None or (total > 0 and not beyond_end):
            raise SchemaError(f"no 'ergebnisliste' but maxErgebnisse={total!r}", sample_of(body))
        raw_items = []
    if not isinstance(raw_items, list):
        raise SchemaError("'ergebnisliste' is not a list", sample_of(body))
    if total is None:
        raise SchemaError("'maxErgebnisse' is missing or not an integer", sample_of(body))
    # An item without the key is shape drift when it carries v4 keys, or when no item of the page
    # (two or more) has it: the API renamed it. One such item among good ones is a bad *item*,
    # dropped with a problem like one whose referenznummer is null: failing the page for it would
    # fail the partition's every run (the item is still there next time).
    objects = [item for item in raw_items if isinstance(item, dict)]
    keyless = [n for n, it in enumerate(raw_items) if isinstance(it, dict) and "referenznummer" not in it]
    for n in keyless:
        drift = [k for k in _V4_ITEM_KEYS if k in raw_items[n]]
        if drift or (len(keyless) >= 2 and len(keyless) == len(objects)):
            hint = f" (v4 keys {drift})" if drift else f" (nor has any of the page's {len(objects)} items)"
            raise SchemaError(f"item {n} has no 'referenznummer'{hint}", sample_of(body))
    items: list[PostingRecord] = []
    seen: set[str] = set()
    for n, item in enumerate(raw_items):
        where = f"item {n}"
        if not isinstance(item, dict):
            problems.append(f"{where}: {'null' if item is None else type(item).__name__} item skipped")
            continue
        if "referenznummer" not in item:
            keys = sample_of(", ".join(str(k) for k in list(item)[:10]), 80)  # not the value: any depth
            problems.append(f"{where}: no 'referenznummer' (keys: {keys}), skipped")
            continue
        if dirty:
            item = _deep_clean(item)
        record = _record(item, problems, where)
        if record is None:
            continue
        if record.external_id in seen:
            problems.append(f"{where}: duplicate referenznummer {record.external_id}, kept once")
            continue
        seen.add(record.external_id)
        items.append(record)
    return SearchPage(
        items=tuple(items),
        total=total,
        page=page,
        size=size,
        problems=problems,
        facets=_facets(data.get("facetten"), problems),
    )


def parse_details(body: bytes, max_description_chars: int) -> PostingDetails:
    """Parse a 200 answer of `GET /pc/v4/jobdetails/{base64}`.

    The description is cleaned (NUL, invalid UTF-8), whitespace-normalised and cut to
    `max_description_chars`. A body that is not an object or has no `referenznummer` is drift.
    """
    if max_description_chars < 1:
        raise ValueError("max_description_chars must be >= 1")
    data, dirty = _load_json(body)
    if not isinstance(data, dict):
        raise SchemaError(f"details answer is a JSON {type(data).__name__}, not an object", sample_of(body))
    if "referenznummer" not in data:
        drift = [k for k in _V4_ITEM_KEYS if k in data]
        hint = f" (v4 keys {drift})" if drift else ""
        raise SchemaError(f"details answer has no 'referenznummer'{hint}", sample_of(body))
    problems: list[str] = []
    if dirty:
        problems.append("body had invalid UTF-8 or NUL characters (replaced)")
        data = _deep_clean(data)
    description = data.get("stellenangebotsBeschreibung")
    text = None
    if isinstance(description, str):
        # Cut before the whitespace pass too: a 100 MB description costs bounded work.
        text = normalise_whitespace(clean_text(description, 4 * max_description_chars) or "")
        if len(text) > max_description_chars:
            problems.append(f"description cut from {len(description)} to {max_description_chars} characters")
            text = text[:max_description_chars].rstrip()
        text = text or None
    elif description is not None:
        problems.append(f"stellenangebotsBeschreibung is a {type(description).__name__}, ignored")
    # raw (stored in postings.raw through the record) holds the description as stored, never more.
    override = {"stellenangebotsBeschreibung": text} if "stellenangebotsBeschreibung" in data else {}
    record = _record(data, problems, "details", override)
    return PostingDetails(
        description=text,
        external_url=_text(data.get("externeURL")),
        record=record,
        raw=record.raw if record is not None else {**bounded(data)[0], **override},
        problems=problems,
    )


def encode_refnr(refnr: str) -> str:
    """referenznummer -> the base64 path segment of the details endpoint (padded)."""
    return base64.b64encode(refnr.encode("utf-8")).decode("ascii")


def decode_refnr(segment: str) -> str:
    """Inverse of encode_refnr; accepts unpadded input. Raises ValueError on garbage."""
    try:
        return base64.b64decode(segment + "=" * (-len(segment) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII input; covers UnicodeDecodeError
        raise ValueError(f"not a base64 referenznummer: {segment[:40]!r}") from exc


def error_messages(body: bytes) -> list[dict[str, str]]:
    """The `messages` of a BA error body ({code, path, detail}), [] when there are none."""
    try:
        data, _ = _load_json(body)
    except SchemaError:
        return []
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        return []
    out = []
    for m in messages:
        if isinstance(m, dict):
            out.append({k: t for k in ("code", "path", "detail") if (t := _text(m.get(k))) is not None})
    return out


def is_gone(status: int, body: bytes) -> bool:
    """True only for the expiry signal: 404 with code STELLENANGEBOT_NICHT_GEFUNDEN."""
    return status == 404 and any(m.get("code") == GONE_CODE for m in error_messages(body))


# ---------------------------------------------------------------- BERUFENET


def parse_berufe_page(body: bytes) -> BerufePage:
    """Parse `GET /berufe?page=N` (HAL: _embedded.berufSucheList + page)."""
    data, _ = _load_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("page"), dict):
        raise SchemaError("BERUFENET page has no 'page' object", sample_of(body))
    meta = data["page"]
    numbers = {k: _int(meta.get(k)) for k in ("number", "size", "totalElements", "totalPages")}
    if any(v is None for v in numbers.values()):
        missing = ", ".join(k for k, v in numbers.items() if v is None)
        raise SchemaError(f"BERUFENET 'page' object lacks an integer {missing}", sample_of(body))
    embedded = data.get("_embedded")
    raw_items = embedded.get("berufSucheList") if isinstance(embedded, dict) else None
    if raw_items is None:
        raw_items = []  # HAL omits _embedded on an empty page
    if not isinstance(raw_items, list):
        raise SchemaError("'berufSucheList' is not a list", sample_of(body))
    problems: list[str] = []
    items = []
    for n, item in enumerate(raw_items):
        ident = _int(item.get("id")) if isinstance(item, dict) else None
        name = _text(item.get("kurzBezeichnungNeutral")) if isinstance(item, dict) else None
        if ident is None or name is None:
            problems.append(f"item {n}: no id or name, skipped")
            continue
        items.append(BerufSummary(id=ident, name=name, raw=bounded(item)[0]))
    return BerufePage(
        items=tuple(items),
        number=numbers["number"],
        size=numbers["size"],
        total_elements=numbers["totalElements"],
        total_pages=numbers["totalPages"],
        problems=problems,
    )


def _kldb(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    digits = text.split()[-1]
    return digits if len(digits) == 5 and digits.isascii() and digits.isdigit() else None


def parse_beruf_detail(body: bytes) -> list[BerufDetail]:
    """Parse `GET /berufe/{id}`: a JSON array of occupation objects (usually one)."""
    data, _ = _load_json(body)
    if isinstance(data, dict):
        data = [data]  # tolerate a bare object; the documented shape is an array
    if not isinstance(data, list):
        raise SchemaError("BERUFENET detail is not an array", sample_of(body))
    out = []
    for item in data:
        if not isinstance(item, dict):
            continue
        ident, name = _int(item.get("id")), _text(item.get("kurzBezeichnungNeutral"))
        if ident is None or name is None:
            raise SchemaError("BERUFENET detail without 'id' or 'kurzBezeichnungNeutral'", sample_of(body))
        out.append(
            BerufDetail(
                id=ident,
                name=name,
                full_name=_text(item.get("bezeichnungNeutral")),
                kldb2010=_kldb(item.get("kldb2010")),
                codenr=_text(item.get("codenr")),
                raw=bounded(item)[0],
            )
        )
    return out
