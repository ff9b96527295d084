"""`jobpipe fetch`: the crawl partitions and their state, and one-off crawls with progress."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from datetime import datetime
from typing import Any

from jobpipe import crawl, fetch_sources
from jobpipe.cli.args import load_config
from jobpipe.cli.core import connect
from jobpipe.errors import UserError
from jobpipe.postings import description_counts
from jobpipe.text import fmt_duration


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="BA crawl partitions: their state, and one-off crawls")
    fsub = p.add_subparsers(dest="fetch_command", metavar="ACTION")
    fsub.required = True
    s = fsub.add_parser("sources", help="configured partitions with their last runs and truncation")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_sources)
    r = fsub.add_parser("run", help="crawl now (all sources, or one), incremental unless --full")
    r.add_argument("--source", help="only this source (a name from fetcher.sources)")
    r.add_argument("--full", action="store_true", help="a full crawl instead of the incremental window")
    r.set_defaults(func=cmd_run)


def _age(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "never"
    return f"{fmt_duration((now - ts).total_seconds())} ago"


def cmd_sources(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    configured = fetch_sources.parse_sources(cfg.fetcher.sources)
    with connect(args, cfg=cfg) as conn:
        rows = conn.execute(
            """SELECT name, params, enabled, last_full_at, last_incremental_at, last_success_at, truncated,
                      truncated_parts, last_error, last_run_kind, last_run_stats, next_attempt_at,
                      lease_owner, now()
                 FROM fetch_sources ORDER BY name"""
        ).fetchall()
        counts = description_counts(conn)
    by_name = {r[0]: r for r in rows}
    names = [s.name for s in configured] + [n for n in by_name if n not in {s.name for s in configured}]
    out = []
    for name in names:
        r = by_name.get(name)
        src = next((s for s in configured if s.name == name), None)
        out.append(
            {
                "name": name,
                "params": src.params if src else (r[1] if r else {}),
                "configured": src is not None,
                "last_full_at": r[3] if r else None,
                "last_incremental_at": r[4] if r else None,
                "last_success_at": r[5] if r else None,
                "truncated": bool(r and r[6]),
                "truncated_parts": (r[7] if r else []) if r and r[6] else [],
                "last_error": r[8] if r else None,
                "last_run_kind": r[9] if r else None,
                "last_run_stats": r[10] if r else None,
                "next_attempt_at": r[11] if r else None,
                "crawling": r[12] if r else None,
                "now": r[13] if r else None,
            }
        )
    if args.json:
        print(json.dumps({"sources": out, "descriptions": counts}, default=str, ensure_ascii=False, indent=2))
        return 0
    now = rows[0][13] if rows else datetime.now().astimezone()
    print(
        f"{'source':<16}{'last full':>12}{'last incr.':>12}{'last ok':>12}  {'truncated':<10} params / notes"
    )
    for s in out:
        notes = json.dumps(s["params"], ensure_ascii=False)
        if not s["configured"]:
            notes += "  (no longer configured)"
        if s["crawling"]:
            notes += f"  crawling ({s['crawling']})"
        if s["last_error"]:
            notes += f"  last error: {s['last_error'][:80]}"
        trunc = f"yes ({len(s['truncated_parts'])})" if s["truncated"] else "no"
        print(
            f"{s['name']:<16}{_age(s['last_full_at'], now):>12}{_age(s['last_incremental_at'], now):>12}"
            f"{_age(s['last_success_at'], now):>12}  {trunc:<10} {notes}"
        )
        for part in s["truncated_parts"][:5]:
            print(
                f"{'':<16}  truncated part {json.dumps(part['params'], ensure_ascii=False)}: "
                f"{part['covered']} of {part['total']} reachable ({part['reason']})"
            )
    print(
        "descriptions: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + " (given_up is counted apart from pending retries)"
    )
    return 0


class _Progress:
    """One line per page on a terminal (overwritten), one line per finished part otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.part: tuple[str, ...] | None = None

    def __call__(self, ev: crawl.PageEvent) -> None:
        r = ev.result
        line = (
            f"{ev.source} ({r.kind}) {json.dumps(ev.params, ensure_ascii=False)} page {ev.page}/{ev.pages}"
            f" - {r.stats.inserted} new, {r.stats.updated} changed, {r.stats.unchanged} unchanged"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:200])
            self.stream.flush()
        elif ev.page == ev.pages:
            self.stream.write(line + "\n")

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    sources = fetch_sources.parse_sources(cfg.fetcher.sources)
    if args.source:
        sources = [s for s in sources if s.name == args.source]
        if not sources:
            known = ", ".join(s.name for s in fetch_sources.parse_sources(cfg.fetcher.sources)) or "none"
            raise UserError(f"unknown source {args.source!r} (fetcher.sources has: {known})")
    owner = f"{socket.gethostname()}:{os.getpid()}:cli"
    failed = 0
    with connect(args, cfg=cfg) as conn, crawl.make_client(cfg) as client:
        fetch_sources.sync_sources(conn, fetch_sources.parse_sources(cfg.fetcher.sources))
        state = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT name, now(), last_full_at, last_incremental_at, last_success_at FROM fetch_sources"
            ).fetchall()
        }
        for src in sources:
            now, full_at, inc_at, ok_at = state[src.name]
            kind, since = crawl.FULL, None
            if not args.full and ok_at is not None and full_at is not None:
                planned = fetch_sources.plan(now, full_at, inc_at, ok_at, 0.0, float("inf"))
                kind, since = planned if planned else (crawl.FULL, None)
            run = fetch_sources.DueRun(src.name, src.params, kind, since)
            progress = _Progress(sys.stderr)
            try:
                result = crawl.run_source(
                    client, conn, run, owner, crawl.CrawlSettings.from_config(cfg), on_page=progress
                )
            finally:
                progress.done()
            if result is None:
                print(f"{src.name}: another crawler holds this source right now; skipped")
                continue
            st = result.stats
            window = f", published in the last {since} days" if since else ""
            print(
                f"{src.name} ({result.kind}{window}): {result.pages} pages in {result.parts} part(s), "
                f"{st.inserted} new, {st.updated} changed, {st.unchanged} unchanged, "
                f"{result.problems} item problems, {len(result.truncated)} truncated part(s), "
                f"{result.seconds:.1f}s"
            )
            for t in result.truncated:
                print(
                    f"  truncated: {json.dumps(t.params, ensure_ascii=False)} "
                    f"{t.covered} of {t.total} ({t.reason})"
                )
            if result.error:
                failed += 1
                print(f"  FAILED: {result.error}")
    return 1 if failed else 0
