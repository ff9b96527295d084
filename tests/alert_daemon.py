"""A daemon on the real runtime whose handler fails every item instantly, for the alerting tests:
the predecessor's "0 success, 56 failed in 0.0 s". Started as a real process with
`jobpipe run tests.alert_daemon:FailingDaemon`.

Switches (files, so a test can flip them under a running process), from the class attributes
`fixed_file` / `down_file` (in-process tests subclass with their paths) or else from
$ALERT_DAEMON_FIXED_FILE / $ALERT_DAEMON_DOWN_FILE (processes):
- the fixed file exists: the handler works (the bug is fixed);
- the down file exists: its dependency "ollama" is down (DependencyDown, nothing charged).
"""

from __future__ import annotations

import os
from typing import Any

from jobpipe import runtime
from jobpipe.errors import DependencyDown, ItemError
from jobpipe.queue import Item


def _exists(path: str | None) -> bool:
    return bool(path) and os.path.exists(path)  # type: ignore[arg-type]


class FailingDaemon(runtime.Daemon):
    name = "summary"
    dependencies = ("ollama",)
    fixed_file: str | None = None
    down_file: str | None = None

    def __init__(self, ctx: runtime.Context) -> None:
        super().__init__(ctx)
        self.fixed = self.fixed_file or os.environ.get("ALERT_DAEMON_FIXED_FILE")
        self.down = self.down_file or os.environ.get("ALERT_DAEMON_DOWN_FILE")

    def stages(self) -> list[runtime.Stage]:
        return [
            runtime.Stage(
                "summarise", self.load, self.call, self.write, batch_size=16, workers=1, max_attempts=1
            )
        ]

    def load(self, conn: Any, items: list[Item]) -> dict[int, Any]:
        return {i.id: i.subject for i in items}

    def call(self, subjects: list[int]) -> list[Any]:
        if _exists(self.down):
            raise DependencyDown("ollama", "connection refused", "connection")
        if _exists(self.fixed):
            return [f"summary of {s}" for s in subjects]
        return [ItemError("summary step: undefined function summarize_text", "bug") for _ in subjects]

    def write(self, conn: Any, done: list[tuple[Item, Any, Any]]) -> dict[int, str]:
        return {it.id: "summarised" for it, _, _ in done}


DAEMON = FailingDaemon
