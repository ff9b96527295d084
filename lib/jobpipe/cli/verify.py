"""`jobpipe verify`: on-demand verification of postings, and the verification state."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from jobpipe import db, queue, verification
from jobpipe.cli.args import float_arg, load_config
from jobpipe.cli.core import connect
from jobpipe.db import Conn
from jobpipe.errors import UserError
from jobpipe.text import clean_text


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check postings against the BA now (ahead of the background backlog), or show the state",
        description="Enqueues each posting (by id or referenznummer) for the verifier with high priority and "
        "wakes it. Other applications can do the same in SQL: SELECT jobpipe_request_verify(posting_id).",
    )
    p.add_argument("postings", nargs="*", metavar="POSTING", help="posting id or BA referenznummer")
    p.add_argument(
        "--wait",
        type=float_arg(0.001, 86400),
        metavar="SECONDS",
        help="wait up to SECONDS for the verifier's answers and print them",
    )
    p.add_argument("--status", action="store_true", help="oldest unverified age, stale and queued postings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.postings and not args.status:
        raise UserError("give posting ids or referenznummern (or --status)")
    if args.wait is not None and args.wait <= 0:
        raise UserError("--wait needs a positive number of seconds")
    cfg = load_config(args)
    with connect(args, cfg=cfg) as conn:
        if args.status:
            return _status(conn, cfg, args.json)
        refs = [(clean_text(r) or "").strip() for r in args.postings]
        if any(not r for r in refs):
            raise UserError("an empty posting reference was given")
        since = db.one(conn, "SELECT now()")[0]
        ids, unknown = verification.request(conn, refs)
        if not args.json:
            print(f"queued {len(ids)} posting(s) for verification")
        for r in unknown:
            print(
                f"jobpipe: no posting {r!r} (neither a posting id nor a known referenznummer)",
                file=sys.stderr,
            )
        results: dict[int, tuple[str, str | None]] = {}
        if args.wait and ids:
            deadline = time.monotonic() + args.wait
            while True:
                results = verification.outcomes(conn, ids, since)
                finished = [s for s, (st, _) in results.items() if st in ("done", "given_up")]
                if len(finished) == len(ids) or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)  # a CLI polling a table for a human: no event to wait on
        if args.json:
            print(
                json.dumps(
                    {
                        "queued": ids,
                        "unknown": unknown,
                        "results": {str(k): {"status": v[0], "outcome": v[1]} for k, v in results.items()},
                    },
                    ensure_ascii=False,
                )
            )
        elif args.wait:
            for pid in ids:
                st, outcome = results.get(pid, ("pending", None))
                shown = outcome if st == "done" else f"{st}" + (f" ({outcome})" if outcome else "")
                print(f"{pid}: {shown}")
    return 2 if unknown else 0


def _status(conn: Conn, cfg: Any, as_json: bool) -> int:
    sec = cfg.verifier
    st = verification.staleness(conn, sec.max_age_h, sec.alert_margin_h)
    stale = db.one(
        conn,
        """SELECT count(*) FROM postings WHERE active
              AND coalesce(verified_at, first_seen_at) < now() - make_interval(secs => %s)""",
        (sec.max_age_h * 3600.0,),
    )[0]
    q = queue.stats(conn, [verification.STAGE])[verification.STAGE]
    out = {
        "oldest_unverified_age_s": round(st.oldest_age_s, 1),
        "alert_limit_s": st.limit_s,
        "alert": st.firing,
        "stale_active_postings": stale,
        "queued": q.pending + q.scheduled,
        "running": q.running,
        "given_up": q.given_up,
    }
    if as_json:
        print(json.dumps(out))
    else:
        active = db.one(conn, "SELECT EXISTS (SELECT 1 FROM postings WHERE active)")[0]
        oldest = f"{st.oldest_age_s / 3600:.1f} h" if active else "none (no active postings)"
        print(
            f"oldest unverified active posting: {oldest} "
            f"(alert beyond {st.limit_s / 3600:.1f} h){'  ALERT' if st.firing else ''}"
        )
        print(
            f"stale (unverified > {sec.max_age_h:g} h): {stale}; queued {out['queued']}, "
            f"running {q.running}, given up {q.given_up}"
        )
    return 1 if st.firing else 0
