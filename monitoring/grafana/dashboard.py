"""Builds monitoring/grafana/jobpipe.json, the Grafana dashboard of the six daemons.

    python3 monitoring/grafana/dashboard.py > monitoring/grafana/jobpipe.json

The panels are written here once (the overview, then one row per daemon from the same helpers)
so the rows stay alike; tests/test_monitoring.py checks that the JSON file is this output and
that every query returns data from a real Prometheus scraping the real daemons.

Every query uses only metrics the daemons export (jobpipe.metrics, daemons/*.py) or the recording
rules in monitoring/rules/jobpipe.yml; `up` and `process_start_time_seconds` come from the scrape
job `jobpipe` in monitoring/prometheus.yml, which also gives them the `daemon` label. The data
source is the variable ${datasource}, chosen on import.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The checkout's library as a fallback: the documented plain `python3` (no venv) runs this as it did
# before it read the daemon list from jobpipe.settings (standard library only). An installed
# jobpipe comes first.
sys.path.append(str(Path(__file__).resolve().parents[2] / "lib"))

from jobpipe.settings import DAEMONS  # noqa: E402

DS = {"type": "prometheus", "uid": "${datasource}"}
SUCCESS = 'outcome!~"failed|given_up|deferred"'
# Daemons that claim work from the queue and call an external service (model server or BA API);
# the snapshotter claims nothing and calls nothing (two SQL computations when due).
QUEUE_DAEMONS = ("fetcher", "classifier", "embedder", "verifier", "extractor")
ROWS = DAEMONS  # one row per daemon, in their order

UP_DOWN = [
    {
        "type": "value",
        "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}},
    }
]
READY = [
    {
        "type": "value",
        "options": {"0": {"text": "BUILDING", "color": "orange"}, "1": {"text": "READY", "color": "green"}},
    }
]
RED_BELOW_1 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
RED_FROM_1 = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
ORANGE_FROM_1 = [{"color": "green", "value": None}, {"color": "orange", "value": 1}]

Query = tuple[str, str]  # (PromQL, legend)


class Board:
    """Collects panels, places them left to right on the 24-unit grid, hands out ids."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.into: list[dict[str, Any]] = self.panels  # a collapsed row keeps its panels inside
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def _place(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self.next_id
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.into.append(panel)

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = self.row_h = 0

    def row(self, title: str, collapsed: bool) -> None:
        self._newline()
        row = {"type": "row", "title": title, "collapsed": collapsed, "panels": []}
        self.into = self.panels
        self._place(row, 24, 1)
        self._newline()
        self.into = row["panels"] if collapsed else self.panels

    def ts(
        self,
        title: str,
        description: str,
        *queries: Query,
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        stack: bool = False,
        right_seconds: str | None = None,
    ) -> None:
        """A time series panel; `right_seconds`: the refId drawn in seconds on the right axis."""
        custom: dict[str, Any] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
        }
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        overrides = []
        if right_seconds:
            overrides.append(
                {
                    "matcher": {"id": "byFrameRefID", "options": right_seconds},
                    "properties": [
                        {"id": "unit", "value": "s"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                }
            )
        panel = {
            "type": "timeseries",
            "title": title,
            "description": description,
            "datasource": DS,
            "targets": _targets(queries, instant=False),
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": overrides},
            "options": {
                "legend": {"displayMode": "list", "placement": "bottom"},
                "tooltip": {"mode": "multi"},
            },
        }
        self._place(panel, w, h)

    def stat(
        self,
        title: str,
        description: str,
        *queries: Query,
        unit: str = "short",
        w: int = 8,
        h: int = 5,
        mappings: list[dict[str, Any]] | None = None,
        thresholds: list[dict[str, Any]] | None = None,
    ) -> None:
        """A stat panel showing the latest value of each series (instant queries)."""
        panel = {
            "type": "stat",
            "title": title,
            "description": description,
            "datasource": DS,
            "targets": _targets(queries, instant=True),
            "fieldConfig": {
                "defaults": {
                    "unit": unit,
                    "mappings": mappings or [],
                    "thresholds": {
                        "mode": "absolute",
                        "steps": thresholds or [{"color": "green", "value": None}],
                    },
                },
                "overrides": [],
            },
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "background",
                "graphMode": "none",
                "textMode": "value_and_name",
            },
        }
        self._place(panel, w, h)


def _targets(queries: tuple[Query, ...], instant: bool) -> list[dict[str, Any]]:
    return [
        {
            "datasource": DS,
            "expr": expr,
            "legendFormat": legend,
            "refId": chr(ord("A") + i),
            "instant": instant,
            "range": not instant,
        }
        for i, (expr, legend) in enumerate(queries)
    ]


def overview(b: Board) -> None:
    b.row("Overview", collapsed=False)
    b.stat(
        "Daemons",
        "Does each daemon answer scrapes (up)?",
        ('up{job="jobpipe"}', "{{daemon}}"),
        w=12,
        h=4,
        mappings=UP_DOWN,
        thresholds=RED_BELOW_1,
    )
    b.stat(
        "Restarts (1 h)",
        "Process restarts in the last hour (process_start_time_seconds changes): crashes, watchdog "
        "kills, deploys.",
        ('changes(process_start_time_seconds{job="jobpipe"}[1h])', "{{daemon}}"),
        w=8,
        h=4,
        thresholds=ORANGE_FROM_1,
    )
    b.stat(
        "Signal degraded",
        "1 while a daemon cannot deliver its alerts to the Signal gateway.",
        ("max by (daemon) (jobpipe_signal_degraded)", "{{daemon}}"),
        w=4,
        h=4,
        thresholds=RED_FROM_1,
    )
    b.ts(
        "Items finished per second",
        "Successfully finished items (every outcome except failed, given_up and deferred), by daemon.",
        (
            f"sum by (daemon) (rate(jobpipe_items_processed_total{{{SUCCESS}}}[$__rate_interval]))",
            "{{daemon}}",
        ),
        unit="ops",
        stack=True,
    )
    b.ts(
        "Failure ratio (15 min)",
        "Share of processed items that failed or were given up (recording rule "
        "jobpipe:items_failed:ratio_rate15m); the alert fires above 50 % with at least 20 items.",
        ("jobpipe:items_failed:ratio_rate15m", "{{daemon}}/{{stage}}"),
        unit="percentunit",
    )
    b.ts(
        "Pending items",
        "Items waiting to be claimed (scheduled retries included), by stage.",
        ("max by (daemon, stage) (jobpipe_queue_pending)", "{{daemon}}/{{stage}}"),
        w=8,
    )
    b.ts(
        "Oldest pending item",
        "Age of the oldest pending item per stage (0 when nothing is pending).",
        ("max by (daemon, stage) (jobpipe_queue_oldest_pending_age_seconds)", "{{daemon}}/{{stage}}"),
        unit="s",
        w=8,
    )
    b.ts(
        "Given up",
        "Items that used up their attempts (`jobpipe queue requeue STAGE` once the cause is fixed).",
        ("max by (daemon, stage) (jobpipe_queue_given_up)", "{{daemon}}/{{stage}}"),
        w=8,
    )
    b.ts(
        "Dependencies",
        "1 = the dependency answered on last use, 0 = down (the daemon backs off, nothing is charged).",
        ("min by (daemon, dependency) (jobpipe_dependency_up)", "{{daemon}} -> {{dependency}}"),
    )
    b.ts(
        "External call errors",
        "Failed calls to model servers and the BA API per second, by error kind.",
        (
            "sum by (daemon, operation, kind) (rate(jobpipe_model_call_errors_total[$__rate_interval]))",
            "{{daemon}} {{operation}} {{kind}}",
        ),
        unit="ops",
    )
    b.ts(
        "External call latency p95",
        "95th percentile of model server and BA API call durations (recording rule, 5 min window).",
        ("jobpipe:model_call_duration_seconds:p95_5m", "{{daemon}} {{operation}}"),
        unit="s",
    )
    b.stat(
        "Versions",
        "jobpipe and Python version of each running daemon.",
        (
            "max by (daemon, version, python) (jobpipe_build_info)",
            "{{daemon}} {{version}} (Python {{python}})",
        ),
        w=12,
        h=8,
    )


def queue_daemon(b: Board, d: str) -> None:
    """Throughput, queue, latency and given up: alike for the four queue daemons."""
    sel = f'daemon="{d}"'
    buckets = f"jobpipe_model_call_duration_seconds_bucket{{{sel}}}[$__rate_interval]"
    b.ts(
        "Throughput by outcome",
        "Items finished per second by stage and outcome (failed = retried later, given_up = out of "
        "attempts, deferred = a dependency was down, not charged).",
        (
            f"sum by (stage, outcome) (rate(jobpipe_items_processed_total{{{sel}}}[$__rate_interval]))",
            "{{stage}} {{outcome}}",
        ),
        unit="ops",
        stack=True,
    )
    b.ts(
        "Pending, in flight, oldest pending age",
        "Items waiting and claimed per stage (left axis); age of the oldest pending item (right axis).",
        (f"sum by (stage) (jobpipe_queue_pending{{{sel}}})", "pending {{stage}}"),
        (f"sum by (stage) (jobpipe_queue_in_flight{{{sel}}})", "in flight {{stage}}"),
        (f"max by (stage) (jobpipe_queue_oldest_pending_age_seconds{{{sel}}})", "oldest {{stage}}"),
        right_seconds="C",
    )
    b.ts(
        "External call latency p50 / p95",
        "Duration of calls to the model server or the BA API, failed calls (timeouts) included.",
        (f"histogram_quantile(0.5, sum by (operation, le) (rate({buckets})))", "p50 {{operation}}"),
        (f"histogram_quantile(0.95, sum by (operation, le) (rate({buckets})))", "p95 {{operation}}"),
        unit="s",
        w=8,
    )
    b.ts(
        "Batch duration p95",
        "Wall time of one claimed batch, claim to commit.",
        (
            "histogram_quantile(0.95, sum by (stage, le) "
            f"(rate(jobpipe_batch_duration_seconds_bucket{{{sel}}}[$__rate_interval])))",
            "{{stage}}",
        ),
        unit="s",
        w=8,
    )
    b.ts(
        "Given up",
        "Items of this daemon that used up their attempts, by stage.",
        (f"sum by (stage) (jobpipe_queue_given_up{{{sel}}})", "{{stage}}"),
        w=8,
    )


def snapshotter(b: Board) -> None:
    """Runs instead of queue throughput; missing days are its backlog."""
    sel = 'daemon="snapshotter"'
    b.ts(
        "Runs (1 h)",
        "Snapshot and similarity runs by result (done, skipped_*, no_vectors, failed).",
        ("sum by (kind, result) (increase(jobpipe_snapshotter_runs_total[1h]))", "{{kind}} {{result}}"),
    )
    b.ts(
        "Missing snapshot days",
        "Due days without a complete snapshot (within catch_up_days): the snapshotter's backlog.",
        ("max(jobpipe_snapshotter_missing_snapshots)", "missing snapshots"),
    )
    b.ts(
        "Newest snapshot",
        "Rows of the newest complete day (left) and its age (right).",
        ("max(jobpipe_snapshotter_snapshot_rows)", "rows"),
        ("time() - max(jobpipe_snapshotter_snapshot_day_timestamp_seconds)", "age of the day"),
        right_seconds="B",
        w=8,
    )
    b.ts(
        "Similarity",
        "Occupation pairs of the current result (left) and its age (right).",
        ("max(jobpipe_snapshotter_similarity_pairs)", "pairs"),
        ("max(jobpipe_snapshotter_similarity_age_seconds)", "age"),
        right_seconds="B",
        w=8,
    )
    b.ts(
        "Mean run duration",
        "Mean wall time of a snapshot or similarity run since the process started.",
        (
            f"sum by (stage) (jobpipe_batch_duration_seconds_sum{{{sel}}})"
            f" / sum by (stage) (jobpipe_batch_duration_seconds_count{{{sel}}})",
            "{{stage}}",
        ),
        unit="s",
        w=8,
    )


def own(b: Board, d: str) -> None:
    """What only this daemon exports (jobpipe_<daemon>_*)."""
    if d == "fetcher":
        b.ts(
            "Postings from crawls",
            "Postings seen by crawls per second: inserted, updated (changed), unchanged.",
            ("sum by (result) (rate(jobpipe_fetcher_postings_total[$__rate_interval]))", "{{result}}"),
            unit="ops",
            stack=True,
            w=8,
        )
        b.ts(
            "Time since the last completed crawl",
            "Per source (fetcher.sources).",
            ("time() - max by (source) (jobpipe_fetcher_last_crawl_success_timestamp_seconds)", "{{source}}"),
            unit="s",
            w=8,
        )
        b.ts(
            "Crawl problems",
            "Query parts above the 10,000-result cap, and answers not in the BA v6 format (the API "
            "changed?) in the last hour: both should stay at 0.",
            ("sum by (source) (jobpipe_fetcher_truncated_partitions)", "truncated {{source}}"),
            (
                "sum by (operation) (increase(jobpipe_fetcher_schema_errors_total[1h]))",
                "schema errors {{operation}}",
            ),
            w=8,
        )
    elif d == "classifier":
        b.ts(
            "Catalogue occupations by embedding state",
            "Occupation vectors for the configured embedding model; titles that need the vector "
            "search wait while some are pending.",
            ("sum by (state) (jobpipe_classifier_catalogue_occupations)", "{{state}}"),
            w=24,
        )
    elif d == "embedder":
        b.stat(
            "HNSW index",
            "READY once the index for the configured model and dimension is built; searches are slow "
            "until then.",
            ("max(jobpipe_embedder_index_ready)", "index"),
            mappings=READY,
            thresholds=RED_BELOW_1,
        )
        b.ts(
            "Wrong-dimension vectors",
            "Vectors of the wrong dimension from the model server (a wrong model loaded): should stay at 0.",
            ("sum(increase(jobpipe_embedder_dimension_errors_total[1h]))", "in the last hour"),
            w=16,
            h=5,
        )
    elif d == "extractor":
        b.ts(
            "Summaries by outcome",
            "Model answers in the last hour: extracted (every value grounded), partial (values dropped), "
            "invalid_json / schema_violation (item errors, retried); and postings completed without a "
            "call: reused (identical description), skipped_external, empty.",
            ("sum by (outcome) (increase(jobpipe_extractor_answers_total[1h]))", "{{outcome}}"),
            stack=True,
        )
        b.ts(
            "Dropped values by field",
            "Values of model answers dropped in the last hour because the text does not ground them "
            "(a salary it does not state, remote work it does not mention...) or they exceed a cap.",
            ("sum by (field) (increase(jobpipe_extractor_dropped_values_total[1h]))", "{{field}}"),
            stack=True,
        )
        b.ts(
            "Re-queued by the sweep",
            "Postings queued again after a model or schema version change (last hour).",
            ("sum(increase(jobpipe_extractor_resweep_queued_total[1h]))", "re-queued"),
        )
    elif d == "verifier":
        b.ts(
            "Oldest unverified posting",
            "Age of the oldest active posting since it was last verified, and the alert limit "
            "(verifier.max_age_h + verifier.alert_margin_h).",
            ("max(jobpipe_verifier_oldest_unverified_age_seconds)", "oldest unverified"),
            ("max(jobpipe_verifier_oldest_unverified_limit_seconds)", "alert limit"),
            unit="s",
        )
        b.ts(
            "Swept per second",
            "Stale postings the background sweep enqueues.",
            ("sum(rate(jobpipe_verifier_swept_total[$__rate_interval]))", "swept"),
            unit="ops",
        )


def health(b: Board, d: str) -> None:
    sel = f'daemon="{d}"'
    b.stat(
        "Dependencies",
        "Each dependency as this daemon last saw it.",
        (f"min by (dependency) (jobpipe_dependency_up{{{sel}}})", "{{dependency}}"),
        mappings=UP_DOWN,
        thresholds=RED_BELOW_1,
    )
    b.ts(
        "Restarts and uptime",
        "Restarts in the last hour (left) and time since the process started (right).",
        (f'changes(process_start_time_seconds{{job="jobpipe", {sel}}}[1h])', "restarts (1 h)"),
        (f'time() - process_start_time_seconds{{job="jobpipe", {sel}}}', "uptime"),
        right_seconds="B",
        w=8,
        h=5,
    )
    b.ts(
        "Work loop heartbeat age",
        "Seconds since the work loop's last turn; systemd's watchdog restarts a loop that stops turning.",
        (f"time() - jobpipe_loop_heartbeat_timestamp_seconds{{{sel}}}", "{{instance}}"),
        unit="s",
        w=8,
        h=5,
    )


def dashboard() -> dict[str, Any]:
    b = Board()
    overview(b)
    for d in ROWS:
        b.row(d, collapsed=True)
        if d in QUEUE_DAEMONS:
            queue_daemon(b, d)
        else:
            snapshotter(b)
        own(b, d)
        health(b, d)
    datasource = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "options": [],
        "regex": "",
    }
    return {
        "uid": "jobpipe",
        "title": "jobpipe",
        "description": "The jobpipe daemons: throughput, queues, external calls, dependencies, restarts.",
        "tags": ["jobpipe"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {"list": [datasource]},
        "annotations": {"list": []},
        "links": [],
        "panels": b.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
