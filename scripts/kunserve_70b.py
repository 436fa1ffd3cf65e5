"""KunServe with tensor-parallel instances (scenarios/kunserve_70b.yaml) across burst sizes and seeds.

    python scripts/kunserve_70b.py [--extra 3 6 9] [--seeds 0 1 2] [--workers N]

For each extra burst rate (requests/s added to the base rate from 60 to 120 s) and seed, runs vLLM recompute
and KunServe on the same requests and prints (markdown) the P99 TTFT of the requests that arrive during the
burst and the SLO attainment, per burst size: the median over seeds and the range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config.scenario import load_scenario  # noqa: E402
from sim.pools.local import make_executor  # noqa: E402

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "kunserve_70b.yaml"
POLICIES = ("recompute", "kunserve")


def one(item: tuple[float, int]) -> dict:
    """The burst P99 TTFT and attainment of recompute and KunServe at one burst size and seed."""
    extra, seed = item
    loaded = load_scenario(SCENARIO, seed=seed)
    w = loaded.sc.workload
    assert w is not None and w.bursts
    b = w.bursts[0]
    sc = loaded.sc.model_copy(update={"workload": w.model_copy(update={
        "bursts": [b.model_copy(update={"rate_per_s": extra})]})})
    loaded = type(loaded)(loaded.path, sc)
    specs = [s for s in loaded.policies() if s.label in POLICIES]
    runs = loaded.simulate(specs, timeline_max_spans=0, detail_iterations=0)
    out = {"extra": extra, "seed": seed}
    for name, run in runs.items():
        df = run.requests
        burst = df[(df.arrival_s >= b.start_s) & (df.arrival_s < b.start_s + b.duration_s)]
        out[f"{name}_p99_ttft_s"] = float(burst.ttft_s.quantile(0.99))
        out[f"{name}_attainment"] = float(run.summary["slo_attainment"])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extra", type=float, nargs="+", default=[3.0, 6.0, 9.0],
                    help="extra requests/s during the burst (the scenario's base rate is 18/s)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    items = [(e, s) for e in args.extra for s in args.seeds]
    with make_executor(args.workers) as ex:
        rows = list(ex.map(one, items))
    print("| burst (extra req/s) | recompute: burst P99 TTFT (s) | KunServe: burst P99 TTFT (s) | ratio | "
          "attainment recompute / KunServe |")
    print("|---|---|---|---|---|")
    for e in args.extra:
        rs = [r for r in rows if r["extra"] == e]
        rec = np.array([r["recompute_p99_ttft_s"] for r in rs])
        kun = np.array([r["kunserve_p99_ttft_s"] for r in rs])
        ratio = rec / kun
        att = (np.median([r["recompute_attainment"] for r in rs]), np.median([r["kunserve_attainment"] for r in rs]))
        print(f"| +{e:g} | {np.median(rec):.2f} ({rec.min():.2f}-{rec.max():.2f}) | {np.median(kun):.2f} "
              f"({kun.min():.2f}-{kun.max():.2f}) | {np.median(ratio):.1f}x ({ratio.min():.1f}x-{ratio.max():.1f}x) | "
              f"{att[0]:.0%} / {att[1]:.0%} |")
    print(f"\n{len(args.seeds)} seeds per burst size; median (range over seeds).")


if __name__ == "__main__":
    main()
