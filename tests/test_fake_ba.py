"""The fake BA follows the contract (docs/contracts/ba-jobsuche.md), checked with raw HTTP."""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from jobpipe.sim.ba import DIRTY_KINDS, STATES, Catalogue, FakeBA, Population
from jobpipe.sim.ba_data import DATA_DIR

TODAY = date(2026, 10, 1)
KEY = {"X-API-Key": "jobboerse-jobsuche"}
BKEY = {"X-API-Key": "infosysbub-berufenet"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def population() -> Population:
    """Shared by read-only tests; tests that mutate build their own."""
    return Population.generate(4000, seed=7, today=TODAY, multi_location_share=0.15)


@pytest.fixture
def fake(population: Population) -> Iterator[FakeBA]:
    with FakeBA(population) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def search(http: requests.Session, fake: FakeBA, **params: Any) -> requests.Response:
    return http.get(f"{fake.url}/pc/v6/jobs", params=params, headers=KEY, timeout=10)


def crawl(http: requests.Session, fake: FakeBA, size: int = 100, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in range(1, 10_000 // size + 1):
        body = search(http, fake, page=page, size=size, **params).json()
        if "ergebnisliste" not in body:
            break
        items += body["ergebnisliste"]
    return items


def details(http: requests.Session, fake: FakeBA, refnr: str, pad: bool = True) -> requests.Response:
    seg = base64.b64encode(refnr.encode()).decode()
    return http.get(f"{fake.url}/pc/v4/jobdetails/{seg if pad else seg.rstrip('=')}", headers=KEY, timeout=10)


# ---------------------------------------------------------------- key and errors


def test_api_key_is_checked_on_every_route(fake: FakeBA, http: requests.Session) -> None:
    detail_path = "/pc/v4/jobdetails/" + base64.b64encode(fake.population.refnrs()[0].encode()).decode()
    for url, good in [
        (f"{fake.url}/pc/v6/jobs", KEY),
        (f"{fake.url}{detail_path}", KEY),
        (f"{fake.berufenet_url}/berufe?page=0", BKEY),
        (f"{fake.berufenet_url}/berufe/10000", BKEY),
    ]:
        assert http.get(url, headers=good, timeout=10).status_code == 200, url
        missing = http.get(url, timeout=10)
        assert missing.status_code == 401, url
        other_key = BKEY if good is KEY else KEY
        for wrong in ({"X-API-Key": "falsch"}, other_key):
            answer = http.get(url, headers=wrong, timeout=10)
            assert (answer.status_code, answer.content) == (403, b""), url


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"page": 0}, "page"),
        ({"page": -3}, "page"),
        ({"page": "eins"}, "page"),
        ({"size": 0}, "size"),
        ({"size": 101}, "size"),
        ({"page": 101, "size": 100}, "page"),
        ({"page": 201, "size": 50}, "page"),
        ({"angebotsart": 7}, "angebotsart"),
        ({"arbeitszeit": "vz;xx"}, "arbeitszeit"),
    ],
)
def test_bad_queries_get_400_in_the_gateway_format(
    fake: FakeBA, http: requests.Session, params: dict[str, Any], path: str
) -> None:
    answer = search(http, fake, **params)
    assert answer.status_code == 400
    body = answer.json()
    assert set(body) == {"timestamp", "logref", "messages"}
    (message,) = body["messages"]
    assert message["code"] == "EINGABEN_UNVOLLSTAENDIG_ODER_FEHLERHAFT"
    assert message["path"] == path and message["detail"]


def test_the_cap_allows_exactly_10000(fake: FakeBA, http: requests.Session) -> None:
    answer = search(http, fake, page=100, size=100)
    assert answer.status_code == 200
    body = answer.json()
    # beyond the last hit: no list, but the total and facets are still there
    assert "ergebnisliste" not in body and body["maxErgebnisse"] == len(fake.population.refnrs(active=True))
    assert search(http, fake, page=10_000, size=1).status_code == 200


def test_retired_v4_search_and_unknown_paths_are_404(fake: FakeBA, http: requests.Session) -> None:
    assert http.get(f"{fake.url}/pc/v4/jobs", headers=KEY, timeout=10).status_code == 404
    assert http.get(f"{fake.url}/pc/v5/nix", headers=KEY, timeout=10).status_code == 404
    assert http.get(f"{fake.root}/pc/v6/jobs", headers=KEY, timeout=10).status_code == 404


# ---------------------------------------------------------------- search semantics


def test_no_match_omits_ergebnisliste_and_facetten(fake: FakeBA, http: requests.Session) -> None:
    for params in ({"was": "gibtesnichtxyz"}, {"wo": "Nirgendwo"}, {"wo": "Baden-Wurttemberg"}):
        answer = search(http, fake, **params)
        assert answer.status_code == 200
        body = answer.json()
        assert "ergebnisliste" not in body and "facetten" not in body, params
        assert body["maxErgebnisse"] == 0 and body["page"] == 1
    assert search(http, fake, wo="Nirgendwo").json()["woOutput"]["suchmodus"] == "UNGUELTIG"


def test_crawl_returns_every_live_posting_once_in_a_stable_order(
    fake: FakeBA, http: requests.Session
) -> None:
    first = crawl(http, fake, size=100)
    refnrs = [i["referenznummer"] for i in first]
    assert len(refnrs) == len(set(refnrs))
    assert set(refnrs) == set(fake.population.refnrs(active=True))
    assert [i["referenznummer"] for i in crawl(http, fake, size=37)] == refnrs
    published = [i["veroeffentlichungszeitraum"]["von"] for i in first]
    assert published == sorted(published, reverse=True)
    body = search(http, fake, page=1, size=100).json()
    assert body["maxErgebnisse"] == len(refnrs) and body["size"] == 100 and len(body["ergebnisliste"]) == 100


def test_state_filter_with_umlauts_and_facets_allow_splitting(fake: FakeBA, http: requests.Session) -> None:
    top = search(http, fake, page=1, size=1).json()
    facets = top["facetten"]
    assert set(facets) >= {"bundesland", "arbeitsort", "angebotsart", "arbeitszeit", "berufsfeld"}
    assert set(facets["bundesland"]["counts"]) == {display for _e, display, _w, _c in STATES}
    assert sum(facets["angebotsart"]["counts"].values()) == top["maxErgebnisse"]  # one offer type each
    for name, facet in facets.items():
        assert facet["maxCount"] == max(facet["counts"].values()), name
    enum = {display: e for e, display, _w, _c in STATES}
    for display in ("Baden-Württemberg", "Thüringen", "Berlin"):
        body = search(http, fake, wo=display, page=1, size=100).json()
        assert body["maxErgebnisse"] == facets["bundesland"]["counts"][display]
        assert body["woOutput"]["suchmodus"] == "BUNDESLANDSUCHE"
        for it in crawl(http, fake, wo=display):
            assert enum[display] in {loc["adresse"]["region"] for loc in it["stellenlokationen"]}
    offer = max(facets["berufsfeld"]["counts"], key=facets["berufsfeld"]["counts"].get)
    assert (
        search(http, fake, berufsfeld=offer).json()["maxErgebnisse"] == facets["berufsfeld"]["counts"][offer]
    )


def test_filters_match_an_independent_count(fake: FakeBA, http: requests.Session) -> None:
    live = [fake.population.get(r) for r in fake.population.refnrs(active=True)]
    offer_names = {1: "ARBEIT", 2: "SELBSTAENDIGKEIT", 4: "AUSBILDUNG", 34: "PRAKTIKUM_TRAINEE"}
    for code, name in offer_names.items():
        items = crawl(http, fake, angebotsart=code)
        assert len(items) == sum(p.offer == code for p in live)
        assert {i["stellenangebotsart"] for i in items} <= {name}
    since = crawl(http, fake, veroeffentlichtseit=7)
    assert since and all(
        date.fromisoformat(i["veroeffentlichungszeitraum"]["von"]) >= TODAY - timedelta(7) for i in since
    )
    assert len(since) == sum(p.published >= TODAY - timedelta(7) for p in live)
    ignored = search(http, fake, veroeffentlichtseit=500).json()["maxErgebnisse"]
    assert ignored == len(live)
    parttime = crawl(http, fake, arbeitszeit="tz;mj")
    assert len(parttime) == sum(bool({"tz", "mj"} & set(p.worktime)) for p in live)
    assert all(i.get("arbeitszeitTeilzeitFlexibel") or i.get("arbeitszeitMinijob") for i in parttime)
    some = live[0]
    by_employer = crawl(http, fake, arbeitgeber=some.employer)
    assert {i["firma"] for i in by_employer} == {some.employer}


def test_city_search_is_a_radius_search_with_distance(fake: FakeBA, http: requests.Session) -> None:
    body = search(http, fake, wo="München", umkreis=50, page=1, size=100).json()
    assert body["woOutput"]["suchmodus"] == "UMKREISSUCHE" and body["woOutput"]["koordinaten"]
    assert body["maxErgebnisse"] > 0
    for it in body["ergebnisliste"]:
        assert int(it["entfernung"]) <= 50
    near = search(http, fake, wo="München", umkreis=0).json()["maxErgebnisse"]
    assert 0 < near <= body["maxErgebnisse"]
    assert (
        search(http, fake, wo="80331").json()["maxErgebnisse"]
        == search(http, fake, wo="München").json()["maxErgebnisse"]
    )


# ---------------------------------------------------------------- details


def test_details_padded_unpadded_expired_partner(fake: FakeBA, http: requests.Session) -> None:
    pop = fake.population
    live = [pop.get(r) for r in pop.refnrs(active=True)]
    own = next(
        p
        for p in live
        if p.external_url is None
        and len(base64.b64encode(p.refnr.encode())) % 4 == 0
        and base64.b64encode(p.refnr.encode()).endswith(b"=")
    )
    padded, unpadded = details(http, fake, own.refnr), details(http, fake, own.refnr, pad=False)
    assert padded.status_code == unpadded.status_code == 200
    assert padded.content == unpadded.content
    body = padded.json()
    assert body["referenznummer"] == own.refnr
    text = body["stellenangebotsBeschreibung"]
    assert "\n" in text and "**" in text and "\n- " in text
    partner = next(p for p in live if p.external_url)
    body = details(http, fake, partner.refnr).json()
    assert body["externeURL"] == partner.external_url and "stellenangebotsBeschreibung" not in body
    for refnr in (pop.refnrs(active=False)[0], "99999-0000000000-S"):
        gone = details(http, fake, refnr)
        assert gone.status_code == 404
        assert gone.json() == {"messages": [{"code": "STELLENANGEBOT_NICHT_GEFUNDEN"}]}
    assert http.get(f"{fake.url}/pc/v4/jobdetails/%%%", headers=KEY, timeout=10).status_code == 400


# ---------------------------------------------------------------- the population


def test_population_is_realistic_and_deterministic(population: Population) -> None:
    again = Population.generate(4000, seed=7, today=TODAY, multi_location_share=0.15)
    assert [p.title for p in again.postings] == [p.title for p in population.postings]
    assert Population.generate(50, seed=8, today=TODAY).refnrs() != again.refnrs()[:50]
    posts = population.postings
    assert len({p.refnr for p in posts}) == len(posts)
    assert {c.region for p in posts for c in p.locs} == {e for e, _d, _w, _c in STATES}
    cities = {c.name for p in posts for c in p.locs}
    assert {"München", "Köln", "Lübeck", "Düsseldorf"} <= cities
    multi = [p for p in posts if len(p.locs) > 1]
    assert 0.05 < len(multi) / len(posts) < 0.3 and max(len(p.locs) for p in posts) == 3
    assert 0.02 < sum(p.expired for p in posts) / len(posts) < 0.09
    assert 0.04 < sum(p.external_url is not None for p in posts) / len(posts) < 0.13
    assert 0.2 < sum(p.salary is not None for p in posts) / len(posts) < 0.4
    assert any(p.refnr.split("-")[1].isalnum() and not p.refnr.split("-")[1].isdigit() for p in posts)  # hex
    names = {o.name for o in population.catalogue.occupations}
    assert all(p.occ.name in names for p in posts)
    titles = [p.title for p in posts]
    assert sum("(m/w/d)" in t for t in titles) / len(titles) > 0.3
    assert any("in Vollzeit" in t for t in titles) and any(t.startswith("Senior ") for t in titles)
    assert len({p.title for p in posts}) > len(posts) * 0.8
    # titles come from the clean name (noise around it), not invented
    assert sum(p.occ.masculine in p.title or p.occ.name in p.title for p in posts) / len(posts) > 0.85


def test_catalogue_uses_real_names_and_kldb_codes() -> None:
    catalogue = Catalogue.load()
    with (DATA_DIR / "kldb2010.csv").open(encoding="utf-8") as f:
        codes = {row["Concept"] for row in csv.DictReader(f) if len(row["Concept"]) == 5}
    lines = (DATA_DIR / "occupation-names-berufenet-2015.txt").read_text(encoding="utf-8").splitlines()
    assert len(catalogue) == len({line.strip() for line in lines if line.strip()})
    assert all(o.kldb in codes for o in catalogue.occupations)
    assert len({o.kldb for o in catalogue.occupations}) > 300
    small = Catalogue.load(500)
    assert len(small) == 500 and all(catalogue.by_id[o.id].name == o.name for o in small.occupations)
    koch = next(o for o in catalogue.occupations if o.name == "Koch/Köchin")
    assert (koch.masculine, koch.feminine) == ("Koch", "Köchin")


def test_generation_is_fast() -> None:
    started = time.perf_counter()
    pop = Population.generate(20_000, seed=3, today=TODAY)
    assert len(pop) == 20_000
    assert time.perf_counter() - started < 5.0  # 100,000 take ~2-3 s on this machine


# ---------------------------------------------------------------- mutations


def test_expire_modify_add_at_runtime(http: requests.Session) -> None:
    pop = Population.generate(300, seed=11, today=TODAY, expired_share=0.0)
    with FakeBA(pop) as fake:
        before = {i["referenznummer"]: i for i in crawl(http, fake)}
        victim, changed = list(before)[:2]
        pop.expire([victim])
        assert details(http, fake, victim).status_code == 404
        new_time = pop.modify(changed, title="Neuer Titel (m/w/d)")
        after = {i["referenznummer"]: i for i in crawl(http, fake)}
        assert victim not in after and len(after) == len(before) - 1
        assert after[changed]["stellenangebotsTitel"] == "Neuer Titel (m/w/d)"
        assert after[changed]["aenderungsdatum"] == new_time.isoformat(timespec="milliseconds")
        assert after[changed]["aenderungsdatum"] > before[changed]["aenderungsdatum"]
        added = pop.add(5)
        first_page = search(http, fake, page=1, size=100).json()
        assert first_page["maxErgebnisse"] == len(before) - 1 + 5
        assert set(added) <= {i["referenznummer"] for i in first_page["ergebnisliste"]}
        assert search(http, fake, veroeffentlichtseit=0).json()["maxErgebnisse"] >= 5
        expired = pop.expire_share(0.1, seed=1)
        assert len(expired) == round((len(before) - 1 + 5) * 0.1)
        assert all(details(http, fake, r).status_code == 404 for r in expired[:5])


# ---------------------------------------------------------------- faults


def test_status_bursts_and_rates(fake: FakeBA, http: requests.Session) -> None:
    fake.faults.fail_next(2, 403)
    answers = [search(http, fake, size=1) for _ in range(3)]
    assert [(a.status_code, a.content) for a in answers[:2]] == [(403, b""), (403, b"")]
    assert answers[2].status_code == 200
    fake.faults.fail_next(1, 503, route="details")
    assert search(http, fake, size=1).status_code == 200  # another route: untouched
    refnr = fake.population.refnrs(active=True)[0]
    answer = details(http, fake, refnr)
    assert answer.status_code == 503 and b"No server is available" in answer.content
    fake.faults.fail_next(1, 429, retry_after=7)
    assert search(http, fake, size=1).headers["Retry-After"] == "7"
    fake.faults.fail_rate(0.5, 403, seed=1)
    statuses = [search(http, fake, size=1).status_code for _ in range(40)]
    assert 8 <= statuses.count(403) <= 32 and statuses.count(200) == 40 - statuses.count(403)
    fake.faults.fail_rate(0)
    assert search(http, fake, size=1).status_code == 200
    assert fake.count("search", 403) == 2 + statuses.count(403)
    assert fake.count("details", 503) == 1 and fake.count(status=429) == 1


def test_latency(fake: FakeBA, http: requests.Session) -> None:
    fake.faults.set_latency(0.3, route="search")
    started = time.monotonic()
    assert search(http, fake, size=1).status_code == 200
    assert time.monotonic() - started >= 0.3
    fake.faults.set_latency(0)
    started = time.monotonic()
    search(http, fake, size=1)
    assert time.monotonic() - started < 0.3


def test_truncated_malformed_null_item_and_drift(fake: FakeBA, http: requests.Session) -> None:
    full = search(http, fake, size=50).content
    fake.faults.truncate_next(1)
    cut = search(http, fake, size=50)
    assert cut.status_code == 200 and full.startswith(cut.content) and len(cut.content) < len(full)
    with pytest.raises(ValueError):
        json.loads(cut.content)
    fake.faults.malformed_next(1)
    with pytest.raises(ValueError):
        json.loads(search(http, fake, size=50).content)
    fake.faults.null_item_next(1)
    items = search(http, fake, size=50).json()["ergebnisliste"]
    assert items.count(None) == 1 and len(items) == 51
    assert None not in search(http, fake, size=50).json()["ergebnisliste"]  # once
    fake.faults.set_drift("v4")
    v4 = search(http, fake, size=5).json()
    assert "ergebnisliste" not in v4 and "refnr" in v4["stellenangebote"][0]
    assert "titel" in details(http, fake, fake.population.refnrs(active=True)[0]).json()
    fake.faults.set_drift("no_keys")
    drift = search(http, fake, size=5).json()
    assert "ergebnisliste" not in drift and "maxErgebnisse" not in drift
    fake.faults.clear()
    assert "ergebnisliste" in search(http, fake, size=5).json()


def test_dirty_population(http: requests.Session) -> None:
    pop = Population.generate(400, seed=5, today=TODAY, dirty_share=0.1, expired_share=0.0, partner_share=0.0)
    kinds = {p.dirty for p in pop.postings if p.dirty}
    assert kinds == set(DIRTY_KINDS)
    with FakeBA(pop) as fake:
        raw = b"".join(search(http, fake, page=n, size=100).content for n in range(1, 6))
        assert b"\\u0000" in raw and b"\xff\xfe" in raw and b"\\ud800" in raw
        assert b"2026-13-45" in raw and b"123.4" in raw
        dup = next(p for p in pop.postings if p.dirty == "duplicate")
        assert raw.count(f'"referenznummer":"{dup.refnr}"'.encode()) == 2
        missing = next(p for p in pop.postings if p.dirty == "missing_title")
        item_bytes = pop.item_json(missing)
        assert b"stellenangebotsTitel" not in item_bytes
        huge = next(p for p in pop.postings if p.dirty == "huge_description")
        assert len(details(http, fake, huge.refnr).json()["stellenangebotsBeschreibung"]) >= 1_048_576
        pop.make_dirty(huge.refnr, None)
        assert len(details(http, fake, huge.refnr).json()["stellenangebotsBeschreibung"]) < 10_000
        with pytest.raises(ValueError):
            pop.make_dirty(huge.refnr, "nonsense")


# ---------------------------------------------------------------- BERUFENET


def test_berufenet_pages_and_details(fake: FakeBA, http: requests.Session) -> None:
    n = len(fake.catalogue)
    first = http.get(
        f"{fake.berufenet_url}/berufe", params={"page": 0, "suchwoerter": "*"}, headers=BKEY, timeout=10
    )
    body = first.json()
    assert len(body["_embedded"]["berufSucheList"]) == 20
    assert body["page"] == {"size": 20, "totalElements": n, "totalPages": (n + 19) // 20, "number": 0}
    assert "next" in body["_links"]
    last_no = (n + 19) // 20 - 1
    last = http.get(f"{fake.berufenet_url}/berufe", params={"page": last_no}, headers=BKEY, timeout=10).json()
    assert "next" not in last["_links"] and 1 <= len(last["_embedded"]["berufSucheList"]) <= 20
    beyond = http.get(
        f"{fake.berufenet_url}/berufe", params={"page": last_no + 1}, headers=BKEY, timeout=10
    ).json()
    assert "_embedded" not in beyond
    ids = [b["id"] for b in body["_embedded"]["berufSucheList"]]
    assert ids == sorted(ids) and len(set(ids)) == 20
    detail = http.get(f"{fake.berufenet_url}/berufe/{ids[1]}", headers=BKEY, timeout=10).json()
    assert isinstance(detail, list) and detail[0]["id"] == ids[1]
    obj = detail[0]
    assert obj["kldb2010"].startswith("B ") and len(obj["kldb2010"]) == 7 and obj["kldb2010"][2:].isdigit()
    assert {"kurzBezeichnungNeutral", "bezeichnungNeutral", "codenr", "steckbrief", "infofelder"} <= set(obj)
    two = http.get(f"{fake.berufenet_url}/berufe/10000", headers=BKEY, timeout=10).json()
    assert len(two) in (1, 2) and two[0]["id"] == 10000
    assert http.get(f"{fake.berufenet_url}/berufe/1", headers=BKEY, timeout=10).status_code == 404


# ---------------------------------------------------------------- as a process, control API


@pytest.mark.system
def test_runs_as_a_process_with_a_control_api(http: requests.Session) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "jobpipe.sim.ba",
        "--port",
        "0",
        "--postings",
        "300",
        "--seed",
        "2",
        "--today",
        "2026-10-01",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        berufenet = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/jobboerse/jobsuche-service")
        assert berufenet.endswith("/infosysbub/bnet/pc/v1")
        body = http.get(f"{url}/pc/v6/jobs", params={"size": 10}, headers=KEY, timeout=10).json()
        assert body["maxErgebnisse"] > 250 and len(body["ergebnisliste"]) == 10
        root = url.rsplit("/jobboerse", 1)[0]
        http.post(f"{root}/_fake/faults", json={"fail_next": {"n": 1, "status": 503}}, timeout=10)
        assert http.get(f"{url}/pc/v6/jobs", headers=KEY, timeout=10).status_code == 503
        changed = http.post(f"{root}/_fake/population", json={"expire_share": 0.5}, timeout=10).json()
        assert len(changed["expired"]) > 100
        state = http.get(f"{root}/_fake/state", timeout=10).json()
        assert state["counts"]["search"] == {"200": 1, "503": 1} and state["today"] == "2026-10-01"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
