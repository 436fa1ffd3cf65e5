"""The goodput controller and the record-error headlines as distributions (markdown tables as the README
quotes them; curves in docs/headlines.html).

    python scripts/goodput_sweep.py                       # both sweeps (a few minutes on 2 cores)
    python scripts/goodput_sweep.py --only bursts         # or: error
    options: --seeds 0,1,2,3,4  --rates 1.0,1.5,2.0,2.5,3.0  --workers N

- bursts: scenarios/burst.yaml (Llama-2-7B on one A10, three 15 s bursts) with the bursts' rate from 1 to
  3 requests/s (2: the shipped file) x seeds: memslo's `goodput` against `none`, vLLM `swap`, the paper's
  online `selectn` and `selectn-static` at intervals 16 and 32. Per point, goodput minus the best of none,
  swap and both static intervals: the paired difference, whose interval says whether the gap is more than
  seed noise.
- error: burst.yaml and selectn_azure.yaml with the executed iterations (1 + bias) x noise of the record's
  (`record_error`: bias -10 %, 0, +10 %; noise 0 or 5 % per iteration) x seeds: the paper's Select-N, the
  same with `correct: true`, and goodput (which corrects itself by default).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sweep import SEEDS, floats_arg, loaded, publish, run_all, scenario_dict, seeds_arg  # noqa: E402

from sim.report.distribution import curve, fmt_ci, median_ci  # noqa: E402

RATES = (1.0, 1.5, 2.0, 2.5, 3.0)
SHIPPED_RATE = 2.0
P = {"none": {"name": "none", "policy": "none"},
     "swap": {"name": "swap", "policy": "none", "handler": "swap"},
     "selectn": {"name": "selectn", "policy": "selectn"},
     "selectn-i16": {"name": "selectn-i16", "policy": "selectn-static", "params": {"interval": 16}},
     "selectn-i32": {"name": "selectn-i32", "policy": "selectn-static", "params": {"interval": 32}},
     "goodput": {"name": "goodput", "policy": "goodput"},
     "selectn-correcting": {"name": "selectn-correcting", "policy": "selectn", "params": {"correct": True}},
     "goodput-trusting": {"name": "goodput-trusting", "policy": "goodput", "params": {"correct": False}}}
BASELINES = ("none", "swap", "selectn-i16", "selectn-i32")


def run_item(item: dict) -> list[dict]:
    d = scenario_dict(item["name"])
    d["seed"] = item["seed"]
    d["compare"] = [P[p] for p in item["policies"]]
    if "rate" in item:
        for b in d["workload"]["bursts"]:
            b["rate_per_s"] = item["rate"]
    if item.get("bias") or item.get("noise"):
        d["record_error"] = {"bias": item.get("bias", 0.0), "noise": item.get("noise", 0.0)}
    runs = loaded(item["name"], d).simulate(detail_iterations=0, timeline_max_spans=0)
    rows = []
    for name, run in runs.items():
        s = run.summary
        df = run.requests
        pol = run.result.instances[0].policy if run.result.instances else None
        rows.append({**{k: v for k, v in item.items() if k != "policies"}, "policy": name,
                     "attainment": s["slo_attainment"], "rejected": s["rejected"],
                     "late": int(((df.state == "finished") & ~df.slo_met.astype(bool)).sum()),
                     "tokens_per_s": s["throughput_tokens_per_s"], "tpot_p50_s": s.get("tpot_s", {}).get("p50"),
                     "rejected_at_arrival": getattr(pol, "rejected_at_arrival", 0),
                     "time_scale": getattr(pol, "time_scale", 1.0)})
    return rows


def bursts_section(seeds, rates, workers) -> str:
    pols = ["none", "swap", "selectn", "selectn-i16", "selectn-i32", "goodput"]
    items = [{"name": "burst", "rate": r, "seed": k, "policies": pols} for r in rates for k in seeds]
    t0 = time.perf_counter()
    df = pd.DataFrame([x for rows in run_all(run_item, items, workers, "goodput bursts") for x in rows])
    wall = time.perf_counter() - t0
    piv = df.pivot_table(index=["rate", "seed"], columns="policy", values="attainment")
    best = piv[list(BASELINES)].max(axis=1)
    gap = (piv["goodput"] - best) * 100
    ship = piv.xs(SHIPPED_RATE, level="rate") if SHIPPED_RATE in rates else None
    lines = ["| policy | burst.yaml (bursts at 2/s), 5 seeds | burst rates 1-3/s x 5 seeds | rejected at arrival "
             "/ in all (median) | TPOT p50 (ms) |", "|---|---:|---:|---:|---:|"]
    for p in pols:
        x = df[df.policy == p]
        shipped = fmt_ci(median_ci(ship[p] * 100), "{:.1f}", " %") if ship is not None else ""
        lines.append(f"| {p} | {shipped} | {fmt_ci(median_ci(x.attainment * 100), '{:.1f}', ' %')} | "
                     f"{np.median(x.rejected_at_arrival):.0f} / {np.median(x.rejected):.0f} | "
                     f"{np.nanmedian(x.tpot_p50_s) * 1e3:.0f} |")
    lines.append(f"| goodput minus the best of none, swap, selectn-i16, selectn-i32 (per point, points of "
                 f"attainment) | {fmt_ci(median_ci(gap.xs(SHIPPED_RATE, level='rate')), '{:+.1f}') if ship is not None else ''} | "
                 f"{fmt_ci(median_ci(gap), '{:+.1f}')} | | |")
    lines += ["", "| bursts' rate (/s) | " + " | ".join(pols) + " | goodput - best baseline (points) |",
              "|---:|" + "---:|" * (len(pols) + 1)]
    for r in rates:
        x = piv.xs(r, level="rate")
        cells = [f"{np.median(x[p]) * 100:.1f} %" for p in pols]
        lines.append(f"| {r:g}{' (shipped)' if r == SHIPPED_RATE else ''} | " + " | ".join(cells)
                     + f" | {fmt_ci(median_ci(gap.xs(r, level='rate')), '{:+.1f}')} |")
    lines.append(f"\n(`python scripts/goodput_sweep.py --only bursts`: {len(items)} scenario runs of "
                 f"{len(pols)} policies in {wall:.0f} s; attainment medians [95 % CI])")
    table = "\n".join(lines)
    fig = curve(df.assign(att=df.attainment * 100), "rate", "att", "policy",
                "burst.yaml: SLO attainment by the bursts' arrival rate", "bursts' rate (requests/s)",
                "SLO attainment (%)")
    publish("goodput-bursts", table, fig, "Llama-2-7B on one A10 with three 15 s bursts of 1-3 requests/s, 5 seeds "
            "per rate: memslo's goodput controller against no offloading, vLLM swap, the paper's online Select-N and "
            "static Select-N. scripts/goodput_sweep.py --only bursts.", order=20, points=df)
    return table


def error_section(seeds, workers) -> str:
    pols = ["selectn", "selectn-correcting", "goodput", "goodput-trusting"]
    levels = [(b, n) for n in (0.0, 0.05) for b in (-0.1, 0.0, 0.1)]
    items = [{"name": name, "seed": k, "bias": b, "noise": n, "policies": pols}
             for name in ("burst", "selectn_azure") for b, n in levels for k in seeds]
    t0 = time.perf_counter()
    df = pd.DataFrame([x for rows in run_all(run_item, items, workers, "record error") for x in rows])
    wall = time.perf_counter() - t0
    lines = ["| scenario | executed / record | " + " | ".join(pols) + " |", "|---|---|" + "---:|" * len(pols)]
    for name in ("burst", "selectn_azure"):
        for b, n in levels:
            x = df[(df.name == name) & (df.bias == b) & (df.noise == n)]
            cells = []
            for p in pols:
                y = x[x.policy == p]
                cells.append(f"{fmt_ci(median_ci(y.attainment * 100), '{:.1f}', ' %')} ({np.median(y.late):.0f} late)")
            lines.append(f"| {name}.yaml | {1 + b:.1f}x, noise {n:.0%} | " + " | ".join(cells) + " |")
    sc = df[(df.policy == "selectn-correcting") & (df.noise == 0)]
    learned = "; ".join(f"bias {b:+.0%}: {np.median(sc[sc.bias == b].time_scale):.3f}" for b in (-0.1, 0.0, 0.1))
    lines.append(f"\n(`python scripts/goodput_sweep.py --only error`: SLO attainment, median [95 % CI] over "
                 f"{len(seeds)} seeds, and the median number of requests served late; {len(items)} scenario runs in "
                 f"{wall:.0f} s. The correcting Select-N's learned scale, noise 0: {learned})")
    table = "\n".join(lines)
    x = df.assign(att=df.attainment * 100, level=df.bias.map(lambda b: f"{1 + b:.1f}x"))
    x["series"] = x.name + ": " + x.policy + np.where(x.noise > 0, " (5 % noise)", "")
    x = x[x.policy.isin(["selectn", "selectn-correcting", "goodput"])]
    fig = curve(x, "bias", "att", "series", "Record error: SLO attainment by executed / predicted time",
                "bias of executed iteration times against the record", "SLO attainment (%)")
    publish("record-error", table, fig, "Executed iterations 0.9x-1.1x the record's (with and without 5 % "
            "per-iteration noise), 5 seeds each: the paper's Select-N trusts its record, the correcting one and "
            "goodput learn the ratio. scripts/goodput_sweep.py --only error.", order=21, points=df)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="bursts,error")
    ap.add_argument("--seeds", type=seeds_arg, default=SEEDS)
    ap.add_argument("--rates", type=floats_arg, default=RATES)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    only = set(args.only.split(","))
    if "bursts" in only:
        print(bursts_section(args.seeds, args.rates, args.workers), "\n")
    if "error" in only:
        print(error_section(args.seeds, args.workers), "\n")
    print(f"(scripts/goodput_sweep.py: {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
