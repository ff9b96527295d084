"""titles.normalise: what is noise (gender, employment type, place, seniority) and what is not."""

from __future__ import annotations

import time

import pytest

from jobpipe.titles import MAX_CHARS, gender_forms, normalise


@pytest.mark.parametrize(
    "raw",
    [
        "Pflegefachkraft (m/w/d)",
        "Pflegefachkraft (w/m/d)",
        "Pflegefachkraft m/w/d",
        "Pflegefachkraft (m/f/d)",
        "Pflegefachkraft (all genders)",
        "Pflegefachkraft (gn)",
        "Pflegefachkraft [m/w/d]",
        "Pflegefachkraft (m|w|d)",
        "PFLEGEFACHKRAFT (M/W/D)",
        "Pflegefachkraft (m/w/d) in Vollzeit",
        "Pflegefachkraft (m/w/d) Teilzeit",
        "Pflegefachkraft (m/w/d) in Voll- oder Teilzeit",
        "Pflegefachkraft (m/w/d) ab sofort",
        "Pflegefachkraft (m/w/d) - Berlin",
        "Pflegefachkraft (m/w/d) in München",
        "Pflegefachkraft (m/w/d) in 80331 München",
        "Pflegefachkraft (m/w/d) | Hamburg",
        "Pflegefachkraft (m/w/d) Frankfurt am Main",
        "Pflegefachkraft (m/w/d) – unbefristet",
        "Pflegefachkraft (m/w/d) für unseren Standort Köln",
        "  Pflegefachkraft\t(m/w/d)  ",
        "Pflegefachkraft ✨ (m/w/d)",
        "Senior Pflegefachkraft (m/w/d)",
        "Pflegefachkraft\x00 (m/w/d)",
    ],
)
def test_noise_variants_share_one_normalised_title(raw: str) -> None:
    assert normalise(raw) == "pflegefachkraft"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Verkäufer/in", "verkäufer"),
        ("Verkäufer/-in (m/w/d)", "verkäufer"),
        ("Verkäufer*in", "verkäufer"),
        ("Verkäufer:in", "verkäufer"),
        ("Verkäufer_in", "verkäufer"),
        ("VerkäuferIn", "verkäufer"),
        ("Verkäufer(in)", "verkäufer"),
        ("Koch/Köchin", "koch"),
        ("Koch / Köchin (m/w/d)", "koch"),
        ("Mitarbeiter/Mitarbeiterin im Verkauf", "mitarbeiter im verkauf"),
        ("Kaufmann/-frau im Einzelhandel", "kaufmann im einzelhandel"),
        ("Kauffrau/-mann im Einzelhandel", "kaufmann im einzelhandel"),
        ("Restaurantfach/mann/frau", "restaurantfachmann"),
        ("Steuerfachangestellte/r", "steuerfachangestellte"),
        ("Zahnmedizinische/r Fachangestellte/r", "zahnmedizinische fachangestellte"),
        ("Sozialpädagog/e/in", "sozialpädagoge"),
        ("Zimmer/er/in", "zimmerer"),
        ("Rechtsanwalt/-anwältin", "rechtsanwalt"),
    ],
)
def test_gender_forms_collapse(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # "in" that belongs to the occupation is kept (only places after "in" are noise)
        ("Koch in Feinkostbetrieben", "koch in feinkostbetrieben"),
        (
            "Anlagenmechaniker/in in Sanitär-, Heizungs- und Klimatechnik",
            "anlagenmechaniker in sanitär- heizungs- und klimatechnik",
        ),
        # " - " specialisation of BERUFENET names is kept, a place after " - " is not
        ("Ingenieur/in - Elektrotechnik", "ingenieur elektrotechnik"),
        ("Elektroniker (m/w/d) - Betriebstechnik - Dresden", "elektroniker betriebstechnik"),
        # role words that change the occupation or its KldB level stay
        ("Leiter Buchhaltung (m/w/d)", "leiter buchhaltung"),
        ("Helfer Lager (m/w/d)", "helfer lager"),
        ("Werkstudent Marketing (m/w/d)", "werkstudent marketing"),
        # seniority does not
        ("Junior Softwareentwickler Java (m/w/d)", "softwareentwickler java"),
        ("Sr. Data Engineer", "data engineer"),
        # programming languages keep their signs
        ("Softwareentwickler C++ / C# (m/w/d)", "softwareentwickler c++ c#"),
        # apprenticeship wrapper and year
        ("Ausbildung zum Kaufmann im Einzelhandel (m/w/d) 2026", "kaufmann im einzelhandel"),
        ("Ausbildung als Koch (m/w/d) ab August 2026", "koch"),
        # abbreviations stay as they are (the catalogue's aliases resolve them)
        ("MFA (m/w/d) in Teilzeit", "mfa"),
        ("LKW-Fahrer CE (m/w/d) Nahverkehr", "lkw-fahrer ce nahverkehr"),
    ],
)
def test_meaningful_words_are_kept(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "   ", "(m/w/d)", "m/w/d", "(w/m/d) in Vollzeit", "\x00\x00", "✨✨", "- | -"]
)
def test_noise_only_titles_are_empty(raw: str) -> None:
    assert normalise(raw) == ""


def test_nul_bytes_and_invalid_utf8_are_cleaned() -> None:
    assert normalise("Ko\x00ch (m/w/d)") == "koch"
    assert "\x00" not in normalise("\x00" * 50 + "Bäcker")
    out = normalise(b"B\xe4cker (m/w/d)".decode("utf-8", errors="surrogateescape"))
    out.encode("utf-8")  # lone surrogates must not survive: PostgreSQL would reject them
    assert out.startswith("b")


def test_giant_titles_are_bounded_and_fast() -> None:
    raw = ("Senior Softwareentwickler Java (m/w/d) in Vollzeit - Berlin " * 40)[:2000]
    start = time.perf_counter()
    out = normalise(raw)
    assert time.perf_counter() - start < 0.5
    assert 0 < len(out) <= MAX_CHARS
    assert out.startswith("softwareentwickler java")
    huge = normalise("x" * 1_000_000)
    assert len(huge) <= MAX_CHARS


def test_normalise_is_idempotent_on_typical_titles() -> None:
    for raw in (
        "Pflegefachkraft (m/w/d) in Vollzeit",
        "Koch/Köchin",
        "Softwareentwickler C++ (m/w/d)",
        "Anlagenmechaniker SHK (m/w/d) - Köln",
        "Kaufmann/-frau im Einzelhandel",
    ):
        once = normalise(raw)
        assert normalise(once) == once


@pytest.mark.parametrize(
    ("name", "forms"),
    [
        ("Koch/Köchin", ("Koch", "Köchin")),
        ("Verkäufer/in", ("Verkäufer", "Verkäuferin")),
        (
            "Medizinische/r Fachangestellte/r",
            ("Medizinischer Fachangestellter", "Medizinische Fachangestellte"),
        ),
        ("Restaurantfach/mann/frau", ("Restaurantfachmann", "Restaurantfachfrau")),
        ("Kaufmann/-frau - Büromanagement", ("Kaufmann - Büromanagement", "Kauffrau - Büromanagement")),
        ("Biolog/e/in", ("Biologe", "Biologin")),
        ("Zimmer/er/in", ("Zimmerer", "Zimmerin")),
        ("Zahnarzt/-ärztin", ("Zahnarzt", "Zahnärztin")),
        ("Bauzimmer(er/in)", ("Bauzimmerer", "Bauzimmerin")),
        ("Fachkraft für Lagerlogistik", ("Fachkraft für Lagerlogistik", "Fachkraft für Lagerlogistik")),
    ],
)
def test_gender_forms_of_berufenet_names(name: str, forms: tuple[str, str]) -> None:
    assert gender_forms(name) == forms
    # and the normalised name equals the normalised masculine form, so titles meet names
    assert normalise(name) in {normalise(forms[0]), normalise(forms[1])}
