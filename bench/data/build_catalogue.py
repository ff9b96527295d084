"""Build the shipped test catalogue lib/jobpipe/data/berufenet_test_catalogue.json.

A BERUFENET detail array (the shape of `GET /berufe/{id}`, see docs/contracts/ba-jobsuche.md) of
common job-market occupations. Every name is copied verbatim from the public BERUFENET name list
(../shared/data/occupation-names-berufenet-2015.txt) and every KldB 2010 code exists in
../shared/data/kldb2010.csv; the script refuses to write otherwise. The code per name was chosen
by hand from the KldB 2010 group and level (1 helper, 2 skilled, 3 specialist, 4 expert).

The ids are synthetic (the name list has none): 10001 + position in CURATED, so keep the list
append-only to keep ids stable. `steckbrief.kurz` is the KldB long label of the code.

Run from the repository root: python bench/data/build_catalogue.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "lib" / "jobpipe" / "data" / "berufenet_test_catalogue.json"
FIRST_ID = 10001

# (BERUFENET name as in the 2015 list, 5-digit KldB 2010 code). Append only: ids follow positions.
CURATED: tuple[tuple[str, str], ...] = (
    ("Softwareentwickler/in", "43414"),
    ("Fachinformatiker/in für Anwendungsentwicklung", "43412"),
    ("Fachinformatiker/in für Systemintegration", "43102"),
    ("Fachinformatiker/in", "43102"),
    ("Informatiker/in (Hochschule)", "43104"),
    ("Wirtschaftsinformatiker/in", "43114"),
    ("Datenbankadministrator/in", "43353"),
    ("Anwendungsprogrammierer/in", "43423"),
    ("Netzwerkadministrator/in", "43313"),
    ("Webdesigner/in", "43153"),
    ("IT-Projektleiter/in", "43494"),
    ("Berufskraftfahrer/in", "52122"),
    ("Kraftfahrer/in", "52122"),
    ("Busfahrer/in", "52132"),
    ("Taxifahrer/in", "52112"),
    ("Auslieferungsfahrer/in", "52122"),
    ("Gabelstaplerfahrer/in", "52532"),
    ("Fachkraft für Lagerlogistik", "51312"),
    ("Fachlagerist/in", "51312"),
    ("Postzusteller/in", "51322"),
    ("Speditionskauf/mann/frau", "51622"),
    ("Koch/Köchin", "29302"),
    ("Großküchen/koch/köchin", "29302"),
    ("Bäcker/in", "29222"),
    ("Konditor/in", "29222"),
    ("Fleischer/in", "29232"),
    ("Bäckereiverkäufer/in", "62312"),
    ("Restaurantfach/mann/frau", "63302"),
    ("Hotelfach/mann/frau", "63222"),
    ("Kellner/in", "63301"),
    ("Barkeeper/in", "63322"),
    ("Hotelkauf/mann/frau", "63212"),
    ("Verkäufer/in", "62102"),
    ("Einzelhandelskauf/mann/frau", "62102"),
    ("Kassierer/in im Handel", "62112"),
    ("Fachverkäufer/in", "62102"),
    ("Kauf/mann/frau im Einzelhandel", "62102"),
    ("Kauf/mann/frau im Groß- und Außenhandel", "61212"),
    ("Bürokauf/mann/frau", "71402"),
    ("Fachkauf/mann/frau für Büromanagement", "71402"),
    ("Büroassistent/in", "71402"),
    ("Sekretär/in", "71402"),
    ("Sachbearbeiter/in im Büro", "71402"),
    ("Industriekauf/mann/frau", "71302"),
    ("Bankkauf/mann/frau", "72112"),
    ("Versicherungskauf/mann/frau", "72132"),
    ("Buchhalter/in", "72213"),
    ("Finanzbuchhalter/in", "72213"),
    ("Bilanzbuchhalter/in", "72213"),
    ("Steuerfachangestellte/r", "72302"),
    ("Steuerberater/in", "72304"),
    ("Controller/in", "72233"),
    ("Personalsachbearbeiter/in", "71512"),
    ("Personalreferent/in", "71513"),
    ("Rechtsanwaltsfachangestellte/r", "73112"),
    ("Notarfachangestellte/r", "73112"),
    ("Immobilienkauf/mann/frau", "61312"),
    ("Einkäufer/in", "61113"),
    ("Fachkraft für Marketing,Verkauf und Vertrieb", "61122"),
    ("Außendienstmitarbeiter/in", "61122"),
    ("Key-Account-Manager/in", "61123"),
    ("Account-Manager/in", "61123"),
    ("Callcenteragent/in", "71452"),
    ("Kundenberater/in in Handel", "62102"),
    ("Geschäftsführer/in", "71104"),
    ("Unternehmensberater/in", "71324"),
    ("Medizinische/r Fachangestellte/r", "81102"),
    ("Zahnmedizinische/r Fachangestellte/r", "81112"),
    ("Tiermedizinische/r Fachangestellte/r", "81142"),
    ("Arzthelfer/in", "81102"),
    ("Gesundheits- und Krankenpfleger/in", "81302"),
    ("Gesundheits- und Kinderkrankenpfleger/in", "81302"),
    ("Krankenpflegehelfer/in", "81301"),
    ("Altenpfleger/in", "82102"),
    ("Fachkraft für Pflegeassistenz", "81301"),
    ("Hebamme/Entbindungspfleger", "81352"),
    ("Rettungssanitäter/in", "81341"),
    ("Notfallsanitäter/in", "81342"),
    ("Physiotherapeut/in", "81712"),
    ("Ergotherapeut/in", "81722"),
    ("Logopäd/e/in", "81733"),
    ("Masseur/in und medizinische/r Bademeister/in", "81712"),
    ("Apotheker/in", "81804"),
    ("Pharmazeutisch-technische/r Assistent/in", "81822"),
    ("Medizinisch-technische/r Laboratoriumsassistent/in", "81212"),
    ("Medizinisch-technische/r Radiologieassistent/in", "81232"),
    ("Operationstechnische/r Assistent/in", "81332"),
    ("Arzt/Ärztin", "81404"),
    ("Klinische/r Psycholog/e/in", "81624"),
    ("Zahntechniker/in", "82542"),
    ("Augenoptiker/in", "82522"),
    ("Hörgeräteakustiker/in", "82532"),
    ("Orthopädietechnik-Mechaniker/in", "82512"),
    ("Erzieher/in", "83112"),
    ("Kinderpflegehelfer/in", "83111"),
    ("Sozialassistent/in", "83112"),
    ("Sozialarbeiter/in", "83124"),
    ("Sozialpädagog/e/in", "83124"),
    ("Heilerziehungspfleger/in", "83132"),
    ("Heilpädagog/e/in", "83133"),
    ("Hauswirtschafter/in", "83212"),
    ("Lehrer/in an einer Grundschule (Primarstufe)", "84114"),
    ("Lehrer/in an einem Gymnasien (Sekundarstufe I und II)", "84124"),
    ("Fahrlehrer/in", "84513"),
    ("Sportlehrer/in", "84503"),
    ("Friseur/in", "82312"),
    ("Kosmetiker/in", "82322"),
    ("Bestatter/in", "82402"),
    ("Gebäudereiniger/in", "54112"),
    ("Hausmeister/in", "34102"),
    ("Haustechniker/in", "34102"),
    ("Facility-Manager/in", "61323"),
    ("Fachkraft für Schutz und Sicherheit", "53112"),
    ("Wach- und Sicherheitsfach/mann/frau", "53112"),
    ("Polizeivollzugsbeamt/er/in", "53212"),
    ("Berufsfeuerwehr/mann/frau", "53132"),
    ("Elektroniker/in der Energie- und Gebäudetechnik", "26212"),
    ("Elektroniker/in für Betriebstechnik", "26252"),
    ("Elektroinstallateur/in", "26212"),
    ("Elektromonteur/in", "26212"),
    ("Elektrotechniker/in", "26303"),
    ("Mechatroniker/in", "26112"),
    ("Kfz-Mechatroniker/in", "25212"),
    ("Kfz-Mechaniker/in", "25212"),
    ("Industriemechaniker/in", "25102"),
    ("Industriemechaniker/in für Betriebstechnik", "25102"),
    ("Anlagenmechaniker/in in Sanitär-, Heizungs- und Klimatechnik", "34212"),
    ("Anlagenmechaniker/in", "34342"),
    ("Mechatroniker/in für Kältetechnik", "34232"),
    ("Zerspanungsmechaniker/in", "24232"),
    ("CNC-Fräser/in", "24232"),
    ("CNC-Dreher/in", "24232"),
    ("Dreher/in", "24232"),
    ("Schlosser/in", "24412"),
    ("Metallbauer/in", "24412"),
    ("Schweißer/in", "24422"),
    ("Konstruktionsmechaniker/in", "24412"),
    ("Werkzeugmechaniker/in", "24522"),
    ("Maschinen- und Anlagenführer/in", "25122"),
    ("Fertigungsmechaniker/in", "25102"),
    ("Chemikant/in", "41312"),
    ("Chemielaborant/in", "41322"),
    ("Biologielaborant/in", "41212"),
    ("Lebensmitteltechniker/in", "29203"),
    ("Technische/r Zeichner/in", "27212"),
    ("Bauzeichner/in", "27212"),
    ("Konstrukteur/in", "27223"),
    ("Maschinenbauingenieur/in", "25104"),
    ("Architekt/in", "31114"),
    ("Vermessungstechniker/in", "31212"),
    ("Bauleiter/in", "31104"),
    ("Maurer/in", "32122"),
    ("Beton- und Stahlbetonbauer/in", "32112"),
    ("Zimmer/er/in", "33322"),
    ("Dachdecker/in", "32142"),
    ("Tischler/in", "22342"),
    ("Schreiner/in", "22342"),
    ("Maler/in und Lackierer/in", "33212"),
    ("Fahrzeuglackierer/in", "22212"),
    ("Fliesen-, Platten- und Mosaikleger/in", "33112"),
    ("Bodenleger/in", "33102"),
    ("Trockenbaumonteur/in", "33302"),
    ("Stuckateur/in", "33222"),
    ("Glaser/in", "33342"),
    ("Gerüstbauer/in", "32162"),
    ("Straßenbauer/in", "32222"),
    ("Tiefbaufacharbeiter/in", "32202"),
    ("Hochbaufacharbeiter/in", "32102"),
    ("Baumaschinenführer/in", "52522"),
    ("Kranführer/in", "52532"),
    ("Gärtner/in", "12102"),
    ("Gärtner/in im Garten- und Landschaftsbau", "12142"),
    ("Landschaftsgärtner/in", "12142"),
    ("Florist/in", "12202"),
    ("Landwirt/in", "11102"),
    ("Forstwirt/in", "11712"),
    ("Tierpfleger/in", "11522"),
    ("Pferdewirt/in", "11302"),
    ("Fotograf/in", "23322"),
    ("Grafikdesigner/in", "23224"),
    ("Journalist/in", "92414"),
    ("Redakteur/in", "92414"),
    ("Übersetzer/in", "71424"),
    ("Dolmetscher/in", "71424"),
    ("Bibliothekar/in", "73324"),
    ("Verwaltungsfachangestellte/r", "73202"),
    ("Sozialversicherungsfachangestellte/r", "73212"),
    ("Justizfachangestellte/r", "73252"),
    ("Reiseverkehrskauf/mann/frau", "63112"),
    ("Veranstaltungskauf/mann/frau", "63402"),
    ("Sport- und Fitnesskauf/mann/frau", "63122"),
    ("Fitnesstrainer/in", "84503"),
    ("Musiklehrer/in", "84414"),
    ("Schauspieler/in", "94214"),
    ("Chemiker/in", "41304"),
    ("Biolog/e/in", "41204"),
    ("Physiker/in", "41404"),
    ("Mathematiker/in", "41104"),
    ("Wirtschaftsprüfer/in", "72244"),
    ("Betriebswirt/in", "71304"),
    ("Schornsteinfeger/in", "42212"),
    ("Uhrmacher/in", "24532"),
    ("Schneider/in", "28222"),
    ("Schuhmacher/in", "28332"),
    ("Brauer/in und Mälzer/in", "29112"),
    ("Winzer/in", "11602"),
    ("Fischwirt/in", "11402"),
    ("Pilot/in", "52314"),
    ("Flugbegleiter/in", "51422"),
    ("Schiffsmechaniker/in", "52422"),
    ("Fahrradmonteur/in", "25252"),
    ("Zweiradmechaniker/in", "25252"),
    ("Land- und Baumaschinenmechatroniker/in", "25222"),
    ("Elektroniker/in für Geräte und Systeme", "26302"),
    ("Mikrotechnolog/e/in", "26322"),
    ("Gießereimechaniker/in", "24132"),
    ("Oberflächenbeschichter/in", "24302"),
    ("Papiertechnolog/e/in", "23112"),
    ("Drucker/in", "23412"),
    ("Buchbinder/in", "23422"),
    ("Textillaborant/in", "28122"),
    ("Sattler/in", "28322"),
    ("Steinmetz/in und Steinbildhauer/in", "21232"),
    ("Glasbläser/in", "21332"),
    ("Keramiker/in", "93412"),
    ("Holzmechaniker/in", "22322"),
    ("Bootsbauer/in", "25242"),
    ("Fluggerätmechaniker/in", "25232"),
    ("Fachangestellte/r für Bäderbetriebe", "53142"),
    ("Fachkraft für Kreislauf- und Abfallwirtschaft", "34332"),
    ("Fachkraft für Abwassertechnik", "34312"),
    ("Fachkraft für Wasserversorgungstechnik", "34312"),
    ("Umwelttechniker/in", "42203"),
    ("Energieberater/in", "42313"),
    ("Qualitätsprüfer/in", "27312"),
    ("Qualitätsmanager/in", "27313"),
    ("Arbeitsvorbereiter/in", "27302"),
    ("Disponent/in im Güterverkehr", "51613"),
    ("Fachkraft für Arbeitssicherheit", "53123"),
)


def kldb_labels(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as fh:
        return {
            row["Concept"]: row["prefLabel"]
            for row in csv.DictReader(fh)
            if row["labelStyle"] == "de_long" and len(row["Concept"]) == 5
        }


def build(data_dir: Path) -> list[dict[str, object]]:
    names = {
        line.strip() for line in (data_dir / "occupation-names-berufenet-2015.txt").open(encoding="utf-8")
    }
    labels = kldb_labels(data_dir / "kldb2010.csv")
    seen: set[str] = set()
    out: list[dict[str, object]] = []
    for pos, (name, code) in enumerate(CURATED):
        if name not in names:
            raise SystemExit(f"not a BERUFENET name in the shared list: {name!r}")
        if code not in labels:
            raise SystemExit(f"not a 5-digit KldB 2010 code: {code} ({name})")
        if name in seen:
            raise SystemExit(f"duplicate name: {name!r}")
        seen.add(name)
        ident = FIRST_ID + pos
        out.append(
            {
                "id": ident,
                "kurzBezeichnungNeutral": name,
                "bezeichnungNeutral": name,
                "kldb2010": f"B {code}",
                "codenr": f"B {code}-{ident % 1000:03d}",
                "steckbrief": {"kurz": f"<p>{labels[code]}</p>", "lang": f"<p>{name}: {labels[code]}.</p>"},
                "infofelder": [],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    items = build(a.data_dir)
    a.out.write_text(json.dumps(items, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(items)} occupations to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
