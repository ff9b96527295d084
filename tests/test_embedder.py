"""The embedder daemon on the real runtime, a real PostgreSQL + pgvector and the fake Ollama:
batching, the HNSW index, every kind of bad input, the model server going away, model changes,
and the determinism check (which must pass on the fake and fail on a fake that drifts)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from jobpipe import cli, config, embeddings, queue, runtime
from jobpipe.daemons.embedder import EmbedderDaemon
from jobpipe.metrics import DaemonMetrics
from jobpipe.sim.ollama import FakeOllama
from jobpipe.text import clean_text
from tests.waiting import in_thread, wait_until

MODEL = "all-minilm"  # 384 dimensions in the fake, no role prefixes
DIM = 384


@pytest.fixture
def fake():
    with FakeOllama() as f:
        yield f


def make_cfg(fake: FakeOllama, **over: Any) -> config.Config:
    base = dict(
        ollama__urls=[fake.url],
        ollama__connect_timeout_s=1.0,
        ollama__read_timeout_s=5.0,
        embedder__model=MODEL,
        embedder__dimensions=DIM,
        embedder__batch_size=16,
        embedder__workers=2,
        embedder__max_attempts=3,
        queue__poll_interval_s=0.05,
        queue__backoff_base_s=60.0,  # a failed item stays scheduled: --once does not retry it
        runtime__status_interval_s=0.2,
        runtime__dependency_backoff_s=0.05,
        runtime__dependency_backoff_max_s=0.2,
    )
    base.update(over)
    return config.load(environ={}).with_overrides(**base)


def add_postings(conn: Any, rows: list[dict[str, Any]]) -> list[int]:
    ids = []
    for i, r in enumerate(rows):
        ids.append(
            conn.execute(
                """INSERT INTO postings (external_id, title, title_norm, description, description_state,
                                         occupation_id)
                   VALUES (%s, %s, %s, %s, 'fetched', %s) RETURNING id""",
                (
                    r.get("external_id", f"ext-{i}-{id(r)}"),
                    r.get("title"),
                    (r.get("title") or "").strip().lower() or None,
                    r.get("description"),
                    r.get("occupation_id"),
                ),
            ).fetchone()[0]
        )
    return ids


def run_once(cfg: config.Config, pg_url: str, metrics: DaemonMetrics | None = None) -> int:
    return runtime.run_daemon(EmbedderDaemon, cfg, once=True, db_url=pg_url, metrics=metrics)


def stored(conn: Any, model: str = MODEL) -> dict[int, tuple[str, int, np.ndarray]]:
    rows = conn.execute(
        "SELECT posting_id, text_hash, dimensions, embedding FROM posting_embeddings WHERE model = %s",
        (model,),
    ).fetchall()
    return {pid: (h, d, np.asarray(v.to_numpy())) for pid, h, d, v in rows}


def item(conn: Any, posting_id: int) -> dict[str, Any]:
    row = conn.execute(
        """SELECT status, attempts, outcome, last_error FROM queue
            WHERE stage = 'embed' AND subject = %s ORDER BY id DESC LIMIT 1""",
        (posting_id,),
    ).fetchone()
    return dict(zip(("status", "attempts", "outcome", "last_error"), row, strict=True))


def sent_inputs(fake: FakeOllama) -> list[str]:
    return [t for _, path, req in fake.requests_log if path == "/api/embed" for t in req["input"]]


GERMAN = [
    ("Koch (m/w/d) für unser Restaurant", "Wir suchen einen Koch für die warme Küche, Vollzeit."),
    ("Pflegefachkraft Intensivstation", "Examinierte Pflegekraft für die Intensivpflege im Klinikum."),
    ("Berufskraftfahrer CE Nahverkehr", "LKW-Fahrer für Touren im Nahverkehr, Führerschein CE."),
    ("Softwareentwickler Python", "Backend-Entwicklung mit Python und PostgreSQL im agilen Team."),
    ("Steuerfachangestellte (m/w/d)", "Kanzlei sucht Steuerfachangestellte für Buchhaltung und Lohn."),
]


# ------------------------------------------------------------------ the normal path


def test_postings_get_vectors_in_batches_and_the_index(fake, pg_url, db_conn):
    ids = add_postings(db_conn, [{"title": t, "description": d} for t, d in GERMAN * 8])  # 40 postings
    assert run_once(make_cfg(fake), pg_url) == 0

    vecs = stored(db_conn)
    assert set(vecs) == set(ids)
    for pid, (h, dims, v) in vecs.items():
        assert dims == DIM and v.shape == (DIM,)
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
        title, desc = db_conn.execute(
            "SELECT title, description FROM postings WHERE id=%s", (pid,)
        ).fetchone()
        text = embeddings.posting_text(title, None, desc, 2000)
        assert h == embeddings.text_hash(text)
        assert np.allclose(v, fake.vector(MODEL, text), atol=1e-6)  # the vector of exactly that text
    c = fake.counters()
    assert c["inputs_embedded"] == 40
    assert c["embed_requests"] <= 4, "batches, not one request per posting"
    assert all(item(db_conn, p)["outcome"] == "embedded" for p in ids)

    name = embeddings.index_name(MODEL, DIM)
    assert embeddings.index_valid(db_conn, MODEL, DIM)
    indexdef = db_conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)).fetchone()[0]
    assert "hnsw" in indexdef and f"vector({DIM})" in indexdef and MODEL in indexdef


def test_text_is_title_occupation_description_start(db_conn):
    db_conn.execute("INSERT INTO occupations (id, name, name_norm) VALUES (1, 'Koch/Köchin', 'koch/köchin')")
    text = embeddings.posting_text(
        "  Koch   (m/w/d) ", "Koch/Köchin", "Erste Zeile.\n\n\n\nZweite   Zeile.", 2000
    )
    assert text == "Koch (m/w/d)\nKoch/Köchin\nErste Zeile. Zweite Zeile."
    # The title is not repeated as the occupation.
    assert embeddings.posting_text("Koch/Köchin", "koch/köchin", None, 2000) == "Koch/Köchin"
    cut = embeddings.posting_text("Titel", None, "wort " * 1000, 200)
    assert len(cut) <= 200 and not cut.endswith(" ") and cut.endswith("wort")


def test_unchanged_text_is_not_sent_again_but_a_changed_one_is(fake, pg_url, db_conn):
    ids = add_postings(db_conn, [{"title": t, "description": d} for t, d in GERMAN])
    cfg = make_cfg(fake)
    run_once(cfg, pg_url)
    before = stored(db_conn)
    fake.reset_counters()

    queue.enqueue(db_conn, "embed", ids)  # e.g. a requeue by hand: nothing changed
    db_conn.execute(
        "UPDATE postings SET description = description || ' Neu: Tarifbindung.' WHERE id = %s", (ids[0],)
    )  # the trigger queues it again anyway
    run_once(cfg, pg_url)

    assert fake.counters()["inputs_embedded"] == 1
    after = stored(db_conn)
    assert after[ids[0]][0] != before[ids[0]][0]
    assert item(db_conn, ids[0])["outcome"] == "embedded"
    assert {item(db_conn, p)["outcome"] for p in ids[1:]} == {"unchanged"}


# ------------------------------------------------------------------ bad input


def test_empty_text_is_skipped_with_an_outcome_and_never_sent(fake, pg_url, db_conn):
    ids = add_postings(
        db_conn, [{"title": "   \t ", "description": " \n "}, {"title": None}, {"title": "Koch"}]
    )
    run_once(make_cfg(fake), pg_url)
    assert [item(db_conn, p)["outcome"] for p in ids] == ["empty", "empty", "embedded"]
    assert sent_inputs(fake) == ["Koch"]
    counts = dict(db_conn.execute("SELECT outcome, sum(n) FROM stage_counts WHERE stage='embed' GROUP BY 1"))
    assert counts["empty"] == 2 and counts["embedded"] == 1


def test_nul_bytes_and_invalid_utf8_are_cleaned_and_embedded(fake, pg_url, db_conn):
    raw_title = b"K\x00och \xff\xfe(m/w/d)"
    raw_desc = "Beschreibung mit \ud800 halbem Surrogat und\x00 NUL"
    # What the text helper makes of raw input, before it ever reaches PostgreSQL or the model.
    text = embeddings.posting_text(raw_title, None, raw_desc, 2000)  # type: ignore[arg-type]
    assert "\x00" not in text and text.encode("utf-8")
    assert text.startswith("Koch \ufffd\ufffd(m/w/d)")
    # And end to end: the fetcher stores clean_text() output; the embedder sends valid JSON/UTF-8.
    ids = add_postings(db_conn, [{"title": clean_text(raw_title), "description": clean_text(raw_desc)}])
    run_once(make_cfg(fake), pg_url)
    assert item(db_conn, ids[0])["outcome"] == "embedded"
    [sent] = sent_inputs(fake)
    assert sent == text and "\x00" not in sent
    assert stored(db_conn)[ids[0]][0] == embeddings.text_hash(text)


def test_a_1mb_description_is_cut_to_the_budget(fake, pg_url, db_conn):
    big = ("Sehr lange Stellenbeschreibung mit vielen Wörtern. " * 21000)[:1_000_000]
    ids = add_postings(db_conn, [{"title": "Lagerhelfer", "description": big}])
    run_once(make_cfg(fake, embedder__max_chars=1500), pg_url)
    [sent] = sent_inputs(fake)
    assert 1350 <= len(sent) <= 1500 and sent.startswith("Lagerhelfer\nSehr lange")
    assert item(db_conn, ids[0])["outcome"] == "embedded"


def test_poison_input_charges_only_that_posting_and_the_rest_of_its_batch_is_embedded(fake, pg_url, db_conn):
    fake.poison = "GIFTIG"
    rows = [{"title": t, "description": d} for t, d in GERMAN * 2]
    rows[3] = {"title": "Stelle GIFTIG", "description": "bricht das Modell"}
    ids = add_postings(db_conn, rows)
    run_once(make_cfg(fake, embedder__batch_size=16, embedder__workers=1), pg_url)

    poison = ids[3]
    it = item(db_conn, poison)
    assert it["attempts"] == 1 and it["status"] == "pending" and "bad_input" in it["last_error"]
    others = [p for p in ids if p != poison]
    assert set(stored(db_conn)) == set(others)
    assert all(item(db_conn, p)["attempts"] == 0 for p in others)
    assert fake.counters()["by_status"][400] >= 2  # the batch, then the halves that held it


def test_poison_input_is_given_up_after_max_attempts(fake, pg_url, db_conn):
    fake.poison = "GIFTIG"
    ids = add_postings(db_conn, [{"title": "GIFTIG"}, {"title": "Koch"}])
    cfg = make_cfg(fake, queue__backoff_base_s=0.0, embedder__max_attempts=2)
    run_once(cfg, pg_url)
    assert item(db_conn, ids[0])["status"] == "given_up"
    assert item(db_conn, ids[1])["outcome"] == "embedded"


def test_wrong_dimension_is_an_item_error_with_a_log_and_a_metric(fake, pg_url, db_conn, caplog):
    fake.wrong_dimension = 100
    fake.wrong_dimension_match = "Falsch"
    ids = add_postings(db_conn, [{"title": "Koch"}, {"title": "Falsch dimensioniert"}, {"title": "Maler"}])
    metrics = DaemonMetrics("embedder")
    with caplog.at_level("ERROR"):
        run_once(make_cfg(fake), pg_url, metrics)
    it = item(db_conn, ids[1])
    assert it["attempts"] == 1 and "dimension" in it["last_error"] and "100" in it["last_error"]
    assert set(stored(db_conn)) == {ids[0], ids[2]}
    value = metrics.registry.get_sample_value(
        "jobpipe_embedder_dimension_errors_total", {"daemon": "embedder"}
    )
    assert value == 1.0
    logged = [
        r
        for r in caplog.records
        if "wrong_dimension" in r.getMessage() or getattr(r, "event", None) == "wrong_dimension"
    ]
    assert logged, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("mode", ["503", "refuse"])
def test_ollama_down_charges_no_attempts_and_work_resumes(fake, pg_url, db_conn, mode):
    ids = add_postings(db_conn, [{"title": t, "description": d} for t, d in GERMAN])
    fake.fail_mode = mode
    cfg = make_cfg(fake)
    runner = runtime.Runner(
        EmbedderDaemon,
        cfg,
        db_url=pg_url,
        once=True,
        serve=False,
        periodic=runtime.default_periodic(cfg),
    )
    thread, box = in_thread(runner.run)
    try:
        # Deferred at least twice (the daemon backs off and tries again), never charged.
        def deferred_twice() -> bool:
            rows = db_conn.execute(
                "SELECT count(*) FROM queue WHERE stage='embed' AND last_error LIKE %s", ("%ollama%",)
            ).fetchone()[0]
            return rows == len(ids) and runner.metrics.registry.get_sample_value(
                "jobpipe_items_processed_total",
                {"daemon": "embedder", "stage": "embed", "outcome": "deferred"},
            ) >= 2 * len(ids)

        wait_until(deferred_twice, 20, what="the batch to be deferred twice")
        assert (
            runner.metrics.registry.get_sample_value(
                "jobpipe_dependency_up", {"daemon": "embedder", "dependency": "ollama"}
            )
            == 0
        )
        attempts = db_conn.execute("SELECT max(attempts) FROM queue WHERE stage='embed'").fetchone()[0]
        assert attempts == 0
        assert stored(db_conn) == {}
        fake.fail_mode = None
        thread.join(30)
        assert not thread.is_alive() and box.get("result") == 0, box
    finally:
        runner.stop.set()
        thread.join(10)
    assert set(stored(db_conn)) == set(ids)
    assert db_conn.execute("SELECT max(attempts) FROM queue WHERE stage='embed'").fetchone()[0] == 0


# ------------------------------------------------------------------ model changes


def test_model_change_requeues_gradually_below_new_postings(fake, pg_url, db_conn):
    old = add_postings(
        db_conn, [{"title": f"{t} {i}", "description": d} for i, (t, d) in enumerate(GERMAN * 6)]
    )
    run_once(make_cfg(fake), pg_url)
    assert len(stored(db_conn)) == 30

    new = add_postings(db_conn, [{"title": f"Neu {t}", "description": d} for t, d in GERMAN])
    cfg = make_cfg(
        fake,
        embedder__model="multilingual-e5-small",
        embedder__reembed_backlog=10,
        embedder__batch_size=4,
        embedder__workers=1,
    )
    fake.reset_counters()
    run_once(cfg, pg_url)

    e5 = stored(db_conn, "multilingual-e5-small")
    assert set(e5) == set(old) | set(new)
    assert len(stored(db_conn)) == 30  # the old model's vectors stay until removed by hand
    rows = db_conn.execute(
        """SELECT subject, priority, finished_at FROM queue WHERE stage='embed' AND status='done'
             AND outcome='embedded' AND created_at > (SELECT max(created_at) FROM posting_embeddings
                                                     WHERE model = %s)""",
        (MODEL,),
    ).fetchall()
    swept = {s: f for s, p, f in rows if p < 0}
    fresh = {s: f for s, p, f in rows if p == 0}
    assert set(swept) == set(old) and set(fresh) == set(new)
    assert max(fresh.values()) <= min(swept.values()), "new postings waited for re-embedding"
    # The new model's own index exists beside the old one.
    assert embeddings.index_valid(db_conn, "multilingual-e5-small", 384)
    assert embeddings.index_valid(db_conn, MODEL, DIM)


def test_sweep_is_bounded_and_queues_each_posting_once(db_conn):
    ids = add_postings(db_conn, [{"title": f"Stelle {i}"} for i in range(50)])
    db_conn.execute("DELETE FROM queue")  # as if restored from a backup: nothing queued
    queue.enqueue(db_conn, "embed", ids[:5])  # these are already waiting
    db_conn.execute("UPDATE queue SET status='given_up' WHERE subject = %s", (ids[0],))
    sweep = embeddings.reembed_sweep("m", backlog=10, window=7)
    seen: list[int] = []
    for _ in range(100):
        if sweep.done:
            break
        sweep.step(db_conn)
        low = [
            r[0]
            for r in db_conn.execute("SELECT subject FROM queue WHERE priority < 0 AND status = 'pending'")
        ]
        assert len(low) <= 10
        seen += low
        db_conn.execute("UPDATE queue SET status='done' WHERE priority < 0 AND status = 'pending'")
    assert sweep.done
    assert sorted(seen) == ids[5:], "each posting without a vector queued exactly once"
    assert sweep.step(db_conn) == 0


def test_dimension_conflict_for_the_same_model_is_a_config_error(db_conn):
    embeddings.ensure_index(db_conn, "m", 384)
    with pytest.raises(config.ConfigError, match=r"embedder\.dimensions"):
        embeddings.ensure_index(db_conn, "m", 768)
    # an interrupted concurrent build (INVALID index) is rebuilt
    name = embeddings.index_name("m", 384)
    db_conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", (name,))
    assert not embeddings.index_valid(db_conn, "m", 384)
    embeddings.ensure_index(db_conn, "m", 384)
    assert embeddings.index_valid(db_conn, "m", 384)


def test_a_change_during_embedding_is_embedded_afterwards(fake, pg_url, db_conn):
    """A description that arrives while the posting's item is running cannot queue a new item
    (one live item per posting); the queue marks the running item and queues it again on completion."""
    ids = add_postings(db_conn, [{"title": "Koch"}])
    fake.fail_mode = "hang"
    cfg = make_cfg(fake)
    thread, box = in_thread(lambda: run_once(cfg, pg_url))
    try:
        assert fake.wait_until(lambda f: f.in_flight >= 1, 10)
        db_conn.execute(
            "UPDATE postings SET description = 'Jetzt mit Beschreibung.' WHERE id = %s", (ids[0],)
        )
        fake.fail_mode = None  # releases the held request
        thread.join(30)
        assert box.get("result") == 0, box
    finally:
        fake.fail_mode = None
        thread.join(10)
    h = stored(db_conn)[ids[0]][0]
    assert h == embeddings.text_hash("Koch\nJetzt mit Beschreibung.")
    assert fake.counters()["inputs_embedded"] == 2


# ------------------------------------------------------------------ determinism check


def write_config(tmp_path, fake: FakeOllama, pg_url: str, **extra: Any) -> str:
    path = tmp_path / "jobpipe.yaml"
    e = {"model": MODEL, "dimensions": DIM, "batch_size": 5, "workers": 4, **extra}
    lines = [
        "database:",
        f"  url: '{pg_url}'",
        "ollama:",
        f"  urls: ['{fake.url}']",
        "embedder:",
        *[f"  {k}: {v!r}" if isinstance(v, str) else f"  {k}: {v}" for k, v in e.items()],
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_determinism_check_passes_on_the_fake(fake, pg_url, db_conn, tmp_path, capsys):
    add_postings(db_conn, [{"title": f"{t} {i}", "description": d} for i, (t, d) in enumerate(GERMAN * 5)])
    fake.latency_per_input = 0.002  # so the batched requests really overlap
    cfg_path = write_config(tmp_path, fake, pg_url)
    assert cli.main(["-c", cfg_path, "embeddings", "check", "--sample", "20"]) == 0
    out = capsys.readouterr().out
    assert "20 postings" in out and "within tolerance" in out and "NOT" not in out
    assert fake.counters()["max_in_flight"] >= 2  # the batched pass was concurrent
    assert fake.counters()["inputs_embedded"] == 40


def test_determinism_check_fails_when_vectors_drift_under_concurrency(
    fake, pg_url, db_conn, tmp_path, capsys
):
    add_postings(db_conn, [{"title": f"{t} {i}", "description": d} for i, (t, d) in enumerate(GERMAN * 5)])
    fake.latency_per_input = 0.002
    fake.perturb_under_concurrency = True
    cfg_path = write_config(tmp_path, fake, pg_url)
    assert cli.main(["-c", cfg_path, "embeddings", "check", "--sample", "20"]) == 1
    out = capsys.readouterr().out
    assert "NOT WITHIN tolerance" in out
    largest = float(out.split("largest cosine distance:")[1].split()[0])
    assert largest > 0.001


def test_determinism_check_uses_builtin_texts_on_an_empty_database(fake, pg_url, tmp_path, capsys):
    cfg_path = write_config(tmp_path, fake, pg_url)
    assert cli.main(["-c", cfg_path, "embeddings", "check", "--sample", "5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["compared"] == 5 and doc["ok"] is True and doc["max_distance"] <= 1e-6


def test_client_from_config_prefers_the_embedders_own_servers(fake):
    cfg = make_cfg(fake, ollama__urls=["http://127.0.0.1:9"], embedder__urls=[fake.url])
    with embeddings.client_from_config(cfg) as client:
        assert client.pool.urls == [fake.url]
        assert len(client.embed(["Koch"])[0]) == DIM
    openai = make_cfg(fake, ollama__provider="openai", embedder__input_type=True)
    with embeddings.client_from_config(openai) as client:
        client.embed(["Koch"], role="query")
    assert fake.requests_log[-1][2]["input_type"] == "query"


def test_index_waits_for_a_large_backlog_then_is_built_in_bulk(fake, pg_url, db_conn):
    """Inserting into HNSW one vector at a time is several times dearer than a bulk build: with a
    backlog, the index is built once the embedder has caught up (in steady state: at once)."""
    ids = add_postings(
        db_conn, [{"title": f"{t} {i}", "description": d} for i, (t, d) in enumerate(GERMAN * 6)]
    )
    cfg = make_cfg(fake, embedder__batch_size=2, embedder__workers=1)  # "caught up" = 8 items left
    fake.fail_mode = "hang"
    runner = runtime.Runner(EmbedderDaemon, cfg, db_url=pg_url, once=True, serve=False)
    thread, box = in_thread(runner.run)
    try:
        assert fake.wait_until(lambda f: f.in_flight >= 1, 10)  # the first turn (and tick) is over
        assert not embeddings.index_valid(db_conn, MODEL, DIM)
        assert "index waits for the backlog" in runner.ctx.status_extra
        fake.fail_mode = None
        thread.join(60)
        assert box.get("result") == 0, box
    finally:
        fake.fail_mode = None
        runner.stop.set()
        thread.join(10)
    assert set(stored(db_conn)) == set(ids)
    assert embeddings.index_valid(db_conn, MODEL, DIM)


def test_a_fast_model_server_never_lets_the_loop_claim_more_than_it_writes(fake, pg_url, db_conn):
    """With an instant model server every call finishes at once; the runtime must still bound
    what it holds unwritten (else one turn claims the whole queue and holds every vector in
    memory: the embedder's RSS grew by 4.5 KB per pending posting before this was fixed)."""
    add_postings(db_conn, [{"title": f"Stelle {i}"} for i in range(120)])
    seen: list[int] = []

    class Watched(EmbedderDaemon):
        def write(self, conn: Any, done: list[tuple[Any, Any, Any]]) -> dict[int, str]:
            seen.append(conn.execute("SELECT count(*) FROM queue WHERE status = 'running'").fetchone()[0])
            return super().write(conn, done)

    cfg = make_cfg(fake, embedder__batch_size=4, embedder__workers=2)
    assert runtime.run_daemon(Watched, cfg, once=True, db_url=pg_url) == 0
    assert len(stored(db_conn)) == 120
    # batch_size x 4 x workers: 2 x workers batches claimed for calls, as many again being written
    assert max(seen) <= 4 * 4 * 2, seen
