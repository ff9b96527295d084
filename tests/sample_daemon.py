"""A minimal daemon on the real runtime, for runtime tests: embeds "item <subject>" through the
model client and writes the vector's dimension to sample_results. Started as a real process with
`jobpipe run tests.sample_daemon:SampleDaemon`.

Test hook: when the file named by $SAMPLE_DAEMON_HANG_FILE exists, the loop hangs in tick()
(to prove that a hung loop stops the watchdog pings).
"""

from __future__ import annotations

import os
import time
from typing import Any

from jobpipe import runtime
from jobpipe.models import make_embedding_client
from jobpipe.queue import Item


class SampleDaemon(runtime.Daemon):
    name = "sample"
    dependencies = ("ollama",)

    def __init__(self, ctx: runtime.Context) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg
        self.client = make_embedding_client(
            "ollama",
            cfg.ollama.urls,
            "nomic-embed-text",
            concurrency=4,
            connect_timeout=cfg.ollama.connect_timeout_s,
            read_timeout=cfg.ollama.read_timeout_s,
            observer=ctx.metrics.observe_model_call,
        )
        self.hang_file = os.environ.get("SAMPLE_DAEMON_HANG_FILE")

    def stages(self) -> list[runtime.Stage]:
        return [
            runtime.Stage("sample", self.load, self.call, self.write, batch_size=8, workers=2, max_attempts=3)
        ]

    def setup(self, conn: Any) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS sample_results (subject bigint PRIMARY KEY, dims int, n int)"
        )

    def tick(self, conn: Any) -> None:
        while self.hang_file and os.path.exists(self.hang_file):
            time.sleep(0.05)

    def load(self, conn: Any, items: list[Item]) -> dict[int, Any]:
        return {i.id: (runtime.Skip("empty") if i.subject < 0 else f"item {i.subject}") for i in items}

    def call(self, texts: list[str]) -> list[Any]:
        return self.client.embed_batch(texts)

    def write(self, conn: Any, done: list[tuple[Item, Any, Any]]) -> dict[int, str]:
        conn.execute(
            """INSERT INTO sample_results (subject, dims, n)
               SELECT s, d, 1 FROM unnest(%s::bigint[], %s::int[]) AS t(s, d)
               ON CONFLICT (subject) DO UPDATE SET n = sample_results.n + 1""",
            ([it.subject for it, _, _ in done], [len(v) for _, _, v in done]),
        )
        return {it.id: "embedded" for it, _, _ in done}


DAEMON = SampleDaemon
