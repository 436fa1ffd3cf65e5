"""The KunServe burst experiment: run the burst scenarios and print the README's markdown table.

    python scripts/kunserve_burst.py                         # both shipped variants (A100, H100)
    python scripts/kunserve_burst.py scenarios/kunserve_burst.yaml --trace PATH/azure_conv_2023.csv
    python scripts/kunserve_burst.py --sensitivity           # + how the ratio depends on the burst's size
    python scripts/kunserve_burst.py --variants              # + KunServe with naive micro-batches / pipeline
    python scripts/kunserve_burst.py --budgets               # + how the ratio depends on the chunked-prefill budget

"During the burst" means the requests that *arrive* inside the scenario's trace burst window(s)
(``workload.trace.bursts``: from start_s to start_s + duration_s on the replayed timeline); their TTFT is
what a burst does to users. TPOT is over all finished requests (the pipelined groups' cost shows there).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sim.config.scenario import LoadedScenario, load_scenario  # noqa: E402

PAPER_RATIO = 72.2  # KunServe paper: up to 72.2x lower tail TTFT than Llumnix, vLLM and InferCept
DEFAULT = [REPO / "scenarios" / "kunserve_burst.yaml", REPO / "scenarios" / "kunserve_burst_h100.yaml"]


def find_trace() -> Path | None:
    """The shared trace beside the checkout (CI) or two levels up (a git worktree)."""
    for base in (REPO.parent, REPO.parent.parent):
        p = base / "shared" / "data" / "traces" / "azure_conv_2023.csv"
        if p.exists():
            return p
    return None


def burst_windows(loaded: LoadedScenario) -> list[tuple[float, float]]:
    w = loaded.sc.workload
    if w is None or w.trace is None or not w.trace.bursts:
        raise SystemExit(f"{loaded.path.name}: no workload.trace.bursts to define 'during the burst'")
    return [(b.start_s, b.start_s + b.duration_s) for b in w.trace.bursts]


def in_bursts(df, windows):
    m = np.zeros(len(df), dtype=bool)
    for a, b in windows:
        m |= (df.arrival_s >= a).to_numpy() & (df.arrival_s < b).to_numpy()
    return df[m]


def measure(loaded: LoadedScenario, **kw) -> tuple[dict[str, dict], float]:
    windows = burst_windows(loaded)
    t0 = time.perf_counter()
    runs = loaded.simulate(timeline_max_spans=20_000, detail_iterations=0, **kw)
    wall = time.perf_counter() - t0
    rows = {}
    for name, run in runs.items():
        s = run.summary
        if "error" in s:
            rows[name] = {"error": s["error"]}
            continue
        b = in_bursts(run.requests, windows)
        stats = run.result.instances[0].cluster.stats if run.result.instances else {}
        rows[name] = {
            "burst_p99_ttft_s": float(np.nanpercentile(b.ttft_s, 99)) if b.ttft_s.notna().any() else float("nan"),
            "burst_p50_ttft_s": float(np.nanpercentile(b.ttft_s, 50)) if b.ttft_s.notna().any() else float("nan"),
            "burst_requests": len(b),
            "p99_ttft_s": s["ttft_s"]["p99"], "tpot_p50_s": s["tpot_s"]["p50"], "tpot_p99_s": s["tpot_s"]["p99"],
            "finished": s["finished"], "requests": s["requests"], "preemptions": s["preemptions"],
            "drops": int(stats.get("drops", 0)), "restores": int(stats.get("restores", 0)),
            "migrations": int(stats.get("migrations", 0)),
            "bubble_share": (stats["kunserve_bubble_gpu_s"] / (stats["kunserve_busy_gpu_s"] + stats["kunserve_bubble_gpu_s"])
                             if stats.get("kunserve_busy_gpu_s") else None),
        }
    return rows, wall


def table(loaded: LoadedScenario, rows: dict[str, dict], wall: float) -> str:
    hw = loaded.hardware.name
    w = burst_windows(loaded)
    span = ", ".join(f"{a:g}-{b:g} s" for a, b in w)
    kun = rows.get("kunserve", {}).get("burst_p99_ttft_s", float("nan"))
    out = [f"**{loaded.name}** ({loaded.model.name}, {loaded.sc.hardware.num_gpus}x {hw}, "
           f"{len(loaded.requests)} requests, burst arrivals {span}; simulated in {wall:.1f} s wall)", "",
           "| handler | P99 TTFT, burst (s) | x KunServe's | P50 TTFT, burst (s) | P99 TTFT, all (s) | "
           "TPOT p50 / p99 (ms) | preemptions | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        if "error" in r:
            out.append(f"| {name} | could not run: {r['error']} |||||||")
            continue
        ratio = r["burst_p99_ttft_s"] / kun if kun and np.isfinite(kun) else float("nan")
        notes = []
        if r["drops"]:
            notes.append(f"{r['drops']} drops, {r['restores']} restores")
            if r["bubble_share"] is not None:
                notes.append(f"bubbles {r['bubble_share']:.0%} of pipelined GPU time")
        if r["migrations"]:
            notes.append(f"{r['migrations']} migrations")
        if r["finished"] < r["requests"]:
            notes.append(f"{r['requests'] - r['finished']} unfinished")
        out.append(f"| {name} | {r['burst_p99_ttft_s']:.2f} | {ratio:.1f}x | {r['burst_p50_ttft_s']:.2f} | "
                   f"{r['p99_ttft_s']:.2f} | {r['tpot_p50_s'] * 1e3:.0f} / {r['tpot_p99_s'] * 1e3:.0f} | "
                   f"{r['preemptions']} | {'; '.join(notes)} |")
    rec = rows.get("recompute", {}).get("burst_p99_ttft_s", float("nan"))
    mig = rows.get("migrate", {}).get("burst_p99_ttft_s", float("nan"))
    out += ["", f"P99 TTFT during the burst, recompute / KunServe = **{rec / kun:.1f}x**, migrate / KunServe = "
            f"**{mig / kun:.1f}x** (paper: up to {PAPER_RATIO}x against Llumnix, vLLM and InferCept)."]
    return "\n".join(out)


def _variant(path: Path, d: dict, trace: Path | None, seed: int | None) -> tuple[LoadedScenario, dict, float]:
    import yaml

    tmp = path.with_name(f".{path.stem}-variant.yaml")
    tmp.write_text(yaml.safe_dump(d))
    try:
        loaded = load_scenario(tmp, seed=seed, trace=trace)
        rows, wall = measure(loaded)
    finally:
        tmp.unlink()
    return loaded, rows, wall


VARIANTS = [  # KunServe with a naive pipeline, to show what the lookahead and the asynchronous pipeline buy
    {"name": "kunserve-fcfs", "policy": "none", "handler": "kunserve", "handler_params": {"micro_batching": "fcfs"}},
    {"name": "kunserve-sync", "policy": "none", "handler": "kunserve", "handler_params": {"overlap_steps": False}},
    {"name": "kunserve-fcfs-sync", "policy": "none", "handler": "kunserve",
     "handler_params": {"micro_batching": "fcfs", "overlap_steps": False}},
]


def variants(path: Path, trace: Path | None, seed: int | None) -> str:
    import yaml

    d = yaml.safe_load(path.read_text())
    d["compare"] = [c for c in d["compare"] if c["name"] in ("recompute", "kunserve")] + VARIANTS
    _, rows, _ = _variant(path, d, trace, seed)
    out = [f"**{path.stem}**: KunServe's pipeline variants", "",
           "| variant | P99 TTFT, burst (s) | TPOT p50 / p99 (ms) | bubbles (share of pipelined GPU time) |",
           "|---|---:|---:|---:|"]
    for name, r in rows.items():
        b = "" if r["bubble_share"] is None else f"{r['bubble_share']:.0%}"
        out.append(f"| {name} | {r['burst_p99_ttft_s']:.2f} | {r['tpot_p50_s'] * 1e3:.0f} / "
                   f"{r['tpot_p99_s'] * 1e3:.0f} | {b} |")
    return "\n".join(out)


def _head_to_head(path: Path, trace: Path | None, edit) -> dict[str, dict]:
    """Recompute and KunServe alone on the scenario after ``edit(d)`` changes its YAML mapping."""
    import yaml

    d = yaml.safe_load(path.read_text())
    d["compare"] = [c for c in d["compare"] if c["name"] in ("recompute", "kunserve")]
    edit(d)
    return _variant(path, d, trace, None)[1]


def sensitivity(path: Path, trace: Path | None, scales: list[float]) -> str:
    """The recompute / KunServe ratio as the burst's extra load grows (burst rate_scale)."""
    out = [f"**{path.stem}**: burst size vs. P99 TTFT during the burst (s)", "",
           "| burst rate_scale | recompute | kunserve | ratio |", "|---:|---:|---:|---:|"]
    for sc in scales:
        rows = _head_to_head(path, trace, lambda d, sc=sc: d["workload"]["trace"]["bursts"][0].update(rate_scale=sc))
        a, b = rows["recompute"]["burst_p99_ttft_s"], rows["kunserve"]["burst_p99_ttft_s"]
        out.append(f"| {sc:g} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")
    return "\n".join(out)


def budgets(path: Path, trace: Path | None, tokens: list[int]) -> str:
    """The recompute / KunServe ratio against the engine's chunked-prefill budget (max_num_batched_tokens;
    vLLM serves with 2048 on an A100 and 8192 on an H100 by default) and, at the scenario's budget, memslo's
    default admission (admit in an iteration that preempted, as vLLM V0 does, and a 1 % watermark) instead of
    the scenario's vLLM V1 rules (each configuration changes the scenario's engine settings it names)."""
    configs = [(f"{n}", {"max_num_batched_tokens": n}) for n in tokens]
    configs.append(("scenario's budget, admitting after a preemption, 1 % watermark",
                    {"admit_after_preemption": True, "watermark": 0.01}))
    out = [f"**{path.stem}**: chunked-prefill budget and admission rule vs. P99 TTFT during the burst (s)", "",
           "| max_num_batched_tokens | recompute | recompute preemptions | kunserve | ratio |",
           "|---|---:|---:|---:|---:|"]
    for label, over in configs:
        rows = _head_to_head(path, trace, lambda d, over=over: d["engine"].update(over))
        a, b = rows["recompute"]["burst_p99_ttft_s"], rows["kunserve"]["burst_p99_ttft_s"]
        out.append(f"| {label} | {a:.2f} | {rows['recompute']['preemptions']} | {b:.2f} | {a / b:.1f}x |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--trace", type=Path, default=None, help="azure_conv_2023.csv (default: ../shared beside the checkout)")
    ap.add_argument("--sensitivity", action="store_true", help="also vary the burst's size")
    ap.add_argument("--variants", action="store_true", help="also KunServe with FCFS micro-batches / a synchronous pipeline")
    ap.add_argument("--budgets", action="store_true", help="also vary the chunked-prefill budget")
    ap.add_argument("--seed", type=int, default=None, help="replace the scenarios' seed")
    args = ap.parse_args(argv)
    trace = args.trace or find_trace()
    seed = args.seed
    for path in args.scenarios:
        loaded = load_scenario(path, seed=seed, trace=trace)
        rows, wall = measure(loaded)
        print(table(loaded, rows, wall))
        print()
        if args.variants:
            print(variants(path, trace, seed))
            print()
        if args.sensitivity:
            print(sensitivity(path, trace, [1.1, 1.2, 1.25, 1.3, 1.4, 1.5, 2.0]))
            print()
        if args.budgets:
            print(budgets(path, trace, [2048, 4096, 8192]))
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
