"""Commands of the occupation catalogue and the classifier.

jobpipe occupations load PATH... | --shipped   saved BERUFENET answers (list pages, detail arrays)
jobpipe occupations fetch [--no-details]       page through the live BERUFENET API, politely
jobpipe occupations status                     counts, KldB coverage, vectors per embedding model
jobpipe classifier eval FILE.csv               the real pipeline on labelled titles: accuracy, LLM calls
jobpipe classifier requeue --stale | --outcome X | --unclassified | --all
jobpipe classifier stats                       titles by outcome
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobpipe import catalogue, classifier_eval, classify, crawl, db
from jobpipe.cli.args import int_arg, load_config
from jobpipe.cli.core import connect
from jobpipe.errors import UserError
from jobpipe.text import InputTooLarge, read_capped


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("occupations", help="load, fetch and inspect the BERUFENET occupation catalogue")
    osub = p.add_subparsers(dest="occupations_command", metavar="ACTION")
    osub.required = True
    load = osub.add_parser("load", help="load saved BERUFENET JSON answers (one transaction, idempotent)")
    load.add_argument("paths", nargs="*", metavar="PATH", help="list pages (/berufe?page=N) or detail arrays")
    load.add_argument("--shipped", action="store_true", help="load the test catalogue shipped with jobpipe")
    load.add_argument("--json", action="store_true")
    load.set_defaults(func=cmd_occupations_load)
    fetch = osub.add_parser(
        "fetch", help="page through the live BERUFENET API and upsert everything at the end"
    )
    fetch.add_argument("--no-details", action="store_true", help="list pages only (no KldB codes)")
    fetch.add_argument(
        "--max-pages", type=int_arg(1, 1_000_000), default=None, metavar="N", help="stop after N list pages"
    )
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(func=cmd_occupations_fetch)
    status = osub.add_parser("status", help="catalogue size and occupation vectors per embedding model")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_occupations_status)

    p = sub.add_parser("classifier", help="evaluate models, re-queue titles, outcome counts")
    csub = p.add_subparsers(dest="classifier_command", metavar="ACTION")
    csub.required = True
    ev = csub.add_parser(
        "eval", help="run the pipeline on labelled titles (CSV: title, expected occupation id)"
    )
    ev.add_argument("file", metavar="FILE.csv")
    ev.add_argument(
        "--limit", type=int_arg(1, 10_000_000), default=None, metavar="N", help="first N rows only"
    )
    ev.add_argument("--model", default=None, help="LLM to evaluate (default: classifier.model)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_classifier_eval)
    rq = csub.add_parser("requeue", help="queue titles for classification again")
    rq.add_argument("--stale", action="store_true", help="results of another LLM, prompt or embedding model")
    rq.add_argument("--outcome", action="append", default=[], choices=classify.ALL_OUTCOMES,
                    help="every title with this outcome (repeatable)")  # fmt: skip
    rq.add_argument("--unclassified", action="store_true", help="titles without an outcome")
    rq.add_argument("--all", action="store_true", help="every title")
    rq.set_defaults(func=cmd_classifier_requeue)
    st = csub.add_parser("stats", help="titles by outcome")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_classifier_stats)


def _print_stats(stats: catalogue.LoadStats, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats.as_dict(), ensure_ascii=False))
        return
    print(
        f"{stats.occupations} occupations from {stats.sources} source(s): {stats.inserted} new, "
        f"{stats.updated} updated, {stats.unchanged} unchanged"
    )
    for problem in stats.problems[:20]:
        print(f"  note: {problem}")


def cmd_occupations_load(args: argparse.Namespace) -> int:
    if not args.paths and not args.shipped:
        raise UserError("occupations load: give one or more PATHs, or --shipped")
    # Every file is checked before the database is touched: a bad or missing file is its own error
    # (exit 2), not hidden behind a database that is down or behind, and starts no embedded server.
    sources = catalogue.read_files(args.paths)
    if args.shipped:
        sources.append(catalogue.shipped_catalogue())
    cfg = load_config(args)
    local = catalogue.local_search_terms(cfg.classifier.search_terms_file)
    with connect(args, cfg=cfg) as conn:
        stats = catalogue.load(conn, sources, search_terms=catalogue.merge_search_terms(local))
        _warn_unknown(conn, cfg, local)
    _print_stats(stats, args.json)
    return 0


def _warn_unknown(conn: Any, cfg: Any, local: list[tuple[int, str, str]]) -> None:
    for warning in catalogue.unknown_local_occupations(conn, cfg.classifier.search_terms_file, local):
        print(f"warning: {warning}", file=sys.stderr)


def make_ba_client(cfg: Any) -> Any:
    """The BA client with the fetcher's politeness settings and the BERUFENET endpoint of the classifier."""
    c = cfg.classifier
    return crawl.make_client(cfg, berufenet_url=c.berufenet_url, berufenet_api_key=c.berufenet_api_key)


def cmd_occupations_fetch(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    local = catalogue.local_search_terms(cfg.classifier.search_terms_file)  # a bad file fails first
    with make_ba_client(cfg) as client:
        found, problems = catalogue.fetch(
            client,
            details=not args.no_details,
            max_pages=args.max_pages,
            progress=None if args.json else lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    with connect(args, cfg=cfg) as conn:
        stats = catalogue.upsert(conn, found, search_terms=catalogue.merge_search_terms(local))
        _warn_unknown(conn, cfg, local)
    stats.sources = 1
    stats.problems = problems
    _print_stats(stats, args.json)
    return 0


def cmd_occupations_status(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        total, with_kldb = db.one(conn, "SELECT count(*), count(kldb2010) FROM occupations")
        models = conn.execute(
            "SELECT model, count(*), min(vector_dims(embedding)) FROM occupation_embeddings"
            " GROUP BY model ORDER BY 1"
        ).fetchall()
    doc = {
        "occupations": total,
        "with_kldb2010": with_kldb,
        "embeddings": {m: {"occupations": n, "dimensions": d} for m, n, d in models},
    }
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"{total} occupations ({with_kldb} with a KldB 2010 code)")
    for m, n, d in models:
        print(f"  vectors of {m}: {n} ({d} dimensions)")
    if not models:
        print("  no occupation vectors yet (the classifier embeds them when it starts)")
    return 0


def cmd_classifier_eval(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.model:
        cfg = cfg.with_overrides(classifier__model=args.model)
    try:
        body = read_capped(args.file)  # bounded: `classifier eval /dev/zero` read until memory ran out
    except OSError as exc:
        raise UserError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except InputTooLarge as exc:
        raise UserError(str(exc)) from None
    rows = classifier_eval.parse_labelled_csv(body, args.file)
    if args.limit is not None:
        rows = rows[: args.limit]
    with connect(args, cfg=cfg) as conn:
        report = classifier_eval.evaluate_from_config(conn, cfg, rows)
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print(report.table())
    return 0


def cmd_classifier_requeue(args: argparse.Namespace) -> int:
    if not (args.stale or args.outcome or args.unclassified or args.all):
        raise UserError("classifier requeue: say which titles: --stale, --outcome X, --unclassified or --all")
    cfg = load_config(args)
    versions = classify.Versions(
        cfg.classifier.model.strip(), classify.load_prompt().version, cfg.embedder.model.strip()
    )
    with connect(args, cfg=cfg) as conn:
        n = classify.requeue(
            conn,
            stale=versions if args.stale else None,
            outcomes=args.outcome,
            unclassified=args.unclassified,
            everything=args.all,
        )
    print(f"{n} title(s) queued for classification")
    return 0


def cmd_classifier_stats(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        counts = classify.outcome_counts(conn)
    if args.json:
        print(json.dumps(counts))
        return 0
    total = sum(counts.values()) or 1
    for outcome, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{outcome:<16} {n:>9}  {100 * n / total:5.1f} %")
    return 0
