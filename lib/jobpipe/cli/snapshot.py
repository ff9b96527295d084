"""`jobpipe snapshot` (demand snapshots and backfills, similarity on demand) and `jobpipe similar`."""

from __future__ import annotations

import argparse
import json
from datetime import date, timedelta

from jobpipe import demand, similarity
from jobpipe.cli.args import int_arg, load_config
from jobpipe.cli.core import connect
from jobpipe.db import Conn
from jobpipe.errors import UserError
from jobpipe.text import cell, clean_text, parse_int

MAX_BACKFILL_DAYS = 3660  # ten years of days per `snapshot --since`: one transaction per day


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {value!r}") from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "snapshot",
        help="compute the daily demand snapshot (default: yesterday), backfill days, or the similarity",
        description="Days are calendar days of the database clock. A day is replaced in one transaction, "
        "so re-running a day never duplicates it. Past days are reconstructed from first_seen_at and "
        "inactive_since.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--day", type=_day, metavar="YYYY-MM-DD", help="(re)compute this day")
    which.add_argument(
        "--since", type=_day, metavar="YYYY-MM-DD", help="(re)compute every day from this one up to yesterday"
    )
    which.add_argument("--similarity", action="store_true", help="recompute the occupation similarity now")
    p.add_argument("--json", action="store_true", help="one JSON object per computed day / run")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("similar", help="the occupations most similar to one (by id or name)")
    p.add_argument("occupation", help="occupation id, or (part of) its name")
    p.add_argument("--limit", type=int_arg(1, 10_000), default=20, help="at most this many (default 20)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similar)


def cmd_snapshot(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    sec = cfg.snapshotter
    with connect(args, cfg=cfg) as conn:
        if args.similarity:
            emb = cfg.embedder
            r = similarity.compute_configured(conn, cfg, wait=True)
            if args.json:
                print(
                    json.dumps(
                        {
                            "status": r.status,
                            "occupations": r.occupations,
                            "from_postings": r.from_postings,
                            "from_names": r.from_names,
                            "pairs": r.pairs,
                            "seconds": round(r.seconds, 3),
                        }
                    )
                )
            elif r.status == similarity.NO_VECTORS:
                print(
                    f"no vectors of model {emb.model!r} ({emb.dimensions} dims): nothing to compare; "
                    "the previous result is kept"
                )
            else:
                print(
                    f"similarity: {r.occupations} occupations ({r.from_postings} from posting centroids, "
                    f"{r.from_names} from names), {r.pairs} pairs in {r.seconds:.1f}s"
                )
            return 0
        today = demand.db_today(conn)
        yesterday = today - timedelta(days=1)
        if args.day is not None:
            demand.check_day(conn, args.day)
            days = [args.day]
        elif args.since is not None:
            if args.since > yesterday:
                raise UserError(
                    f"--since {args.since}: nothing to do, the last complete day is {yesterday} "
                    "(use --day for today so far)"
                )
            span = (yesterday - args.since).days + 1
            if span > MAX_BACKFILL_DAYS:  # a typo (0224 for 2024) started 650,000 snapshot runs
                raise UserError(
                    f"--since {args.since}: {span:,} days to compute, at most {MAX_BACKFILL_DAYS:,} "
                    "in one run (start later, or run it in parts)"
                )
            days = demand.days_between(args.since, yesterday)
        else:
            days = [yesterday]
        for day in days:
            done = demand.snapshot_day(conn, day, wait=True, statement_timeout_s=sec.statement_timeout_s)
            if args.json:
                print(
                    json.dumps(
                        {
                            "day": str(day),
                            "rows": done.rows,
                            "active_postings": done.active_postings,
                            "seconds": round(done.seconds, 3),
                            "partial": day >= today,
                        }
                    ),
                    flush=True,
                )
            else:
                note = (
                    "  (today so far: the scheduled run replaces it once the day is over)"
                    if day >= today
                    else ""
                )
                print(
                    f"{day}: {done.rows} rows, {done.active_postings} active postings, "
                    f"{done.seconds:.2f}s{note}",
                    flush=True,
                )
    return 0


def resolve_occupation(conn: Conn, text: str) -> tuple[int, str]:
    """An occupation by id, exact name (case-insensitive) or a unique part of its name."""
    text = (clean_text(text) or "").strip()
    if not text:
        raise UserError("give an occupation id or name")
    if (ident := parse_int(text)) is not None:
        row = conn.execute("SELECT id, name FROM occupations WHERE id = %s", (ident,)).fetchone()
        if row is None:
            raise UserError(f"no occupation with id {text}")
        return row[0], row[1]
    rows = conn.execute(
        "SELECT id, name FROM occupations WHERE lower(name) = lower(%s) ORDER BY id LIMIT 2", (text,)
    ).fetchall()
    if len(rows) != 1:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = conn.execute(
            "SELECT id, name FROM occupations WHERE name ILIKE %s ORDER BY length(name), id LIMIT 11",
            (pattern,),
        ).fetchall()
    if not rows:
        raise UserError(f"no occupation matches {text!r}")
    if len(rows) > 1:
        shown = "; ".join(f"{i} {n}" for i, n in rows[:10]) + ("; ..." if len(rows) > 10 else "")
        raise UserError(f"{text!r} matches several occupations, give the id: {shown}")
    return rows[0][0], rows[0][1]


def cmd_similar(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    with connect(args) as conn:
        occ_id, name = resolve_occupation(conn, args.occupation)
        found = similarity.similar_to(conn, occ_id, args.limit)
        run = similarity.last_run(conn)
    if args.json:
        print(
            json.dumps(
                {
                    "occupation_id": occ_id,
                    "name": name,
                    "similar": [
                        {
                            "rank": s.rank,
                            "occupation_id": s.occupation_id,
                            "name": s.name,
                            "score": round(float(s.score), 4),
                            "basis": s.basis,
                        }
                        for s in found
                    ],
                },
                ensure_ascii=False,
            )
        )
        return 0
    if not found:
        when = "no similarity run yet" if run is None else f"last run {run['finished_at']:%Y-%m-%d %H:%M}"
        print(
            f"{occ_id} {name}: no similar occupations recorded ({when}; it needs postings with embeddings "
            "or a name embedding)"
        )
        return 0
    print(f"{occ_id} {cell(name)} (compared by {found[0].basis}):")
    for s in found:
        print(f"{s.rank:>4}  {float(s.score):.3f}  {s.occupation_id:>8}  {cell(s.name or '?')}")
    return 0
