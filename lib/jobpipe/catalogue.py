"""The BERUFENET occupation catalogue: reading saved API answers, fetching live, upserting.

Input shapes are the API's own (docs/contracts/ba-jobsuche.md), so an offline install can load
what `curl` saved:
- a list page of `GET /berufe?page=N`: `{"_embedded": {"berufSucheList": [...]}, "page": {...}}`
  (id + kurzBezeichnungNeutral only);
- a detail array of `GET /berufe/{id}`: `[{"id", "kurzBezeichnungNeutral", "bezeichnungNeutral",
  "kldb2010", "codenr", ...}]`, or an array of such arrays (several saved answers in one file).

Files are checked strictly before anything is written: a wrong shape is a CatalogueError naming
the file and the JSON path inside it (`$._embedded.berufSucheList[3].id`), and a load of several
files is one transaction, so nothing is ever half-loaded. The field values are then read by
jobpipe.ba.wire, the one module that knows the wire format (the checks here only know the shape).

Upserts are idempotent and keep ids (the BERUFENET id is the primary key): a reload updates names
and codes; a list page never erases what a detail answer added (full name, KldB code, raw).
Every occupation gets `name_norm` (titles.normalise of its name) and `aliases`: both gender forms
of its names, normalised, plus curated abbreviations from data/occupation_aliases.csv ("MFA"),
and `lexical_terms`, for the classifier's lexical candidates only (never exact evidence): the parts
of a coordinated compound ("Maschinen- und Anlagenführer/in" -> "maschinenführer",
"anlagenführer") and the curated search terms of data/occupation_terms.csv ("Schreiner" for
"Tischler/in").
"""

from __future__ import annotations

import csv
import difflib
import importlib.resources
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from jobpipe.ba.wire import SchemaError, parse_beruf_detail, parse_berufe_page
from jobpipe.db import Conn
from jobpipe.errors import DependencyDown, UserError
from jobpipe.terms_file import local_search_terms
from jobpipe.text import BIGINT_MAX, clean_line, clean_text, parse_int
from jobpipe.titles import gender_forms, normalise

DATA_PACKAGE = "jobpipe.data"
TEST_CATALOGUE = "berufenet_test_catalogue.json"  # shipped: 239 real occupations, detail-array shape
ALIASES_FILE = "occupation_aliases.csv"
SEARCH_TERMS_FILE = "occupation_terms.csv"
MAX_FILE_BYTES = 128 * 1024 * 1024  # a full BERUFENET dump with raw details is ~50 MB
_KLDB = re.compile(r"^(?:[A-Z]\s?)?\d{5}$")
# Serialises catalogue writes (upsert) and lexical-term refreshes across processes: a refresh
# reads every name and writes terms computed from them, so one that read before a load renamed an
# occupation would otherwise write the old name's terms over the load's (a lost update).
CATALOGUE_LOCK = 0x6A700042


class CatalogueError(UserError):
    """A catalogue file (or answer) of the wrong shape. Names the source and the JSON path."""

    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: at {path}: {message}")
        self.source = source
        self.path = path


@dataclass(frozen=True, slots=True)
class Occupation:
    id: int
    name: str  # kurzBezeichnungNeutral
    full_name: str | None = None  # bezeichnungNeutral
    kldb2010: str | None = None  # 5 digits
    codenr: str | None = None
    raw: dict[str, Any] | None = None
    from_detail: bool = False  # a detail answer (authoritative) rather than a list-page summary


@dataclass
class LoadStats:
    sources: int = 0
    occupations: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "occupations": self.occupations,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "problems": self.problems[:20],
        }


# ------------------------------------------------------------------ shape checks


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "an array" if isinstance(value, list) else "an object"


def _check_id(source: str, path: str, item: Mapping[str, Any]) -> None:
    ident = item.get("id")
    if isinstance(ident, bool) or not (
        (isinstance(ident, int) and 0 < ident <= BIGINT_MAX)
        or (isinstance(ident, str) and (parse_int(ident) or 0) > 0)
    ):
        raise CatalogueError(source, f"{path}.id", f"expected a positive integer id, got {_describe(ident)}")
    name = item.get("kurzBezeichnungNeutral")
    if not isinstance(name, str) or not (clean_text(name) or "").strip():
        raise CatalogueError(
            source, f"{path}.kurzBezeichnungNeutral", f"expected a non-empty name, got {_describe(name)}"
        )


def _check_optional_text(source: str, path: str, item: Mapping[str, Any], key: str) -> None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise CatalogueError(source, f"{path}.{key}", f"expected a string or null, got {_describe(value)}")


def _check_detail(source: str, path: str, item: Any) -> None:
    if not isinstance(item, dict):
        raise CatalogueError(source, path, f"expected an occupation object, got {_describe(item)}")
    _check_id(source, path, item)
    for key in ("bezeichnungNeutral", "codenr", "kldb2010"):
        _check_optional_text(source, path, item, key)
    kldb = item.get("kldb2010")
    if isinstance(kldb, str) and kldb.strip() and not _KLDB.match(kldb.strip()):
        raise CatalogueError(
            source, f"{path}.kldb2010", f"expected a KldB 2010 code like 'B 28212', got {kldb[:40]!r}"
        )


def _check_page(source: str, doc: dict[str, Any]) -> list[Any]:
    meta = doc.get("page")
    if not isinstance(meta, dict):
        raise CatalogueError(
            source, "$.page", f"expected the page object of a list page, got {_describe(meta)}"
        )
    for key in ("number", "size", "totalElements", "totalPages"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CatalogueError(
                source, f"$.page.{key}", f"expected a non-negative integer, got {_describe(value)}"
            )
    embedded = doc.get("_embedded")
    if embedded is None:
        return []  # HAL leaves out _embedded on an empty page
    if not isinstance(embedded, dict):
        raise CatalogueError(source, "$._embedded", f"expected an object, got {_describe(embedded)}")
    items = embedded.get("berufSucheList")
    if not isinstance(items, list):
        raise CatalogueError(
            source, "$._embedded.berufSucheList", f"expected an array, got {_describe(items)}"
        )
    for i, item in enumerate(items):
        path = f"$._embedded.berufSucheList[{i}]"
        if not isinstance(item, dict):
            raise CatalogueError(source, path, f"expected an occupation object, got {_describe(item)}")
        _check_id(source, path, item)
    return items


def _load_json(body: bytes, source: str) -> Any:
    """Parse strictly; invalid UTF-8 inside strings is replaced (never fatal), broken JSON is."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text, strict=False)
        # The stdlib accepts "\ud800" (a lone surrogate), which no UTF-8 encoder takes later:
        # make it U+FFFD, as clean_text does for every other source.
        return orjson.loads(clean_text(json.dumps(doc, ensure_ascii=False)) or "null")
    except json.JSONDecodeError as exc:
        raise CatalogueError(
            source, f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise CatalogueError(source, "$", "not a catalogue: JSON nested too deeply") from None


def parse_document(body: bytes, source: str) -> list[Occupation]:
    """Occupations in one saved answer (list page, detail array, or array of detail arrays)."""
    doc = _load_json(body, source)
    if isinstance(doc, dict) and ("page" in doc or "_embedded" in doc):
        _check_page(source, doc)
        try:
            page = parse_berufe_page(body)
        except SchemaError as exc:  # the checks above should have caught it: still name the file
            raise CatalogueError(source, "$", exc.reason) from None
        return [Occupation(s.id, s.name, raw=s.raw) for s in page.items]
    if isinstance(doc, dict) and "kurzBezeichnungNeutral" in doc:
        doc = [doc]  # one bare detail object: tolerated, as jobpipe.ba.wire does
    if not isinstance(doc, list):
        raise CatalogueError(
            source,
            "$",
            f"expected a BERUFENET list page (object with _embedded.berufSucheList and page) or a detail "
            f"array, got {_describe(doc)}",
        )
    flat: list[Any] = []
    for i, element in enumerate(doc):
        if isinstance(element, list):  # several saved detail answers in one file
            for j, item in enumerate(element):
                _check_detail(source, f"$[{i}][{j}]", item)
                flat.append(item)
        else:
            _check_detail(source, f"$[{i}]", element)
            flat.append(element)
    if not flat:
        return []
    try:
        details = parse_beruf_detail(orjson.dumps(flat))
    except SchemaError as exc:
        raise CatalogueError(source, "$", exc.reason) from None
    return [
        Occupation(d.id, d.name, d.full_name, d.kldb2010, d.codenr, raw=d.raw, from_detail=True)
        for d in details
    ]


def read_file(path: str | Path) -> list[Occupation]:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CatalogueError(
                str(p), "$", f"file is {size} bytes, more than the {MAX_FILE_BYTES} accepted"
            )
        # Bounded read, not read_bytes(): a device or pipe (/dev/zero) has no size to check first.
        with p.open("rb") as fh:
            body = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read catalogue file {p}: {exc.strerror or exc}") from None
    if len(body) > MAX_FILE_BYTES:
        raise CatalogueError(str(p), "$", f"more than the {MAX_FILE_BYTES} bytes accepted")
    try:
        return parse_document(body, str(p))
    except RecursionError:  # a shape checked deeper than the interpreter's recursion limit
        raise CatalogueError(str(p), "$", "not a catalogue: JSON nested too deeply") from None


def shipped_catalogue() -> list[Occupation]:
    """The test catalogue shipped in the package (239 real occupations, synthetic ids)."""
    ref = importlib.resources.files(DATA_PACKAGE) / TEST_CATALOGUE
    return parse_document(ref.read_bytes(), f"{DATA_PACKAGE}/{TEST_CATALOGUE}")


# ------------------------------------------------------------------ names and aliases


def load_aliases(text: str | None = None) -> dict[str, list[str]]:
    """Curated aliases {occupation name: [alias, ...]} from data/occupation_aliases.csv (alias,occupation):
    names that identify the occupation exactly (exact evidence, no LLM call)."""
    return _name_map(ALIASES_FILE, text)


def load_search_terms(text: str | None = None) -> dict[str, list[str]]:
    """Curated search terms {occupation name: [term, ...]} from data/occupation_terms.csv
    (term,occupation): trade, colloquial, regional and English names postings use ("Schreiner",
    "Heizungsbauer", "Java Developer"). Hints for the lexical candidates only, never exact evidence:
    a term may name several occupations, and the LLM still decides."""
    return _name_map(SEARCH_TERMS_FILE, text)


def search_terms_with(path: str | Path | None) -> dict[str, list[str]]:
    """The shipped search terms plus an operator's file (`classifier.search_terms_file`; empty or
    None: the shipped ones only). Every writer of the lexical terms (`occupations load/fetch`, the
    classifier, `classifier eval`) reads the same configuration, so none undoes another's terms.
    A file that cannot be read, or a row that is not `term,occupation`, is a UserError naming the
    file and line: a typo must not silently drop an operator's terms."""
    return merge_search_terms(local_search_terms(path))


def merge_search_terms(local: Iterable[tuple[int, str, str]]) -> dict[str, list[str]]:
    """The shipped search terms plus the (line, term, occupation) rows of local_search_terms."""
    merged = load_search_terms()
    seen = {name: set(terms) for name, terms in merged.items()}  # a list's `in` made 100k rows take 45 s
    for _, term, occupation in local:
        known = seen.setdefault(occupation, set())
        if term not in known:
            known.add(term)
            merged.setdefault(occupation, []).append(term)
    return merged


MAX_UNKNOWN_SHOWN = 20


def unknown_local_occupations(
    conn: Conn, path: str | Path, local: Sequence[tuple[int, str, str]]
) -> list[str]:
    """One warning per occupation of an operator's terms that the catalogue does not have: their
    terms are unused (a typo in the BERUFENET name, or a name of a fuller catalogue than this one),
    which `occupations load/fetch` must say rather than drop them silently. The first
    MAX_UNKNOWN_SHOWN with the nearest name, then a count."""
    if not local:
        return []
    known = {clean_line(name) or "" for (name,) in conn.execute("SELECT name FROM occupations")}
    unknown: dict[str, tuple[int, int]] = {}  # name: (first line, terms)
    for line, _, occupation in local:
        key = clean_line(occupation) or ""
        if key not in known:
            first, count = unknown.get(key, (line, 0))
            unknown[key] = (first, count + 1)
    out = []
    for key, (line, count) in list(unknown.items())[:MAX_UNKNOWN_SHOWN]:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.append(
            f"{path}: line {line}: no occupation {key!r} in the catalogue, {count} term(s) unused{hint}"
        )
    if len(unknown) > MAX_UNKNOWN_SHOWN:
        out.append(f"{path}: {len(unknown) - MAX_UNKNOWN_SHOWN} more occupation(s) not in the catalogue")
    return out


def _name_map(file: str, text: str | None) -> dict[str, list[str]]:
    """{occupation: [name, ...]} of a shipped `name,occupation` CSV (header and # comments skipped)."""
    if text is None:
        text = (importlib.resources.files(DATA_PACKAGE) / file).read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    rows = csv.reader(line for line in io.StringIO(text) if line.strip() and not line.startswith("#"))
    for i, row in enumerate(rows):
        if len(row) < 2 or (i == 0 and row[1].strip().lower() == "occupation"):
            continue
        out.setdefault(row[1].strip(), []).append(row[0].strip())
    return out


def name_variants(name: str) -> list[str]:
    """Readable forms of a BERUFENET name: as written, masculine, feminine, and " - " read as "für"."""
    masc, fem = gender_forms(name)
    forms = [name, masc, fem]
    forms += [f.replace(" - ", " für ") for f in forms if " - " in f]
    return list(dict.fromkeys(forms))


def aliases_for(occ: Occupation, curated: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Normalised names that identify `occ` exactly, other than its name_norm; sorted, unique."""
    own = normalise(occ.name)
    found: set[str] = set()
    for text in (occ.name, occ.full_name or ""):
        if text:
            found.update(normalise(v) for v in name_variants(text))
    for alias in (curated or {}).get(occ.name, ()):
        found.add(normalise(alias))
    found.discard(own)
    found.discard("")
    return sorted(found)


# "fliesen- platten- und mosaikleger": conjuncts that end in a hyphen, then the one that holds the
# shared head (normalise has dropped the commas).
_COORDINATION = re.compile(r"((?:\w+- (?:(?:und|oder|sowie|u) )?)+)(\w+)")
HEAD_MIN_CHARS = 5  # "leger", "bauer"; shorter endings ("iker", "mann") are suffixes, not heads
HEAD_MIN_VARIETY = 3  # different letters that must precede a head somewhere in the catalogue


def compound_heads(names: Iterable[str]) -> dict[str, int]:
    """{word ending: how many different letters precede it} over the words of the names'
    masculine readings: the statistic compound_head reads a head from."""
    words: set[str] = set()
    for name in names:
        words.update(normalise(gender_forms(name)[0]).replace("-", " ").split())
    before: dict[str, set[str]] = {}
    for word in words:
        for i in range(1, len(word) - HEAD_MIN_CHARS + 1):
            before.setdefault(word[i:], set()).add(word[i - 1])
    return {ending: len(letters) for ending, letters in before.items()}


def compound_head(word: str, heads: Mapping[str, int]) -> str | None:
    """The head of a German compound: the ending (HEAD_MIN_CHARS+ letters, 3+ before it) that the
    most different letters precede in the catalogue, at a peak of that variety (more than the
    ending one letter shorter, at least as many as the one a letter longer): Harris's (1955)
    successor variety read backwards. "anlagenführer" -> "führer" (Kranführer, Baggerführer, ...),
    not "nführer" nor "ührer"; "stahlbetonbauer" -> "bauer". None when no ending qualifies."""
    best: tuple[int, str] | None = None
    for i in range(3, len(word) - HEAD_MIN_CHARS + 1):
        ending = word[i:]
        v = heads.get(ending, 0)
        if (v >= HEAD_MIN_VARIETY and v > heads.get(ending[1:], 0) and v >= heads.get(word[i - 1 :], 0)
                and (best is None or v > best[0])):  # fmt: skip
            best = (v, ending)
    return best[1] if best else None


def coordination_terms(name: str, heads: Mapping[str, int]) -> list[str]:
    """Normalised readings of a name whose compounds share a head ("Maschinen- und Anlagenführer/in"
    -> ["anlagenführer", "maschinenführer"]), each coordination resolved on its own, masculine
    form (a title's "-in" costs a trigram or two, not the match); sorted, [] when there is none."""
    text = normalise(gender_forms(name)[0])
    found: set[str] = set()
    for m in _COORDINATION.finditer(text):
        last = m.group(2)
        head = compound_head(last, heads)
        if head is None:
            continue
        for part in [*re.findall(r"(\w+)-", m.group(1)), last[: -len(head)]]:
            found.add(text[: m.start()] + part + head + text[m.end() :])
    return sorted(found)


def refresh_lexical_terms(conn: Conn, search_terms: Mapping[str, Sequence[str]] | None = None) -> int:
    """Recompute every occupation's `lexical_terms`: the parts of its coordinated compounds (the
    heads are a statistic of the whole catalogue's names) and its curated search terms
    (load_search_terms, normalised). Writes only rows whose terms changed, returns how many."""
    search_terms = load_search_terms() if search_terms is None else search_terms
    # By the name as the wire (jobpipe.ba.wire) stores one, clean_line: the 2015 list the file's
    # names come from has "Portier/e  eines Hotel", with two spaces.
    by_name: dict[str, list[str]] = {}
    for key, listed in search_terms.items():
        by_name.setdefault(clean_line(key) or "", []).extend(listed)
    with conn.transaction():
        # Read only once no load is writing (CATALOGUE_LOCK; re-entrant inside upsert's transaction).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CATALOGUE_LOCK,))
        rows = conn.execute("SELECT id, name, lexical_terms FROM occupations").fetchall()
        heads = compound_heads(name for _, name, _ in rows)
        changed = []
        for ident, name, old in rows:
            found = set(coordination_terms(name, heads))
            found.update(normalise(term) for term in by_name.get(clean_line(name) or "", ()))
            found.discard("")
            terms = sorted(found)
            if terms != list(old):
                changed.append({"id": ident, "terms": terms})
        if changed:
            conn.execute(
                """UPDATE occupations o SET lexical_terms = ARRAY(SELECT jsonb_array_elements_text(u.terms))
                     FROM jsonb_to_recordset(%s) AS u(id bigint, terms jsonb) WHERE o.id = u.id""",
                (Jsonb(changed),),
            )
    return len(changed)


def embedding_text(name: str, full_name: str | None = None) -> str:
    """What is embedded for an occupation (as a passage): its masculine and feminine reading,
    and the full name when it says more. Plain words embed better than "Koch/Köchin"."""
    masc, fem = gender_forms(name)
    parts = [masc] if masc == fem else [masc, fem]
    if full_name and normalise(full_name) not in {normalise(name), normalise(masc), normalise(fem)}:
        parts.append(full_name)
    return " / ".join(parts)


# ------------------------------------------------------------------ writing


def merge(items: Iterable[Occupation]) -> dict[int, Occupation]:
    """Merge by id, later wins; a list-page summary never erases what a detail answer said."""
    out: dict[int, Occupation] = {}
    for occ in items:
        old = out.get(occ.id)
        out[occ.id] = occ if old is None else _merge_one(old, occ)
    return out


def _merge_one(old: Occupation, new: Occupation) -> Occupation:
    if new.from_detail or not old.from_detail:
        return replace(
            new,
            full_name=new.full_name or old.full_name,
            kldb2010=new.kldb2010 or old.kldb2010,
            codenr=new.codenr or old.codenr,
        )
    return replace(old, name=new.name)  # a newer summary renames; details stay


def upsert(
    conn: Conn,
    occupations: Iterable[Occupation],
    curated: Mapping[str, Sequence[str]] | None = None,
    search_terms: Mapping[str, Sequence[str]] | None = None,
) -> LoadStats:
    """Insert or update occupations (ids kept) in one transaction; unchanged rows are not touched."""
    merged = merge(occupations)
    stats = LoadStats(occupations=len(merged))
    if not merged:
        return stats
    curated = load_aliases() if curated is None else curated
    with conn.transaction():
        # Before any row lock: a refresh holding the lock may be waiting for rows this would lock.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CATALOGUE_LOCK,))
        existing = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT id, full_name, kldb2010, codenr, raw IS NOT NULL AND raw ? 'kldb2010' "
                "FROM occupations WHERE id = ANY(%s)",
                (list(merged),),
            )
        }
        rows = []
        for occ in merged.values():
            full_name, kldb, codenr = occ.full_name, occ.kldb2010, occ.codenr
            raw: Any = occ.raw
            if occ.id in existing:
                old_full, old_kldb, old_codenr, old_is_detail = existing[occ.id]
                full_name, kldb, codenr = full_name or old_full, kldb or old_kldb, codenr or old_codenr
                if not occ.from_detail and old_is_detail:
                    raw = None  # keep the stored detail answer
            merged_occ = replace(occ, full_name=full_name)
            rows.append(
                {
                    "id": occ.id,
                    "name": occ.name,
                    "full_name": full_name,
                    "kldb2010": kldb,
                    "codenr": codenr,
                    "aliases": aliases_for(merged_occ, curated),
                    "name_norm": normalise(occ.name),
                    "raw": raw,
                }
            )
        cur = conn.execute(
            """
            INSERT INTO occupations AS o (id, name, full_name, kldb2010, codenr, aliases, name_norm, raw)
            SELECT r.id, r.name, r.full_name, r.kldb2010, r.codenr,
                   ARRAY(SELECT jsonb_array_elements_text(r.aliases)), r.name_norm, r.raw
              FROM jsonb_to_recordset(%s) AS r(id bigint, name text, full_name text, kldb2010 text,
                                               codenr text, aliases jsonb, name_norm text, raw jsonb)
            ON CONFLICT (id) DO UPDATE
               SET name = excluded.name, full_name = excluded.full_name, kldb2010 = excluded.kldb2010,
                   codenr = excluded.codenr, aliases = excluded.aliases, name_norm = excluded.name_norm,
                   raw = coalesce(excluded.raw, o.raw), updated_at = now()
             WHERE (o.name, o.full_name, o.kldb2010, o.codenr, o.aliases, o.name_norm)
                   IS DISTINCT FROM
                   (excluded.name, excluded.full_name, excluded.kldb2010, excluded.codenr, excluded.aliases,
                    excluded.name_norm)
                OR (excluded.raw IS NOT NULL AND excluded.raw IS DISTINCT FROM o.raw)
            RETURNING (xmax = 0) AS inserted
            """,
            (Jsonb(rows),),
        )
        for (inserted,) in cur.fetchall():
            if inserted:
                stats.inserted += 1
            else:
                stats.updated += 1
        refresh_lexical_terms(conn, search_terms)  # also fills rows loaded before migration 0090
    stats.unchanged = stats.occupations - stats.inserted - stats.updated
    return stats


def read_files(paths: Sequence[str | Path]) -> list[list[Occupation]]:
    """Every file checked and read, one list per file (CatalogueError or UserError naming the file).
    Nothing is written: callers read before they connect, so a bad file costs no database work."""
    return [read_file(path) for path in paths]


def load(
    conn: Conn,
    sources: Sequence[Sequence[Occupation]],
    curated: Mapping[str, Sequence[str]] | None = None,
    search_terms: Mapping[str, Sequence[str]] | None = None,
) -> LoadStats:
    """Upsert the occupations of several sources (files from read_files, the shipped catalogue) in
    one transaction; the stats count the sources."""
    stats = upsert(conn, [o for source in sources for o in source], curated, search_terms)
    stats.sources = len(sources)
    return stats


def load_files(
    conn: Conn, paths: Sequence[str | Path], curated: Mapping[str, Sequence[str]] | None = None
) -> LoadStats:
    """Check and read every file first, then upsert all of them in one transaction."""
    return load(conn, read_files(paths), curated)


# ------------------------------------------------------------------ the live API


def fetch(
    client: Any,
    *,
    details: bool = True,
    max_pages: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Occupation], list[str]]:
    """Page through `GET /berufe` (and `GET /berufe/{id}` per occupation with `details`).

    `client` is a jobpipe.ba.client.BAClient: its rate limit, concurrency cap and retries make this polite.
    Returns (occupations, problems). DependencyDown propagates: the caller writes nothing then.
    """
    summaries: dict[int, Occupation] = {}
    problems: list[str] = []
    n = 0
    while max_pages is None or n < max_pages:
        page = client.berufe_page(n)
        problems.extend(f"page {n}: {p}" for p in page.problems)
        for s in page.items:
            summaries[s.id] = Occupation(s.id, s.name, raw=s.raw)
        if progress is not None:
            progress(f"page {n + 1}/{page.total_pages}: {len(summaries)} occupations")
        if page.is_last or not page.items:
            break
        n += 1
    if not details:
        return list(summaries.values()), problems
    out: list[Occupation] = []
    failures_in_a_row = 0
    for k, (ident, summary) in enumerate(summaries.items(), 1):
        try:
            answer = client.beruf_detail(ident)
            failures_in_a_row = 0
        except DependencyDown as exc:
            # One detail that keeps failing (a listed id without a detail page) must not cost the
            # whole catalogue; several in a row mean the API is down: give up, write nothing.
            failures_in_a_row += 1
            if failures_in_a_row >= 3:
                raise
            problems.append(f"occupation {ident}: detail failed ({exc}), kept the list entry")
            out.append(summary)
            continue
        own = [d for d in answer if d.id == ident] or answer[:1]
        if not own:
            problems.append(f"occupation {ident}: empty detail answer, kept the list entry")
            out.append(summary)
            continue
        d = own[0]
        out.append(Occupation(d.id, d.name, d.full_name, d.kldb2010, d.codenr, raw=d.raw, from_detail=True))
        if progress is not None and (k % 100 == 0 or k == len(summaries)):
            progress(f"details {k}/{len(summaries)}")
    return out, problems
