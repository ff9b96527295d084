"""Generated hostile input (hypothesis) for the parsers this branch owns: model answers (Ollama and
OpenAI-compatible embed and chat bodies), config files and environment variables, and CLI
arguments. Each must end in a value or a clear jobpipe error (ItemError, DependencyDown,
ConfigError, argparse's exit 2); never another exception, never a hang.

Model answers are handed to the clients through a stand-in pool (the HTTP layer has its own
tests in test_hardening.py): thousands of bodies per run, no sockets needed for the parsing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobpipe import classify, cli, config
from jobpipe.cli.args import float_arg, int_arg
from jobpipe.errors import ConfigError, DependencyDown, ItemError
from jobpipe.models.ollama import OllamaChatClient, OllamaEmbeddingClient
from jobpipe.models.openai import OpenAIChatClient, OpenAIEmbeddingClient
from jobpipe.text import parse_int, terminal_safe

pytestmark = pytest.mark.slow  # thousands of generated inputs, like test_hostile_parsers

SETTINGS = settings(
    max_examples=int(os.environ.get("JOBPIPE_HYPOTHESIS_EXAMPLES", "300")),
    # ms per example: far above any parser's time here (1 MB of YAML brackets: 2.6 s), far below a hang
    deadline=15_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Text with what breaks parsers: controls, NUL, lone surrogates, Unicode digits, RTL overrides.
NASTY = st.sampled_from(["\x00", "\x1b[2J", "\x07", "\ud800", "²", "٣", "\u202e", "\x9b", "𝟘", "\n"])
TEXT = st.one_of(st.text(max_size=40), st.lists(NASTY, max_size=5).map("".join))
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSONISH = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)


def deep(n: int) -> Any:
    v: Any = 1.0
    for _ in range(n):
        v = [v]
    return v


class StandInPool:
    """What EndpointPool.post_json returns, without HTTP: the parsed body under test."""

    def __init__(self, doc: Any) -> None:
        self.doc = doc
        self.urls = ["http://stand-in"]

    def post_json(self, op: str, path: str, payload: dict[str, Any], *, model: str | None = None) -> Any:
        return self.doc


# ----------------------------------------------------------------------------- embedding answers

VECTOR = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), SCALAR),
    max_size=6,
)
OLLAMA_EMBED = st.one_of(
    JSONISH,
    st.fixed_dictionaries(
        {"embeddings": st.one_of(JSONISH, st.lists(st.one_of(VECTOR, JSONISH), max_size=4))}
    ),
    st.just({"embeddings": [deep(3000), [0.0] * 4]}),
)
OPENAI_EMBED = st.one_of(
    JSONISH,
    st.fixed_dictionaries(
        {
            "data": st.lists(
                st.one_of(
                    JSONISH,
                    st.fixed_dictionaries({"embedding": st.one_of(VECTOR, JSONISH), "index": SCALAR}),
                ),
                max_size=4,
            )
        }
    ),
)


def check_embed_results(results: Any, n: int, dims: int) -> None:
    assert isinstance(results, list) and len(results) == n
    for r in results:
        if isinstance(r, ItemError):
            continue
        assert isinstance(r, list) and len(r) == dims and all(isinstance(x, float) for x in r), r
        assert all(math.isfinite(x) for x in r), r  # a NaN vector must never reach pgvector


@SETTINGS
@given(doc=OLLAMA_EMBED)
def test_ollama_embed_answers(doc: Any) -> None:
    client = OllamaEmbeddingClient(StandInPool(doc), "m", dimensions=4)  # type: ignore[arg-type]
    try:
        results = client.embed_batch(["a", "b"])
    except (ItemError, DependencyDown):
        return
    check_embed_results(results, 2, 4)


@SETTINGS
@given(doc=OPENAI_EMBED)
def test_openai_embed_answers(doc: Any) -> None:
    client = OpenAIEmbeddingClient(StandInPool(doc), "m", dimensions=4)  # type: ignore[arg-type]
    try:
        results = client.embed_batch(["a", "b"])
    except (ItemError, DependencyDown):
        return
    check_embed_results(results, 2, 4)


# ----------------------------------------------------------------------------------- chat answers

ANSWER = st.one_of(
    st.fixed_dictionaries({"verdict": SCALAR, "occupation_id": SCALAR}),
    st.fixed_dictionaries(
        {"verdict": st.sampled_from(["yes", "no", "uncertain"]), "occupation_id": st.one_of(SCALAR, TEXT)}
    ),
    JSONISH,
)
CONTENT = st.one_of(
    TEXT,
    ANSWER.map(lambda a: json.dumps(a, allow_nan=True)),
    st.just("[" * 100_000),
    st.just('{"verdict": "yes", "occupation_id": "²"}'),
)


def chat_doc(flavour: str, content: Any, reason: Any) -> Any:
    if flavour == "ollama":
        return {"message": {"content": content}, "done_reason": reason}
    return {"choices": [{"message": {"content": content}, "finish_reason": reason}]}


@SETTINGS
@given(
    flavour=st.sampled_from(["ollama", "openai"]),
    content=st.one_of(CONTENT, JSONISH),
    reason=st.one_of(st.none(), st.sampled_from(["stop", "length"]), SCALAR),
    whole=st.one_of(st.none(), JSONISH),
)
def test_chat_answers_and_the_classifier_decision(
    flavour: str, content: Any, reason: Any, whole: Any
) -> None:
    doc = whole if whole is not None else chat_doc(flavour, content, reason)
    cls = OllamaChatClient if flavour == "ollama" else OpenAIChatClient
    client = cls(StandInPool(doc), "m")  # type: ignore[arg-type]
    job = classify.LLMJob(1, "koch", "Koch", (classify.Candidate(29202, "Koch/Köchin", 0.9),))
    try:
        answer = client.generate_json("system", "prompt", classify.ANSWER_SCHEMA)
    except (ItemError, DependencyDown):
        return
    assert isinstance(answer, dict)
    try:
        decision = classify.decide(answer, job)
    except ItemError:
        return
    assert decision.occupation_id in (None, 29202)


# ---------------------------------------------------------------------------- config files and env

REGISTRY = sorted(config.all_settings().values(), key=lambda s: s.key)
SETTING = st.sampled_from(REGISTRY)


@st.composite
def config_documents(draw: st.DrawFn) -> str:
    import yaml

    kind = draw(st.integers(0, 3))
    if kind == 0:  # arbitrary text, including control characters and invalid YAML
        return draw(st.text(max_size=200))
    if kind == 1:  # deep nesting
        return "a:\n  b: " + "[" * draw(st.integers(1, 5_000))
    doc: dict[str, Any] = {}
    for s in draw(st.lists(SETTING, max_size=4)):
        doc.setdefault(s.section, {})[s.name] = draw(JSONISH)
    if kind == 3:
        doc[draw(TEXT)] = draw(JSONISH)
    return yaml.safe_dump(doc, allow_unicode=True)


@SETTINGS
@given(text=config_documents())
def test_config_files(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "jobpipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = config.load(path, environ={})
    except ConfigError as exc:
        assert "\n" not in str(exc).strip() or str(exc).count("\n") < 3, str(exc)
        assert len(str(exc)) < 2000, len(str(exc))
        return
    for key, setting in config.all_settings().items():
        assert isinstance(cfg.get(key), setting.value_type), key


@SETTINGS
@given(setting=SETTING, raw=st.one_of(TEXT, st.just("[" * 5000), st.just(".nan"), st.just("9" * 400)))
def test_environment_values(setting: Any, raw: str) -> None:
    var = "JOBPIPE_" + setting.key.replace(".", "_").upper()
    try:
        config.load(None, environ={var: raw.replace("\x00", "")})
    except ConfigError:
        pass


def test_dev_zero_as_config_file_is_refused_quickly() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        config.load(Path("/dev/zero"), environ={})


# ---------------------------------------------------------------------------------- CLI arguments

ARG = st.one_of(
    TEXT, st.integers(-(2**80), 2**80).map(str), st.sampled_from(["nan", "inf", "-0", "2^63", "1e309"])
)


@SETTINGS
@given(value=ARG)
def test_numeric_cli_argument_types(value: str) -> None:
    for parse, lo, hi in ((int_arg(1, 500), 1, 500), (float_arg(0.001, 86400), 0.001, 86400)):
        try:
            x = parse(value)
        except Exception as exc:  # argparse turns exactly this into a one-line error, exit 2
            assert type(exc).__name__ == "ArgumentTypeError", repr(exc)
            continue
        assert lo <= x <= hi and math.isfinite(x)


@SETTINGS
@given(
    argv=st.one_of(
        st.tuples(st.just("search"), TEXT, st.just("--limit"), ARG),
        st.tuples(st.just("similar"), TEXT, st.just("--limit"), ARG),
        st.tuples(st.just("verify"), TEXT, st.just("--wait"), ARG),
        st.tuples(st.just("queue"), st.just("requeue"), TEXT),
        st.tuples(st.just("run"), TEXT, st.just("--metrics-port"), ARG),
        st.lists(TEXT, max_size=4).map(tuple),
    )
)
def test_argument_parsing_is_a_namespace_or_exit_2(argv: tuple[str, ...]) -> None:
    # Parsing only: dispatching would need a database. Values that parse are in range (checked above).
    parser = cli.build_parser()
    try:
        parser.parse_args(list(argv))
    except SystemExit as exc:
        assert exc.code in (0, 2)


@SETTINGS
@given(value=st.one_of(TEXT, st.integers().map(str)))
def test_parse_int_and_terminal_safe(value: str) -> None:
    n = parse_int(value)
    assert n is None or ((0 <= n <= 2**63 - 1 and str(n) == value.strip().lstrip("0")) or n == 0)
    safe = terminal_safe(value)
    assert not any(ord(c) < 32 and c not in "\n\t" for c in safe)
    assert not any(0x7F <= ord(c) <= 0x9F for c in safe)
    safe.encode("utf-8")  # no lone surrogate left
