"""How long do the snapshotter's two computations take on a realistic amount of data?

1. The daily demand snapshot (jobpipe.demand.snapshot_day) over N postings (default 1,000,000;
   goal <= 10 s): postings spread over 3,600 real BERUFENET occupation names, 16 federal states,
   60 days of first_seen_at, a fifth of them inactive, some without occupation or region.
2. The occupation similarity (jobpipe.similarity.compute) for 3,600 occupations (goal <= 30 s):
   demand-weighted centroids of E embedded postings (default 200,000) in D dimensions (default 768,
   the embedder's default model), with the name-embedding fallback for occupations that have fewer
   than `min_postings` of them. Vectors are random but clustered per occupation (a random base
   vector per occupation plus noise), so the top-K has structure to find.

Everything is generated inside PostgreSQL with generate_series (triggers off during the load), in a
fresh database: on the server given by --db-url / $DATABASE_URL, else on a throw-away embedded
server. Prints a table and one `RESULT {json}` line. `--quick` is the small CI variant.

Usage: python bench/snapshotter.py [--quick] [--postings N] [--embedded E] [--occupations K]
                                   [--dims D] [--repeat R] [--db-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobpipe import db, demand, embedded, similarity  # noqa: E402

NAMES_FILES = (
    ROOT / "lib" / "jobpipe" / "sim" / "data" / "occupation-names-berufenet-2015.txt",
    Path("/work/shared/data/occupation-names-berufenet-2015.txt"),
)
REGIONS = (
    "BADEN_WUERTTEMBERG",
    "BAYERN",
    "BERLIN",
    "BRANDENBURG",
    "BREMEN",
    "HAMBURG",
    "HESSEN",
    "MECKLENBURG_VORPOMMERN",
    "NIEDERSACHSEN",
    "NORDRHEIN_WESTFALEN",
    "RHEINLAND_PFALZ",
    "SAARLAND",
    "SACHSEN",
    "SACHSEN_ANHALT",
    "SCHLESWIG_HOLSTEIN",
    "THUERINGEN",
)
GOAL_SNAPSHOT_S = 10.0
GOAL_SIMILARITY_S = 30.0
MODEL = "bench-model"


def occupation_names(n: int) -> list[str]:
    for path in NAMES_FILES:
        if path.exists():
            names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            break
    else:
        raise SystemExit("occupation names file not found (lib/jobpipe/sim/data or /work/shared/data)")
    names = list(dict.fromkeys(names))
    if len(names) < n:
        raise SystemExit(f"only {len(names)} occupation names available, asked for {n}")
    return names[:n]


def populate(
    conn: Any, *, occupations: int, postings: int, embedded_postings: int, dims: int, min_postings: int
) -> dict[str, float]:
    """Generate the data set; returns load timings (seconds)."""
    t: dict[str, float] = {}
    names = occupation_names(occupations)
    t0 = time.perf_counter()
    with conn.transaction():
        # Generated data only: skip the enqueue/title triggers and FK checks of a real ingest.
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(
            """INSERT INTO occupations (id, name, name_norm)
               SELECT i, n, lower(n) FROM unnest(%s::text[]) WITH ORDINALITY AS t(n, i)""",
            (names,),
        )
        # Demand is skewed like the real market: occupation = floor(0.85 K * u^2) puts most postings
        # on few occupations, a long tail on many, and none on the last 15 % (which then fall back
        # to their name embeddings).
        conn.execute(
            """
            INSERT INTO postings (external_id, title, occupation_id, region, first_seen_at, last_seen_at,
                                  verified_at, active, inactive_since, has_salary)
            SELECT 'B-' || i,
                   'Stelle ' || i,
                   CASE WHEN h1 < 0.04 THEN NULL ELSE 1 + floor(0.85 * %(k)s * h2 * h2)::int END,
                   CASE WHEN h3 < 0.03 THEN NULL ELSE (%(regions)s::text[])[1 + floor(h3 * 16)::int] END,
                   fs, fs + interval '1 hour', NULL,
                   h4 >= 0.2,
                   CASE WHEN h4 < 0.2 THEN fs + (now() - fs) * h5 END,
                   h5 < 0.35
              FROM (SELECT i, random() AS h1, random() AS h2, random() AS h3, random() AS h4,
                           random() AS h5, now() - random() * interval '60 days' AS fs
                      FROM generate_series(1, %(n)s) AS i) g
            """,
            {"n": postings, "k": occupations, "regions": list(REGIONS)},
        )
    t["postings_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    conn.execute("ANALYZE postings")
    t["analyze_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("CREATE TEMP TABLE base (id int PRIMARY KEY, v vector) ON COMMIT DROP")
        conn.execute(
            """INSERT INTO base SELECT o.id, (SELECT array_agg(random() - 0.5)::real[]
                                                FROM generate_series(1, %(d)s) WHERE o.id > 0)::vector
                 FROM occupations o""",
            {"d": dims},
        )
        conn.execute("CREATE TEMP TABLE noise (j int PRIMARY KEY, v vector) ON COMMIT DROP")
        conn.execute(
            """INSERT INTO noise SELECT j, (SELECT array_agg((random() - 0.5) * 0.6)::real[]
                                              FROM generate_series(1, %(d)s) WHERE j >= 0)::vector
                 FROM generate_series(0, 996) AS j""",
            {"d": dims},
        )
        conn.execute(
            """INSERT INTO occupation_embeddings (occupation_id, model, text_hash, embedding)
               SELECT b.id, %s, 'bench', b.v + n.v FROM base b JOIN noise n ON n.j = b.id %% 997""",
            (MODEL,),
        )
        # The first E active postings with an occupation get an embedding: base + noise.
        conn.execute(
            """INSERT INTO posting_embeddings (posting_id, model, text_hash, dimensions, embedding)
               SELECT p.id, %(m)s, 'bench', %(d)s, b.v + n.v
                 FROM (SELECT id, occupation_id FROM postings WHERE active AND occupation_id IS NOT NULL
                        ORDER BY id LIMIT %(e)s) p
                 JOIN base b ON b.id = p.occupation_id
                 JOIN noise n ON n.j = p.id %% 997""",
            {"m": MODEL, "d": dims, "e": embedded_postings},
        )
    t["embeddings_load_s"] = time.perf_counter() - t0
    conn.execute("ANALYZE posting_embeddings")
    conn.execute("ANALYZE occupation_embeddings")
    return t


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    conn = db.connect(url)
    try:
        loads = populate(
            conn,
            occupations=args.occupations,
            postings=args.postings,
            embedded_postings=args.embedded,
            dims=args.dims,
            min_postings=args.min_postings,
        )
        # Only active postings with an occupation get one: report what was really generated.
        embedded_n = conn.execute("SELECT count(*) FROM posting_embeddings").fetchone()[0]
        day = demand.db_today(conn) - timedelta(days=1)
        snaps = [demand.snapshot_day(conn, day, wait=True) for _ in range(args.repeat)]
        snap_s = statistics.median(s.seconds for s in snaps)
        rows = snaps[-1].rows
        dup = conn.execute(
            "SELECT count(*) - count(DISTINCT (occupation_id, region)) FROM demand_snapshots WHERE day = %s",
            (day,),
        ).fetchone()[0]
        sims = [
            similarity.compute(
                conn,
                model=MODEL,
                dims=args.dims,
                top_k=args.top_k,
                min_postings=args.min_postings,
                min_score=-1.0,
                wait=True,
            )
            for _ in range(args.repeat)
        ]
        sim_s = statistics.median(s.seconds for s in sims)
        s = sims[-1]
    finally:
        conn.close()
    return {
        "postings": args.postings,
        "occupations": args.occupations,
        "embedded_postings": embedded_n,
        "dims": args.dims,
        "top_k": args.top_k,
        "repeat": args.repeat,
        "snapshot_s": round(snap_s, 3),
        "snapshot_rows": rows,
        "snapshot_active_postings": snaps[-1].active_postings,
        "snapshot_duplicate_keys": dup,
        "similarity_s": round(sim_s, 3),
        "similarity_vectors_s": round(statistics.median(x.vectors_s for x in sims), 3),
        "similarity_pairs_s": round(statistics.median(x.pairs_s for x in sims), 3),
        "load_average": round(os.getloadavg()[0], 2),
        "similarity_occupations": s.occupations,
        "similarity_from_postings": s.from_postings,
        "similarity_from_names": s.from_names,
        "similarity_pairs": s.pairs,
        "goal_snapshot_s": GOAL_SNAPSHOT_S,
        "goal_similarity_s": GOAL_SIMILARITY_S,
        **{k: round(v, 2) for k, v in loads.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for CI (seconds, not minutes)")
    ap.add_argument("--postings", type=int)
    ap.add_argument("--embedded", type=int, help="postings with an embedding (feed the centroids)")
    ap.add_argument("--occupations", type=int)
    ap.add_argument("--dims", type=int)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--min-postings", type=int, default=5)
    ap.add_argument("--repeat", type=int, help="runs per measurement (median reported)")
    ap.add_argument(
        "--db-url",
        default=os.environ.get("DATABASE_URL"),
        help="admin URL of a server to create the bench database on (default: a temporary embedded server)",
    )
    args = ap.parse_args(argv)
    defaults = (20_000, 3_000, 300, 384, 1) if args.quick else (1_000_000, 200_000, 3_600, 768, 3)
    for name, value in zip(("postings", "embedded", "occupations", "dims", "repeat"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)

    with (
        embedded.given_or_temporary(args.db_url, "jobpipe-bench-pg-") as admin,
        db.scratch_database(admin, "bench_snapshotter_") as url,
    ):
        res = run(url, args)

    res["mode"] = "quick" if args.quick else "full"
    res["snapshot_ok"] = res["snapshot_s"] <= GOAL_SNAPSHOT_S
    res["similarity_ok"] = res["similarity_s"] <= GOAL_SIMILARITY_S
    w = 38
    print(f"{'measurement':<{w}}{'value':>14}  goal")
    print(f"{'postings':<{w}}{res['postings']:>14,}")
    print(
        f"{'snapshot (one day)':<{w}}{res['snapshot_s']:>13.2f}s  <= {GOAL_SNAPSHOT_S:g}s"
        f"  ({res['snapshot_rows']:,} rows, {res['snapshot_active_postings']:,} active)"
    )
    print(f"{'occupations':<{w}}{res['occupations']:>14,}")
    print(f"{'embedded postings x dims':<{w}}{res['embedded_postings']:>10,} x {res['dims']}")
    print(
        f"{'similarity (centroids + top-K)':<{w}}{res['similarity_s']:>13.2f}s  <= {GOAL_SIMILARITY_S:g}s"
        f"  ({res['similarity_pairs']:,} pairs; {res['similarity_from_postings']:,} centroids, "
        f"{res['similarity_from_names']:,} name vectors)"
    )
    print(f"{'  of which centroids + name fallback':<{w}}{res['similarity_vectors_s']:>13.2f}s")
    print(f"{'  of which all-pairs top-K':<{w}}{res['similarity_pairs_s']:>13.2f}s")
    print(
        f"{'(load: postings / embeddings)':<{w}}{res['postings_load_s']:>9.1f}s / "
        f"{res['embeddings_load_s']:.1f}s   (load average {res['load_average']})"
    )
    print("RESULT " + json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
