"""The occupation catalogue: saved BERUFENET answers, strict shape checks, idempotent upserts, fetch."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobpipe import catalogue, terms_file
from jobpipe.ba.client import BAClient
from jobpipe.catalogue import CatalogueError
from jobpipe.classify import load_exact_index
from jobpipe.cli import main
from jobpipe.errors import DependencyDown, UserError
from jobpipe.sim.ba import FakeBA
from jobpipe.sim.ba_data import DATA_DIR, Catalogue
from jobpipe.titles import gender_forms, normalise
from tests.conftest import url_for

SHIPPED = catalogue.shipped_catalogue()


def detail(ident: int, name: str, kldb: str | None = "B 29302", **extra: Any) -> dict[str, Any]:
    return {
        "id": ident,
        "kurzBezeichnungNeutral": name,
        "bezeichnungNeutral": name,
        "kldb2010": kldb,
        "codenr": f"B {ident}",
        "steckbrief": {"kurz": "<p>x</p>"},
        "infofelder": [],
        **extra,
    }


def page(items: list[dict[str, Any]], number: int = 0, total_pages: int = 1) -> dict[str, Any]:
    return {
        "_embedded": {"berufSucheList": items},
        "page": {"size": 20, "totalElements": len(items), "totalPages": total_pages, "number": number},
        "_links": {},
    }


def write(tmp_path: Path, name: str, doc: Any) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return p


def rows(conn: Any) -> dict[int, tuple[Any, ...]]:
    return {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT id, name, full_name, kldb2010, codenr, name_norm, aliases FROM occupations"
        )
    }


# ------------------------------------------------------------------ the shipped catalogue


def test_shipped_catalogue_is_real_and_large_enough() -> None:
    assert len(SHIPPED) >= 150
    assert len({o.id for o in SHIPPED}) == len(SHIPPED)
    lines = (DATA_DIR / "occupation-names-berufenet-2015.txt").read_text(encoding="utf-8").splitlines()
    names = {line.strip() for line in lines}
    with (DATA_DIR / "kldb2010.csv").open(encoding="utf-8") as fh:
        codes = {r["Concept"] for r in csv.DictReader(fh) if len(r["Concept"]) == 5}
    for occ in SHIPPED:
        assert occ.name in names, occ.name  # verbatim BERUFENET names
        assert occ.kldb2010 in codes, (occ.name, occ.kldb2010)  # existing 5-digit KldB 2010 codes
    # every curated alias points at an occupation of the shipped catalogue
    shipped_names = {o.name for o in SHIPPED}
    assert set(catalogue.load_aliases()) <= shipped_names


def test_shipped_catalogue_has_no_ambiguous_exact_names() -> None:
    seen: dict[str, int] = {}
    curated = catalogue.load_aliases()
    for occ in SHIPPED:
        for key in [normalise(occ.name), *catalogue.aliases_for(occ, curated)]:
            assert seen.setdefault(key, occ.id) == occ.id, f"{key!r} names two occupations"


def test_aliases_cover_gender_forms_and_abbreviations() -> None:
    by_name = {o.name: o for o in SHIPPED}
    curated = catalogue.load_aliases()
    mfa = by_name["Medizinische/r Fachangestellte/r"]
    assert normalise(mfa.name) == "medizinische fachangestellte"
    assert {"medizinischer fachangestellter", "mfa"} <= set(catalogue.aliases_for(mfa, curated))
    koch = by_name["Koch/Köchin"]
    assert "köchin" in catalogue.aliases_for(koch, curated)
    assert catalogue.embedding_text(koch.name) == "Koch / Köchin"


# ------------------------------------------------------------------ loading files


def test_load_detail_array_and_list_page(db_conn: Any, tmp_path: Path) -> None:
    details = write(tmp_path, "details.json", [detail(1, "Koch/Köchin"), [detail(2, "Bäcker/in", "B 29222")]])
    listing = write(tmp_path, "page0.json", page([{"id": 3, "kurzBezeichnungNeutral": "Verkäufer/in"}]))
    stats = catalogue.load_files(db_conn, [details, listing])
    assert (stats.occupations, stats.inserted, stats.updated, stats.unchanged) == (3, 3, 0, 0)
    got = rows(db_conn)
    assert got[1][:5] == ("Koch/Köchin", "Koch/Köchin", "29302", "B 1", "koch")
    assert "köchin" in got[1][5]
    assert got[2][2] == "29222"
    assert got[3][:3] == ("Verkäufer/in", None, None)  # a list page has no codes


def test_reload_is_idempotent_and_keeps_ids(db_conn: Any, tmp_path: Path) -> None:
    f = write(tmp_path, "d.json", [detail(1, "Koch/Köchin"), detail(2, "Bäcker/in", "B 29222")])
    catalogue.load_files(db_conn, [f])
    before = db_conn.execute("SELECT id, updated_at FROM occupations ORDER BY id").fetchall()
    again = catalogue.load_files(db_conn, [f])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert db_conn.execute("SELECT id, updated_at FROM occupations ORDER BY id").fetchall() == before
    # a renamed occupation and a new code: updated in place, same id
    g = write(
        tmp_path,
        "d2.json",
        [detail(1, "Koch/Köchin (Restaurant)", "B 29303"), detail(2, "Bäcker/in", "B 29222")],
    )
    third = catalogue.load_files(db_conn, [g])
    assert (third.inserted, third.updated, third.unchanged) == (0, 1, 1)
    assert rows(db_conn)[1][:3] == ("Koch/Köchin (Restaurant)", "Koch/Köchin (Restaurant)", "29303")
    assert db_conn.execute("SELECT count(*) FROM occupations").fetchone()[0] == 2


def test_a_list_page_never_erases_what_a_detail_said(db_conn: Any, tmp_path: Path) -> None:
    catalogue.load_files(db_conn, [write(tmp_path, "d.json", [detail(7, "Koch/Köchin")])])
    listing = write(tmp_path, "p.json", page([{"id": 7, "kurzBezeichnungNeutral": "Koch/Köchin"}]))
    stats = catalogue.load_files(db_conn, [listing])
    assert stats.unchanged == 1
    name, full, kldb, codenr, _norm, _aliases = rows(db_conn)[7]
    assert (name, full, kldb, codenr) == ("Koch/Köchin", "Koch/Köchin", "29302", "B 7")
    raw = db_conn.execute("SELECT raw FROM occupations WHERE id = 7").fetchone()[0]
    assert raw["kldb2010"] == "B 29302"  # the detail answer is kept as raw


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"foo": 1}, "at $:"),
        ("just a string", "at $:"),
        ({**page([]), "_embedded": {"berufSucheList": {}}}, "$._embedded.berufSucheList:"),
        (
            page([{"id": 1, "kurzBezeichnungNeutral": "A"}, {"id": "x", "kurzBezeichnungNeutral": "B"}]),
            "$._embedded.berufSucheList[1].id:",
        ),
        (page([{"id": 1}]), "$._embedded.berufSucheList[0].kurzBezeichnungNeutral:"),
        (page([None]), "$._embedded.berufSucheList[0]:"),
        ({"page": {"number": -1, "size": 20, "totalElements": 0, "totalPages": 0}}, "$.page.number:"),
        ([detail(1, "A"), detail(2, "")], "$[1].kurzBezeichnungNeutral:"),
        ([detail(1, "A"), 5], "$[1]:"),
        ([[detail(1, "A"), {"id": True, "kurzBezeichnungNeutral": "B"}]], "$[0][1].id:"),
        ([detail(1, "A", kldb="28212x")], "$[0].kldb2010:"),
        ([detail(1, "A", bezeichnungNeutral=["list"])], "$[0].bezeichnungNeutral:"),
    ],
)
def test_wrong_shapes_name_file_and_json_path_and_load_nothing(
    db_conn: Any, tmp_path: Path, doc: Any, path: str
) -> None:
    good = write(tmp_path, "good.json", [detail(1, "Koch/Köchin")])
    bad = write(tmp_path, "bad.json", doc)
    with pytest.raises(CatalogueError) as err:
        catalogue.load_files(db_conn, [good, bad])
    assert str(bad) in str(err.value)
    assert path in str(err.value)
    assert db_conn.execute("SELECT count(*) FROM occupations").fetchone()[0] == 0  # nothing half-loaded


def test_broken_json_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "cut.json"
    p.write_bytes(b'[{"id": 1, "kurzBezeichnungNeutral": "Koch/K')
    with pytest.raises(CatalogueError, match=r"cut\.json: at line 1 column \d+: not valid JSON"):
        catalogue.read_file(p)
    with pytest.raises(Exception, match="cannot read catalogue file"):
        catalogue.read_file(tmp_path / "missing.json")


def test_nul_bytes_and_invalid_utf8_in_names_are_cleaned_not_fatal(db_conn: Any, tmp_path: Path) -> None:
    p = tmp_path / "dirty.json"
    p.write_bytes(b'[{"id": 5, "kurzBezeichnungNeutral": "B\xe4cker/in\\u0000", "kldb2010": "B 29222"}]')
    catalogue.load_files(db_conn, [p])
    name = rows(db_conn)[5][0]
    assert "\x00" not in name
    assert name.startswith("B") and name.endswith("cker/in")


def test_cli_load_and_status(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "jobpipe.yaml"
    cfg.write_text(f"database:\n  url: {json.dumps(pg_url)}\n", encoding="utf-8")
    assert main(["-c", str(cfg), "occupations", "load", "--shipped", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inserted"] == len(SHIPPED)
    assert main(["-c", str(cfg), "occupations", "load", "--shipped", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == len(SHIPPED)
    bad = write(tmp_path, "bad.json", {"nope": True})
    assert main(["-c", str(cfg), "occupations", "load", str(bad)]) == 2
    assert f"{bad}: at $:" in capsys.readouterr().err
    assert main(["-c", str(cfg), "occupations", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["occupations"] == len(SHIPPED)


def test_cli_load_checks_the_files_before_the_database(
    pg_server: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or malformed file is its own one-line error (exit 2) whatever the database: one
    that refuses connections, or one whose schema is behind. The files are read first."""
    name = "e_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server["url"], autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")  # no migrations: `connect` would say the schema is behind
    bad = write(tmp_path, "bad.json", {"nope": True})
    missing = tmp_path / "missing.json"
    try:
        with socket.socket() as closed:  # bound, never listening: a connection to it is refused
            closed.bind(("127.0.0.1", 0))
            down = f"postgresql://jobpipe@127.0.0.1:{closed.getsockname()[1]}/jobpipe"
            for url in (down, url_for(pg_server["url"], name)):
                cfg = tmp_path / "jobpipe.yaml"
                cfg.write_text(f"database:\n  url: {json.dumps(url)}\n", encoding="utf-8")
                assert main(["-c", str(cfg), "occupations", "load", str(bad), "--shipped"]) == 2
                assert capsys.readouterr().err.startswith(f"jobpipe: {bad}: at $:")
                assert main(["-c", str(cfg), "occupations", "load", str(missing)]) == 2
                assert capsys.readouterr().err.startswith(f"jobpipe: cannot read catalogue file {missing}")
                # The same command with a good file does reach the database and says what is wrong.
                assert main(["-c", str(cfg), "occupations", "load", "--shipped"]) in (2, 3)
                err = capsys.readouterr().err
                assert ("connection failed" if url == down else "run `jobpipe migrate`") in err
    finally:
        with psycopg.connect(pg_server["url"], autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ------------------------------------------------------------------ fetching from the (fake) API


def client_for(fake: FakeBA, **kw: Any) -> BAClient:
    return BAClient(
        fake.url,
        berufenet_url=fake.berufenet_url,
        rate_limit_per_s=None,
        backoff_base_s=0.0,
        sleep=lambda s: None,
        **kw,
    )


def test_fetch_pages_and_details_then_upserts(db_conn: Any) -> None:
    cat = Catalogue.load(45)
    with FakeBA(postings=5, catalogue=cat) as fake, client_for(fake) as client:
        found, problems = catalogue.fetch(client)
        assert fake.count("berufe") == 3  # 45 occupations, 20 per page
        assert fake.count("beruf") == 45
    assert problems == []
    stats = catalogue.upsert(db_conn, found)
    assert stats.inserted == 45
    got = rows(db_conn)
    for o in cat.occupations:
        assert got[o.id][0] == o.name
        assert got[o.id][2] == o.kldb  # the KldB code came from the detail answer


def test_fetch_of_a_dead_api_raises_and_writes_nothing(db_conn: Any) -> None:
    with FakeBA(postings=5, catalogue=Catalogue.load(30)) as fake, client_for(fake, max_retries=1) as client:
        fake.faults.fail_next(1000, status=503, route="beruf")
        with pytest.raises(DependencyDown):
            catalogue.fetch(client)
    assert db_conn.execute("SELECT count(*) FROM occupations").fetchone()[0] == 0


def test_cli_fetch(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeBA(postings=5, catalogue=Catalogue.load(25)) as fake:
        cfg = tmp_path / "jobpipe.yaml"
        doc = {
            "database": {"url": pg_url},
            "classifier": {"berufenet_url": fake.berufenet_url},
            "fetcher": {"rate_limit_per_s": 100.0},
        }
        cfg.write_text(json.dumps(doc), encoding="utf-8")
        assert main(["-c", str(cfg), "occupations", "fetch", "--json"]) == 0
        assert fake.last_headers.get("X-API-Key") == "infosysbub-berufenet"
    out = json.loads(capsys.readouterr().out)
    assert (out["occupations"], out["inserted"], out["problems"]) == (25, 25, [])


def test_coordinated_compounds_become_lexical_terms_not_aliases(db_conn: Any) -> None:
    """Issue 18: "Anlagenfahrer" must reach "Maschinen- und Anlagenführer/in" by trigrams, so the
    coordination is read out ("anlagenführer", "maschinenführer"); the head "führer" comes from the
    catalogue's other names (Kran-, Bagger-, Zugführer), never from a list. The terms feed
    occupation_terms only: exact evidence (aliases) stays with names the catalogue states."""
    names = [
        "Maschinen- und Anlagenführer/in",
        "Kranführer/in",
        "Baggerführer/in",
        "Zugführer/in",
        "Koch/Köchin",
    ]
    occs = [catalogue.Occupation(9100 + i, n) for i, n in enumerate(names)]
    catalogue.upsert(db_conn, occs, search_terms={})  # the compounds alone, no curated terms
    terms = {r[0] for r in db_conn.execute("SELECT term FROM occupation_terms WHERE occupation_id = 9100")}
    assert {"maschinenführer", "anlagenführer"} <= terms
    aliases, lexical = db_conn.execute(
        "SELECT aliases, lexical_terms FROM occupations WHERE id = 9100"
    ).fetchone()
    assert lexical == ["anlagenführer", "maschinenführer"] and "anlagenführer" not in aliases
    assert db_conn.execute("SELECT lexical_terms FROM occupations WHERE id = 9104").fetchone()[0] == []
    # without the other "-führer" names there is no evidence that "führer" is a head: no terms
    heads = catalogue.compound_heads(names[:1])
    assert catalogue.coordination_terms(names[0], heads) == []


def test_compound_head_is_where_the_preceding_letters_vary_most() -> None:
    heads = catalogue.compound_heads(
        ["Kranführer/in", "Baggerführer/in", "Zugführer/in", "Maurer/in", "Betonbauer/in", "Kfz-Bauer/in",
         "Maschinenbauer/in", "Orgelbauer/in", "Stahlbetonbauer/in", "Holzbauer/in"]
    )  # fmt: skip
    assert catalogue.compound_head("anlagenführer", heads) == "führer"
    assert catalogue.compound_head("stahlbetonbauer", heads) == "bauer"
    assert catalogue.coordination_terms("Beton- und Stahlbetonbauer/in", heads) == [
        "betonbauer",
        "stahlbetonbauer",
    ]
    assert (
        catalogue.coordination_terms("Kfz-Mechatroniker/in", heads) == []
    )  # a hyphen compound, no coordination


def test_shipped_search_terms_name_real_occupations_and_add_something() -> None:
    """data/occupation_terms.csv: every occupation is a verbatim BERUFENET name (2015 list), and
    every term says what the name does not (a term the name contains adds no trigram)."""
    lines = (DATA_DIR / "occupation-names-berufenet-2015.txt").read_text(encoding="utf-8").splitlines()
    names = {line.strip() for line in lines if line.strip()}
    terms = catalogue.load_search_terms()
    assert terms, "the shipped search terms file is empty"
    assert set(terms) <= names, sorted(set(terms) - names)[:10]
    for name, found in terms.items():
        norms = [normalise(term) for term in found]
        assert len(norms) == len(set(norms)), f"{name}: a term twice"
        own = [normalise(name), *(normalise(form) for form in gender_forms(name))]
        for term, norm in zip(found, norms, strict=True):
            assert norm, (name, term)
            assert not any(norm in text for text in own), f"{term!r} adds nothing to {name!r}"


def test_search_terms_become_lexical_terms_never_exact_evidence(db_conn: Any) -> None:
    """A curated search term ("Schreiner" for "Tischler/in") feeds the trigram candidates, may
    name two occupations, and never decides a title without the LLM (not an alias)."""
    occs = [catalogue.Occupation(9200, "Tischler/in"), catalogue.Occupation(9201, "Holzmechaniker/in"),
            catalogue.Occupation(9202, "Koch/Köchin")]  # fmt: skip
    terms = {"Tischler/in": ["Schreiner", "Möbelschreiner"], "Holzmechaniker/in": ["Möbelschreiner"]}
    catalogue.upsert(db_conn, occs, search_terms=terms)
    got = dict(db_conn.execute("SELECT id, lexical_terms FROM occupations WHERE id >= 9200").fetchall())
    assert got == {9200: ["möbelschreiner", "schreiner"], 9201: ["möbelschreiner"], 9202: []}
    indexed = db_conn.execute(
        "SELECT occupation_id FROM occupation_terms WHERE term = 'möbelschreiner' ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in indexed] == [9200, 9201]
    assert load_exact_index(db_conn).evidence("schreiner", None) is None
    # a release that drops a term takes it out at the next refresh (the classifier's start)
    assert catalogue.refresh_lexical_terms(db_conn, {"Tischler/in": ["Schreiner"]}) == 2
    assert db_conn.execute("SELECT lexical_terms FROM occupations WHERE id = 9201").fetchone()[0] == []


def test_search_terms_file_format_errors_are_skipped_not_fatal() -> None:
    text = "# comment\nterm,occupation\nSchreiner,Tischler/in\n\nlonely\n Spengler , Klempner/in \n"
    assert catalogue.load_search_terms(text) == {"Tischler/in": ["Schreiner"], "Klempner/in": ["Spengler"]}


def test_local_search_terms_file_adds_to_the_shipped_ones(tmp_path: Path) -> None:
    local = tmp_path / "terms.csv"
    text = "# ours\nterm,occupation\nSchreinergeselle,Tischler/in\nBrotmeister,Bäcker/in\n"
    local.write_text(text, encoding="utf-8")
    merged = catalogue.search_terms_with(str(local))
    shipped = catalogue.load_search_terms()
    assert merged["Bäcker/in"] == [*shipped.get("Bäcker/in", []), "Brotmeister"]
    assert merged["Tischler/in"].count("Schreinergeselle") == 1  # already shipped: not twice
    assert catalogue.search_terms_with("") == shipped == catalogue.search_terms_with(None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"term,occupation\nSchreiner\n", "line 2: expected `term,occupation`"),
        (b"Schreiner,Tischler/in,extra\n", "line 1: expected"),
        (b"Schreiner, \n", "line 1: expected"),
        (b"Schrei\x00ner,Tischler/in\n", "line 1: a control or line separator character (U+0000)"),
        (b"x" * 300 + b",Tischler/in\n", "each 1-200 characters"),
        (b"Schreiner,Tischler/in\n\xff\xfe\n", "not UTF-8 (byte 22)"),
    ],
)
def test_a_broken_local_search_terms_file_names_file_and_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    local = tmp_path / "terms.csv"
    local.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        catalogue.search_terms_with(local)
    assert str(local) in str(err.value)


def test_a_local_terms_file_as_editors_save_it_is_read_like_a_plain_one(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM, Windows ends lines with CRLF, old Mac tools with CR;
    a comment may be indented. None of that may refuse the file, crash the reader or turn the
    comment into a term."""
    plain = (
        "# ours, by the ops team\nterm,occupation\nBrotmeister,Bäcker/in\n"
        "  # indented\nHolzwurm,Tischler/in\n"
    )
    variants = {
        "bom": b"\xef\xbb\xbf" + plain.encode(),
        "crlf": plain.replace("\n", "\r\n").encode(),
        "cr": plain.replace("\n", "\r").encode(),
        "bom-crlf": b"\xef\xbb\xbf" + plain.replace("\n", "\r\n").encode(),
    }
    expected = [(3, "Brotmeister", "Bäcker/in"), (5, "Holzwurm", "Tischler/in")]
    for name, content in variants.items():
        local = tmp_path / f"{name}.csv"
        local.write_bytes(content)
        assert catalogue.local_search_terms(local) == expected, name
        merged = catalogue.search_terms_with(local)
        assert "Holzwurm" in merged["Tischler/in"], name
        assert not any(k.startswith(("#", "\ufeff")) or "by the ops team" in k for k in merged), name


@pytest.mark.parametrize(
    ("content", "message"),
    [  # the CSV reader would keep these inside a name: a term for an occupation no one has
        (
            "Brotmeister,Bäcker/in\u2028Holzwurm,Tischler/in\n",
            "line 1: a control or line separator character (U+2028)",
        ),
        ("Brotmeister,Bäcker/in\x85Holzwurm,Tischler/in\n", "(U+0085)"),
        ("Brotmeister\tBäcker/in\n", "(U+0009)"),
        ('"Brotmeister,Bäcker/in\n', "line 1: unexpected end of data"),
        ("Teilzeit,Bäcker/in\n", "line 1: the term 'Teilzeit' is nothing a title search keeps"),
    ],
)
def test_a_local_terms_line_the_reader_would_mangle_is_refused(
    tmp_path: Path, content: str, message: str
) -> None:
    local = tmp_path / "terms.csv"
    local.write_text(content, encoding="utf-8", newline="")
    with pytest.raises(UserError, match=re.escape(message)):
        catalogue.search_terms_with(local)


def test_a_relative_local_terms_path_is_refused_and_home_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path names one file for `jobpipe occupations load` in the operator's directory and
    another (or none) for the classifier's unit in /: the writers would disagree."""
    (tmp_path / "terms.csv").write_text("Brotmeister,Bäcker/in\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"'terms\.csv' is a relative path; give an absolute one"):
        catalogue.search_terms_with("terms.csv")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert "Brotmeister" in catalogue.search_terms_with("~/terms.csv")["Bäcker/in"]


def test_a_local_terms_file_whose_size_stat_hides_is_refused_not_read_into_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO (or /dev/zero, a device) reports size 0: the size limit must hold while reading."""
    monkeypatch.setattr(terms_file, "MAX_TERMS_FILE_BYTES", 4096)
    fifo = tmp_path / "terms.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        try:
            with fifo.open("wb") as fh:
                fh.write(b"Brotmeister,B\xc3\xa4cker/in\n" * 1000)  # 24 KB
        except BrokenPipeError:
            pass  # the reader stopped at the limit

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(UserError, match=r"terms\.fifo: over 0 MB"):
        catalogue.search_terms_with(fifo)
    writer.join(10)


def test_a_missing_local_search_terms_file_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"classifier\.search_terms_file: cannot read .*nope\.csv"):
        catalogue.search_terms_with(tmp_path / "nope.csv")


def test_cli_load_uses_the_configured_search_terms_and_checks_them_first(
    pg_url: str, db_conn: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "terms.csv"
    local.write_text("Brotmeister,Bäcker/in\n", encoding="utf-8")
    cfg = tmp_path / "jobpipe.yaml"
    settings = f"classifier:\n  search_terms_file: {json.dumps(str(local))}\n"
    cfg.write_text(f"database:\n  url: {json.dumps(pg_url)}\n{settings}", encoding="utf-8")
    assert main(["-c", str(cfg), "occupations", "load", "--shipped", "--json"]) == 0
    capsys.readouterr()
    lexical = "SELECT lexical_terms FROM occupations WHERE name = 'Bäcker/in'"
    assert "brotmeister" in db_conn.execute(lexical).fetchone()[0]
    local.write_text("Brotmeister;Bäcker/in\n", encoding="utf-8")  # a typo: refused, nothing changes
    assert main(["-c", str(cfg), "occupations", "load", "--shipped", "--json"]) == 2
    assert f"{local}: line 1: expected `term,occupation`" in capsys.readouterr().err
    assert "brotmeister" in db_conn.execute(lexical).fetchone()[0]


def test_cli_load_names_local_terms_whose_occupation_the_catalogue_lacks(
    pg_url: str, db_conn: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the BERUFENET name ("Bäcker/-in") leaves its terms unused: the load says so, with
    the line and the nearest name, instead of dropping them silently (and still loads)."""
    local = tmp_path / "terms.csv"
    local.write_text(
        "# ours\nBrotmeister,Bäcker/in\nOfenmeister,Bäcker/-in\nTeigmacher,Bäcker/-in\nX-Beruf,Zzqx Wvq\n",
        encoding="utf-8",
    )
    cfg = tmp_path / "jobpipe.yaml"
    settings = f"classifier:\n  search_terms_file: {json.dumps(str(local))}\n"
    cfg.write_text(f"database:\n  url: {json.dumps(pg_url)}\n{settings}", encoding="utf-8")
    assert main(["-c", str(cfg), "occupations", "load", "--shipped", "--json"]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: {local}: line 3: no occupation 'Bäcker/-in' in the catalogue, 2 term(s) unused "
        "(did you mean 'Bäcker/in'?)"
    ) in err
    assert f"{local}: line 5: no occupation 'Zzqx Wvq' in the catalogue, 1 term(s) unused\n" in err
    assert "Brotmeister" not in err
    lexical = "SELECT lexical_terms FROM occupations WHERE name = 'Bäcker/in'"
    assert "brotmeister" in db_conn.execute(lexical).fetchone()[0]


def test_refresh_racing_a_load_that_renames_keeps_the_new_names_terms(pg_url: str, db_conn: Any) -> None:
    """The classifier's start-up refresh while `jobpipe occupations load` renames an occupation:
    the refresh must not write terms it computed from the name the load replaced (a lost update:
    "Tischler/in"'s terms on what is now "Bäcker/in", until some later refresh)."""
    terms = {"Tischler/in": ["Schreiner"], "Bäcker/in": ["Brotbäcker"]}
    catalogue.upsert(db_conn, [catalogue.Occupation(9300, "Tischler/in")], search_terms={})  # older release
    loader = psycopg.connect(pg_url, autocommit=True)
    refresher = psycopg.connect(pg_url, autocommit=True, application_name="racing-refresh")
    try:
        with loader.transaction():  # the load, not committed yet
            catalogue.upsert(loader, [catalogue.Occupation(9300, "Bäcker/in")], search_terms=terms)
            errors: list[BaseException] = []

            def refresh() -> None:
                try:
                    catalogue.refresh_lexical_terms(refresher, terms)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            thread = threading.Thread(target=refresh)
            thread.start()
            for _ in range(500):  # until the refresh waits for the load's locks
                row = db_conn.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE application_name = 'racing-refresh'"
                ).fetchone()
                if row and row[0] == "Lock":
                    break
                thread.join(0.01)
            else:  # pragma: no cover
                raise AssertionError("the refresh never waited for the load")
        thread.join(10)
        assert not errors, errors
    finally:
        loader.close()
        refresher.close()
    got = db_conn.execute("SELECT name, lexical_terms FROM occupations WHERE id = 9300").fetchone()
    assert got == ("Bäcker/in", ["brotbäcker"])


# Bare words that head thousands of unrelated titles ("Sachbearbeiter Personal", "Associate
# Consultant", "Lehrkraft Mathematik"): a search term that normalises to one of them pulls its
# occupation into the lexical candidates of all of them.
GENERIC_TITLE_WORDS = {
    "sachbearbeiter", "associate", "lehrkraft", "mitarbeiter", "helfer", "hilfskraft", "aushilfe",
    "fachkraft", "kraft", "monteur", "fahrer", "manager", "assistent", "assistenz", "berater",
    "techniker", "ingenieur", "leiter", "arbeiter", "angestellter", "specialist", "spezialist",
    "analyst", "referent", "koordinator", "officer", "operator", "agent", "meister", "geselle",
}  # fmt: skip


def test_no_search_term_is_a_bare_generic_title_word() -> None:
    """After normalise (which drops "Junior", "Senior", "Quereinsteiger", "Teilzeit"), no curated
    term may be a bare generic word: "Junior Sachbearbeiter" was "sachbearbeiter" for
    Industriekauf/mann/frau only."""
    generic = sorted(
        (term, name)
        for name, found in catalogue.load_search_terms().items()
        for term in found
        if normalise(term) in GENERIC_TITLE_WORDS
    )
    assert generic == []


def test_search_terms_known_wrong_mappings_stay_out() -> None:
    """Mappings a recruiter calls wrong (review of issue 18's terms): a goalkeeper is no porter, a
    Leutnant is an officer, not a private; Tanzlehrer/in and Sportwissenschaftler/in are
    occupations of their own; a marketing analyst is a market researcher, not a data-warehouse one."""
    terms = catalogue.load_search_terms()
    wrong = {
        ("Torwart", "Pförtner/in"),
        ("Leutnant", "Soldat/in in Laufbahngruppe Mannschaften"),
        ("Tanzlehrer", "Bühnentänzer/in"),
        ("Sportwissenschaftler", "Sportlehrer/in"),
        ("Marketing Analyst", "Data-Warehouse-Analyst/in"),
        ("Onlineshop-Manager", "Webadministrator/in"),
        ("Oberarzt", "Chef/arzt/ärztin"),
        ("Hauswirt", "Hausmeister/in"),
    }
    assert sorted((t, n) for t, n in wrong if t in terms.get(n, ())) == []


def test_search_terms_reach_a_name_whose_whitespace_the_wire_collapsed(db_conn: Any) -> None:
    """The shipped terms are keyed by the 2015 list's names, two with a double space ("Portier/e
    eines Hotel" with two); a catalogue read from the API (or a saved answer) has it collapsed."""
    assert "Portier/e  eines Hotel" in catalogue.load_search_terms()
    body = json.dumps([{"id": 9400, "kurzBezeichnungNeutral": "Portier/e  eines Hotel"}]).encode()
    occs = catalogue.parse_document(body, "detail.json")
    assert occs[0].name == "Portier/e eines Hotel"
    catalogue.upsert(db_conn, occs)
    lexical = db_conn.execute("SELECT lexical_terms FROM occupations WHERE id = 9400").fetchone()[0]
    assert "bellboy" in lexical


def test_a_large_local_terms_file_merges_whole(tmp_path: Path) -> None:
    """100,000 terms for one occupation, none lost or doubled (the merge once tested membership in
    a list per term: 45 s here, now ~2 s; not asserted, timings are not a unit test's business)."""
    local = tmp_path / "big.csv"
    local.write_text("".join(f"Brotberuf{i},Bäcker/in\n" for i in range(100_000)), encoding="utf-8")
    merged = catalogue.search_terms_with(local)
    assert len(merged["Bäcker/in"]) == 100_000 + len(catalogue.load_search_terms().get("Bäcker/in", []))
