"""Configuration: one registry, validated at start-up, with sources and redaction."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobpipe import config, sections, settings
from jobpipe.errors import ConfigError
from tests.typecheck import mypy_errors

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "jobpipe.yaml"
    p.write_text(text)
    return p


def test_shipped_config_is_the_rendered_registry():
    shipped = (ROOT / "config" / "jobpipe.yaml").read_text()
    assert shipped == config.render_defaults(), "run: jobpipe config defaults > config/jobpipe.yaml"


def test_shipped_config_loads_and_equals_defaults():
    cfg = config.load(ROOT / "config" / "jobpipe.yaml", environ={})
    defaults = config.load(environ={})
    assert {k: v.value for k, v in cfg.items()} == {k: v.value for k, v in defaults.items()}
    assert cfg.source("embedder.workers").startswith(str(ROOT / "config" / "jobpipe.yaml") + ":")


def test_precedence_default_file_env(tmp_path):
    p = write(tmp_path, "embedder:\n  workers: 6\n  batch_size: 16\n")
    cfg = config.load(p, environ={"JOBPIPE_EMBEDDER_WORKERS": "8"})
    assert cfg.embedder.workers == 8 and cfg.source("embedder.workers") == "env JOBPIPE_EMBEDDER_WORKERS"
    assert cfg.embedder.batch_size == 16 and cfg.source("embedder.batch_size") == f"{p}:3"
    assert cfg.embedder.max_chars == 2000 and cfg.source("embedder.max_chars") == "default"


def test_jobpipe_config_env_names_the_file(tmp_path):
    p = write(tmp_path, "verifier:\n  max_age_h: 12\n")
    cfg = config.load(environ={"JOBPIPE_CONFIG": str(p)})
    assert cfg.verifier.max_age_h == 12.0


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("embedder:\n  wrokers: 3\n", ":2: unknown setting 'embedder.wrokers' (did you mean 'workers'?)"),
        ("embeder:\n  workers: 3\n", ":1: unknown section 'embeder' (did you mean 'embedder'?)"),
        ("embedder:\n  workers: many\n", ":2: embedder.workers must be an integer, got str 'many'"),
        ("embedder:\n  workers: 0\n", ":2: embedder.workers = 0 is below the minimum 1"),
        ("embedder:\n  workers: true\n", ":2: embedder.workers must be an integer"),
        ("logging:\n  level: LOUD\n", ":2: logging.level = 'LOUD' is not one of"),
        ("embedder:\n  workers: [1\n", ":3: YAML syntax error"),
        ("- a\n- b\n", ":1: the config file must be a mapping of sections"),
    ],
)
def test_mistakes_name_key_file_and_line(tmp_path, text, expect):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load(p, environ={})
    assert str(exc.value).startswith(str(p))
    assert expect in str(exc.value)


def test_env_mistakes():
    with pytest.raises(ConfigError, match="did you mean 'JOBPIPE_EMBEDDER_WORKERS'"):
        config.load(environ={"JOBPIPE_EMBEDER_WORKERS": "3"})
    with pytest.raises(ConfigError, match=r"env JOBPIPE_EMBEDDER_WORKERS: embedder\.workers = 0"):
        config.load(environ={"JOBPIPE_EMBEDDER_WORKERS": "0"})
    cfg = config.load(environ={"JOBPIPE_OLLAMA_URLS": "[http://a:1, http://b:2]"})
    assert cfg.ollama.urls == ["http://a:1", "http://b:2"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml", environ={})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBPIPE_")}
    return subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=ROOT,
    )


@pytest.mark.system
def test_cli_check_exit_codes_and_no_traceback(tmp_path):
    bad = write(tmp_path, "embedder:\n  wrokers: 3\n")
    r = run_cli("config", "check", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "did you mean 'workers'" in r.stderr
    ok = run_cli("config", "check", str(ROOT / "config" / "jobpipe.yaml"))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.system
def test_cli_show_redacts_secrets(tmp_path):
    p = write(tmp_path, "alerts:\n  sender: '+4915112345678'\n  recipients: ['+4917612345678']\n")
    env = {"JOBPIPE_CONFIG": str(p), "JOBPIPE_DATABASE_URL": "postgresql://jp:hunter2@db.example/jobpipe"}
    r = run_cli("config", "show", env=env)
    assert r.returncode == 0, r.stderr
    for secret in ("hunter2", "12345678"):
        assert secret not in r.stdout
    assert "postgresql://jp:***@db.example/jobpipe" in r.stdout
    j = json.loads(run_cli("config", "show", "--json", env=env).stdout)
    assert j["alerts.sender"] == {"value": "***", "source": f"{p}:2"}
    assert j["embedder.workers"]["source"] == "default"


def test_typed_sections_are_generated_from_the_registry():
    current = Path(sections.__file__).read_text()
    assert current == settings.render_types(), "run: python -m jobpipe.settings --write-types"


def test_sections_are_frozen_typed_dataclasses_holding_the_registry_values():
    cfg = config.load(environ={"JOBPIPE_EMBEDDER_WORKERS": "8"})
    assert isinstance(cfg.embedder, sections.EmbedderConfig)
    assert cfg.embedder.workers == 8 and cfg.embedder.max_chars == 2000
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embedder.workers = 3  # type: ignore[misc]  # the point: assignment is refused
    with pytest.raises(AttributeError):
        cfg.embedder.wrokers  # type: ignore[attr-defined]  # noqa: B018  # a typo is no setting
    for sec in settings.SECTIONS:
        section = getattr(cfg, sec.name)
        assert [f.name for f in dataclasses.fields(section)] == [s.name for s in sec.settings]


@pytest.mark.system  # runs mypy in a process (tests/tiers.py)
def test_a_misspelt_setting_is_a_type_error(tmp_path):
    """mypy sees the sections' fields: a typo fails the type check, a correct name passes."""
    errors = mypy_errors(
        tmp_path,
        "from jobpipe import config\n\n"
        "cfg = config.load(environ={})\n"
        "workers: int = cfg.embedder.workers\n"
        "oops = cfg.embedder.wrokers\n"
        "wrong: str = cfg.queue.lease_s\n",
    )
    assert len(errors) == 2, errors
    assert errors[0].startswith('5: error: "EmbedderConfig" has no attribute "wrokers"')
    assert errors[1].startswith("6: error: Incompatible types in assignment")


def test_changing_a_loaded_list_leaves_the_defaults_of_later_loads_alone() -> None:
    """Sections are frozen, their lists and dicts are not: the defaults are copied per load."""
    first = config.load(environ={})
    first.fetcher.sources.append({"name": "extra"})
    first.alerts.overrides["fetcher"] = {"stall_minutes": 1}
    first.ollama.urls.append("http://elsewhere:11434")
    again = config.load(environ={})
    assert len(again.fetcher.sources) == len(first.fetcher.sources) - 1
    assert "fetcher" not in again.alerts.overrides
    assert "http://elsewhere:11434" not in again.ollama.urls


def test_config_check_checks_the_search_terms_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` said OK for a classifier.search_terms_file the classifier's start and
    `occupations load` refuse (missing, relative, a malformed line): it checks the file too."""
    from jobpipe.cli import main

    terms = tmp_path / "terms.csv"
    terms.write_text("term,occupation\nBrotmeister,Bäcker/in\n", encoding="utf-8")
    cfg = tmp_path / "jobpipe.yaml"
    cfg.write_text(f"classifier:\n  search_terms_file: {json.dumps(str(terms))}\n", encoding="utf-8")
    assert main(["config", "check", str(cfg)]) == 0
    assert f"OK (1 local search terms in {terms})" in capsys.readouterr().out
    terms.write_text("Brotmeister;Bäcker/in\n", encoding="utf-8")
    assert main(["config", "check", str(cfg)]) == 2
    assert f"{terms}: line 1: expected `term,occupation`" in capsys.readouterr().err
    cfg.write_text("classifier:\n  search_terms_file: terms.csv\n", encoding="utf-8")
    assert main(["config", "check", str(cfg)]) == 2
    assert "'terms.csv' is a relative path" in capsys.readouterr().err
    cfg.write_text(f"classifier:\n  search_terms_file: {json.dumps(str(tmp_path / 'nope.csv'))}\n")
    assert main(["config", "check", str(cfg)]) == 2
    assert "classifier.search_terms_file: cannot read" in capsys.readouterr().err
