"""What-if capacity planning: the cheapest deployment (GPU type, count, host memory, offload policy,
overload handler) that sustains each planned request rate under the SLOs, found by simulation.

    python -m sim.planner scenarios/capacity.yaml [--workers N | --ray auto] [--resume]

Modules: `config` (the plan file), `space` (candidates, prices, static pruning, rate bound), `rate_search`
(bisection over rates and dominance), `evaluate` (one simulation), `capacity_search` (rounds on a worker
pool, resume), `tables` and `report` (the answer), `cli` (``python -m sim.planner``).
"""

from sim.planner.capacity_search import CapacitySearch, SearchResult
from sim.planner.config import CapacityPlan, LoadedPlan, load_plan

__all__ = ["CapacityPlan", "LoadedPlan", "load_plan", "CapacitySearch", "SearchResult"]
