"""``python -m sim.plan PLAN.yaml``: an alias of ``python -m sim.planner`` (the capacity planner)."""

import sys

from sim.planner.cli import main

if __name__ == "__main__":
    sys.exit(main())
