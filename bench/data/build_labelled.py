"""Build bench/data/labelled_titles.csv: realistic posting titles -> the expected occupation.

See bench/data/README.md for what is in it and why. Deterministic (seeded): running it again
writes the same file. Run from the repository root: python bench/data/build_labelled.py
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import titlegen  # noqa: E402

from jobpipe.catalogue import shipped_catalogue  # noqa: E402

OUT = HERE / "labelled_titles.csv"
SEED = 20261
# One title per occupation with these kinds of noise, in turn (plain "gender" most often).
CYCLE = (
    "gender",
    "employment",
    "location",
    "qualifier",
    "seniority",
    "typo",
    "gender",
    "combined",
    "location",
    "apprenticeship",
    "employment",
    "uppercase",
    "qualifier",
)


def build() -> list[dict[str, str]]:
    rng = random.Random(SEED)
    occupations = sorted(shipped_catalogue(), key=lambda o: o.id)
    by_name = {o.name: o for o in occupations}
    rows: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(title: str, name: str | None, kind: str) -> None:
        title = " ".join(title.split())
        if title.lower() in seen:
            return
        seen.add(title.lower())
        occ = by_name[name] if name else None
        rows.append(
            {
                "title": title,
                "occupation_id": str(occ.id) if occ else "",
                "occupation_name": occ.name if occ else "",
                "kind": kind,
            }
        )

    for i, occ in enumerate(occupations):
        kind = CYCLE[i % len(CYCLE)]
        add(titlegen.noisy(rng, titlegen.base_form(rng, occ.name), kind), occ.name, kind)
    for core, name in titlegen.TRADE_NAMES:
        add(
            titlegen.noisy(rng, core, rng.choice(("gender", "gender", "employment", "location"))),
            name,
            "trade",
        )
    for core in titlegen.NO_MATCH:
        add(titlegen.noisy(rng, core, rng.choice(("gender", "employment", "location"))), None, "no_match")
    return rows


def main() -> int:
    rows = build()
    with OUT.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["title", "occupation_id", "occupation_name", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} labelled titles to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
