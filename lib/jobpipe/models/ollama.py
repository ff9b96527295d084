"""Ollama's native API (`/api/embed`, `/api/chat`, `/api/tags`, `GET /`): see docs/contracts/ollama.md.

Only payloads and answers live here; routing, breaker, timeouts and error mapping are in
`jobpipe.models.endpoints`, the batch splitting and checks in `jobpipe.models.base`.
"""

from __future__ import annotations

from typing import Any, Unpack

from jobpipe.models.base import ChatClient, EmbeddingClient, EmbeddingOptions, Role, bad_response
from jobpipe.models.endpoints import EndpointPool


class _OllamaMixin:
    provider = "ollama"
    pool: EndpointPool

    def ping(self) -> dict[str, dict[str, Any]]:
        """`GET /` on every endpoint ("Ollama is running"); a success closes that endpoint's breaker."""
        out = self.pool.probe("/")
        for info in out.values():
            body = info.pop("body")
            info["text"] = body.decode("utf-8", errors="replace").strip() if body else None
        return out

    def list_models(self) -> list[dict[str, Any]]:
        """`/api/tags`: [{"name", "digest", "size", "details"}] of the least busy endpoint."""
        doc = self.pool.get_json("tags", "/api/tags")
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, list):
            raise bad_response("/api/tags without a models list")
        return [
            {
                "name": m.get("name"),
                "digest": m.get("digest"),
                "size": m.get("size"),
                "details": m.get("details"),
            }
            for m in models
            if isinstance(m, dict)
        ]

    def version(self) -> str | None:
        doc = self.pool.get_json("version", "/api/version")
        return doc.get("version") if isinstance(doc, dict) else None


class OllamaEmbeddingClient(_OllamaMixin, EmbeddingClient):
    """`POST /api/embed` with a list input; vectors come back L2-normalised, in input order."""

    def __init__(
        self,
        pool: EndpointPool,
        model: str,
        *,
        truncate: bool = True,
        keep_alive: str | None = None,
        **options: Unpack[EmbeddingOptions],
    ) -> None:
        super().__init__(pool, model, **options)
        # truncate=True is Ollama's default: an over-long input is cut by the server instead of
        # failing the batch. False makes it a 400, which embed_batch isolates to that input.
        self.truncate = truncate
        self.keep_alive = keep_alive

    def _embed_request(self, texts: list[str], role: Role) -> list[Any]:
        payload: dict[str, Any] = {"model": self.model, "input": texts, "truncate": self.truncate}
        if self.keep_alive is not None:
            payload["keep_alive"] = self.keep_alive
        doc = self.pool.post_json("embed", "/api/embed", payload, model=self.model)
        vectors = doc.get("embeddings") if isinstance(doc, dict) else None
        if not isinstance(vectors, list):
            raise bad_response("/api/embed answer without an embeddings list")
        return vectors


class OllamaChatClient(_OllamaMixin, ChatClient):
    """`POST /api/chat` with `stream: false`, `format: <schema>`, temperature 0 and a fixed seed."""

    def __init__(
        self,
        pool: EndpointPool,
        model: str,
        *,
        seed: int = 42,
        num_ctx: int | None = None,
        keep_alive: str | None = None,
    ) -> None:
        super().__init__(pool, model, seed=seed)
        self.num_ctx = num_ctx
        self.keep_alive = keep_alive

    def _chat_request(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> tuple[str, str | None]:
        options: dict[str, Any] = {"temperature": 0, "seed": self.seed}
        if self.num_ctx is not None:
            options["num_ctx"] = self.num_ctx
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": False,  # the default is NDJSON streaming
            "format": schema,
            "options": options,
        }
        if self.keep_alive is not None:
            payload["keep_alive"] = self.keep_alive
        doc = self.pool.post_json("chat", "/api/chat", payload, model=self.model)
        message = doc.get("message") if isinstance(doc, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise bad_response("/api/chat answer without message.content")
        return content, doc.get("done_reason")
