"""`jobpipe sim ba|ollama|signal [OPTIONS]`: one simulated external service in the foreground.

The simulators ship in the package (jobpipe.sim), so a wheel install can try the daemons without
the BA API, a GPU or a Signal account. Each prints its URL(s) on stdout, one per line, then
serves until SIGTERM or Ctrl-C (exit 0). Everything after the name goes to the simulator:
`jobpipe sim ba --help` lists its options.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module with main(argv) -> int, what it prints)
SIMULATORS: dict[str, tuple[str, str]] = {
    "ba": ("jobpipe.sim.ba", "the BA Jobsuche API and BERUFENET (prints both base URLs)"),
    "ollama": ("jobpipe.sim.ollama", "Ollama: embeddings and chat (prints its URL)"),
    "signal": ("jobpipe.sim.signal", "a Signal gateway that prints what it would send"),
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="run one simulated external service (BA API, Ollama, Signal gateway)",
        description=__doc__.split("\n\n", 1)[1],
    )
    ssub = p.add_subparsers(dest="sim_name", metavar="SERVICE")
    ssub.required = True
    for name, (_, text) in SIMULATORS.items():
        # add_help=False: `--help` goes to the simulator, which knows its options.
        s = ssub.add_parser(name, help=text, add_help=False)
        s.set_defaults(func=cmd_sim, passthrough=True)


def cmd_sim(args: argparse.Namespace) -> int:
    module, _ = SIMULATORS[args.sim_name]
    return int(importlib.import_module(module).main(args.passthrough_args) or 0)
