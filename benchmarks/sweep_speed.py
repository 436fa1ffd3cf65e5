"""Sweep throughput of the capacity planner: configurations (and simulations) per minute on 1 and 2
processes, or on Ray, for a slice of ``scenarios/capacity.yaml``.

    python benchmarks/sweep_speed.py [PLAN] [--model llama-2-13b] [--max-count 2] [--workers 1,2] [--ray auto]

Prints one JSON line: per pool the configurations searched, simulations run, wall seconds, configurations
and simulations per minute; the speed-up over the first pool; and whether every pool wrote the same tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.planner.capacity_search import CapacitySearch  # noqa: E402
from sim.planner.cli import write_outputs  # noqa: E402
from sim.planner.config import LoadedPlan, load_plan  # noqa: E402
from sim.pools.local import make_executor  # noqa: E402

DEFAULT_PLAN = Path(__file__).resolve().parents[1] / "scenarios" / "capacity.yaml"


def _slice(plan: LoadedPlan, model: str | None, max_count: int) -> LoadedPlan:
    cfg = plan.cfg
    models = [m for m in cfg.models if model is None or m.label == model] or cfg.models[:1]
    cfg = cfg.model_copy(update={"models": models, "counts": [c for c in cfg.counts if c <= max_count]})
    return LoadedPlan(plan.path, cfg)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plan", nargs="?", default=str(DEFAULT_PLAN))
    ap.add_argument("--model", default="llama-2-13b", help="the plan's model label to keep")
    ap.add_argument("--max-count", type=int, default=2, help="keep GPU counts up to this")
    ap.add_argument("--workers", default="1,2", help="comma-separated process counts")
    ap.add_argument("--ray", help="also run on Ray at this address ('auto', 'local', ADDRESS)")
    args = ap.parse_args(argv)
    plan = _slice(load_plan(args.plan), args.model, args.max_count)
    pools: list[tuple[str, int | None, str | None]] = [(f"{w}-process", int(w), None)
                                                       for w in args.workers.split(",")]
    if args.ray:
        pools.append((f"ray-{args.ray}", None, args.ray))
    runs, tables = [], []
    for name, workers, ray in pools:
        with tempfile.TemporaryDirectory() as d, make_executor(workers, ray) as ex:
            t0 = time.perf_counter()
            res = CapacitySearch(plan, Path(d), ex).run()
            wall = time.perf_counter() - t0
            write_outputs(res, Path(d))
            tables.append(tuple((Path(d) / f).read_bytes() for f in ("configs.csv", "cheapest.csv", "summary.json")))
        sims = sum(1 for e in res.evaluations)
        runs.append({"pool": name, "workers": getattr(ex, "workers", workers), "configurations": len(res.jobs),
                     "simulations": sims, "wall_s": round(wall, 2),
                     "configurations_per_min": round(len(res.jobs) / wall * 60, 1),
                     "simulations_per_min": round(sims / wall * 60, 1)})
    print(json.dumps({"benchmark": "sweep_speed", "plan": Path(args.plan).name, "model": args.model,
                      "max_count": args.max_count, "runs": runs,
                      # the second pool against the first (by default: 2 processes against 1)
                      "speedup": round(runs[0]["wall_s"] / runs[1]["wall_s"], 2) if len(runs) > 1 else 1.0,
                      "identical_tables": len(set(tables)) == 1}))


if __name__ == "__main__":
    main()
