"""Simulator speed: replay the Azure conversation trace on one GPU and report simulated/wall time.

    python benchmarks/sim_speed.py [TRACE] [--model llama-2-7b] [--gpu h100-sxm]

Prints one JSON line per policy: benchmark, policy, requests, simulated_s, wall_s, speedup, iterations,
iterations_per_s (wall), and finished/rejected counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.api import SLO, PolicySpec, simulate  # noqa: E402
from sim.core.workload import TraceWorkload  # noqa: E402

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "traces" / "azure_conv_2023.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--interval", type=int, default=8)
    args = ap.parse_args(argv)
    requests = TraceWorkload(Path(args.trace)).generate(seed=0)
    for spec in (PolicySpec("none"), PolicySpec("selectn-static", {"interval": args.interval})):
        t0 = time.perf_counter()
        run = simulate(args.model, args.gpu, requests, [spec], slo=SLO(ttft_s=2.0, tpot_s=0.1))[spec.label]
        wall = time.perf_counter() - t0
        s = run.summary
        print(json.dumps({
            "benchmark": "sim_speed", "policy": run.result.description, "model": args.model, "gpu": args.gpu,
            "requests": s["requests"], "finished": s["finished"], "rejected": s["rejected"],
            "simulated_s": round(s["simulated_s"], 3), "wall_s": round(wall, 3),
            "speedup": round(s["simulated_s"] / wall, 1), "iterations": s["iterations"],
            "iterations_per_s": round(s["iterations"] / wall, 1)}), flush=True)


if __name__ == "__main__":
    main()
