"""The contracts of the external APIs live in docs/contracts/ and are cited one way: every mention
of a contract file in the code, tests, benchmarks and README is `docs/contracts/<file>` naming a
file that exists, and the index names every contract and only modules that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "docs" / "contracts"
SEARCHED = ("lib", "daemons", "tests", "bench", "README.md")
# Any path-like word ending in contracts/<name>: the right spelling and every wrong one.
CITATION = re.compile(r"[\w./-]*contracts/[\w.-]*\w")


def citations() -> list[tuple[str, str]]:
    """(where, cited text) for every contract citation in SEARCHED."""
    found = []
    for top in SEARCHED:
        base = ROOT / top
        for path in [base] if base.is_file() else sorted(base.rglob("*")):
            if not path.is_file() or path.suffix not in (".py", ".md", ".sh", ".toml", ".yaml"):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                found += [(f"{path.relative_to(ROOT)}:{n}", m) for m in CITATION.findall(line)]
    return found


def test_every_cited_contract_exists_and_is_spelled_one_way() -> None:
    cited = citations()
    assert len(cited) >= 8, cited  # the clients, simulators and their tests cite them
    wrong = [
        (where, text)
        for where, text in cited
        if not text.startswith("docs/contracts/") or not (ROOT / text).is_file()
    ]
    assert not wrong, wrong
    assert {Path(text).name for _, text in cited} == {p.name for p in CONTRACTS.glob("*.md")} - {"README.md"}


def test_the_index_lists_every_contract_and_names_modules_that_exist() -> None:
    index = (CONTRACTS / "README.md").read_text(encoding="utf-8")
    for contract in CONTRACTS.glob("*.md"):
        if contract.name != "README.md":
            assert f"]({contract.name})" in index, contract.name
    modules = set(re.findall(r"`(jobpipe(?:\.\w+)+)`", index))
    assert len(modules) >= 10, modules
    for name in sorted(modules):
        importlib.import_module(name)
    for test in re.findall(r"`(tests/\w+\.py)`", index):
        assert (ROOT / test).is_file(), test
