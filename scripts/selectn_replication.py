"""Run the Select-N replication scenarios and print the paper's headline figures next to ours (markdown).

    python scripts/selectn_replication.py                  # a10 and h100-sxm, full length, every sweep
    python scripts/selectn_replication.py --quick --hardware a10
    options: --seeds 0,1,2,3,4 (of (d))  --workers N

(a) OPT-6.7B, sequence 64: the intervals Select-N picks for a prefill batch of 16 and a decode batch of 128
    at SLO 1.5x no-offload (scenarios/selectn_a_prefill.yaml, selectn_a_decode.yaml).
(b) OPT-13B, batches 4/8/16/32 with a backlog of 4 batches: throughput and host memory of Select-N versus
    SLO-aware FlexGen at equal SLO attainment, and how far DeepSpeed-style streaming misses the TPOT SLO
    (scenarios/selectn_b_opt13b.yaml).
(c) OPT-13B and Llama-2-13B on two GPUs sharing one bus, same batches (scenarios/selectn_c_contention.yaml).
(d) Beyond the paper: continuous batching, Poisson arrivals, Azure conversation lengths (selectn_azure.yaml).
(b) and (c) are swept over batch sizes x TPOT SLOs (A10: 0.3-0.6 s and 0.55-0.8 s around the paper's; on
h100-sxm 1.25x-2x the no-offload TPOT of each batch) on the process pool; each headline is the median of
the per-point ratios at >= 99 % attainment with a 95 % bootstrap interval (the best point is named, as
such). The primary rows stage whole layers (the paper's Select-N) against both FlexGens (planning with the
worst-case link, bus / GPUs per bus, and with the link measured alone); staging in pieces is an
extension row. (d) runs 5 seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sim.config.scenario import LoadedScenario, Scenario  # noqa: E402
from sim.core.batch import BatchShape  # noqa: E402
from sim.core.hardware import get_hardware  # noqa: E402
from sim.core.model import get_model  # noqa: E402
from sim.cost.roofline import RooflineCostModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sweep import SEEDS, publish, run_all, seeds_arg  # noqa: E402

from sim.report.distribution import curve, fmt_ci, median_ci  # noqa: E402

SCEN = REPO / "scenarios"
BATCHES = (4, 8, 16, 32)
PAPER = {"prefill_interval": "3", "decode_interval": "8", "b_throughput": "up to 1.85x", "b_host": "2.37x",
         "b_deepspeed": "up to 8x", "c_throughput": "up to 2.9x", "c_flexgen": "violates at small batches"}


def find_shared() -> Path | None:
    for c in (os.environ.get("MEMSLO_SHARED"), REPO.parent / "shared", REPO.parent.parent / "shared"):
        if c and (Path(c) / "data").is_dir():
            return Path(c)
    return None


def load(name: str, edit=None) -> LoadedScenario:
    """A shipped scenario, optionally edited (a function on its YAML dict); trace paths that do not
    resolve beside the file are looked up in the shared data folder."""
    path = SCEN / f"{name}.yaml"
    d = yaml.safe_load(path.read_text())
    if edit is not None:
        edit(d)
    w = d.get("workload") or {}
    shared = find_shared()
    for key in ("prompt", "output"):
        spec = w.get(key) or {}
        if spec.get("kind") == "empirical" and not (path.parent / spec["trace"]).exists() and shared:
            spec["trace"] = str(shared / "data" / "traces" / Path(spec["trace"]).name)
    return LoadedScenario(path, Scenario.model_validate(d))


def no_offload(model: str, gpu: str, batch: int, prompt: int, ctx: int) -> tuple[float, float]:
    m, hw = get_model(model), get_hardware(gpu)
    c = RooflineCostModel(m, hw)
    p, q = BatchShape.prefill_batch(batch, prompt), BatchShape.decode_batch(batch, ctx)
    return m.num_layers * c.layer_time(p) + c.fixed_time(p), m.num_layers * c.layer_time(q) + c.fixed_time(q)


def host_bytes(run) -> float:
    """Weight bytes living only in host memory (Select-N: averaged over its iterations), over all GPUs."""
    tot = 0.0
    for inst in run.result.instances:
        pol = inst.policy
        tot += pol.mean_host_bytes() if hasattr(pol, "mean_host_bytes") else inst.plan.host_bytes(inst.ctx.model)
    return tot


def metrics(run) -> dict[str, Any]:
    s = run.summary
    if "error" in s:
        return {"error": s["error"]}
    return {"attainment": s["slo_attainment"], "throughput": s["throughput_tokens_per_s"],
            "tpot_mean": (run.requests.tpot_mean_s.mean() if len(run.requests) else float("nan")),
            "host_gb": host_bytes(run) / 1e9, "rejected": s["rejected"], "preemptions": s["preemptions"],
            "late": int(((run.requests.state == "finished") & ~run.requests.slo_met.astype(bool)).sum()),
            "desc": run.result.description}


def run_a(gpu: str, quick: bool) -> dict[str, Any]:
    def hw(d):
        d["hardware"]["gpu"] = gpu
        if quick and d["workload"]["output"]["value"] > 1:
            d["workload"]["output"]["value"] = 16

    pre = load("selectn_a_prefill", hw).simulate(detail_iterations=0)
    dec = load("selectn_a_decode", hw).simulate(detail_iterations=0)
    lab = lambda i, L: "none" if i is None or i > L else str(i)  # noqa: E731
    ppol, dpol = pre["selectn"].result.instances[0].policy, dec["selectn"].result.instances[0].policy
    return {"prefill_interval": lab(ppol.chosen("prefill"), 32), "decode_interval": lab(dpol.chosen("decode"), 32),
            "prefill": {k: metrics(v) for k, v in pre.items()}, "decode": {k: metrics(v) for k, v in dec.items()}}


def _batch_edit(B: int, gpu: str, quick: bool, per_gpu: int, models: list[str], slo_a10: float,
                slo_x: float = 1.5, alone: bool = False):
    """Batch B of the fixed-batch scenario on ``gpu``: the A10's absolute TPOT SLO ``slo_a10``, elsewhere
    ``slo_x`` x the no-offload TPOT of the batch; ``alone`` adds the contention-blind FlexGen where the
    scenario lacks it."""
    def edit(d):
        d["hardware"]["gpu"] = gpu
        waves = 2 if quick else 4
        d["workload"]["arrivals"]["count"] = B * per_gpu * waves
        d["workload"]["output"]["value"] = 16 if quick else 64
        d["engine"]["max_num_seqs"] = B
        if alone and not any(c["name"] == "flexgen-alone" for c in d["compare"]):
            fg = next(c for c in d["compare"] if c["name"] == "flexgen")
            d["compare"].append({**fg, "name": "flexgen-alone", "params": {**fg["params"], "link_bandwidth": "alone"}})
        for c in d["compare"]:
            if c["policy"] == "flexgen":
                c["params"]["batch_size"] = B
        if gpu != "a10":  # slo_x times the no-offload TPOT of this batch (the slowest of the models)
            d["slo"]["tpot_s"] = slo_x * max(no_offload(m, gpu, B, 64, 96)[1] for m in models)
        else:
            d["slo"]["tpot_s"] = slo_a10
    return edit


def run_batches(name: str, gpu: str, quick: bool, batches=BATCHES) -> dict[int, dict[str, Any]]:
    per_gpu, models = (2, ["opt-13b", "llama-2-13b"]) if name == "selectn_c_contention" else (1, ["opt-13b"])
    slo = 0.6 if per_gpu == 2 else 0.4
    out = {}
    for B in batches:
        sc = load(name, _batch_edit(B, gpu, quick, per_gpu, models, slo))
        runs = sc.simulate(detail_iterations=0)
        out[B] = {"tpot_slo": sc.slo.tpot_s, **{k: metrics(v) for k, v in runs.items()}}
    return out


def headline(res: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Throughput ratio at equal (>= 99 %) attainment: best Select-N batch over best FlexGen batch, and the
    largest per-batch ratio where both attain it; host memory ratio; DeepSpeed's TPOT over the SLO."""
    ok = lambda m: "error" not in m and m["attainment"] >= 0.99  # noqa: E731
    best = lambda p: max((r[p]["throughput"] for r in res.values() if ok(r[p])), default=0.0)  # noqa: E731
    # per batch, the policy's throughput over FlexGen's where both attain the SLO
    ratios = lambda p: [r[p]["throughput"] / r["flexgen"]["throughput"] for r in res.values()  # noqa: E731
                        if p in r and ok(r[p]) and ok(r["flexgen"])]
    per_b, whole = ratios("selectn"), ratios("selectn-whole")
    hosts = [r["selectn"]["host_gb"] / r["flexgen"]["host_gb"] for r in res.values()
             if "error" not in r["flexgen"] and r["flexgen"]["host_gb"] > 0]
    ds = [r["deepspeed"]["tpot_mean"] / r["tpot_slo"] for r in res.values() if "error" not in r["deepspeed"]]
    fg_miss = [B for B, r in res.items() if "error" not in r["flexgen"] and r["flexgen"]["attainment"] < 0.99]
    # the contention-blind FlexGen (link_bandwidth: alone), where the scenario compares it
    alone = [B for B, r in res.items() if "flexgen-alone" in r and "error" not in r["flexgen-alone"]
             and r["flexgen-alone"]["attainment"] < 0.99]
    sn_ok = all(ok(r["selectn"]) for r in res.values())
    sn_host = max((r["selectn"]["host_gb"] for r in res.values() if "error" not in r["selectn"]), default=0.0)
    return {"best_ratio": best("selectn") / best("flexgen") if best("flexgen") else float("inf"),
            "whole_best_ratio": (best("selectn-whole") / best("flexgen") if whole and best("flexgen")
                                 else float("nan")),
            "whole_min_ratio": min(whole, default=float("nan")), "whole_max_ratio": max(whole, default=float("nan")),
            "max_batch_ratio": max(per_b, default=float("nan")), "min_batch_ratio": min(per_b, default=float("nan")),
            "host_ratio_max": max(hosts, default=float("nan")), "host_ratio_min": min(hosts, default=float("nan")),
            "deepspeed_miss": max(ds, default=float("nan")), "flexgen_misses_at": fg_miss, "selectn_all_ok": sn_ok,
            "selectn_host_gb": sn_host, "alone_misses_at": alone,
            "has_alone": any("flexgen-alone" in r for r in res.values())}


def run_d(gpu: str, quick: bool) -> dict[str, Any]:
    def edit(d):
        d["hardware"]["gpu"] = gpu
        if quick:
            d["workload"]["duration_s"] = 60
    runs = load("selectn_azure", edit).simulate(detail_iterations=0)
    return {k: metrics(v) for k, v in runs.items()}


# --- (b) and (c) as distributions: batch sizes x TPOT SLOs ---------------------------------------------------
# A10: the paper's absolute SLOs and levels around them (0.27 s/token is the floor for OPT-13B alone on the
# link, ~0.53 s with both GPUs streaming over the shared bus); other GPUs: multiples of the no-offload TPOT.
SLOS = {"a10": {"selectn_b_opt13b": (0.3, 0.4, 0.5, 0.6), "selectn_c_contention": (0.55, 0.6, 0.7, 0.8)},
        "other": (1.25, 1.5, 2.0)}
KEY = {"selectn_b_opt13b": "b", "selectn_c_contention": "c"}


def bc_item(item: tuple[str, str, int, float, bool]) -> list[dict]:
    """One point of the (b)/(c) sweep: every policy on batch B at one SLO (pool-friendly)."""
    name, gpu, B, slo, quick = item
    per_gpu, models = (2, ["opt-13b", "llama-2-13b"]) if name == "selectn_c_contention" else (1, ["opt-13b"])
    sc = load(name, _batch_edit(B, gpu, quick, per_gpu, models, slo, slo, alone=True))
    runs = sc.simulate(detail_iterations=0)
    return [{"scenario": KEY[name], "gpu": gpu, "batch": B, "slo": slo, "tpot_slo_s": sc.slo.tpot_s, "policy": k,
             **metrics(v)} for k, v in runs.items()]


def sweep_bc(gpus: list[str], quick: bool, workers: int | None, batches=BATCHES) -> pd.DataFrame:
    items = [(name, gpu, B, slo, quick) for gpu in gpus for name in KEY
             for slo in (SLOS["a10"][name] if gpu == "a10" else SLOS["other"]) for B in batches]
    rows = run_all(bc_item, items, workers, "selectn (b)/(c)")
    df = pd.DataFrame([r for rs in rows for r in rs])
    df["ok"] = (df.get("attainment", pd.Series(np.nan, index=df.index)) >= 0.99)
    return df


def _pairs(df: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per point: both policies' throughput, attainment, host GB side by side."""
    keys = ["scenario", "gpu", "batch", "slo"]
    x = df[df.policy == a].set_index(keys)
    y = df[df.policy == b].set_index(keys)
    out = pd.DataFrame({"ta": x.throughput, "tb": y.throughput, "oka": x.ok, "okb": y.ok, "ha": x.host_gb,
                        "hb": y.host_gb}).dropna(subset=["ta", "tb"]).reset_index()
    out["ratio"] = np.where(out.oka & out.okb, out.ta / out.tb, np.nan)
    return out


def _ratio_cell(p: pd.DataFrame) -> str:
    both = p[p.oka & p.okb]
    only_a, only_b = int((p.oka & ~p.okb).sum()), int((~p.oka & p.okb).sum())
    cell = fmt_ci(median_ci(both.ratio), "{:.2f}", "x") if len(both) else "n/a"
    extra = [f"{len(both)} of {len(p)} points"]
    if only_a:
        extra.append(f"FlexGen misses its SLO at {only_a}")
    if only_b:
        extra.append(f"Select-N misses at {only_b}")
    if len(both):
        best = both.sort_values("ratio").iloc[-1]
        extra.append(f"best point {best.ratio:.2f}x at batch {int(best.batch)}, SLO {best.slo:g}")
    return f"{cell} ({'; '.join(extra)})"


def bc_markdown(df: pd.DataFrame) -> tuple[str, list[Any]]:
    gpus = list(dict.fromkeys(df.gpu))
    rows: list[tuple[str, str, list[str]]] = []
    figs = []
    for key, label in (("b", "(b) OPT-13B alone"), ("c", "(c) OPT-13B + Llama-2-13B on one bus")):
        d = df[df.scenario == key]
        slos = {g: sorted(d[d.gpu == g].slo.unique()) for g in gpus}
        span = "; ".join(f"{g}: {', '.join(f'{x:g}' for x in v)}{' s' if g == 'a10' else 'x no-offload'}"
                         for g, v in slos.items())
        whole_fg, whole_alone = _pairs(d, "selectn-whole", "flexgen"), _pairs(d, "selectn-whole", "flexgen-alone")
        pieces_fg = _pairs(d, "selectn", "flexgen")
        per = lambda p: [_ratio_cell(p[p.gpu == g]) for g in gpus]  # noqa: E731
        paper = PAPER[f"{key}_throughput"]
        rows.append((f"{label}, batches 4-32 x TPOT SLOs ({span}): throughput Select-N (whole-layer staging, the "
                     f"paper's) / FlexGen planning with the worst-case link (bus / GPUs per bus), both >= 99 % "
                     f"attainment", paper, per(whole_fg)))
        rows.append((f"{label}: same against FlexGen planning with the link as measured alone "
                     f"(`link_bandwidth: alone`)", "", per(whole_alone)))
        rows.append((f"{label}: extension, Select-N staging each layer in 8 pieces through 2 slots / worst-case "
                     f"FlexGen", "-", per(pieces_fg)))
        hosts = whole_fg[whole_fg.hb > 0]
        rows.append((f"{label}: host memory Select-N (whole) / FlexGen", PAPER["b_host"] if key == "b" else "",
                     [fmt_ci(median_ci(hosts[hosts.gpu == g].ha / hosts[hosts.gpu == g].hb), "{:.2f}", "x")
                      if len(hosts[hosts.gpu == g]) else "FlexGen offloads nothing" for g in gpus]))
        ds = d[d.policy == "deepspeed"]
        rows.append((f"{label}: DeepSpeed-style mean TPOT / TPOT SLO", PAPER["b_deepspeed"] if key == "b" else "",
                     [fmt_ci(median_ci(ds[ds.gpu == g].tpot_mean / ds[ds.gpu == g].tpot_slo_s), "{:.2f}", "x")
                      for g in gpus]))
        sn = d[d.policy == "selectn-whole"]
        rows.append((f"{label}: points where Select-N (whole) attains >= 99 %", "yes",
                     [f"{int(sn[sn.gpu == g].ok.sum())} of {len(sn[sn.gpu == g])}" for g in gpus]))
        a10 = whole_fg[whole_fg.gpu == "a10"].assign(what="whole / worst-case FlexGen")
        a10 = pd.concat([a10, pieces_fg[pieces_fg.gpu == "a10"].assign(what="8 pieces / worst-case FlexGen")])
        if len(a10):
            a10["series"] = a10.what + ", SLO " + a10.slo.map(lambda x: f"{x:g} s")
            figs.append((f"selectn-{key}", curve(a10.dropna(subset=["ratio"]), "batch", "ratio", "series",
                                                 f"Select-N {label}: throughput / FlexGen's at >= 99 % attainment (A10)",
                                                 "batch size", "throughput ratio", ref=1.0, ref_label="1x")))
    head = "| headline (median [95 % CI] over the sweep) | paper (A10) | " + " | ".join(f"memslo {g}" for g in gpus) + " |"
    lines = [head, "|---|---|" + "---|" * len(gpus)]
    lines += [f"| {a} | {b} | " + " | ".join(c) + " |" for a, b, c in rows]
    return "\n".join(lines), figs


# --- (d) over seeds ---------------------------------------------------------------------------------------------
def d_item(item: tuple[str, int, bool]) -> list[dict]:
    gpu, seed, quick = item

    def edit(d):
        d["hardware"]["gpu"] = gpu
        d["seed"] = seed
        d["compare"].append({"name": "goodput", "policy": "goodput"})
        if quick:
            d["workload"]["duration_s"] = 60
    runs = load("selectn_azure", edit).simulate(detail_iterations=0)
    return [{"gpu": gpu, "seed": seed, "policy": k, **metrics(v)} for k, v in runs.items()]


def d_markdown(df: pd.DataFrame) -> str:
    gpus = list(dict.fromkeys(df.gpu))
    lines = ["| (d) Azure conversation lengths, Poisson 0.7/s, continuous batching (5 seeds) | " +
             " | ".join(f"memslo {g}: attainment | late / rejected" for g in gpus) + " |",
             "|---|" + "---:|---:|" * len(gpus)]
    for pol in ("selectn", "none", "flexgen", "goodput"):
        cells = []
        for g in gpus:
            x = df[(df.gpu == g) & (df.policy == pol)]
            if "attainment" not in x or x.attainment.isna().all():
                cells += ["does not fit", ""]
                continue
            cells += [fmt_ci(median_ci(x.attainment * 100), "{:.1f}", " %"),
                      f"{np.median(x.late):.0f} / {np.median(x.rejected):.0f}"]
        lines.append(f"| {pol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short outputs and backlogs (what the tests run)")
    ap.add_argument("--hardware", default="a10,h100-sxm")
    ap.add_argument("--seeds", type=seeds_arg, default=SEEDS, help="seeds of (d)")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    gpus = args.hardware.split(",")
    a_rows = {g: run_a(g, args.quick) for g in gpus}
    print("| (a) Select-N's interval, OPT-6.7B (the record's lookup: one value, no distribution) | paper (A10) | "
          + " | ".join(f"memslo {g}" for g in gpus) + " |")
    print("|---|---|" + "---|" * len(gpus))
    print("| (a) prefill, batch 16 x 64, SLO 1.5x | 3 | " + " | ".join(a_rows[g]["prefill_interval"] for g in gpus) + " |")
    print("| (a) decode, batch 128 x 64, SLO 1.5x | 8 | " + " | ".join(a_rows[g]["decode_interval"] for g in gpus) + " |")
    t1 = time.perf_counter()
    bc = sweep_bc(gpus, args.quick, args.workers)
    t_bc = time.perf_counter() - t1
    table, figs = bc_markdown(bc)
    print()
    print(table)
    t2 = time.perf_counter()
    d = pd.DataFrame([r for rs in run_all(d_item, [(g, s, args.quick) for g in gpus for s in args.seeds],
                                          args.workers, "selectn (d)") for r in rs])
    t_d = time.perf_counter() - t2
    dm = d_markdown(d)
    print()
    print(dm)
    note = (f"\n(generated by scripts/selectn_replication.py{' --quick' if args.quick else ''} in "
            f"{time.perf_counter() - t0:.0f} s: (b)/(c) {len(bc.groupby(['scenario', 'gpu', 'batch', 'slo']))} "
            f"points in {t_bc:.0f} s, (d) {len(args.seeds)} seeds x {len(gpus)} GPUs in {t_d:.0f} s; the "
            "fixed-batch points have no randomness -- batch arrivals at 0, fixed lengths -- so their spread is "
            "over the knob, batch x SLO)")
    print(note)
    if not args.quick:
        for k, (key, fig) in enumerate(figs):
            publish(key, table if k == 0 else "", fig, "Select-N against FlexGen, per batch and TPOT SLO (A10): "
                    "whole-layer staging (the paper's) and 8 pieces through 2 slots (an extension). "
                    "scripts/selectn_replication.py.", order=30 + k, points=bc if k == 0 else None)
        publish("selectn-d", dm + "\n" + note, None, "", points=d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
