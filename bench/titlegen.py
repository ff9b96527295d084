"""Realistic German posting titles from BERUFENET names, for the classifier benchmarks and the
labelled title set (bench/data/labelled_titles.csv).

A title is an occupation's masculine, feminine or neutral name plus the noise real postings carry:
gender markers, employment type, places, seniority, typos, capitals, domain qualifiers that are
not noise ("Intensivstation", "Nahverkehr"), abbreviations and trade names ("MFA", "LKW-Fahrer").
Everything is seeded; the same seed gives the same titles in every run.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobpipe.titles import gender_forms  # noqa: E402

GENDER = ("(m/w/d)", "(w/m/d)", "(m/w/x)", "m/w/d", "(all genders)", "(d/m/w)", "(m/f/d)", "(gn)", "")
GENDER_WEIGHTS = (40, 12, 2, 6, 3, 2, 2, 1, 12)
CITIES = (
    "Berlin",
    "Hamburg",
    "München",
    "Köln",
    "Frankfurt am Main",
    "Stuttgart",
    "Düsseldorf",
    "Leipzig",
    "Dortmund",
    "Essen",
    "Bremen",
    "Dresden",
    "Hannover",
    "Nürnberg",
    "Duisburg",
    "Bochum",
    "Bielefeld",
    "Bonn",
    "Mannheim",
    "Karlsruhe",
    "Augsburg",
    "Wiesbaden",
    "Kiel",
    "Magdeburg",
    "Freiburg",
    "Rostock",
    "Kassel",
    "Potsdam",
    "Erfurt",
    "Mainz",
    "Regensburg",
    "Ulm",
    "Würzburg",
    "Osnabrück",
    "Heilbronn",
)
EMPLOYMENT = (
    "in Vollzeit",
    "in Teilzeit",
    "Vollzeit",
    "Teilzeit",
    "Voll- oder Teilzeit",
    "VZ/TZ",
    "ab sofort",
    "unbefristet",
    "befristet",
    "auf Minijob-Basis",
    "in Festanstellung",
    "zum nächstmöglichen Zeitpunkt",
)
SENIORITY = ("Senior", "Junior", "Erfahrener", "Sr.")
# Words that are part of the job, not noise: they keep a title from matching a name exactly.
QUALIFIERS = (
    "Frühschicht",
    "Nachtschicht",
    "mit Führerschein Klasse B",
    "Springer",
    "im Außendienst",
    "Instandhaltung",
    "Montage",
    "Kundendienst",
    "Neubau",
    "Projektgeschäft",
    "Produktion",
    "Logistikzentrum",
    "Filiale",
    "Qualitätssicherung",
    "Großküche",
    "Klinikum",
    "Praxis",
    "Kanzlei",
    "Werkstatt",
    "Baustelle",
)

# Abbreviations, trade names and common job-market names -> the BERUFENET name they mean.
TRADE_NAMES: tuple[tuple[str, str], ...] = (
    ("LKW-Fahrer", "Berufskraftfahrer/in"),
    ("LKW-Fahrerin", "Berufskraftfahrer/in"),
    ("Kraftfahrer CE", "Berufskraftfahrer/in"),
    ("Berufskraftfahrer CE Fernverkehr", "Berufskraftfahrer/in"),
    ("Fahrer Nahverkehr 7,5 t", "Berufskraftfahrer/in"),
    ("Sattelzugfahrer", "Berufskraftfahrer/in"),
    ("MFA", "Medizinische/r Fachangestellte/r"),
    ("MFA Hausarztpraxis", "Medizinische/r Fachangestellte/r"),
    ("Arzthelferin Praxis", "Medizinische/r Fachangestellte/r"),
    ("ZFA", "Zahnmedizinische/r Fachangestellte/r"),
    ("ZFA Prophylaxe", "Zahnmedizinische/r Fachangestellte/r"),
    ("Zahnarzthelferin", "Zahnmedizinische/r Fachangestellte/r"),
    ("TFA Kleintierpraxis", "Tiermedizinische/r Fachangestellte/r"),
    ("PTA", "Pharmazeutisch-technische/r Assistent/in"),
    ("PTA Apotheke", "Pharmazeutisch-technische/r Assistent/in"),
    ("MTRA", "Medizinisch-technische/r Radiologieassistent/in"),
    ("MTLA Labor", "Medizinisch-technische/r Laboratoriumsassistent/in"),
    ("OTA", "Operationstechnische/r Assistent/in"),
    ("Pflegefachkraft", "Gesundheits- und Krankenpfleger/in"),
    ("Pflegefachkraft Intensivstation", "Gesundheits- und Krankenpfleger/in"),
    ("Pflegefachfrau", "Gesundheits- und Krankenpfleger/in"),
    ("Krankenschwester", "Gesundheits- und Krankenpfleger/in"),
    ("Examinierte Pflegekraft", "Gesundheits- und Krankenpfleger/in"),
    ("Altenpflegefachkraft", "Altenpfleger/in"),
    ("Pflegefachkraft Altenpflege", "Altenpfleger/in"),
    ("Staplerfahrer", "Gabelstaplerfahrer/in"),
    ("Gabelstaplerfahrer Lager", "Gabelstaplerfahrer/in"),
    ("Anlagenmechaniker SHK", "Anlagenmechaniker/in in Sanitär-, Heizungs- und Klimatechnik"),
    ("SHK-Monteur", "Anlagenmechaniker/in in Sanitär-, Heizungs- und Klimatechnik"),
    ("Heizungsbauer", "Anlagenmechaniker/in in Sanitär-, Heizungs- und Klimatechnik"),
    ("Elektriker", "Elektroniker/in der Energie- und Gebäudetechnik"),
    ("Elektriker Gebäudetechnik", "Elektroniker/in der Energie- und Gebäudetechnik"),
    ("Elektroniker Betriebstechnik", "Elektroniker/in für Betriebstechnik"),
    ("Fachinformatiker AE", "Fachinformatiker/in für Anwendungsentwicklung"),
    ("Fachinformatiker Systemintegration", "Fachinformatiker/in für Systemintegration"),
    ("Java Developer", "Softwareentwickler/in"),
    ("Software Engineer Backend", "Softwareentwickler/in"),
    ("Frontend Entwickler React", "Softwareentwickler/in"),
    ("Softwareentwickler C#", "Softwareentwickler/in"),
    ("Kfz-Mechatroniker Nutzfahrzeuge", "Kfz-Mechatroniker/in"),
    ("Kfz-Mechatroniker PKW", "Kfz-Mechatroniker/in"),
    ("Zerspaner", "Zerspanungsmechaniker/in"),
    ("CNC-Fräser Einzelteilfertigung", "CNC-Fräser/in"),
    ("Schweißer MAG", "Schweißer/in"),
    ("WIG-Schweißer", "Schweißer/in"),
    ("Industriemechaniker Instandhaltung", "Industriemechaniker/in"),
    ("Kaufmann für Büromanagement", "Bürokauf/mann/frau"),
    ("Kauffrau für Büromanagement", "Bürokauf/mann/frau"),
    ("Bürokraft", "Bürokauf/mann/frau"),
    ("Lohnbuchhalter", "Buchhalter/in"),
    ("Buchhalterin Kreditoren", "Buchhalter/in"),
    ("Kassiererin Supermarkt", "Kassierer/in im Handel"),
    ("Verkäuferin Bäckerei", "Bäckereiverkäufer/in"),
    ("Bäckereifachverkäuferin", "Bäckereiverkäufer/in"),
    ("Jungkoch", "Koch/Köchin"),
    ("Beikoch", "Koch/Köchin"),
    ("Kita-Erzieher", "Erzieher/in"),
    ("Erzieherin Krippe", "Erzieher/in"),
    ("Omnibusfahrer Linienverkehr", "Busfahrer/in"),
    ("Busfahrer ÖPNV", "Busfahrer/in"),
    ("Krankengymnast", "Physiotherapeut/in"),
    ("Physiotherapeut Reha", "Physiotherapeut/in"),
    ("Heilerzieher", "Heilerziehungspfleger/in"),
    ("Hauswart", "Hausmeister/in"),
    ("Objektbetreuer Hausmeister", "Hausmeister/in"),
    ("Servicekraft Restaurant", "Restaurantfach/mann/frau"),
    ("Kellnerin Biergarten", "Kellner/in"),
    ("Steuerfachangestellte Lohn", "Steuerfachangestellte/r"),
    ("StFA", "Steuerfachangestellte/r"),
    ("ReFa", "Rechtsanwaltsfachangestellte/r"),
    ("Landschaftsgärtner GaLaBau", "Gärtner/in im Garten- und Landschaftsbau"),
    ("Maler und Lackierer Innenausbau", "Maler/in und Lackierer/in"),
    ("Trockenbauer", "Trockenbaumonteur/in"),
    ("Fliesenleger", "Fliesen-, Platten- und Mosaikleger/in"),
    ("Dachdeckergeselle", "Dachdecker/in"),
    ("Tischlergeselle", "Tischler/in"),
    ("Maurergeselle", "Maurer/in"),
)

# Real job titles without a counterpart in the shipped catalogue: the right answer is "no match".
NO_MATCH: tuple[str, ...] = (
    "Werkstudent Marketing",
    "Promoter Messe",
    "Zeitungszusteller Minijob",
    "Regalauffüller",
    "Kommissionierer",
    "Reinigungskraft Büro",
    "Aushilfe Lager",
    "Customer Success Manager",
    "Scrum Master",
    "Data Scientist",
    "UX Designer",
    "Social Media Manager",
    "Content Creator",
    "Nachhilfelehrer Mathematik",
    "Babysitter",
    "Hundesitter",
    "Umzugshelfer",
    "Erntehelfer Spargel",
    "Fotomodel",
    "Statist Film",
    "Pizzafahrer",
    "Essenslieferant Fahrrad",
    "Fahrradkurier",
    "Tankstellenmitarbeiter",
    "Parkplatzeinweiser",
    "Spielhallenaufsicht",
    "Eventhelfer",
    "Garderobenkraft",
    "Zimmermädchen Hotel",
    "Spülkraft",
    "Küchenhilfe",
    "Produktionshelfer",
    "Lagerhelfer",
    "Postbote Aushilfe",
    "Prompt Engineer",
    "DevOps Engineer Kubernetes",
    "Cloud Architect AWS",
    "SAP Berater FI/CO",
    "Recruiter",
    "Sales Development Representative",
    "Inbound Sales Agent",
    "Immobilienmakler Provision",
    "Versicherungsvertreter Außendienst",
    "Haushaltshilfe",
    "Alltagsbegleiter Senioren",
    "Betreuungskraft nach §43b",
    "Schulbegleiter",
    "Integrationshelfer",
    "Pflegehilfskraft Minijob",
    "Sicherheitsmitarbeiter Objektschutz",
)


@dataclass(frozen=True, slots=True)
class Generated:
    title: str
    occupation: str | None  # BERUFENET name, None = no occupation expected
    kind: str  # the kind of noise, for the breakdown


def typo(rng: random.Random, word: str) -> str:
    """A typo as real titles carry them: swapped, dropped or doubled letter (words of 6+ letters)."""
    if len(word) < 6:
        return word
    i = rng.randrange(1, len(word) - 2)
    r = rng.random()
    if r < 0.4:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if r < 0.7:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _typo_title(rng: random.Random, title: str) -> str:
    words = title.split(" ")
    longest = max(range(len(words)), key=lambda k: len(words[k]))
    words[longest] = typo(rng, words[longest])
    return " ".join(words)


def base_form(rng: random.Random, name: str) -> str:
    masc, fem = gender_forms(name)
    return rng.choices((masc, fem, name), weights=(70, 20, 10))[0]


def noisy(rng: random.Random, core: str, kind: str) -> str:
    """`core` with one kind of noise (plus a gender marker most of the time), spaces collapsed."""
    return " ".join(_noisy(rng, core, kind).split())


def _noisy(rng: random.Random, core: str, kind: str) -> str:
    gender = rng.choices(GENDER, weights=GENDER_WEIGHTS)[0]
    if kind == "gender":
        return f"{core} {gender}"
    if kind == "employment":
        return f"{core} {gender or '(m/w/d)'} {rng.choice(EMPLOYMENT)}"
    if kind == "location":
        city = rng.choice(CITIES)
        return rng.choice(
            (
                f"{core} {gender} in {city}",
                f"{core} {gender} - {city}",
                f"{core} {gender} | {city}",
                f"{city}: {core} {gender}",
                f"{core} {gender} für unseren Standort {city}",
            )
        )
    if kind == "seniority":
        return f"{rng.choice(SENIORITY)} {core} {gender}"
    if kind == "typo":
        return _typo_title(rng, f"{core} {gender}")
    if kind == "uppercase":
        return f"{core} {gender}".upper()
    if kind == "qualifier":
        return f"{core} {rng.choice(QUALIFIERS)} {gender}"
    if kind == "apprenticeship":
        return rng.choice(
            (f"Ausbildung zum {core} {gender or '(m/w/d)'} 2026", f"Ausbildung {core} {gender}")
        )
    if kind == "combined":
        city = rng.choice(CITIES)
        return f"{rng.choice(SENIORITY)} {core} {gender or '(m/w/d)'} {rng.choice(EMPLOYMENT)} in {city}"
    return core


KINDS = (
    "gender",
    "employment",
    "location",
    "seniority",
    "typo",
    "uppercase",
    "qualifier",
    "apprenticeship",
    "combined",
    "plain",
)
KIND_WEIGHTS = (30, 15, 15, 6, 4, 2, 14, 4, 6, 4)


def posting_titles(
    rng: random.Random,
    names: Sequence[str],
    n: int,
    *,
    no_match_share: float = 0.08,
    trade_share: float = 0.12,
) -> list[Generated]:
    """n posting titles with a skewed occupation distribution (a few occupations carry most postings)."""
    order = list(names)
    rng.shuffle(order)
    weights = [1.0 / (rank + 1) ** 1.07 for rank in range(len(order))]
    known = set(names)
    trades = [t for t in TRADE_NAMES if t[1] in known]
    out: list[Generated] = []
    for _ in range(n):
        r = rng.random()
        kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
        if r < no_match_share:
            core = rng.choice(NO_MATCH)
            out.append(
                Generated(noisy(rng, core, kind if kind != "apprenticeship" else "gender"), None, "no_match")
            )
        elif r < no_match_share + trade_share and trades:
            core, name = rng.choice(trades)
            out.append(
                Generated(noisy(rng, core, rng.choice(("gender", "employment", "location"))), name, "trade")
            )
        else:
            name = rng.choices(order, weights=weights)[0]
            out.append(Generated(noisy(rng, base_form(rng, name), kind), name, kind))
    return out
