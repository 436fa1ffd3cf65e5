"""The tensor-parallel headlines as distributions (markdown tables as the README quotes them; curves in
docs/headlines.html).

    python scripts/tp_sweep.py                     # both sweeps (~15 minutes on 2 cores)
    python scripts/tp_sweep.py --only selectn      # or: kunserve
    options: --seeds 0,1,2,3,4  --rates 1.0,1.5,2.0  --extra 2,4,6,8,10  --workers N

- selectn: Select-N on Llama-2-70B at TP=4 (scenarios/selectn_tp.yaml, a PCIe box with two GPUs per switch,
  and selectn_tp_nvswitch.yaml, a DGX H100) at Poisson rates 1-2 requests/s x seeds: Select-N with its
  per-switch planning against the same controller planning as if every rank had its switch to itself
  (`coordinate: false`), and no offloading. Per point, the paired attainment difference.
- kunserve: scenarios/kunserve_70b.yaml (four TP=4 instances of Llama-3-70B on two nodes) with 2-10 more
  requests/s during the burst x seeds: vLLM recompute against KunServe, the P99 TTFT of the requests that
  arrive during the burst and its ratio, per point.
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

RATES = (1.0, 1.5, 2.0)
SHIPPED_RATE = 1.5
EXTRA = (2.0, 4.0, 6.0, 8.0, 10.0)
SHIPPED_EXTRA = 6.0
BOXES = {"selectn_tp": "PCIe box (pcie-l40s-8)", "selectn_tp_nvswitch": "NVSwitch (dgx-h100)"}
SELECTN = ("selectn", "selectn-nocoord", "none")


def selectn_point(item: tuple[str, float, int]) -> list[dict]:
    name, rate, seed = item
    d = scenario_dict(name)
    d["seed"] = seed
    d["workload"]["arrivals"]["rate_per_s"] = rate
    d["compare"] = [c for c in d["compare"] if c["name"] in SELECTN]
    runs = loaded(name, d).simulate(timeline_max_spans=0, detail_iterations=0)
    return [{"box": name, "rate": rate, "seed": seed, "policy": p, "attainment": float(r.summary["slo_attainment"]),
             "rejected": int(r.summary["rejected"]), "tpot_p99_ms": 1e3 * float(r.summary["tpot_s"]["p99"] or np.nan)}
            for p, r in runs.items()]


def kunserve_point(item: tuple[float, int]) -> dict:
    extra, seed = item
    d = scenario_dict("kunserve_70b")
    d["seed"] = seed
    b = d["workload"]["bursts"][0]
    b["rate_per_s"] = extra
    d["compare"] = [c for c in d["compare"] if c["name"] in ("recompute", "kunserve")]
    runs = loaded("kunserve_70b", d).simulate(timeline_max_spans=0, detail_iterations=0)
    out: dict = {"extra": extra, "seed": seed}
    for p, r in runs.items():
        df = r.requests
        burst = df[(df.arrival_s >= b["start_s"]) & (df.arrival_s < b["start_s"] + b["duration_s"])]
        out[f"{p}_p99_ttft_s"] = float(burst.ttft_s.quantile(0.99))
        out[f"{p}_attainment"] = float(r.summary["slo_attainment"])
    out["ratio"] = out["recompute_p99_ttft_s"] / out["kunserve_p99_ttft_s"]
    return out


def selectn_sweep(rates: tuple[float, ...], seeds: tuple[int, ...], workers: int | None) -> None:
    t0 = time.perf_counter()
    items = [(b, r, s) for b in BOXES for r in rates for s in seeds]
    df = pd.DataFrame([row for rows in run_all(selectn_point, items, workers, "selectn-tp") for row in rows])
    wall = time.perf_counter() - t0
    lines = ["| box | policy | SLO attainment, rates " + f"{min(rates):g}-{max(rates):g}/s x {len(seeds)} seeds"
             + " | at the shipped 1.5/s | p99 TPOT (ms), median | rejected (median) |", "|---|---|---:|---:|---:|---:|"]
    for b, label in BOXES.items():
        part = df[df.box == b]
        for p in SELECTN:
            q = part[part.policy == p]
            at = q[q.rate == SHIPPED_RATE]
            lines.append(f"| {label} | {p} | {fmt_ci(median_ci(100 * q.attainment), '{:.1f}', ' %')} | "
                         f"{fmt_ci(median_ci(100 * at.attainment), '{:.1f}', ' %')} | {q.tpot_p99_ms.median():.0f} | "
                         f"{q.rejected.median():.0f} |")
        wide = part.pivot_table(index=["rate", "seed"], columns="policy", values="attainment")
        diff = 100 * (wide["selectn"] - wide["selectn-nocoord"])
        lines.append(f"| {label} | selectn - selectn-nocoord (points, paired) | {fmt_ci(median_ci(diff), '{:+.1f}')} | "
                     f"{fmt_ci(median_ci(diff[diff.index.get_level_values(0) == SHIPPED_RATE]), '{:+.1f}')} | | |")
    lines.append(f"\n{len(items)} scenario runs ({len(df)} policy runs) in {wall:.0f} s; median [95 % bootstrap "
                 "interval] over every rate and seed.")
    table = "\n".join(lines)
    print(table)
    df["series"] = df.box.map(BOXES) + ": " + df.policy
    fig = curve(df.assign(attainment=100 * df.attainment), "rate", "attainment", "series",
                "Select-N on Llama-2-70B at TP=4: SLO attainment vs arrival rate", "requests/s", "SLO attainment (%)")
    publish("selectn-tp", table, fig, "Select-N with and without per-switch planning on TP=4 instances, PCIe box and "
            "NVSwitch: attainment over arrival rates and seeds", order=70, points=df.drop(columns="series"))


def kunserve_sweep(extra: tuple[float, ...], seeds: tuple[int, ...], workers: int | None) -> None:
    t0 = time.perf_counter()
    items = [(e, s) for e in extra for s in seeds]
    df = pd.DataFrame(run_all(kunserve_point, items, workers, "kunserve-70b"))
    wall = time.perf_counter() - t0
    lines = ["| burst (extra req/s) | recompute: burst P99 TTFT (s) | KunServe: burst P99 TTFT (s) | "
             "recompute / KunServe | attainment recompute / KunServe |", "|---:|---:|---:|---:|---:|"]
    for e in extra:
        q = df[df.extra == e]
        lines.append(f"| +{e:g}{' (shipped)' if e == SHIPPED_EXTRA else ''} | "
                     f"{fmt_ci(median_ci(q.recompute_p99_ttft_s), '{:.2f}')} | "
                     f"{fmt_ci(median_ci(q.kunserve_p99_ttft_s), '{:.2f}')} | {fmt_ci(median_ci(q.ratio), '{:.1f}', 'x')} | "
                     f"{100 * q.recompute_attainment.median():.0f} % / {100 * q.kunserve_attainment.median():.0f} % |")
    lines.append(f"| all burst sizes | | | {fmt_ci(median_ci(df.ratio), '{:.1f}', 'x')} | |")
    lines.append(f"\n{len(items)} points ({len(seeds)} seeds per burst size) in {wall:.0f} s; median [95 % bootstrap "
                 "interval] over the seeds (last row: over every point).")
    table = "\n".join(lines)
    print(table)
    fig = curve(df, "extra", "ratio", None, "KunServe with TP=4 instances: recompute / KunServe burst P99 TTFT",
                "extra requests/s during the burst", "ratio", log_y=True, ref=1.0, ref_label="equal")
    publish("kunserve-70b", table, fig, "KunServe on Llama-3-70B TP=4 instances: burst P99 TTFT ratio against "
            "recompute over burst sizes and seeds", order=71, points=df)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["selectn", "kunserve"], help="run one of the two sweeps")
    ap.add_argument("--seeds", type=seeds_arg, default=SEEDS, help="comma-separated seeds (default 0-4)")
    ap.add_argument("--rates", type=floats_arg, default=RATES, help="Select-N sweep: arrival rates (requests/s)")
    ap.add_argument("--extra", type=floats_arg, default=EXTRA, help="KunServe sweep: extra requests/s in the burst")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a = ap.parse_args(argv)
    if a.only in (None, "selectn"):
        selectn_sweep(a.rates, a.seeds, a.workers)
    if a.only in (None, "kunserve"):
        kunserve_sweep(a.extra, a.seeds, a.workers)


if __name__ == "__main__":
    main()
