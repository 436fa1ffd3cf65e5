"""``python -m sim.planner PLAN.yaml``: the capacity planner (see `sim.planner.cli`)."""

import sys

from sim.planner.cli import main

sys.exit(main())
