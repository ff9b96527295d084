"""monitoring/: the scrape config, the rules (promtool) and the Grafana dashboard, checked against a
real Prometheus on loopback that scrapes the six daemons running as real processes against a
real PostgreSQL and the fake Ollama / BA servers.

The live part runs once per module (`live` fixture): Prometheus scrapes every second and evaluates
every second, with the shipped rule file, except that JobpipeDaemonDown gets `for: 2s` so that
stopping a daemon fires it within seconds. The test that stops a daemon comes last.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml

from jobpipe import catalogue, db
from jobpipe.settings import DAEMONS
from jobpipe.sim.ba import FakeBA, Population
from jobpipe.sim.ollama import FakeOllama
from tests.conftest import url_for
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
MON = ROOT / "monitoring"
RULES = MON / "rules" / "jobpipe.yml"
DASHBOARD = MON / "grafana" / "jobpipe.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus)")
# Grafana's interval variables, as a query at 1 s resolution would get them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "1h"}
LIVE_TIMEOUT_S = 45.0
POLL_S = 0.25  # how often the live tests ask Prometheus and the daemons


def load_dashboard_module() -> Any:
    spec = importlib.util.spec_from_file_location("jobpipe_dashboard", MON / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) for every target."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for p in walk_panels(board["panels"]):
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((p["title"], expr))
    return out


def recording_rules() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["record"] for g in groups for r in g["rules"] if "record" in r]


# --------------------------------------------------------------------------- offline checks


@pytest.mark.system
@needs_promtool
def test_promtool_check_and_test_rules() -> None:
    res = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(
        [PROMTOOL, "test", "rules", "jobpipe_test.yml"], capture_output=True, text=True, cwd=RULES.parent
    )
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


@pytest.mark.system
@needs_promtool
def test_promtool_check_config() -> None:
    res = subprocess.run(
        [PROMTOOL, "check", "config", str(MON / "prometheus.yml")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    alerts = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    assert len(alerts) == 12
    tests = yaml.safe_load((RULES.parent / "jobpipe_test.yml").read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fired == alerts and quiet == alerts


def test_scrape_config_targets_the_default_ports() -> None:
    from jobpipe.settings import all_settings

    settings = all_settings()
    job = yaml.safe_load((MON / "prometheus.yml").read_text())["scrape_configs"][0]
    assert job["job_name"] == "jobpipe" and job["honor_labels"] is True
    targets = {sc["labels"]["daemon"]: sc["targets"] for sc in job["static_configs"]}
    assert targets == {d: [f"127.0.0.1:{settings[f'{d}.metrics_port'].default}"] for d in DAEMONS}


@pytest.mark.system  # runs the script in a new interpreter
def test_dashboard_builds_with_a_python_that_has_no_jobpipe_installed() -> None:
    """Its docstring's `python3 monitoring/grafana/dashboard.py > ...jobpipe.json` must work outside
    the venv (-S: no site-packages, so no installed jobpipe); a failure would empty the JSON file."""
    script = MON / "grafana" / "dashboard.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-S", str(script)], capture_output=True, text=True, timeout=60, cwd="/", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == DASHBOARD.read_text()


def test_dashboard_json_is_generated_and_well_formed() -> None:
    module = load_dashboard_module()
    assert DASHBOARD.read_text() == module.render(), "run: python3 monitoring/grafana/dashboard.py > " + str(
        DASHBOARD.relative_to(ROOT)
    )
    board = json.loads(DASHBOARD.read_text())
    (var,) = board["templating"]["list"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    panels = list(walk_panels(board["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    rows = {p["title"]: p for p in board["panels"] if p["type"] == "row"}
    assert list(rows) == ["Overview", *DAEMONS]
    for d in DAEMONS:
        exprs = " ".join(t["expr"] for p in rows[d]["panels"] for t in p["targets"])
        # Every daemon row: its throughput, dependency status and restarts; queue daemons also
        # pending + oldest age, latency quantiles and given up.
        assert "jobpipe_dependency_up" in exprs and "process_start_time_seconds" in exprs
        assert "jobpipe_items_processed_total" in exprs or "jobpipe_snapshotter_runs_total" in exprs
        if d != "snapshotter":
            for needle in (
                "jobpipe_queue_pending",
                "jobpipe_queue_oldest_pending_age_seconds",
                "histogram_quantile(0.5,",
                "histogram_quantile(0.95,",
                "jobpipe_queue_given_up",
            ):
                assert needle in exprs, (d, needle)


# --------------------------------------------------------------------------- live


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Live:
    prom_url: str
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]]
    logs: Path
    db_url: str
    ollama: FakeOllama
    started: float = field(default_factory=time.monotonic)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = requests.get(f"{self.prom_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def log_tail(self, daemon: str, n: int = 15) -> str:
        return "\n".join((self.logs / f"{daemon}.log").read_text(errors="replace").splitlines()[-n:])


def daemon_env(db_url: str, ollama_url: str, ba_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        JOBPIPE_DATABASE_URL=db_url,
        JOBPIPE_OLLAMA_URLS=f"[{ollama_url}]",
        JOBPIPE_OLLAMA_READ_TIMEOUT_S="5",
        JOBPIPE_FETCHER_BASE_URL=ba_url,
        JOBPIPE_FETCHER_RATE_LIMIT_PER_S="1000",
        JOBPIPE_QUEUE_POLL_INTERVAL_S="0.2",
        JOBPIPE_QUEUE_BACKOFF_BASE_S="0",
        JOBPIPE_RUNTIME_STATUS_INTERVAL_S="0.5",
        JOBPIPE_RUNTIME_DEPENDENCY_BACKOFF_S="0.2",
        JOBPIPE_RUNTIME_DEPENDENCY_BACKOFF_MAX_S="0.5",
        JOBPIPE_RUNTIME_DRAIN_TIMEOUT_S="3",
        JOBPIPE_LOGGING_FORMAT="json",
    )
    return env


def prometheus_config(tmp: Path, ports: dict[str, int]) -> Path:
    """The shipped scrape config and rules, with the live ports, 1 s intervals and a short `for:`
    on JobpipeDaemonDown (everything else as shipped)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "JobpipeDaemonDown":
                rule["for"] = "2s"
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    cfg = yaml.safe_load((MON / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    cfg["rule_files"] = [str(tmp / "rules.yml")]
    (job,) = cfg["scrape_configs"]
    for sc in job["static_configs"]:
        sc["targets"] = [f"127.0.0.1:{ports[sc['labels']['daemon']]}"]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def metrics_port(log: Path) -> int | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"metrics_serving"' in line:
            url = json.loads(line)["url"]
            return int(url.rsplit(":", 1)[1].split("/")[0])
    return None


@pytest.fixture(scope="module")
def live(
    pg_server: dict[str, Any], pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip("needs prometheus and promtool (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("live")
    name = f"t_live_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server["url"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    db_url = url_for(pg_server["url"], name)
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(db.connect(db_url))
        catalogue.upsert(conn, catalogue.shipped_catalogue())  # the classifier's occupations
        ollama = stack.enter_context(FakeOllama())
        # Ollama answers 503 (queue full) until the first failed call is on record, so that the
        # error panels have something to show; the daemons back off and resume by themselves.
        ollama.fail_mode = "503"
        ba = stack.enter_context(FakeBA(Population.generate(150, 3, occupations=200)))
        env = daemon_env(db_url, ollama.url, ba.url)

        procs: dict[str, subprocess.Popen[bytes]] = {}

        def stop_all() -> None:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()

        stack.callback(stop_all)
        for d in DAEMONS:
            log = open(tmp / f"{d}.log", "wb")  # noqa: SIM115  (closed with the stack)
            stack.callback(log.close)
            procs[d] = subprocess.Popen(
                [sys.executable, "-m", "jobpipe.cli", "run", d, "--metrics-port", "0"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        ports: dict[str, int] = {}

        def all_serving() -> bool:
            for d in DAEMONS:
                assert procs[d].poll() is None, f"{d} exited:\n{(tmp / f'{d}.log').read_text()[-3000:]}"
                if d not in ports and (port := metrics_port(tmp / f"{d}.log")) is not None:
                    ports[d] = port
            return len(ports) == len(DAEMONS)

        wait_until(all_serving, 30, what="every daemon serving /metrics", interval=POLL_S)

        prom_port = free_port()
        prom_log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
        stack.callback(prom_log.close)
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={prometheus_config(tmp, ports)}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
        )

        def stop_prometheus() -> None:
            prom.terminate()
            try:
                prom.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prom.kill()

        stack.callback(stop_prometheus)
        prom_url = f"http://127.0.0.1:{prom_port}"

        def ready() -> bool:
            assert prom.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            try:
                return requests.get(f"{prom_url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 30, what="Prometheus ready", interval=POLL_S)
        lv = Live(prom_url, ports, procs, tmp, db_url, ollama)

        def ollama_error_seen() -> bool:
            for d in ("embedder", "classifier"):
                text = requests.get(f"http://127.0.0.1:{ports[d]}/metrics", timeout=5).text
                if "jobpipe_model_call_errors_total{" in text:
                    return True
            return False

        wait_until(ollama_error_seen, 20, what="a failed Ollama call on record", interval=POLL_S)
        ollama.fail_mode = None
        # On-demand verification of the first postings the fetcher stored (the sweep would wait
        # for verifier.max_age_h).
        wait_until(
            lambda: conn.execute("SELECT count(*) FROM postings").fetchone()[0] >= 20,
            30,
            what="postings stored",
            interval=POLL_S,
        )
        conn.execute("SELECT jobpipe_request_verify(id) FROM postings ORDER BY id LIMIT 20")
        yield lv
    with psycopg.connect(pg_server["url"], autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.system
def test_promtool_check_metrics_on_each_daemon(live: Live) -> None:
    problems = {}
    for d, port in live.ports.items():
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).content
        assert f'jobpipe_build_info{{daemon="{d}"'.encode() in text
        res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True)
        if res.returncode != 0:
            problems[d] = (res.stdout + res.stderr).decode().strip()
    assert problems == {}, f"promtool check metrics: {problems}"


@pytest.mark.system
def test_every_dashboard_query_and_recording_rule_returns_data(live: Live) -> None:
    queries = dashboard_queries() + [(f"recording rule {r}", r) for r in recording_rules()]
    assert len(queries) > 50
    empty: list[tuple[str, str]] = []

    def all_answer() -> bool:
        empty[:] = [(title, expr) for title, expr in queries if not live.query(expr)]
        return not empty

    try:
        wait_until(all_answer, LIVE_TIMEOUT_S, what="every panel query to return data", interval=1.0)
    except AssertionError:
        logs = "\n".join(f"--- {d}\n{live.log_tail(d)}" for d in DAEMONS)
        raise AssertionError(f"queries without data: {json.dumps(empty, indent=1)}\n{logs}") from None

    # Sanity: the data is what the daemons did, per daemon. A daemon still in the backoff after
    # the fixture's Ollama outage resumes at its own pace: waited for, as the panels were.
    def done() -> set[str]:
        return {
            r["metric"]["daemon"]
            for r in live.query(
                'sum by (daemon) (jobpipe_items_processed_total{outcome!~"failed|given_up|deferred"}) > 0'
            )
        }

    wait_until(
        lambda: done() == set(DAEMONS), LIVE_TIMEOUT_S, what="every daemon to have done work", interval=POLL_S
    )
    assert done() == set(DAEMONS)
    up = {r["metric"]["daemon"]: r["value"][1] for r in live.query('up{job="jobpipe"}')}
    assert up == {d: "1" for d in DAEMONS}


@pytest.mark.system
def test_daemon_down_alert_fires_when_a_daemon_stops(live: Live) -> None:
    """Runs last: it stops the embedder."""

    def firing() -> set[str]:
        return {
            r["metric"]["daemon"]
            for r in live.query('ALERTS{alertname="JobpipeDaemonDown", alertstate="firing"}')
        }

    wait_until(
        lambda: len(live.query('up{job="jobpipe"} == 1')) == len(DAEMONS),
        15,
        what="all targets scraped",
        interval=POLL_S,
    )
    assert firing() == set()
    proc = live.procs["embedder"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0  # a graceful stop
    stopped = time.monotonic()
    assert wait_until(firing, 20, what="JobpipeDaemonDown firing", interval=POLL_S) == {"embedder"}
    print(f"JobpipeDaemonDown fired {time.monotonic() - stopped:.1f}s after the embedder stopped")
    alert = live.query('ALERTS{alertname="JobpipeDaemonDown", alertstate="firing"}')[0]["metric"]
    assert alert["severity"] == "critical" and alert["job"] == "jobpipe"
