"""`jobpipe config show|check|defaults`: no database, so no psycopg (tests/test_cli_startup.py)."""

from __future__ import annotations

import argparse
import json

from jobpipe import config as config_mod
from jobpipe.cli.args import load_config
from jobpipe.settings import all_settings
from jobpipe.terms_file import local_search_terms


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show, check or print the documented defaults of the configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    show = csub.add_parser("show", help="every effective value and where it came from (secrets redacted)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_config_show)
    check = csub.add_parser("check", help="validate a config file without starting anything")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    defaults = csub.add_parser("defaults", help="print the documented default config (config/jobpipe.yaml)")
    defaults.set_defaults(func=lambda a: print(config_mod.render_defaults(), end="") or 0)


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    registry = all_settings()
    rows = [(k, cfg.redacted(k), cfg.source(k)) for k in registry]
    if args.json:
        print(json.dumps({k: {"value": v, "source": s} for k, v, s in rows}, indent=2, ensure_ascii=False))
        return 0
    width = max(len(k) for k, _, _ in rows)
    for k, v, s in rows:
        shown = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
        print(f"{k:<{width}}  {shown}  ({s})")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.file)
    terms = ""
    if cfg.classifier.search_terms_file:
        # what the classifier's start and `occupations load` would refuse (exit 2, file and line)
        found = local_search_terms(cfg.classifier.search_terms_file)
        terms = f" ({len(found)} local search terms in {cfg.classifier.search_terms_file})"
    print(f"{args.file}: OK{terms}")
    return 0
