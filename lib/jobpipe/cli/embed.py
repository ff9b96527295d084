"""Embedding commands: `jobpipe search`, `jobpipe embeddings check`, `jobpipe embeddings status`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from jobpipe import db, embeddings, verification
from jobpipe.cli.args import float_arg, int_arg, load_config
from jobpipe.cli.core import connect
from jobpipe.errors import UserError
from jobpipe.search import MAX_LIMIT, search
from jobpipe.text import cell

# Used by `embeddings check` when the database has no postings yet (a fresh install).
BUILTIN_TEXTS: tuple[str, ...] = (
    "Steuerfachangestellte (m/w/d) in Vollzeit\nSteuerfachangestellte/r\nVerstärkung für unsere Kanzlei.",
    "Berufskraftfahrer CE im Nahverkehr\nBerufskraftfahrer/in\nTouren im Raum Stuttgart, täglich zu Hause.",
    "Pflegefachkraft (w/m/d) Intensivstation\nPflegefachmann/-frau\nUnser Klinikum sucht examinierte Kräfte.",
    "Softwareentwickler Java / Spring Boot\nSoftwareentwickler/in\nAgile Teams, Homeoffice möglich.",
    "Koch / Köchin für Restaurant am See\nKoch/Köchin\nFrische regionale Küche, geregelte Arbeitszeiten.",
    "Elektroniker für Betriebstechnik\nElektroniker/in - Betriebstechnik\nWartung unserer Anlagen.",
    "Medizinische Fachangestellte (MFA) Teilzeit\nMedizinische/r Fachangestellte/r\nHausarztpraxis.",
    "Verkäufer im Einzelhandel (m/w/d)\nVerkäufer/in\nBeratung unserer Kunden, Kasse, Warenpräsentation.",
    "Lagerhelfer Kommissionierung Frühschicht\nFachkraft - Lagerlogistik\nStaplerschein von Vorteil.",
    "Erzieher (m/w/d) Kita\nErzieher/in\nKindertagesstätte mit naturnahem Konzept sucht Unterstützung.",
    "Bauleiter Tiefbau\nBauingenieur/in\nVerantwortung für Straßen- und Kanalbauprojekte.",
    "Industriemechaniker Instandhaltung\nIndustriemechaniker/in\nSchichtarbeit in der Produktion.",
    "Kaufmann für Büromanagement\nKaufmann/-frau - Büromanagement\nOrganisation, Korrespondenz, Buchhaltung.",
    "Zahnmedizinische Fachangestellte ZFA\nZahnmedizinische/r Fachangestellte/r\nModerne Zahnarztpraxis.",
    "Maler und Lackierer Geselle\nMaler/in und Lackierer/in\nInnen- und Fassadenarbeiten.",
    "Altenpflegehelfer (m/w/d)\nAltenpflegehelfer/in\nAmbulanter Pflegedienst, Führerschein erforderlich.",
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="postings that match a text: vector and lexical candidates fused by reciprocal rank",
    )
    p.add_argument("text", help="what to look for, e.g. 'Koch in Vollzeit' (normalised like a title)")
    p.add_argument(
        "--limit", type=int_arg(1, MAX_LIMIT), default=10, help=f"results (1..{MAX_LIMIT}, default 10)"
    )
    p.add_argument("--region", help="federal state, e.g. BAYERN or 'Baden-Württemberg'")
    p.add_argument("--occupation", help="occupation id or name (as in the catalogue, or an alias)")
    p.add_argument(
        "--include-inactive",
        action="store_true",
        help="also postings no longer online (default: active only)",
    )
    p.add_argument("--vector-only", action="store_true", help="the vector list alone, without lexical fusion")
    p.add_argument(
        "--verify",
        action="store_true",
        help="ask the verifier to re-check the shown postings first (SQL: jobpipe_request_verify(id))",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("embeddings", help="check and inspect the posting embeddings")
    esub = p.add_subparsers(dest="embeddings_command", metavar="ACTION")
    esub.required = True
    chk = esub.add_parser(
        "check",
        help="determinism: embed a sample one text per request, then batched and concurrent; compare",
    )
    chk.add_argument("--sample", type=int_arg(1, 100_000), default=100, help="texts to compare (default 100)")
    chk.add_argument(
        "--tolerance", type=float_arg(0, 2), default=None, help="override embedder.determinism_tolerance"
    )
    chk.add_argument("--json", action="store_true")
    chk.set_defaults(func=cmd_check)
    st = esub.add_parser("status", help="vectors per model, the HNSW index, pending embed work")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)


def cmd_search(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    with connect(args, cfg=cfg) as conn, embeddings.client_from_config(cfg, concurrency=1) as client:
        hits = search(
            conn,
            client,
            args.text,
            args.limit,
            region=args.region,
            occupation=args.occupation,
            include_inactive=args.include_inactive,
            mode="vector" if args.vector_only else "hybrid",
        )
        if args.verify and hits:
            # What an application does for the results it shows (the predecessor's lazy
            # verification): on-demand items go ahead of the background sweep.
            with conn.transaction():
                verification.request(conn, [str(h.posting_id) for h in hits])
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
        return 0
    if not hits:
        print("no matching postings (none embedded with this model yet, or the filters exclude all)")
        return 0
    print(f"{'score':>7}  {'distance':>8}  {'posting':>9}  {'region':<22} {'occupation':<32} title")
    for h in hits:
        dist = f"{h.distance:8.4f}" if h.distance is not None else f"{'-':>8}"
        flag = "" if h.active else " [inactive]"
        print(
            f"{h.score * 1000:7.2f}  {dist}  {h.posting_id:>9}  {cell(h.region, 22):<22} "
            f"{cell(h.occupation, 32):<32} {cell(h.title)}{flag}"
        )
    if args.verify:
        print(f"requested verification of {len(hits)} postings")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    e = cfg.embedder
    if args.sample < 1:
        raise UserError(f"--sample must be at least 1, got {args.sample}")
    tolerance = e.determinism_tolerance if args.tolerance is None else args.tolerance
    with connect(args, cfg=cfg) as conn:
        texts = embeddings.sample_texts(conn, args.sample, e.max_chars)
    source = "postings"
    if not texts:
        texts, source = list(BUILTIN_TEXTS[: args.sample]), "built-in texts (no postings in the database)"
    with embeddings.client_from_config(cfg) as client:
        res = embeddings.determinism_check(
            client, texts, batch_size=e.batch_size, workers=e.workers, tolerance=tolerance
        )
    if args.json:
        print(
            json.dumps(
                {
                    "model": e.model,
                    "texts": len(texts),
                    "compared": res.n,
                    "failed": res.failed,
                    "max_distance": res.max_distance,
                    "mean_distance": res.mean_distance,
                    "tolerance": tolerance,
                    "ok": res.ok,
                    "single_seconds": round(res.single_seconds, 3),
                    "batched_seconds": round(res.batched_seconds, 3),
                }
            )
        )
        return 0 if res.ok else 1
    print(f"model {e.model}: {len(texts)} {source}")
    batched = f"batches of {e.batch_size}, {e.workers} in flight:"
    print(f"  {'one text per request:':<34}{res.single_seconds:8.2f} s")
    print(f"  {batched:<34}{res.batched_seconds:8.2f} s")
    if res.failed:
        print(f"  {res.failed} text(s) failed in one of the passes and were not compared")
    if res.n == 0:
        print("NOT WITHIN tolerance: no text could be compared")
        return 1
    worst = texts[res.worst_index] if res.worst_index is not None else ""
    print(f"largest cosine distance: {res.max_distance:.6g}  (text: {worst.splitlines()[0][:60]!r})")
    print(f"mean cosine distance:    {res.mean_distance:.6g}")
    verdict = "within" if res.ok else "NOT WITHIN"
    print(f"{verdict} tolerance {tolerance:g} (embedder.determinism_tolerance)")
    return 0 if res.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    e = cfg.embedder
    with connect(args, cfg=cfg) as conn:
        rows = conn.execute(
            "SELECT model, dimensions, count(*), max(created_at) FROM posting_embeddings "
            "GROUP BY model, dimensions ORDER BY model"
        ).fetchall()
        postings = db.one(conn, "SELECT count(*) FROM postings")[0]
        pending = db.one(
            conn,
            "SELECT count(*) FROM queue WHERE stage = %s AND status IN ('pending', 'running')",
            (embeddings.STAGE,),
        )[0]
        index = embeddings.index_name(e.model, e.dimensions)
        valid = embeddings.index_valid(conn, e.model, e.dimensions)
    out: dict[str, Any] = {
        "configured_model": e.model,
        "dimensions": e.dimensions,
        "postings": postings,
        "pending": pending,
        "index": index,
        "index_valid": valid,
        "models": [{"model": m, "dimensions": d, "vectors": n, "latest": str(t)} for m, d, n, t in rows],
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"configured: {e.model} ({e.dimensions}d); index {index}: {'valid' if valid else 'MISSING'}")
    print(f"postings: {postings}; embed items pending or running: {pending}")
    for m in out["models"]:
        mark = "*" if m["model"] == e.model else " "
        print(
            f" {mark} {m['model']:<32} {m['dimensions']:>5}d {m['vectors']:>10} vectors, latest {m['latest']}"
        )
    return 0
