"""Generated data behind the fake BA: a BERUFENET catalogue and a population of job postings.

Built from real public data copied into lib/jobpipe/sim/data/ (see its README): 7,654 BERUFENET
occupation names (2015) and the KldB 2010 classification. Everything is seeded and
deterministic, and fast: 100,000 postings generate in a few seconds, their search-item JSON
is serialised lazily and cached per posting, descriptions are generated on request.

This module knows the BA wire format on its own, on purpose: the fake must not share parsing
code with the client it tests (jobpipe.ba.wire), or a shared mistake would go unnoticed.
"""

from __future__ import annotations

import bisect
import csv
import functools
import itertools
import json
import math
import random
import re
import threading
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson

DATA_DIR = Path(__file__).resolve().parent / "data"
NAMES_FILE = DATA_DIR / "occupation-names-berufenet-2015.txt"
KLDB_FILE = DATA_DIR / "kldb2010.csv"

# ---------------------------------------------------------------- places

# enum, display name (the `wo` value, umlauts required), weight (≈ population), cities:
# (city, postcode, lat, lon).
# fmt: off
STATES: tuple[tuple[str, str, float, tuple[tuple[str, str, float, float], ...]], ...] = (
    ("BADEN_WUERTTEMBERG", "Baden-Württemberg", 11.1, (
        ("Stuttgart", "70173", 48.7758, 9.1829), ("Mannheim", "68159", 49.4875, 8.4660),
        ("Karlsruhe", "76133", 49.0069, 8.4037), ("Freiburg im Breisgau", "79098", 47.9990, 7.8421),
        ("Tübingen", "72070", 48.5216, 9.0576), ("Ulm", "89073", 48.4011, 9.9876),
        ("Heilbronn", "74072", 49.1427, 9.2109))),
    ("BAYERN", "Bayern", 13.2, (
        ("München", "80331", 48.1351, 11.5820), ("Nürnberg", "90402", 49.4521, 11.0767),
        ("Augsburg", "86150", 48.3705, 10.8978), ("Würzburg", "97070", 49.7913, 9.9534),
        ("Regensburg", "93047", 49.0134, 12.1016), ("Fürth", "90762", 49.4771, 10.9887))),
    ("BERLIN", "Berlin", 3.7, (("Berlin", "10115", 52.5200, 13.4050),)),
    ("BRANDENBURG", "Brandenburg", 2.5, (
        ("Potsdam", "14467", 52.3906, 13.0645), ("Cottbus", "03046", 51.7563, 14.3329),
        ("Frankfurt (Oder)", "15230", 52.3471, 14.5506))),
    ("BREMEN", "Bremen", 0.7, (
        ("Bremen", "28195", 53.0793, 8.8017), ("Bremerhaven", "27568", 53.5396, 8.5809))),
    ("HAMBURG", "Hamburg", 1.9, (("Hamburg", "20095", 53.5511, 9.9937),)),
    ("HESSEN", "Hessen", 6.3, (
        ("Frankfurt am Main", "60311", 50.1109, 8.6821), ("Wiesbaden", "65183", 50.0782, 8.2398),
        ("Kassel", "34117", 51.3127, 9.4797), ("Darmstadt", "64283", 49.8728, 8.6512),
        ("Gießen", "35390", 50.5841, 8.6784))),
    ("MECKLENBURG_VORPOMMERN", "Mecklenburg-Vorpommern", 1.6, (
        ("Rostock", "18055", 54.0924, 12.0991), ("Schwerin", "19053", 53.6355, 11.4012),
        ("Greifswald", "17489", 54.0865, 13.3923))),
    ("NIEDERSACHSEN", "Niedersachsen", 8.0, (
        ("Hannover", "30159", 52.3759, 9.7320), ("Braunschweig", "38100", 52.2689, 10.5268),
        ("Osnabrück", "49074", 52.2799, 8.0472), ("Göttingen", "37073", 51.5413, 9.9158),
        ("Oldenburg", "26122", 53.1435, 8.2146), ("Lüneburg", "21335", 53.2464, 10.4115))),
    ("NORDRHEIN_WESTFALEN", "Nordrhein-Westfalen", 18.0, (
        ("Köln", "50667", 50.9375, 6.9603), ("Düsseldorf", "40213", 51.2277, 6.7735),
        ("Dortmund", "44135", 51.5136, 7.4653), ("Essen", "45127", 51.4556, 7.0116),
        ("Münster", "48143", 51.9607, 7.6261), ("Bielefeld", "33602", 52.0302, 8.5325),
        ("Bonn", "53111", 50.7374, 7.0982), ("Mönchengladbach", "41061", 51.1805, 6.4428))),
    ("RHEINLAND_PFALZ", "Rheinland-Pfalz", 4.1, (
        ("Mainz", "55116", 49.9929, 8.2473), ("Ludwigshafen am Rhein", "67059", 49.4774, 8.4452),
        ("Koblenz", "56068", 50.3569, 7.5890), ("Trier", "54290", 49.7490, 6.6371),
        ("Kaiserslautern", "67655", 49.4401, 7.7491))),
    ("SAARLAND", "Saarland", 1.0, (
        ("Saarbrücken", "66111", 49.2402, 6.9969), ("Neunkirchen", "66538", 49.3447, 7.1797),
        ("Homburg", "66424", 49.3262, 7.3387))),
    ("SACHSEN", "Sachsen", 4.0, (
        ("Leipzig", "04109", 51.3397, 12.3731), ("Dresden", "01067", 51.0504, 13.7373),
        ("Chemnitz", "09111", 50.8278, 12.9214), ("Görlitz", "02826", 51.1528, 14.9873),
        ("Zwickau", "08056", 50.7189, 12.4964))),
    ("SACHSEN_ANHALT", "Sachsen-Anhalt", 2.2, (
        ("Magdeburg", "39104", 52.1205, 11.6276), ("Halle (Saale)", "06108", 51.4825, 11.9697),
        ("Dessau-Roßlau", "06844", 51.8318, 12.2428))),
    ("SCHLESWIG_HOLSTEIN", "Schleswig-Holstein", 2.9, (
        ("Kiel", "24103", 54.3233, 10.1228), ("Lübeck", "23552", 53.8655, 10.6866),
        ("Flensburg", "24937", 54.7937, 9.4470), ("Neumünster", "24534", 54.0714, 9.9900))),
    ("THUERINGEN", "Thüringen", 2.1, (
        ("Erfurt", "99084", 50.9848, 11.0299), ("Jena", "07743", 50.9271, 11.5892),
        ("Gera", "07545", 50.8803, 12.0819), ("Weimar", "99423", 50.9795, 11.3235))),
)
# fmt: on
ABROAD = (("Wien", "1010", 48.2082, 16.3738, "Österreich"), ("Zürich", "8001", 47.3769, 8.5417, "Schweiz"))


@dataclass(frozen=True, slots=True)
class City:
    id: int
    name: str
    postcode: str
    region: str | None  # enum, None abroad
    state: str | None  # display name
    country: str
    lat: float
    lon: float


def _cities() -> tuple[City, ...]:
    out = []
    for enum, display, _w, cities in STATES:
        for name, plz, lat, lon in cities:
            out.append(City(len(out), name, plz, enum, display, "Deutschland", lat, lon))
    for name, plz, lat, lon, country in ABROAD:
        out.append(City(len(out), name, plz, None, None, country, lat, lon))
    return tuple(out)


CITIES = _cities()
DOMESTIC = tuple(c for c in CITIES if c.region)
FOREIGN = tuple(c for c in CITIES if not c.region)
STATE_BY_NAME = {display.casefold(): (enum, display) for enum, display, _w, _c in STATES}
CITY_BY_NAME = {c.name.casefold(): c for c in CITIES}
CITY_BY_POSTCODE = {c.postcode: c for c in CITIES}


def _km(a: City, b: City) -> float:
    """Great-circle distance (haversine)."""
    la1, lo1, la2, lo2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


DISTANCE = [[_km(a, b) for b in CITIES] for a in CITIES]

# ---------------------------------------------------------------- offers, working time

OFFER_TYPES = {1: "ARBEIT", 2: "SELBSTAENDIGKEIT", 4: "AUSBILDUNG", 34: "PRAKTIKUM_TRAINEE"}
_OFFER_CODES, _OFFER_CUM = (1, 4, 34, 2), (0.76, 0.88, 0.96, 1.0)
WORKING_TIME_FIELDS = {
    "vz": "arbeitszeitVollzeit",
    "tz": "arbeitszeitTeilzeitFlexibel",
    "snw": "arbeitszeitSchichtNachtarbeitWochenende",
    "ho": "arbeitszeitHeimTelearbeit",
    "mj": "arbeitszeitMinijob",
}
DIRTY_KINDS = (
    "nul",  # NUL characters (as \u0000 escapes) in title, employer, description
    "invalid_utf8",  # raw bytes that are not UTF-8 in title and description
    "surrogate",  # a lone \ud800 escape in the title
    "huge_description",  # a 1 MB description
    "missing_title",  # no stellenangebotsTitel key
    "invalid_date",  # dates that do not parse
    "bad_coords",  # breite/laenge out of range
    "duplicate",  # the item is listed twice in its page
)
# Hostile items (never given out by Population.generate's round robin; set with make_dirty): what a
# broken or malicious upstream could send, beyond the dirty data above.
HOSTILE_KINDS = (
    "long_refnr",  # a 4,000-character referenznummer (incompressible: CJK characters)
    "deep_nesting",  # a field nested 300 levels deep (orjson parses it; recursion would not)
    "control_title",  # ESC sequences and BEL in the title and employer
    "long_title",  # a 200,000-character title
)
# private-use markers swapped for raw bytes / deep JSON by Population._dump
_BAD_UTF8_MARK, _SURROGATE_MARK, _DEEP_MARK = "\ue000", "\ue001", "\ue002"
_DEEP_JSON = b"[" * 300 + b'{"text":"unten"}' + b"]" * 300

# ---------------------------------------------------------------- occupation names


_GENDER_SUFFIXES = {"in": "", "r": "r", "e": "e", "n": "n", "innen": "", "frau": "mann"}


def _word_forms(token: str) -> tuple[str, str]:
    """One token of a BERUFENET name ('Fachassistent/in', 'Amtliche/r', 'Koch/Köchin') ->
    (masculine, feminine) forms, as job titles write them."""
    if "/" not in token:
        return token, token
    parts = token.split("/")
    head = parts[0]
    if len(parts) == 3 and parts[1] == "e" and parts[2] == "in":  # Agrarbiolog/e/in
        return head + "e", head + "in"
    tail = parts[-1]
    if tail in _GENDER_SUFFIXES:  # Fachassistent/in, Amtliche/r, Kauffrau/mann
        return head + _GENDER_SUFFIXES[tail], head + ("in" if tail == "in" else "")
    if tail[:1].isupper():  # Koch/Köchin, Turkologe/Turkologin
        return head, tail
    if len(parts) >= 2 and parts[1][:1].islower() and len(parts[1]) > 3:  # Amts/anwalt/anwältin
        return head + parts[1], head + parts[-1]
    return head, head


def gender_forms(name: str) -> tuple[str, str]:
    masc, fem = zip(*(_word_forms(t) for t in name.split(" ")), strict=True)
    return " ".join(masc), " ".join(fem)


@dataclass(frozen=True, slots=True)
class Occupation:
    id: int
    name: str  # kurzBezeichnungNeutral, e.g. "Koch/Köchin"
    kldb: str  # 5-digit KldB 2010 code
    berufsfeld: str  # the KldB "Berufshauptgruppe" (2 digits) label: the `berufsfeld` filter value
    masculine: str
    feminine: str

    @property
    def codenr(self) -> str:
        return f"B {self.kldb}-{100 + self.id % 37}"

    @property
    def kldb2010(self) -> str:
        return f"B {self.kldb}"


_GENERIC_STEMS = {
    "berufe",
    "fachkr",
    "helfer",
    "spezia",
    "expert",
    "tätigk",
    "ausger",
    "fachli",
    "sonsti",
    "angest",
    "meiste",
    "aufsic",
    "führun",
    "leiter",
    "ingeni",
    "techni",
    "diplom",
}
_WORD = re.compile(r"[A-Za-zÄÖÜäöüß]{4,}")


def _stems(text: str) -> set[str]:
    return {w.lower()[:6] for w in _WORD.findall(text)} - _GENERIC_STEMS


def _level(name: str) -> str:
    """The KldB 5th digit (1 helper, 2 skilled, 3 specialist, 4 expert) a name suggests."""
    low = name.lower()
    if "helfer" in low:
        return "1"
    if any(
        w in low for w in ("ingenieur", "wissenschaftler", "diplom", "leiter", "direktor", "arzt", "ärztin")
    ):
        return "4"
    if any(w in low for w in ("meister", "techniker", "fachwirt", "betriebswirt")):
        return "3"
    return "2"


class Catalogue:
    """A BERUFENET-like occupation catalogue: real names, stable ids, plausible KldB codes."""

    def __init__(self, occupations: Iterable[Occupation], kldb_labels: dict[str, str]) -> None:
        self.occupations = tuple(sorted(occupations, key=lambda o: o.id))
        self.by_id = {o.id: o for o in self.occupations}
        self.kldb_labels = kldb_labels  # code (2..5 digits) -> de_short label
        self.by_kldb: dict[str, list[Occupation]] = {}
        for o in self.occupations:
            self.by_kldb.setdefault(o.kldb, []).append(o)

    def __len__(self) -> int:
        return len(self.occupations)

    @classmethod
    def from_berufenet_file(cls, path: str | Path) -> Catalogue:
        """A catalogue from saved BERUFENET detail objects (a JSON list, e.g. the shipped test
        catalogue lib/jobpipe/data/berufenet_test_catalogue.json), so postings use its names."""
        labels = _load_catalogue(1).kldb_labels
        occs = []
        for d in json.loads(Path(path).read_text(encoding="utf-8")):
            code = "".join(ch for ch in str(d.get("kldb2010", "")) if ch.isdigit())[:5] or "00000"
            masc, fem = gender_forms(d["kurzBezeichnungNeutral"])
            occs.append(
                Occupation(
                    id=int(d["id"]),
                    name=d["kurzBezeichnungNeutral"],
                    kldb=code,
                    berufsfeld=labels.get(code[:2], "Sonstige"),
                    masculine=masc,
                    feminine=fem,
                )
            )
        return cls(occs, labels)

    @classmethod
    def load(cls, size: int | None = None) -> Catalogue:
        """All unique names (size None) or an evenly spread, stable subset of `size` of them.

        An occupation's id depends only on its name's place in the sorted full list, so a
        subset keeps the ids of the full catalogue.
        """
        return _load_catalogue(size)


@functools.lru_cache(maxsize=8)
def _load_catalogue(size: int | None) -> Catalogue:
    labels: dict[str, str] = {}
    long_labels: dict[str, str] = {}
    with KLDB_FILE.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["labelStyle"] == "de_short":
                labels[row["Concept"]] = row["prefLabel"]
            elif row["labelStyle"] == "de_long":
                long_labels[row["Concept"]] = row["prefLabel"]
    codes5 = sorted(c for c in labels if len(c) == 5)
    index: dict[str, list[str]] = {}
    for code in codes5:
        for stem in _stems(labels[code] + " " + long_labels.get(code, "")):
            index.setdefault(stem, []).append(code)
    names = sorted(
        {line.strip() for line in NAMES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()}
    )
    chosen = (
        range(len(names))
        if size is None or size >= len(names)
        else (i * len(names) // size for i in range(size))
    )
    occupations = []
    for i in chosen:
        name = names[i]
        # Rare shared word stems count more (IDF), so "Glashüttentechniker" lands near glass,
        # not near every "...techniker".
        scores: dict[str, float] = {}
        for stem in _stems(name):
            codes = index.get(stem, ())
            weight = math.log(len(codes5) / (1 + len(codes))) if codes else 0.0
            for code in codes:
                scores[code] = scores.get(code, 0.0) + weight
        level = _level(name)
        if scores:
            best = max(scores.items(), key=lambda kv: (kv[1], kv[0][-1] == level, kv[0]))[0]
            same_level = best[:4] + level
            code = same_level if same_level in labels else best
        else:
            code = codes5[zlib.crc32(name.encode()) % len(codes5)]
        masc, fem = gender_forms(name)
        occupations.append(
            Occupation(
                id=10_000 + 7 * i,
                name=name,
                kldb=code,
                berufsfeld=labels.get(code[:2], "Sonstige"),
                masculine=masc,
                feminine=fem,
            )
        )
    return Catalogue(occupations, labels)


# ---------------------------------------------------------------- text pools

# fmt: off
SURNAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
    "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann",
    "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner", "Krause", "Meier", "Lehmann",
    "Schmid", "Schulze", "Maier", "Köhler", "Herrmann", "König", "Walter", "Mayer", "Huber", "Kaiser",
    "Fuchs", "Peters", "Lang", "Scholz", "Möller", "Weiß", "Jung", "Hahn", "Schubert", "Vogel", "Friedrich",
    "Keller", "Günther", "Frank", "Berger", "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke",
    "Albrecht", "Schuster", "Simon", "Ludwig", "Böhm", "Winter", "Kraus", "Martin", "Schumacher", "Krämer",
    "Vogt", "Stein", "Jäger", "Otto", "Sommer", "Groß", "Seidel", "Heinrich", "Brandt", "Haas", "Schreiber",
    "Graf", "Dietrich", "Ziegler", "Kühn", "Pohl", "Engel",
)
EMPLOYER_FORMS = (
    "{s} GmbH", "{s} & {t} GmbH & Co. KG", "{s} Bau GmbH", "Bäckerei {s}", "Autohaus {s} GmbH",
    "Stadtwerke {c}", "Klinikum {c}", "{s} Personalservice GmbH", "{s} IT-Solutions AG", "Pflegedienst {s}",
    "Hotel {s}hof", "Gemeinde {c}", "{s} Logistik GmbH", "Elektro {s} e.K.", "Praxis Dr. {s}",
    "{s} Maschinenbau GmbH", "Steuerberatung {s} & Partner", "Landhandel {s} eG", "Spedition {s}",
)
TEMP_AGENCY_FORMS = ("{s} Personalservice GmbH",)
STREETS = (
    "Hauptstraße", "Bahnhofstraße", "Schulstraße", "Gartenstraße", "Dorfstraße", "Lindenstraße",
    "Bergstraße", "Kirchstraße", "Waldstraße", "Ringstraße", "Mühlenweg", "Industriestraße", "Am Marktplatz",
    "Goethestraße", "Schillerstraße", "Friedrich-Ebert-Straße", "Königsallee", "Türkenstraße",
    "Große Straße", "Ölmühlenweg", "Straße des 17. Juni", "Äußere Sulzbacher Straße",
)
GENDER_TAGS = (("(m/w/d)", 0.55), ("(w/m/d)", 0.1), ("m/w/d", 0.05), ("(m/w/x)", 0.03), ("(gn)", 0.02),
               ("(d/m/w)", 0.03), ("", 0.22))
# fmt: on
TASKS = (
    "Sie übernehmen eigenverantwortlich alle anfallenden Aufgaben als {occ}",
    "Planung, Vorbereitung und Durchführung der täglichen Arbeitsabläufe",
    "Enge Zusammenarbeit mit Kolleginnen und Kollegen aus anderen Abteilungen",
    "Dokumentation und Qualitätssicherung nach unseren Standards",
    "Betreuung unserer Kundinnen und Kunden vor Ort in {city}",
    "Pflege und Wartung von Geräten, Anlagen und Arbeitsmitteln",
    "Mitarbeit bei der Einarbeitung neuer Teammitglieder",
    "Einhaltung der Vorschriften zu Arbeitssicherheit und Hygiene",
)
PROFILE = (
    "Abgeschlossene Ausbildung als {occ} oder eine vergleichbare Qualifikation",
    "Erste Berufserfahrung wünschenswert, Quereinsteiger willkommen",
    "Führerschein Klasse B",
    "Gute Deutschkenntnisse in Wort und Schrift (mind. B2)",
    "Zuverlässigkeit, Teamfähigkeit und Freude an der Arbeit",
    "Sicherer Umgang mit MS Office und gängiger Software",
)
BENEFITS = (
    "Unbefristeter Arbeitsvertrag und pünktliche Bezahlung",
    "30 Tage Urlaub und Weihnachtsgeld",
    "Betriebliche Altersvorsorge und vermögenswirksame Leistungen",
    "Zuschuss zum Deutschlandticket oder ein JobRad",
    "Flexible Arbeitszeiten und die Möglichkeit zum mobilen Arbeiten",
    "Regelmäßige Fort- und Weiterbildungen",
)

# ---------------------------------------------------------------- postings


class FakePosting:
    """One posting of the population (mutable: the population modifies and expires them)."""

    __slots__ = (
        "dirty",
        "employer",
        "entry",
        "expired",
        "external_url",
        "extra_occs",
        "facet_keys",
        "first_published",
        "homeoffice",
        "idx",
        "locs",
        "modified",
        "occ",
        "offer",
        "partner",
        "published",
        "refnr",
        "regions",
        "salary",
        "search_text",
        "seed",
        "temp_agency",
        "temporary",
        "title",
        "worktime",
    )

    idx: int
    refnr: str
    occ: Occupation
    extra_occs: tuple[Occupation, ...]
    title: str
    employer: str
    offer: int
    locs: tuple[City, ...]  # street, house number and coordinates derive from seed (memory)
    regions: tuple[str, ...]  # region enums of the locations (for the fast `wo` state filter)
    published: date
    first_published: date
    modified: datetime
    entry: date | None
    external_url: str | None
    partner: str | None
    homeoffice: bool
    worktime: tuple[str, ...]
    temporary: bool  # befristet
    temp_agency: bool  # Zeitarbeit / Arbeitnehmerüberlassung
    salary: tuple[int, int] | None
    expired: bool
    dirty: str | None
    seed: int
    facet_keys: tuple[str, ...]
    search_text: str


_FACET_KEYS: dict[str, str] = {}


def _facet_keys(p: FakePosting) -> tuple[str, ...]:
    """ "name\x1fvalue" strings, one per facet value the posting counts towards (shared, not copied)."""
    keys = [
        f"angebotsart\x1f{p.offer}",
        f"berufsfeld\x1f{p.occ.berufsfeld}",
        f"befristung\x1f{1 if p.temporary else 2}",
    ]
    keys += [f"arbeitszeit\x1f{w}" for w in p.worktime]
    keys += dict.fromkeys(f"arbeitsort\x1f{c.name}" for c in p.locs)
    keys += dict.fromkeys(f"bundesland\x1f{c.state}" for c in p.locs if c.state)
    return tuple(_FACET_KEYS.setdefault(k, k) for k in keys)


def _mangle(rng: random.Random, word: str) -> str:
    """A typo as real titles carry them: swapped, dropped or doubled letters."""
    if len(word) < 5:
        return word
    i = rng.randrange(1, len(word) - 2)
    kind = rng.random()
    if kind < 0.4:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind < 0.7:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def make_title(rng: random.Random, occ: Occupation, offer: int, city: City) -> str:
    """A posting title from an occupation name plus the noise real titles carry."""
    r = rng.random()
    gender = rng.choices(GENDER_TAGS, cum_weights=_GENDER_CUM)[0][0]
    if offer == 4:
        base = rng.choice(
            (
                f"Ausbildung zum {occ.masculine} / zur {occ.feminine}",
                f"Ausbildung {occ.name}",
                f"Ausbildung als {occ.masculine} {gender or '(m/w/d)'} {rng.choice(('2026', '2027'))}",
                f"Duales Studium {occ.masculine}",
            )
        )
        title = base
    elif offer == 34:
        title = f"{rng.choice(('Praktikum', 'Trainee', 'Praktikant'))} {occ.masculine} {gender}"
    else:
        if r < 0.18:
            core = occ.name  # the neutral "Koch/Köchin" form
            gender = "" if rng.random() < 0.5 else gender
        elif r < 0.25:
            core = occ.feminine
        else:
            core = occ.masculine
        prefix = rng.choices(
            ("", "Senior ", "Junior ", "Stellvertretender ", "Erfahrener "),
            cum_weights=(0.86, 0.91, 0.94, 0.96, 1.0),
        )[0]
        title = f"{prefix}{core} {gender}"
        s = rng.random()
        if s < 0.1:
            title += " in Vollzeit"
        elif s < 0.15:
            title += " - Teilzeit"
        elif s < 0.27:
            title += f" in {city.name}"
        elif s < 0.30:
            title += f" für unseren Standort {city.name}"
        elif s < 0.34:
            title += " ab sofort"
        elif s < 0.37:
            title += " – unbefristet"
    if rng.random() < 0.03:
        words = title.split(" ")
        k = rng.randrange(len(words))
        words[k] = _mangle(rng, words[k])
        title = " ".join(words)
    if rng.random() < 0.015:
        title = title.upper()
    return " ".join(title.split())


_GENDER_CUM = tuple(itertools.accumulate(w for _t, w in GENDER_TAGS))
_STATE_CUM = tuple(itertools.accumulate(w for _e, _d, w, _c in STATES))
_STATE_CITIES = tuple(tuple(c for c in DOMESTIC if c.region == enum) for enum, _d, _w, _c in STATES)
_REFNR_MOD, _REFNR_MUL = 999_999_937, 2_654_435_761  # a prime modulus: the mapping is a bijection
_DECIMAL_PREFIXES = ("10000", "10001", "11000", "13587", "14449")


def _refnr(n: int, seed: int) -> str:
    num = (n * _REFNR_MUL + seed * 104_729) % _REFNR_MOD
    if n % 10 == 7:
        return f"12265-{num:x}-S"  # lowercase hex, as some partner referenznummern are
    return f"{_DECIMAL_PREFIXES[n % len(_DECIMAL_PREFIXES)]}-{1_000_000_000 + num}-S"


def _dt_text(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds")


class Population:
    """The postings a fake BA serves. Thread-safe; mutable at runtime (expire, modify, add).

    Search results (filtered, ordered by publication date descending, then creation order)
    and their facet counts are cached per query until the population changes; the JSON of
    every item is cached per posting until that posting changes.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        seed: int,
        today: date,
        options: dict[str, float],
        cache_items: bool = True,
    ) -> None:
        self.catalogue = catalogue
        self.seed = seed
        self._today = today
        self.options = options
        self.cache_items = cache_items
        self.postings: list[FakePosting] = []
        self.by_refnr: dict[str, FakePosting] = {}
        self._item_json: list[bytes | None] = []
        self._lock = threading.RLock()
        self._version = 0
        self._order: list[int] | None = None
        self._results: dict[tuple[Any, ...], Any] = {}
        self._rng = random.Random(seed)
        self.label_share = 1.0  # share of postings with a hauptberuf (see item_dict)
        self._employers: list[tuple[str, City, bool]] = []
        self._occ_cum: list[float] = []

    # ------------------------------------------------------------ generation

    @classmethod
    def generate(
        cls,
        n: int,
        seed: int = 0,
        *,
        expired_share: float = 0.05,
        partner_share: float = 0.08,
        salary_share: float = 0.3,
        multi_location_share: float = 0.12,
        dirty_share: float = 0.0,
        abroad_share: float = 0.0,
        occupations: int | None = None,
        today: date | None = None,
        catalogue: Catalogue | None = None,
        cache_items: bool = True,
    ) -> Population:
        """`n` postings, deterministic for a given seed and options.

        expired_share: detail answers 404 STELLENANGEBOT_NICHT_GEFUNDEN, absent from search.
        partner_share: `externeURL` set and no description. dirty_share: postings carrying one
        of DIRTY_KINDS each (round robin). abroad_share: a location outside Germany (no region).
        occupations: catalogue size (None = all names).
        """
        options = {
            "expired_share": expired_share,
            "partner_share": partner_share,
            "salary_share": salary_share,
            "multi_location_share": multi_location_share,
            "dirty_share": dirty_share,
            "abroad_share": abroad_share,
        }
        pop = cls(catalogue or Catalogue.load(occupations), seed, today or date.today(), options, cache_items)
        pop._setup_generators(n)
        pop._append(n)
        return pop

    def _setup_generators(self, n: int) -> None:
        rng = self._rng
        # A few occupations are in high demand, most are rare (as in the real market).
        self._occ_cum = list(itertools.accumulate(1.0 / (1 + i) ** 0.8 for i in range(len(self.catalogue))))
        self._occ_perm = list(self.catalogue.occupations)
        rng.shuffle(self._occ_perm)
        for k in range(max(50, n // 20)):
            form = rng.choice(EMPLOYER_FORMS)
            home = self._pick_city(rng)
            name = form.format(s=rng.choice(SURNAMES), t=rng.choice(SURNAMES), c=home.name)
            if k % 7 == 0:
                name = name.replace(" GmbH", f" {home.name} GmbH", 1)
            self._employers.append((name, home, form in TEMP_AGENCY_FORMS))
        self._emp_cum = list(itertools.accumulate(1.0 / (1 + i) ** 0.6 for i in range(len(self._employers))))

    def _pick_city(self, rng: random.Random) -> City:
        state = bisect.bisect_left(_STATE_CUM, rng.random() * _STATE_CUM[-1])
        return rng.choice(_STATE_CITIES[state])

    def _append(self, n: int, published: date | None = None) -> list[str]:
        rng, opts, today = self._rng, self.options, self._today
        occ_perm, occ_cum, occ_total = self._occ_perm, self._occ_cum, self._occ_cum[-1]
        employers, emp_cum, emp_total = self._employers, self._emp_cum, self._emp_cum[-1]
        rand, randrange, choice = rng.random, rng.randrange, rng.choice
        start = len(self.postings)
        dirty_every = int(1 / opts["dirty_share"]) if opts["dirty_share"] > 0 else 0
        new = []
        for k in range(start, start + n):
            p = FakePosting()
            p.idx = k
            p.refnr = _refnr(k, self.seed)
            p.seed = (self.seed * 1_000_003 + k) & 0xFFFFFFFF
            p.occ = occ = occ_perm[bisect.bisect_left(occ_cum, rand() * occ_total)]
            siblings = self.catalogue.by_kldb.get(occ.kldb, ())
            p.extra_occs = tuple(o for o in siblings[:3] if o is not occ) if rand() < 0.3 else ()
            name, home, agency = employers[bisect.bisect_left(emp_cum, rand() * emp_total)]
            p.employer, p.temp_agency = name, agency
            first = home if rand() < 0.7 else self._pick_city(rng)
            if opts["abroad_share"] and rand() < opts["abroad_share"]:
                first = choice(FOREIGN)
            cities = [first]
            if rand() < opts["multi_location_share"]:
                for _ in range(1 if rand() < 0.7 else 2):
                    c = self._pick_city(rng)
                    if c not in cities:
                        cities.append(c)
            p.locs = tuple(cities)
            p.regions = tuple(c.region for c in cities if c.region)
            r = rand()
            p.offer = 1 if r < 0.76 else 4 if r < 0.88 else 34 if r < 0.96 else 2
            p.title = make_title(rng, occ, p.offer, first)
            age = 0 if published is not None else int(rand() * rand() * 120)
            p.published = published or today - timedelta(days=age)
            p.first_published = (
                p.published - timedelta(days=int(rand() * 30)) if rand() < 0.2 else p.published
            )
            p.modified = datetime.combine(p.published, time(6)) + timedelta(
                seconds=int(rand() * 50_000), milliseconds=randrange(1000)
            )
            p.entry = p.published + timedelta(days=randrange(0, 60)) if rand() < 0.8 else None
            p.partner = None
            p.external_url = None
            if rand() < opts["partner_share"]:
                p.partner = choice(("StepStone", "Indeed", "Jobware", "meinestadt.de"))
                p.external_url = (
                    f"https://jobs.{p.partner.lower().replace('.', '-')}.example/stelle/{p.seed:x}"
                )
            p.homeoffice = rand() < 0.18
            wt = ["vz"] if rand() < 0.72 else ["tz"]
            if wt[0] == "vz" and rand() < 0.3:
                wt.append("tz")
            if rand() < 0.1:
                wt.append("snw")
            if p.homeoffice and rand() < 0.5:
                wt.append("ho")
            if rand() < 0.04:
                wt.append("mj")
            p.worktime = tuple(wt)
            p.temporary = rand() < 0.25
            if rand() < opts["salary_share"]:
                low = 2000 + 100 * randrange(0, 40)
                p.salary = (low, low + 100 * randrange(2, 15))
            else:
                p.salary = None
            p.expired = rand() < opts["expired_share"]
            p.dirty = (
                DIRTY_KINDS[(k // dirty_every) % len(DIRTY_KINDS)]
                if dirty_every and k % dirty_every == 0
                else None
            )
            p.facet_keys = _facet_keys(p)
            p.search_text = ""
            self.postings.append(p)
            self.by_refnr[p.refnr] = p
            self._item_json.append(None)
            new.append(p.refnr)
        return new

    # ------------------------------------------------------------ inspection and mutation

    def __len__(self) -> int:
        return len(self.postings)

    @property
    def today(self) -> date:
        return self._today

    @today.setter
    def today(self, value: date) -> None:
        with self._lock:
            self._today = value
            self._changed()

    def get(self, refnr: str) -> FakePosting | None:
        return self.by_refnr.get(refnr)

    def refnrs(self, active: bool | None = None) -> list[str]:
        """All referenznummern in creation order; active=True/False: only live/expired ones."""
        with self._lock:
            return [p.refnr for p in self.postings if active is None or p.expired != active]

    def expire(self, refnrs: Iterable[str]) -> None:
        """The postings expire: gone from search, details answer 404 STELLENANGEBOT_NICHT_GEFUNDEN."""
        with self._lock:
            for r in refnrs:
                self.by_refnr[r].expired = True
            self._changed()

    def expire_share(self, share: float, seed: int = 0) -> list[str]:
        """Expire a random share of the live postings; returns their referenznummern."""
        with self._lock:
            live = [p.refnr for p in self.postings if not p.expired]
            chosen = random.Random(seed).sample(live, round(len(live) * share))
            self.expire(chosen)
            return chosen

    def modify(
        self, refnr: str, *, title: str | None = None, modified_at: datetime | None = None
    ) -> datetime:
        """Change a posting: bump aenderungsdatum (default +1 hour), optionally a new title."""
        with self._lock:
            p = self.by_refnr[refnr]
            p.modified = modified_at or p.modified + timedelta(hours=1)
            if title is not None:
                p.title = title
                p.search_text = ""
            self._item_json[p.idx] = None
            self._changed()
            return p.modified

    def make_dirty(self, refnr: str, kind: str | None) -> None:
        """Give a posting one of DIRTY_KINDS (or None: clean again)."""
        if kind is not None and kind not in DIRTY_KINDS + HOSTILE_KINDS:
            raise ValueError(f"unknown dirty kind {kind!r}; one of {DIRTY_KINDS + HOSTILE_KINDS}")
        with self._lock:
            p = self.by_refnr[refnr]
            p.dirty = kind
            self._item_json[p.idx] = None
            self._changed()

    def add(self, n: int, *, published: date | None = None) -> list[str]:
        """New postings (published today unless told); returns their referenznummern."""
        with self._lock:
            if not self._occ_cum:
                self._setup_generators(n)
            new = self._append(n, published or self._today)
            self._changed()
            return new

    def _changed(self) -> None:
        self._version += 1
        self._order = None
        self._results.clear()

    # ------------------------------------------------------------ serialisation

    def item_dict(self, p: FakePosting) -> dict[str, Any]:
        """The v6 search item of a posting (no description: search items carry none)."""
        occ = p.occ
        item: dict[str, Any] = {
            "referenznummer": p.refnr,
            "stellenangebotsTitel": p.title,
            "stellenangebotsart": OFFER_TYPES[p.offer],
            "firma": p.employer,
            "alleBerufe": [occ.name, *(o.name for o in p.extra_occs)],
            "stellenlokationen": [self._location(p, n, c) for n, c in enumerate(p.locs)],
            "veroeffentlichungszeitraum": {"von": p.published.isoformat()},
            "datumErsteVeroeffentlichung": p.first_published.isoformat(),
            "aenderungsdatum": _dt_text(p.modified),
            "homeofficemoeglich": p.homeoffice,
            "vertragsdauer": "BEFRISTET" if p.temporary else "UNBEFRISTET",
            "arbeitgeberKundennummerHash": f"{zlib.crc32(p.employer.encode()):08x}{p.occ.id:06x}",
        }
        # Real postings mostly carry their label; a share without one exercises classification by title.
        if self.label_share >= 1.0 or zlib.crc32(p.refnr.encode()) % 1000 < self.label_share * 1000:
            item["hauptberuf"] = occ.name
        if p.extra_occs:
            item["weitereBerufe"] = [o.name for o in p.extra_occs]
        if p.entry:
            item["eintrittszeitraum"] = {"von": p.entry.isoformat()}
        if p.external_url:
            item["externeURL"] = p.external_url
        if p.homeoffice:
            item["homeofficetyp"] = "TEILWEISE"
        for w in p.worktime:
            item[WORKING_TIME_FIELDS[w]] = True
        if p.salary:
            item["verguetungsangabe"] = "GEHALTSSPANNE"
            item["gehaltsspanneVon"], item["gehaltsspanneBis"] = p.salary
        else:
            item["verguetungsangabe"] = "KEINE_ANGABEN"
        self._dirty_fields(p, item)
        return item

    @staticmethod
    def _location(p: FakePosting, n: int, c: City) -> dict[str, Any]:
        h = zlib.crc32(f"{p.seed}/{n}".encode())
        address = {
            "strasse": STREETS[h % len(STREETS)],
            "hausnummer": str(1 + (h >> 8) % 180),
            "plz": c.postcode,
            "ort": c.name,
        }
        if c.region:
            address["region"] = c.region
        address["land"] = c.country
        lat = round(c.lat + ((h >> 12) % 1000 / 1000 - 0.5) * 0.04, 6)
        lon = round(c.lon + ((h >> 22) % 1000 / 1000 - 0.5) * 0.06, 6)
        return {"adresse": address, "breite": lat, "laenge": lon}

    def _dirty_fields(self, p: FakePosting, item: dict[str, Any]) -> None:
        kind = p.dirty
        if kind == "nul":
            item["stellenangebotsTitel"] = p.title.replace(" ", " \x00", 1)
            item["firma"] = "\x00" + p.employer
        elif kind == "invalid_utf8":
            item["stellenangebotsTitel"] = p.title + " " + _BAD_UTF8_MARK
        elif kind == "surrogate":
            item["stellenangebotsTitel"] = _SURROGATE_MARK + p.title
        elif kind == "missing_title":
            del item["stellenangebotsTitel"]
        elif kind == "invalid_date":
            item["datumErsteVeroeffentlichung"] = "2026-13-45"
            item["aenderungsdatum"] = "gestern"
            item["veroeffentlichungszeitraum"] = {"von": "31.02.2026"}
        elif kind == "bad_coords":
            item["stellenlokationen"][0]["breite"] = 123.4
            item["stellenlokationen"][0]["laenge"] = -999.0
        elif kind == "long_refnr":
            rng = random.Random(p.seed)
            tail = "".join(chr(0x4E00 + rng.randrange(20000)) for _ in range(4000))
            item["referenznummer"] = p.refnr + tail
        elif kind == "deep_nesting":
            item["arbeitgeberdarstellung"] = _DEEP_MARK  # orjson cannot write it: _dump splices it in
        elif kind == "control_title":
            item["stellenangebotsTitel"] = "\x1b[31mKoch\x1b[0m\x07 (m/w/d)\x1b]0;pwned\x07"
            item["firma"] = "\x1b[2J" + p.employer
        elif kind == "long_title":
            item["stellenangebotsTitel"] = p.title + " " + "Fachkraft " * 20_000

    @staticmethod
    def _dump(value: Any) -> bytes:
        # Copied: orjson over-allocates its output buffer, and 100,000 cached results would keep
        # ~8 KB each of heap holes (1 GB instead of 100 MB).
        body = bytes(bytearray(orjson.dumps(value)))
        # Markers become bytes no JSON serialiser would write: invalid UTF-8, a lone surrogate.
        if b"\xee\x80\x80" in body:
            body = body.replace(b"\xee\x80\x80", b"\xff\xfe")
        if b"\xee\x80\x81" in body:
            body = body.replace(b"\xee\x80\x81", b"\\ud800")
        if b"\xee\x80\x82" in body:
            body = body.replace(b'"\xee\x80\x82"', _DEEP_JSON)
        return body

    def item_json(self, p: FakePosting) -> bytes:
        cached = self._item_json[p.idx]
        if cached is None:
            cached = self._dump(self.item_dict(p))
            if self.cache_items:
                self._item_json[p.idx] = cached
        return cached

    def description(self, p: FakePosting) -> str:
        """A deterministic description: paragraphs, **bold** headings, '- ' bullets, dates."""
        rng = random.Random(p.seed)
        city = p.locs[0].name
        occ = p.occ.masculine
        start = (p.entry or p.published + timedelta(days=14)).strftime("%d.%m.%Y")
        lines = [
            f"Die {p.employer} sucht zum {start} eine/n {p.occ.name} für unseren Standort in {city}.",
            "",
            "**Ihre Aufgaben:**",
            *(f"- {t.format(occ=occ, city=city)}" for t in rng.sample(TASKS, 4)),
            "",
            "**Ihr Profil:**",
            *(f"-   {t.format(occ=p.occ.name)}  " for t in rng.sample(PROFILE, 3)),
            "",
            "**Wir bieten:**",
            *(f"- {t}" for t in rng.sample(BENEFITS, 3)),
            "",
            "",
            f"Bewerbungen bitte bis zum {(p.published + timedelta(days=42)).strftime('%d.%m.%Y')} "
            f"über unser Karriereportal oder per E-Mail.\tWir freuen uns auf Sie!",
        ]
        text = "\n".join(lines)
        if p.dirty == "huge_description":
            text = (text + "\n\n") * (1_048_576 // (len(text) + 2) + 1)
        elif p.dirty == "nul":
            text = text.replace("\n", "\x00\n", 2)
        elif p.dirty == "invalid_utf8":
            text = text.replace("**Ihr Profil:**", f"**Ihr Profil:** {_BAD_UTF8_MARK}")
        return text

    def details_dict(self, p: FakePosting) -> dict[str, Any]:
        item = self.item_dict(p)
        if p.external_url is None:
            item["stellenangebotsBeschreibung"] = self.description(p)
        else:
            item["allianzpartnerName"] = p.partner
            item["allianzpartnerUrl"] = p.external_url.split("/stelle/")[0]
        item["istArbeitnehmerUeberlassung"] = p.temp_agency
        item["istPrivateArbeitsvermittlung"] = False
        item["geforderterBildungsabschluss"] = "KEINE_ANGABE" if p.offer == 4 else "ABGESCHLOSSENE_AUSBILDUNG"
        return item

    def details_json(self, p: FakePosting) -> bytes:
        return self._dump(self.details_dict(p))

    # ------------------------------------------------------------ search

    def order(self) -> list[int]:
        """Live postings, newest publication first, then creation order (stable)."""
        with self._lock:
            if self._order is None:
                live = [p for p in self.postings if not p.expired]
                live.sort(key=lambda p: (-p.published.toordinal(), p.idx))
                self._order = [p.idx for p in live]
            return self._order

    def search(self, filters: dict[str, Any]) -> SearchResult:
        """Postings matching validated filters (see FakeBA), cached until the population changes."""
        key = tuple(sorted(filters.items()))
        with self._lock:
            hit = self._results.get(key)
            if hit is not None:
                return hit
            result = self._search(filters)
            if len(self._results) > 512:
                self._results.clear()
            self._results[key] = result
            return result

    def _search(self, f: dict[str, Any]) -> SearchResult:
        postings = self.postings
        sel = [postings[i] for i in self.order()]
        wo_output = None
        distances: dict[int, int] | None = None
        if "wo" in f:
            sel, wo_output, distances = self._filter_place(sel, f["wo"], f.get("umkreis"))
        if "angebotsart" in f:
            sel = [p for p in sel if p.offer == f["angebotsart"]]
        if "berufsfeld" in f:
            sel = [p for p in sel if p.occ.berufsfeld == f["berufsfeld"]]
        if "arbeitgeber" in f:
            sel = [p for p in sel if p.employer == f["arbeitgeber"]]
        if "veroeffentlichtseit" in f:
            since = self._today - timedelta(days=f["veroeffentlichtseit"])
            sel = [p for p in sel if p.published >= since]
        if "arbeitszeit" in f:
            wanted = set(f["arbeitszeit"])
            sel = [p for p in sel if wanted.intersection(p.worktime)]
        if "befristung" in f:
            wanted_temp = {c == 1 for c in f["befristung"]}
            sel = [p for p in sel if p.temporary in wanted_temp]
        if "zeitarbeit" in f:
            sel = [p for p in sel if p.temp_agency == f["zeitarbeit"]]
        if "homeoffice" in f:
            sel = [p for p in sel if p.homeoffice]
        if "was" in f:
            needle = f["was"].casefold()
            out = []
            for p in sel:
                if not p.search_text:
                    p.search_text = f"{p.title} {p.occ.name} {p.employer}".casefold()
                if needle in p.search_text:
                    out.append(p)
            sel = out
        counts: dict[str, Counter[str]] = {}
        for key, value in Counter(itertools.chain.from_iterable(p.facet_keys for p in sel)).items():
            name, _, facet_value = key.partition("\x1f")
            counts.setdefault(name, Counter())[facet_value] = value
        facets = {
            name: {"counts": dict(c.most_common()), "maxCount": max(c.values())}
            for name, c in sorted(counts.items())
        }
        return SearchResult([p.idx for p in sel], facets, wo_output, distances)

    def _filter_place(
        self, sel: list[FakePosting], wo: str, radius: int | None
    ) -> tuple[list[FakePosting], dict[str, Any], dict[int, int] | None]:
        key = wo.strip().casefold()
        if key in STATE_BY_NAME:
            enum, display = STATE_BY_NAME[key]
            out = [p for p in sel if enum in p.regions]
            return out, {"bereinigterOrt": display, "suchmodus": "BUNDESLANDSUCHE"}, None
        center = CITY_BY_NAME.get(key) or CITY_BY_POSTCODE.get(key)
        if center is None:
            return [], {"bereinigterOrt": wo, "suchmodus": "UNGUELTIG"}, None
        limit = 25 if radius is None else radius
        row = DISTANCE[center.id]
        out, distances = [], {}
        for p in sel:
            d = min(row[c.id] for c in p.locs)
            if d <= limit:
                out.append(p)
                distances[p.idx] = round(d)
        wo_output = {
            "bereinigterOrt": center.name,
            "suchmodus": "UMKREISSUCHE",
            "koordinaten": [{"lat": center.lat, "lon": center.lon}],
        }
        return out, wo_output, distances


@dataclass(slots=True)
class SearchResult:
    indices: list[int]  # posting idx, in result order
    facets: dict[str, Any]
    wo_output: dict[str, Any] | None
    distances: dict[int, int] | None  # idx -> entfernung (km), only for place searches
    facets_json: bytes | None = None

    def facet_bytes(self) -> bytes:
        if self.facets_json is None:
            self.facets_json = orjson.dumps(self.facets)
        return self.facets_json
