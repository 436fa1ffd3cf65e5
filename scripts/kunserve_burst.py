"""The KunServe burst headlines as distributions: sweeps on the process pool, median [95 % CI] tables
(markdown, as the README quotes them) and the curves (docs/headlines.html).

    python scripts/kunserve_burst.py                      # every sweep below (about 10 minutes on 2 cores)
    python scripts/kunserve_burst.py --only scales        # one of: scales, budgets, imbalance, variants
    python scripts/kunserve_burst.py --point              # the shipped scenarios once each (seed 0), as before
    options: --seeds 0,1,2,3,4  --scales 1.1,1.2,...  --workers N  --trace PATH/azure_conv_2023.csv

Sweeps (A100: scenarios/kunserve_burst.yaml, H100: kunserve_burst_h100.yaml):
- scales: burst rate_scale 1.1-2.0 x seeds; recompute, KunServe, KunServe whose pairs never grow
  (``grow: false``), InferCept (at the shipped 1.3 also swap and migrate);
- budgets: the chunked-prefill budget (max_num_batched_tokens 2,048 / 4,096 / 8,192, and vLLM V0's admission)
  x seeds at the shipped burst, recompute and KunServe;
- imbalance: scenarios/kunserve_imbalance.yaml (round-robin routing) at burst 1.0-1.2 x seeds, five handlers;
- variants: KunServe's pipeline variants x seeds at the shipped burst.
A *seed* is a different ten minutes of the trace: the window starts 60 s x seed later (and the burst's
replication draws with that seed), so the sweep samples the traffic, not one lucky window. "During the
burst" = requests that arrive inside the scenario's burst window.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sweep import SEEDS, find_shared, floats_arg, loaded, publish, run_all, scenario_dict, seeds_arg  # noqa: E402

from sim.report.distribution import curve, fmt_ci, median_ci  # noqa: E402

GPUS = {"A100": "kunserve_burst", "H100": "kunserve_burst_h100"}
SCALES = (1.1, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0)
SHIPPED_SCALE = 1.3
PAPER_RATIO = 72.2  # KunServe paper: up to 72.2x lower tail TTFT than Llumnix, vLLM and InferCept
H = {  # handler entries by name
    "recompute": {"name": "recompute", "policy": "none", "handler": "recompute"},
    "swap": {"name": "swap", "policy": "none", "handler": "swap"},
    "migrate": {"name": "migrate", "policy": "none", "handler": "migrate"},
    "infercept": {"name": "infercept", "policy": "none", "handler": "infercept"},
    "kunserve": {"name": "kunserve", "policy": "none", "handler": "kunserve"},
    "kunserve-pairs": {"name": "kunserve-pairs", "policy": "none", "handler": "kunserve",
                       "handler_params": {"grow": False}},
    "kunserve-fcfs": {"name": "kunserve-fcfs", "policy": "none", "handler": "kunserve",
                      "handler_params": {"micro_batching": "fcfs"}},
    "kunserve-sync": {"name": "kunserve-sync", "policy": "none", "handler": "kunserve",
                      "handler_params": {"overlap_steps": False}},
    "kunserve-fcfs-sync": {"name": "kunserve-fcfs-sync", "policy": "none", "handler": "kunserve",
                           "handler_params": {"micro_batching": "fcfs", "overlap_steps": False}},
}


# --- one simulation ---------------------------------------------------------------------------------------------
def _edit(name: str, seed: int, scale: float | None, handlers: list[str], engine: dict | None) -> dict:
    d = scenario_dict(name)
    d["seed"] = seed
    t = d["workload"]["trace"]
    t["window_start_s"] = t.get("window_start_s", 0) + 60 * seed
    if scale is not None:
        t["bursts"][0]["rate_scale"] = scale
    d["compare"] = [H[h] for h in handlers]
    if engine:
        d["engine"].update(engine)
    return d


def run_item(item: dict) -> list[dict]:
    """One scenario variant, every handler on the same requests: one row per handler."""
    sc = loaded(item["name"], _edit(item["name"], item["seed"], item.get("scale"), item["handlers"], item.get("engine")))
    b = sc.sc.workload.trace.bursts[0]
    runs = sc.simulate(detail_iterations=0, timeline_max_spans=0)
    rows = []
    for name, run in runs.items():
        s = run.summary
        row = {**{k: v for k, v in item.items() if k not in ("handlers", "engine", "name")}, "scenario": item["name"],
               "handler": name}
        if "error" in s:
            rows.append({**row, "error": s["error"]})
            continue
        df = run.requests
        x = df[(df.arrival_s >= b.start_s) & (df.arrival_s < b.start_s + b.duration_s)]
        st = run.result.stats
        busy, bub = st.get("kunserve_busy_gpu_s", 0.0), st.get("kunserve_bubble_gpu_s", 0.0)
        rows.append({**row, "burst_p99_ttft_s": float(np.nanpercentile(x.ttft_s, 99)),
                     "burst_p50_ttft_s": float(np.nanpercentile(x.ttft_s, 50)), "p99_ttft_s": s["ttft_s"]["p99"],
                     "tpot_p50_s": s["tpot_s"]["p50"], "tpot_p99_s": s["tpot_s"]["p99"],
                     "attainment": s["slo_attainment"], "preemptions": s["preemptions"],
                     "drops": int(st.get("drops", 0)), "restores": int(st.get("restores", 0)),
                     "regroups": int(st.get("kunserve_regroups", 0)), "max_group": int(st.get("kunserve_max_group", 0)),
                     "migrations": int(st.get("migrations", 0)),
                     "bubble_share": bub / (busy + bub) if busy else np.nan, "requests": s["requests"],
                     "finished": s["finished"]})
    return rows


def sweep(items: list[dict], workers: int | None, label: str) -> pd.DataFrame:
    return pd.DataFrame([r for rows in run_all(run_item, items, workers, label) for r in rows])


def ratios(df: pd.DataFrame, num: str, den: str, keys: list[str], col: str = "burst_p99_ttft_s") -> pd.DataFrame:
    """Per sweep point: ``num``'s value over ``den``'s (e.g. recompute's P99 over KunServe's)."""
    a = df[df.handler == num].set_index(keys)[col]
    b = df[df.handler == den].set_index(keys)[col]
    return (a / b).rename("ratio").reset_index()


# --- sections ---------------------------------------------------------------------------------------------------
def scales_section(seeds, scales, workers) -> tuple[str, pd.DataFrame]:
    base = ["recompute", "kunserve", "kunserve-pairs", "infercept"]
    items = [{"gpu": g, "name": n, "scale": s, "seed": k,
              "handlers": base + (["swap", "migrate"] if s == SHIPPED_SCALE else [])}
             for g, n in GPUS.items() for s in scales for k in seeds]
    t0 = time.perf_counter()
    df = sweep(items, workers, "burst scales")
    wall = time.perf_counter() - t0
    keys = ["gpu", "scale", "seed"]
    r = {h: ratios(df, h, "kunserve", keys) for h in ("recompute", "infercept", "kunserve-pairs")}
    rp = ratios(df, "recompute", "kunserve-pairs", keys)
    tp = ratios(df, "kunserve", "recompute", keys, "tpot_p99_s")
    lo, hi = min(scales), max(scales)

    def cell(frame: pd.DataFrame, gpu: str, sel=None) -> str:
        x = frame[frame.gpu == gpu]
        if sel is not None:
            x = x[sel(x)]
        return fmt_ci(median_ci(x.ratio), "{:.1f}", "x")

    mid = lambda x: (x.scale >= 1.25) & (x.scale <= 1.5)  # noqa: E731
    rows = [
        (f"recompute (vLLM) / KunServe, P99 TTFT during the burst, burst scales {lo:g}-{hi:g} x {len(seeds)} seeds",
         [cell(r["recompute"], g) for g in GPUS]),
        ("same, burst scales 1.25-1.5 only", [cell(r["recompute"], g, mid) for g in GPUS]),
        ("same, KunServe whose pairs never grow (`grow: false`; the previous behaviour)",
         [cell(rp, g) for g in GPUS]),
        ("KunServe with pairs only / KunServe that grows (what growing buys)",
         [cell(r["kunserve-pairs"], g) for g in GPUS]),
        ("infercept / KunServe", [cell(r["infercept"], g) for g in GPUS]),
        ("KunServe's TPOT p99 / recompute's", [cell(tp, g) for g in GPUS]),
    ]
    best = []
    for g in GPUS:
        x = r["recompute"][r["recompute"].gpu == g].sort_values("ratio", ascending=False).iloc[0]
        best.append(f"{x.ratio:.1f}x (scale {x.scale:g}, seed {int(x.seed)})")
    rows.append(("best single point of the sweep (**not** the headline)", best))
    lines = ["| P99 TTFT during the burst, median [95 % CI] | memslo, A100 | memslo, H100 | paper |",
             "|---|---:|---:|---:|"]
    for k, (label, cells) in enumerate(rows):
        paper = f"up to {PAPER_RATIO}x (against the best of Llumnix, vLLM and InferCept)" if k == 0 else ""
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {paper} |")
    # per scale
    lines += ["", "| burst rate_scale | A100 recompute (s) | A100 kunserve (s) | A100 ratio | H100 recompute (s) | "
              "H100 kunserve (s) | H100 ratio |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scales:
        cells = []
        for g in GPUS:
            x = df[(df.gpu == g) & (df.scale == s)]
            rec = median_ci(x[x.handler == "recompute"].burst_p99_ttft_s)
            kun = median_ci(x[x.handler == "kunserve"].burst_p99_ttft_s)
            rr = r["recompute"]
            rat = median_ci(rr[(rr.gpu == g) & (rr.scale == s)].ratio)
            cells += [f"{rec[0]:.2f}", f"{kun[0]:.2f}", fmt_ci(rat, "{:.1f}", "x")]
        lines.append(f"| {s:g}{' (shipped)' if s == SHIPPED_SCALE else ''} | " + " | ".join(cells) + " |")
    lines.append(f"\n(`python scripts/kunserve_burst.py --only scales`: {len(items)} scenario runs, "
                 f"{df.handler.nunique()} handlers, {wall:.0f} s on {workers or 'all'} workers; medians of the "
                 "P99 in seconds, ratios per point then their median)")
    table = "\n".join(lines)
    allr = pd.concat([r["recompute"].assign(what="recompute / KunServe"),
                      rp.assign(what="recompute / KunServe pairs (no growth)")])
    allr["series"] = allr.gpu + ": " + allr.what
    fig = curve(allr, "scale", "ratio", "series", "P99 TTFT during the burst: recompute / KunServe, by burst size",
                "burst rate_scale", "ratio (log)", log_y=True, ref=10.0, ref_label="10x")
    publish("kunserve-scales", table, fig, "Burst rate_scale 1.1-2.0 x 5 seeds (trace windows) on A100 and H100: "
            "recompute's P99 TTFT during the burst over KunServe's, with groups that grow and with pairs only. "
            "scripts/kunserve_burst.py --only scales.", order=10, points=df)
    p99 = df[df.handler.isin(["recompute", "kunserve", "kunserve-pairs", "infercept"])].copy()
    p99["series"] = p99.gpu + ": " + p99.handler
    fig2 = curve(p99, "scale", "burst_p99_ttft_s", "series", "P99 TTFT during the burst by handler and burst size",
                 "burst rate_scale", "P99 TTFT (s, log)", log_y=True)
    publish("kunserve-p99", shipped_table(df, seeds), fig2, "The P99 TTFT behind the ratios, per handler. "
            "scripts/kunserve_burst.py --only scales.", order=11)
    return table + "\n\n" + shipped_table(df, seeds), df


def shipped_table(df: pd.DataFrame, seeds) -> str:
    """Every handler at the shipped burst (1.3x), medians over the seeds."""
    out = []
    for g, name in GPUS.items():
        x = df[(df.gpu == g) & (df.scale == SHIPPED_SCALE)]
        if x.empty:
            continue
        kun = x[x.handler == "kunserve"].set_index("seed").burst_p99_ttft_s
        out += [f"**{name}** ({g}, burst 1.3x, {len(seeds)} seeds: median [95 % CI])", "",
                "| handler | P99 TTFT, burst (s) | x KunServe's | P50 TTFT, burst (s) | P99 TTFT, all (s) | "
                "TPOT p50 / p99 (ms) | preemptions | notes |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for h in ("recompute", "swap", "migrate", "infercept", "kunserve", "kunserve-pairs"):
            y = x[x.handler == h]
            if y.empty:
                continue
            rat = (y.set_index("seed").burst_p99_ttft_s / kun).dropna()
            notes = []
            if y.drops.max() > 0:
                notes.append(f"drops {np.median(y.drops):g}, grown groups {np.median(y.regroups):g}, restores "
                             f"{np.median(y.restores):g} (medians); bubbles {np.nanmedian(y.bubble_share):.0%}")
            if y.migrations.max() > 0:
                notes.append(f"{np.median(y.migrations):g} migrations")
            elif h == "migrate":
                notes.append("0 migrations: every instance is loaded")
            out.append(f"| {h} | {fmt_ci(median_ci(y.burst_p99_ttft_s), '{:.2f}')} | {fmt_ci(median_ci(rat), '{:.1f}', 'x')} | "
                       f"{np.median(y.burst_p50_ttft_s):.2f} | {np.median(y.p99_ttft_s):.2f} | "
                       f"{np.median(y.tpot_p50_s) * 1e3:.0f} / {np.median(y.tpot_p99_s) * 1e3:.0f} | "
                       f"{np.median(y.preemptions):.0f} | {'; '.join(notes)} |")
        out.append("")
    return "\n".join(out)


def budgets_section(seeds, workers) -> str:
    configs = [("2,048 (shipped; vLLM's A100 default)", {"max_num_batched_tokens": 2048}),
               ("4,096 (KunServe's budget while pipelined)", {"max_num_batched_tokens": 4096}),
               ("8,192 (vLLM's H100 default)", {"max_num_batched_tokens": 8192}),
               ("2,048, admitting after a preemption, 1 % watermark (vLLM V0)",
                {"admit_after_preemption": True, "watermark": 0.01})]
    items = [{"gpu": g, "name": n, "scale": SHIPPED_SCALE, "seed": k, "budget": label, "engine": eng,
              "handlers": ["recompute", "kunserve"]}
             for g, n in GPUS.items() for label, eng in configs for k in seeds]
    t0 = time.perf_counter()
    df = sweep(items, workers, "budgets")
    wall = time.perf_counter() - t0
    r = ratios(df, "recompute", "kunserve", ["gpu", "budget", "seed"])
    lines = ["| max_num_batched_tokens | A100 recompute (s) | preemptions | A100 kunserve (s) | A100 ratio | "
             "H100 recompute (s) | preemptions | H100 kunserve (s) | H100 ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, _ in configs:
        cells = []
        for g in GPUS:
            x = df[(df.gpu == g) & (df.budget == label)]
            rec = x[x.handler == "recompute"]
            cells += [f"{np.median(rec.burst_p99_ttft_s):.2f}", f"{np.median(rec.preemptions):.0f}",
                      f"{np.median(x[x.handler == 'kunserve'].burst_p99_ttft_s):.2f}",
                      fmt_ci(median_ci(r[(r.gpu == g) & (r.budget == label)].ratio), "{:.1f}", "x")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\n(`python scripts/kunserve_burst.py --only budgets`: burst 1.3x, {len(seeds)} seeds, medians; "
                 f"{len(items)} scenario runs in {wall:.0f} s)")
    table = "\n".join(lines)
    r["series"] = r.gpu
    order = {label: k for k, (label, _) in enumerate(configs)}
    r["budget_k"] = r.budget.map(order)
    fig = curve(r, "budget_k", "ratio", "series", "recompute / KunServe by the chunked-prefill budget (burst 1.3x)",
                "0: 2,048 · 1: 4,096 · 2: 8,192 · 3: 2,048 with vLLM V0 admission", "ratio (log)", log_y=True)
    publish("kunserve-budgets", table, fig, "The chunked-prefill budget decides recompute's preemption spiral: "
            "5 seeds per budget. scripts/kunserve_burst.py --only budgets.", order=12, points=df)
    return table


def imbalance_section(seeds, workers) -> str:
    hs = ["recompute", "swap", "migrate", "infercept", "kunserve"]
    scales = (1.0, 1.1, 1.2)
    items = [{"gpu": "A100", "name": "kunserve_imbalance", "scale": s, "seed": k, "handlers": hs}
             for s in scales for k in seeds]
    t0 = time.perf_counter()
    df = sweep(items, workers, "imbalance")
    wall = time.perf_counter() - t0
    lines = ["| handler | SLO attainment | P99 TTFT, all (s) | TPOT p99 (ms) | preemptions | migrations |",
             "|---|---:|---:|---:|---:|---:|"]
    for h in hs:
        x = df[df.handler == h]
        lines.append(f"| {h} | {fmt_ci(median_ci(x.attainment * 100), '{:.1f}', ' %')} | "
                     f"{fmt_ci(median_ci(x.p99_ttft_s), '{:.2f}')} | {np.median(x.tpot_p99_s) * 1e3:.0f} | "
                     f"{np.median(x.preemptions):.0f} | {np.median(x.migrations):.0f} |")
    lines.append(f"\n(`python scripts/kunserve_burst.py --only imbalance`: scenarios/kunserve_imbalance.yaml, burst "
                 f"{', '.join(f'{s:g}' for s in scales)}x x {len(seeds)} seeds, medians [95 % CI] over all "
                 f"{len(items)} points; {wall:.0f} s)")
    table = "\n".join(lines)
    fig = curve(df.assign(att=df.attainment * 100), "scale", "att", "handler",
                "Unequal load (round-robin): SLO attainment by burst size", "burst rate_scale", "SLO attainment (%)")
    publish("kunserve-imbalance", table, fig, "Round-robin routing of heavy-tailed requests leaves one instance "
            "short of KV while another has room: live migration acts. scripts/kunserve_burst.py --only imbalance.",
            order=13, points=df)
    return table


def variants_section(seeds, workers) -> str:
    hs = ["kunserve", "kunserve-fcfs", "kunserve-sync", "kunserve-fcfs-sync"]
    items = [{"gpu": g, "name": n, "scale": SHIPPED_SCALE, "seed": k, "handlers": hs}
             for g, n in GPUS.items() for k in seeds]
    df = sweep(items, workers, "variants")
    labels = {"kunserve": "kunserve (lookahead, asynchronous)", "kunserve-fcfs": "FCFS micro-batches",
              "kunserve-sync": "synchronous steps", "kunserve-fcfs-sync": "FCFS and synchronous"}
    lines = ["| variant | A100: P99 TTFT, burst (s) | TPOT p50 / p99 (ms) | bubbles | H100: P99 TTFT, burst (s) | "
             "TPOT p50 / p99 (ms) | bubbles |", "|---|---:|---:|---:|---:|---:|---:|"]
    for h in hs:
        cells = []
        for g in GPUS:
            x = df[(df.gpu == g) & (df.handler == h)]
            cells += [fmt_ci(median_ci(x.burst_p99_ttft_s), "{:.2f}"),
                      f"{np.median(x.tpot_p50_s) * 1e3:.0f} / {np.median(x.tpot_p99_s) * 1e3:.0f}",
                      f"{np.nanmedian(x.bubble_share):.0%}"]
        lines.append(f"| {labels[h]} | " + " | ".join(cells) + " |")
    lines.append(f"\n(`python scripts/kunserve_burst.py --only variants`: burst 1.3x, {len(seeds)} seeds, medians)")
    table = "\n".join(lines)
    publish("kunserve-variants", table, None, "", points=df)
    return table


def point(trace: Path | None) -> str:
    """The shipped scenarios once (their own seed): one row per handler."""
    out = []
    for g, n in GPUS.items():
        d = scenario_dict(n)
        rows = run_item({"gpu": g, "name": n, "seed": d.get("seed", 0), "scale": None,
                         "handlers": [c["name"] for c in d["compare"]]})
        df = pd.DataFrame(rows)
        kun = float(df[df.handler == "kunserve"].burst_p99_ttft_s.iloc[0])
        out += [f"**{n}** (seed {d.get('seed', 0)}, one run)", "", "| handler | P99 TTFT, burst (s) | x KunServe's | "
                "preemptions | drops / grown / restores |", "|---|---:|---:|---:|---|"]
        for r in rows:
            out.append(f"| {r['handler']} | {r['burst_p99_ttft_s']:.2f} | {r['burst_p99_ttft_s'] / kun:.1f}x | "
                       f"{r['preemptions']} | {r['drops']} / {r['regroups']} / {r['restores']} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="scales,budgets,imbalance,variants")
    ap.add_argument("--seeds", type=seeds_arg, default=SEEDS)
    ap.add_argument("--scales", type=floats_arg, default=SCALES)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--point", action="store_true", help="the shipped scenarios once each (no sweep)")
    ap.add_argument("--trace", type=Path, default=None, help="azure_conv_2023.csv (default: ../shared beside the checkout)")
    args = ap.parse_args(argv)
    if args.trace is not None:
        import os
        os.environ["MEMSLO_SHARED"] = str(args.trace.resolve().parents[2])
    if find_shared() is None:
        raise SystemExit("the Azure trace was not found: pass --trace PATH/azure_conv_2023.csv")
    t0 = time.perf_counter()
    if args.point:
        print(point(args.trace))
        return 0
    only = set(args.only.split(","))
    if "scales" in only:
        print(scales_section(args.seeds, args.scales, args.workers)[0], "\n")
    if "budgets" in only:
        print(budgets_section(args.seeds, args.workers), "\n")
    if "imbalance" in only:
        print(imbalance_section(args.seeds, args.workers), "\n")
    if "variants" in only:
        print(variants_section(args.seeds, args.workers), "\n")
    print(f"(scripts/kunserve_burst.py: {time.perf_counter() - t0:.0f} s; tables in docs/headlines/, figures in "
          f"docs/headlines.html)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
