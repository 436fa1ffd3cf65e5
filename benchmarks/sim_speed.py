"""Simulator speed: replay the Azure conversation trace on one GPU, and on a 4-GPU tensor-parallel instance,
and report simulated/wall time.

    python benchmarks/sim_speed.py [TRACE] [--model llama-2-7b] [--gpu h100-sxm] [--interval 8]
        [--tp-model llama-2-70b] [--tp-gpu dgx-h100] [--tp 4]

Prints one JSON line per run: benchmark, policy, model, gpu, tp, requests, simulated_s, wall_s, speedup,
iterations, iterations_per_s (wall), and finished/rejected counts. The rows: no offloading and static
Select-N on one GPU, then no offloading on one TP instance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.api import SLO, PolicySpec, simulate  # noqa: E402
from sim.engine.memory import EngineConfig  # noqa: E402
from sim.core.workload import TraceWorkload  # noqa: E402

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "traces" / "azure_conv_2023.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--interval", type=int, default=8, help="the static Select-N interval of the second row")
    ap.add_argument("--tp-model", default="llama-2-70b", help="the model of the tensor-parallel row")
    ap.add_argument("--tp-gpu", default="dgx-h100", help="the box of the tensor-parallel row")
    ap.add_argument("--tp", type=int, default=4, help="its tensor-parallel degree (one instance of that many GPUs)")
    args = ap.parse_args(argv)
    requests = TraceWorkload(Path(args.trace)).generate(seed=0)
    runs = [(args.model, args.gpu, 1, PolicySpec("none")),
            (args.model, args.gpu, 1, PolicySpec("selectn-static", {"interval": args.interval})),
            (args.tp_model, args.tp_gpu, args.tp, PolicySpec("none"))]
    for model, gpu, tp, spec in runs:
        t0 = time.perf_counter()
        run = simulate(model, gpu, requests, [spec], slo=SLO(ttft_s=2.0, tpot_s=0.1), num_gpus=tp,
                       engine=EngineConfig(tensor_parallel_size=tp))[spec.label]
        wall = time.perf_counter() - t0
        s = run.summary
        print(json.dumps({
            "benchmark": "sim_speed", "policy": run.result.description, "model": model, "gpu": gpu, "tp": tp,
            "requests": s["requests"], "finished": s["finished"], "rejected": s["rejected"],
            "simulated_s": round(s["simulated_s"], 3), "wall_s": round(wall, 3),
            "speedup": round(s["simulated_s"] / wall, 1), "iterations": s["iterations"],
            "iterations_per_s": round(s["iterations"] / wall, 1)}), flush=True)


if __name__ == "__main__":
    main()
