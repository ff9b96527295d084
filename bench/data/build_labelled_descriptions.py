"""Builds bench/data/labelled_descriptions.jsonl: 48 German job descriptions with the summary fields
they state, for `jobpipe extract eval`.

How it was made: the occupation blocks below (tasks, requirements, education) and the phrasing
variants (headings, salary, working time, remote work, contract, start date, languages,
experience) were written by hand after the style of postings in the BA Jobsuche; each of the
16 occupations is combined three times with different, seeded choices. Because every sentence is
chosen, the expected value of every field is known by construction (no hand labelling after the
fact, so no labelling mistakes, but also only the phrasings listed here). Some phrasings are
deliberately unusual (salary "im Jahr" after the amount, "Ihr Job bei uns" as a heading, remote
work only as "ortsunabhängig"), so that a weak model, or a rule reader, misses some.

List fields are labelled with one keyword per expected item (its longest word): an item counts as
found when some predicted item contains it. Split: every fourth description is "test" (held out:
do not tune prompts or rules on it), the others "dev".

    python3 bench/data/build_labelled_descriptions.py > bench/data/labelled_descriptions.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys

OCCUPATIONS = [
    ("Koch (m/w/d)", "vocational",
     ["Zubereitung regionaler und saisonaler Gerichte", "Planung von Menüs und Wareneinsatz",
      "Einhaltung der HACCP-Hygienestandards", "Anleitung unserer Auszubildenden"],
     ["Abgeschlossene Ausbildung als Koch", "Belastbarkeit und Teamgeist"],
     ["Erfahrung in der gehobenen Gastronomie"]),
    ("Pflegefachkraft (m/w/d) Intensivstation", "vocational",
     ["Pflege und Überwachung intensivpflichtiger Patienten", "Assistenz bei ärztlichen Maßnahmen",
      "Dokumentation im digitalen Pflegesystem"],
     ["Examen als Pflegefachkraft", "Bereitschaft zum Schichtdienst"],
     ["Fachweiterbildung Intensivpflege"]),
    ("Softwareentwickler Python (m/w/d)", "bachelor",
     ["Entwicklung von Backend-Diensten mit Python", "Code-Reviews und Testautomatisierung",
      "Betrieb unserer Datenbanken mit PostgreSQL"],
     ["Studium der Informatik oder vergleichbare Qualifikation", "Erfahrung mit Python und SQL"],
     ["Kenntnisse in Kubernetes"]),
    ("Berufskraftfahrer CE (m/w/d) Nahverkehr", "none",
     ["Auslieferung von Waren an Filialen in der Region", "Be- und Entladen des Fahrzeugs",
      "Kontrolle der Lieferpapiere"],
     ["Führerschein Klasse CE mit Fahrerkarte", "Zuverlässigkeit und Pünktlichkeit"],
     ["Staplerschein"]),
    ("Steuerfachangestellter (m/w/d)", "vocational",
     ["Erstellung von Finanzbuchhaltungen", "Lohnabrechnungen für Mandanten",
      "Vorbereitung von Jahresabschlüssen und Steuererklärungen"],
     ["Abgeschlossene Ausbildung als Steuerfachangestellter", "Sicherer Umgang mit DATEV"],
     ["Weiterbildung zum Steuerfachwirt"]),
    ("Elektroniker für Energie- und Gebäudetechnik (m/w/d)", "vocational",
     ["Installation elektrischer Anlagen in Neubauten", "Wartung und Störungsbeseitigung",
      "Prüfung nach DGUV Vorschrift 3"],
     ["Abgeschlossene Ausbildung als Elektroniker", "Führerschein Klasse B"],
     ["Erfahrung mit KNX-Systemen"]),
    ("Erzieher (m/w/d) Kindertagesstätte", "vocational",
     ["Betreuung und Förderung von Kindern im Alter von drei bis sechs Jahren",
      "Gestaltung pädagogischer Angebote", "Entwicklungsgespräche mit Eltern"],
     ["Staatliche Anerkennung als Erzieher", "Freude an der Arbeit mit Kindern"],
     ["Erfahrung mit dem situationsorientierten Ansatz"]),
    ("Lagermitarbeiter (m/w/d)", "none",
     ["Kommissionierung von Aufträgen mit Handscanner", "Wareneingangskontrolle",
      "Verpacken und Versandvorbereitung"],
     ["Körperliche Belastbarkeit", "Sorgfältige Arbeitsweise"],
     ["Staplerschein"]),
    ("Bauingenieur (m/w/d) Tiefbau", "master",
     ["Planung und Überwachung von Tiefbaumaßnahmen", "Ausschreibung und Vergabe von Bauleistungen",
      "Kostenkontrolle und Abrechnung"],
     ["Abgeschlossenes Studium des Bauingenieurwesens", "Kenntnisse der VOB"],
     ["Erfahrung mit AVA-Software"]),
    ("Verkäufer (m/w/d) Lebensmitteleinzelhandel", "none",
     ["Beratung und Bedienung unserer Kunden", "Warenverräumung und Pflege der Frischeabteilung",
      "Kassieren"],
     ["Freundliches Auftreten", "Flexibilität bei den Arbeitszeiten"],
     ["Erfahrung im Einzelhandel"]),
    ("Medizinische Fachangestellte (m/w/d)", "vocational",
     ["Empfang und Betreuung der Patienten", "Terminvergabe und Abrechnung",
      "Blutentnahmen und Impfungen"],
     ["Abgeschlossene Ausbildung als Medizinische Fachangestellte", "Organisationstalent"],
     ["Kenntnisse in der Praxissoftware Medistar"]),
    ("Industriemechaniker (m/w/d)", "vocational",
     ["Montage und Instandhaltung von Produktionsanlagen", "Fehlersuche an hydraulischen Systemen",
      "Durchführung von Wartungsplänen"],
     ["Abgeschlossene Ausbildung als Industriemechaniker", "Bereitschaft zur Schichtarbeit"],
     ["Schweißkenntnisse"]),
    ("Sachbearbeiter Buchhaltung (m/w/d)", "vocational",
     ["Kreditorenbuchhaltung und Zahlungsverkehr", "Kontenabstimmung",
      "Mitarbeit beim Monatsabschluss"],
     ["Kaufmännische Ausbildung", "Sehr gute Excel-Kenntnisse"],
     ["Erfahrung mit SAP FI"]),
    ("Projektleiter (m/w/d) Anlagenbau", "master",
     ["Leitung internationaler Anlagenbauprojekte", "Steuerung von Terminen, Kosten und Qualität",
      "Führung eines Projektteams"],
     ["Abgeschlossenes Studium des Maschinenbaus", "Führungserfahrung in Projekten"],
     ["PMP-Zertifizierung"]),
    ("Reinigungskraft (m/w/d)", "none",
     ["Unterhaltsreinigung von Büroräumen", "Reinigung der Sanitärbereiche",
      "Auffüllen von Verbrauchsmaterial"],
     ["Zuverlässigkeit und Sorgfalt", "Eigenständige Arbeitsweise"],
     []),
    ("Data Scientist (m/w/d)", "doctorate",
     ["Entwicklung statistischer Modelle für Absatzprognosen", "Aufbereitung großer Datenmengen",
      "Präsentation der Ergebnisse für das Management"],
     ["Promotion oder Master in Statistik, Mathematik oder Informatik", "Sehr gute Kenntnisse in Python"],
     ["Erfahrung mit Spark"]),
]  # fmt: skip

HEADINGS = [
    ("Ihre Aufgaben:", "Ihr Profil:", "Wir bieten:"),
    ("**Das erwartet Sie:**", "**Das bringen Sie mit:**", "**Das bieten wir:**"),
    ("Ihr Job bei uns", "Was Sie mitbringen", "Darauf können Sie sich freuen"),  # unusual: missed by rules
]
BENEFITS = [
    "30 Tage Urlaub", "Betriebliche Altersvorsorge", "Zuschuss zum Deutschlandticket", "JobRad-Leasing",
    "Kostenlose Getränke und Obst", "Weiterbildungsbudget", "Kantine mit Essenszuschuss",
    "Firmenfitness mit EGYM Wellpass",
]  # fmt: skip
# Occupations whose work can be done away from the site, and that are paid by the year, not the hour.
OFFICE = ("Softwareentwickler", "Steuerfach", "Bauingenieur", "Sachbearbeiter", "Projektleiter",
          "Data Scientist")  # fmt: skip
NICE_MARK = ["wünschenswert", "von Vorteil", "idealerweise"]
CITIES = ["Freiburg", "Leipzig", "Bremen", "Augsburg", "Kassel", "Rostock", "Mainz", "Ulm"]
EMPLOYERS = ["Müller GmbH", "Stadtwerke", "Klinikum Nord", "Hansen & Partner", "Becker Logistik AG"]


def keyword(item: str) -> str:
    words = re.findall(r"[A-Za-zÄÖÜäöüß-]+", item)
    return max(words, key=len).casefold().strip("-")


def build() -> list[dict]:
    out = []
    for k, (title, education, tasks, must, nice) in enumerate(OCCUPATIONS):
        for variant in range(3):
            rng = random.Random(1000 * k + variant)
            n = 3 * k + variant
            exp: dict = {"education": education if education != "none" else None}
            city, employer = rng.choice(CITIES), rng.choice(EMPLOYERS)
            h_tasks, h_profile, h_offer = HEADINGS[n % 3]
            wt = rng.choice(["full_time", "part_time", "full_or_part_time", "unspecified"])
            wt_text = {
                "full_time": "in Vollzeit (40 Stunden pro Woche)",
                "part_time": "in Teilzeit (20 Stunden pro Woche)",
                "full_or_part_time": "in Voll- oder Teilzeit",
                "unspecified": "",
            }[wt]
            exp["working_time"] = wt
            office = title.startswith(OFFICE)
            loc = rng.choice(["on_site", "hybrid", "remote", "hybrid"]) if office else "on_site"
            loc_text = {
                "on_site": "",
                "hybrid": rng.choice(["Nach der Einarbeitung sind zwei Tage Homeoffice pro Woche möglich.",
                                      "Mobiles Arbeiten ist an bis zu drei Tagen möglich."]),
                "remote": rng.choice(["Die Stelle ist zu 100% remote.", "Sie arbeiten ortsunabhängig."]),
            }[loc]  # fmt: skip
            exp["work_location"] = loc if loc != "on_site" else None
            contract = rng.choice(["permanent", "fixed_term", "temporary_agency", "unspecified"])
            months = None
            if contract == "permanent":
                c_text = rng.choice(["Es erwartet Sie eine unbefristete Festanstellung.",
                                     "Wir bieten einen unbefristeten Arbeitsvertrag."])  # fmt: skip
            elif contract == "fixed_term":
                months = rng.choice([12, 24])
                span = "zwei Jahre" if months == 24 and rng.random() < 0.5 else f"{months} Monate"
                c_text = f"Die Stelle ist befristet auf {span}."
            elif contract == "temporary_agency":
                c_text = "Die Anstellung erfolgt im Rahmen der Arbeitnehmerüberlassung bei unserem Kunden."
            else:
                c_text = ""
            exp["contract_type"] = contract
            exp["contract_duration_months"] = months
            salary = None
            kinds = ["none", "month", "range_year", "none"] if office else ["none", "month", "hour"]
            s_kind = rng.choice(kinds)
            if s_kind == "month":
                v = rng.choice([2600, 2900, 3200, 3500, 4100])
                s_text = f"Die Vergütung beträgt {v:,} € brutto im Monat.".replace(",", ".")
                salary = {"min": v, "max": None, "period": "month"}
            elif s_kind == "range_year":
                lo = rng.choice([42000, 48000, 55000, 62000])
                hi = lo + rng.choice([6000, 8000, 10000])
                s_text = (
                    f"Wir zahlen ein Jahresgehalt zwischen {lo:,} und {hi:,} Euro."
                    if rng.random() < 0.5
                    else f"Gehalt: {lo:,} - {hi:,} € im Jahr."
                ).replace(",", ".")
                salary = {"min": lo, "max": hi, "period": "year"}
            elif s_kind == "hour":
                v = rng.choice([13.5, 14.5, 15.75, 17.0])
                s_text = f"Stundenlohn: {v:.2f} € brutto.".replace(".", ",", 1)
                salary = {"min": int(v) if v.is_integer() else v, "max": None, "period": "hour"}
            else:
                s_text = "Eine attraktive Vergütung ist für uns selbstverständlich."
            exp["salary.min"] = salary["min"] if salary else None
            exp["salary.max"] = salary["max"] if salary else None
            exp["salary.period"] = salary["period"] if salary else None
            st = rng.choice(["sofort", "date", "none"])
            if st == "sofort":
                st_text, exp["start_date"] = "Eintritt: ab sofort.", "sofort"
            elif st == "date":
                mo = rng.choice([1, 3, 4, 7, 9, 10])
                st_text, exp["start_date"] = f"Eintritt zum 01.{mo:02d}.2026.", f"2026-{mo:02d}-01"
            else:
                st_text, exp["start_date"] = "", None
            years = rng.choice([None, None, 2, 3, 5])
            level = "professional" if years else None
            if title.startswith("Projektleiter"):
                level = "lead"
            ex_text = f"Mindestens {years} Jahre Berufserfahrung" if years else ""
            exp["years_experience"] = years
            exp["experience_level"] = level
            langs = [("Deutsch", rng.choice(["B2", "C1", "fluent"]))]
            if rng.random() < 0.5:
                langs.append(("Englisch", rng.choice(["good", "fluent", "B2"])))
            lang_phrases = {
                "B2": "Deutschkenntnisse mindestens auf Niveau B2", "C1": "Sehr gute Deutschkenntnisse (C1)",
                "fluent": "Fließende Deutschkenntnisse in Wort und Schrift",
            }  # fmt: skip
            eng_phrases = {"good": "Gute Englischkenntnisse", "fluent": "Verhandlungssicheres Englisch",
                           "B2": "Englisch auf Niveau B2"}  # fmt: skip
            lang_items = [lang_phrases[langs[0][1]]] + ([eng_phrases[langs[1][1]]] if len(langs) > 1 else [])
            exp["languages"] = [name.casefold() for name, _ in langs]
            nice_items = [f"{x} {rng.choice(NICE_MARK)}" for x in nice]
            profile = [*must, *([ex_text] if ex_text else []), *lang_items, *nice_items]
            exp["tasks"] = [keyword(t) for t in tasks]
            exp["requirements.must"] = [keyword(x) for x in [*must, *([ex_text] if ex_text else [])]]
            exp["requirements.nice"] = [keyword(x) for x in nice]
            benefits = rng.sample(BENEFITS, 3)
            exp["benefits"] = [keyword(b) for b in benefits]
            intro = f"Die {employer} sucht für den Standort {city} eine/n {title} {wt_text}".rstrip() + "."
            lines = [
                title, "", intro, *([loc_text] if loc_text else []), "",
                h_tasks, *(f"- {t}" for t in tasks), "",
                h_profile, *(f"- {p}" for p in profile), "",
                h_offer, *(f"- {b}" for b in benefits), "",
                " ".join(x for x in (c_text, s_text, st_text) if x),
                "Wir freuen uns auf Ihre Bewerbung über unser Karriereportal.",
            ]  # fmt: skip
            exp = {k2: v for k2, v in exp.items() if v not in (None, [], "", "unspecified")}
            out.append({"id": f"d{n + 1:02d}", "split": "test" if n % 4 == 3 else "dev",
                        "description": "\n".join(lines), "expected": exp})  # fmt: skip
    return out


if __name__ == "__main__":
    for row in build():
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
