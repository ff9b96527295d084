"""Commands of the extractor.

jobpipe extract eval FILE.jsonl [--model M] [--split S] [--limit N] [--json]
    field-level precision/recall of a summary model on labelled descriptions, so the operator can
    choose between models (e.g. qwen2.5:7b and 3b) on evidence; bench/data/labelled_descriptions.jsonl
    ships 48 (see bench/data/README.md for how they were made).
"""

from __future__ import annotations

import argparse
import json

from jobpipe import extraction
from jobpipe.cli.args import int_arg, load_config
from jobpipe.errors import UserError


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="the extractor: evaluate summary models")
    xsub = p.add_subparsers(dest="extract_command", metavar="ACTION")
    xsub.required = True
    ev = xsub.add_parser(
        "eval", help="field-level precision/recall of a model on labelled descriptions (JSON Lines)"
    )
    ev.add_argument("file", metavar="FILE.jsonl")
    ev.add_argument("--model", default=None, help="LLM to evaluate (default: extractor.model)")
    ev.add_argument("--split", default=None, help="only rows of this split (dev, test; default: all)")
    ev.add_argument(  # int_arg like classifier eval's: a plain int took -5 as rows[:-5]
        "--limit", type=int_arg(1, 10_000_000), default=None, metavar="N", help="first N rows only"
    )
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_extract_eval)


def _pct(v: float | None) -> str:
    return "   -" if v is None else f"{100 * v:3.0f}%"


def render(report: extraction.EvalReport) -> str:
    lines = [f"model {report.model}: {report.n} descriptions in {report.seconds:.1f} s", ""]
    lines.append(f"{'field':<26} {'precision':>9} {'recall':>7} {'tp':>4} {'fp':>4} {'fn':>4}")
    for name, s in [*report.fields.items(), ("all fields (micro)", report.micro)]:
        lines.append(f"{name:<26} {_pct(s.precision):>9} {_pct(s.recall):>7} {s.tp:>4} {s.fp:>4} {s.fn:>4}")
    outcomes = ", ".join(f"{k} {v}" for k, v in report.outcomes.most_common())
    lines += ["", f"outcomes: {outcomes}; values dropped as ungrounded: {report.dropped}"]
    return "\n".join(lines)


def as_dict(report: extraction.EvalReport) -> dict:
    def one(s: extraction.FieldScore) -> dict:
        return {"precision": s.precision, "recall": s.recall, "tp": s.tp, "fp": s.fp, "fn": s.fn}

    return {
        "model": report.model,
        "n": report.n,
        "seconds": round(report.seconds, 3),
        "fields": {k: one(v) for k, v in report.fields.items()},
        "micro": one(report.micro),
        "outcomes": dict(report.outcomes),
        "dropped": report.dropped,
    }


def cmd_extract_eval(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.model:
        cfg = cfg.with_overrides(extractor__model=args.model)
    try:
        rows = extraction.read_labelled(args.file)
    except OSError as exc:
        raise UserError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.split:
        rows = [r for r in rows if r.split == args.split]
    if args.limit is not None:
        rows = rows[: args.limit]
    if not rows:
        raise UserError(
            f"{args.file}: no labelled descriptions" + (f" in split {args.split!r}" if args.split else "")
        )
    with extraction.chat_client_from_config(cfg) as chat:
        report = extraction.evaluate(
            chat,
            extraction.load_schema(),
            rows,
            max_chars=cfg.extractor.max_chars,
            workers=cfg.extractor.workers,
        )
    print(json.dumps(as_dict(report), ensure_ascii=False) if args.json else render(report))
    return 0
