"""``memslo``: one command for the simulator's tools (the console script; each is also ``python -m ...``).

    memslo run SCENARIO.yaml ...      python -m sim.run      simulate a scenario's compared policies
    memslo plan PLAN.yaml ...         python -m sim.planner  capacity planning (cheapest deployment per rate)
    memslo search SCENARIO.yaml ...   python -m sim.search   Select-N's offline sweep of static intervals
    memslo record SCENARIO.yaml ...   python -m sim.record   build and print Select-N's performance record
    memslo --version
"""

from __future__ import annotations

import sys
from importlib import import_module

from sim import __version__

COMMANDS = {  # name -> (module with main(argv), one line of help)
    "run": ("sim.run", "simulate a scenario's compared policies and write a run folder"),
    "plan": ("sim.planner.cli", "capacity planning: the cheapest deployment per planned request rate"),
    "search": ("sim.search", "Select-N's offline sweep of static intervals across workloads"),
    "record": ("sim.record", "build and print Select-N's performance record for a scenario"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return ("usage: memslo COMMAND [ARGS...] | memslo --version\n\ncommands:\n" + "\n".join(lines)
            + "\n\n'memslo COMMAND --help' describes a command's arguments.")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"memslo {__version__}")
        return 0
    cmd = COMMANDS.get(args[0])
    if cmd is None:
        print(f"memslo: unknown command {args[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    return int(import_module(cmd[0]).main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
