"""Fit `sim.cost.calibrated` parameters to measurements and write a profile.

``python -m calibration.fit DATA... --gpu h100-sxm --out calibration/profiles/h100-sxm.yaml``

DATA are Vidur ``*_linear_ops.csv`` files, backend ``layer_times.csv`` / ``copy_bandwidth.csv`` files, or
folders holding them. Residuals are relative, per operator group (``pred / measured - 1``), with a soft-L1
loss so that the odd token count where the GEMM library picks a poor kernel does not drag the physics.

Every tensor-parallel degree in the data is fitted by default (``--tp`` restricts it): Vidur's tp = 2, 4, 8
rows time the same model's sharded GEMM shapes on one GPU, which gives the shape terms (wave quantisation,
L2 blocking, the knee) far more K and N to be fitted from. Leave-one-model-out fits on every tp
of the training model and scores the held-out model's tp = 1 rows only; no row of the held-out model, of
any tp, reaches its fit.

The fit is staged, following the physics: (1) on small batches (<= 32 tokens: memory-bound weight reads and
launch overheads) fit ``memory_efficiency``, ``gemm_overhead_s``, ``memory_latency_s`` (GPUs with a
kernel set) and the element-wise launch and row latencies; (2) with those fixed, fit the compute side, the
knee, wave quantisation and element-wise bandwidths on all rows; (3) attention efficiencies, when the data
has attention times (backend profiles).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from sim.core.batch import BatchShape
from sim.core.hardware import get_hardware
from sim.core.model import get_model
from sim.cost.calibrated import CalibratedCostModel, Profile
from sim.cost.params import CalibratedParams
from sim.cost.physics import gpu_constants, linear_op_times

from .measurements import OP_GROUPS, load_measurements, sha256

SMALL_TOKENS = 32
# KNEE: the p-norm knee is bounded below (p >= 3, i.e. memory and compute overlap: at the knee the GEMM
# takes at most 1.26x the larger of the two). Fitted free on H100 Llama-2-7B, p comes out ~1.5: 7B's
# kernel switches near the knee read as a soft knee, which over-predicts 70B by 17-29 % at 64-512 tokens.
# LATENCY: ``memory_latency_s`` (Little's-law limit on a GEMM's DRAM stream, `gemm_stream_bandwidth`) is
# fitted with the weight-read stage on GPUs with a kernel set (Hopper), where the CTA count is the kernel's;
# with A100's one kernel it stays 0 (the one 128x128 kernel is not what cuBLAS runs at small M, and the fit
# on A100 Llama-2-7B gave a latency that made 7B -> 70B worse: 2.1 % / 4.4 % vs 1.9 % / 4.1 %).
LOSS, F_SCALE = "soft_l1", 0.05
# name: (start, lower, upper, stage)
PARAM_SPECS: dict[str, tuple[float, float, float, str]] = {
    "memory_efficiency": (0.85, 0.2, 1.0, "small"),
    "gemm_overhead_s": (5e-6, 0.0, 1e-4, "small"),
    "row_kernel_overhead_s": (2e-6, 0.0, 1e-4, "small"),
    "rope_overhead_s": (2e-6, 0.0, 1e-4, "small"),
    "add_overhead_s": (1e-6, 0.0, 1e-4, "small"),
    "row_latency_s_per_element": (1e-10, 0.0, 1e-8, "small"),
    "memory_latency_s": (2e-7, 0.0, 1e-5, "small"),  # Little's-law stream latency: see LATENCY note
    "compute_efficiency": (0.7, 0.1, 1.0, "main"),
    "knee_sharpness": (3.0, 3.0, 30.0, "main"),  # >= 3: see KNEE note
    "wave_quantization": (0.5, 0.0, 1.0, "main"),
    "norm_efficiency": (0.4, 0.01, 2.0, "main"),
    "rope_efficiency": (0.5, 0.01, 2.0, "main"),
    "act_efficiency": (0.6, 0.01, 2.0, "main"),
    "add_efficiency": (0.9, 0.01, 2.0, "main"),
    "l2_spill_penalty": (0.5, 0.0, 5.0, "main"),
    "attention_efficiency": (0.5, 0.02, 1.0, "attention"),
    "attention_memory_efficiency": (0.7, 0.05, 1.0, "attention"),
    "attention_overhead_s": (5e-6, 0.0, 1e-4, "attention"),
}


@dataclass
class FitResult:
    gpu: str
    params: CalibratedParams
    table: pd.DataFrame  # the rows fitted, with predicted_s and rel_err
    cost: float
    fitted: list[str]  # parameters the data constrained; the others keep their defaults

    def stats(self) -> dict:
        """Per op group on the unsplit (tp = 1) rows, what the simulator predicts; ``linear_all_tp`` adds
        the layer over every fitted tp when the data has tp > 1 rows."""
        tp = _tp(self.table)
        out = residual_stats(self.table[tp == 1])
        if (tp > 1).any():
            out["linear_all_tp"] = _quantiles(self.table.loc[self.table["op_group"] == "linear", "rel_err"].to_numpy())
        return out


def _quantiles(e: np.ndarray) -> dict[str, float]:
    a = np.abs(e)
    return {"median": round(float(np.median(a)), 5), "p90": round(float(np.percentile(a, 90)), 5),
            "max": round(float(a.max()), 5), "n": int(a.size)}


def _tp(t: pd.DataFrame) -> pd.Series:
    return t["tp"].astype(int) if "tp" in t.columns else pd.Series(1, index=t.index)


def residual_stats(t: pd.DataFrame) -> dict:
    """|relative error| median/p90 per op group, as profiles and reports show them."""
    return {g: _quantiles(x["rel_err"].to_numpy()) for g, x in t.groupby("op_group")}


# --- prediction -------------------------------------------------------------------------------------------

def _shape(row) -> BatchShape:
    b, ctx = int(row.batch_size), int(row.context_tokens)
    if row.phase == "prefill":
        return BatchShape.prefill_batch(b, max(1, int(row.batch_tokens) // max(b, 1)))
    return BatchShape.decode_batch(b, max(ctx, 1))


def predict(table: pd.DataFrame, gpu: str, params: CalibratedParams) -> np.ndarray:
    """Predicted seconds for every row of a measurement table (one GPU)."""
    hw, const = get_hardware(gpu), gpu_constants(gpu)
    out = np.full(len(table), np.nan)
    pos = {ix: i for i, ix in enumerate(table.index)}
    for (model_name, tp), t in table.groupby([table["model"], _tp(table).rename("tp_")]):
        model = get_model(model_name)
        tok = t["batch_tokens"].to_numpy(dtype=float)
        ops = linear_op_times(model, hw, const, params, tok, int(tp))
        linear = sum(ops.values())
        groups = t["op_group"].to_numpy()
        pred = np.full(len(t), np.nan)
        for g, v in ops.items():
            pred = np.where(groups == g, v, pred)
        pred = np.where(groups == "linear", linear, pred)
        if np.isin(groups, ("attention", "layer")).any():  # backend rows: one GPU, tp = 1
            cm = CalibratedCostModel(model, hw, Profile(gpu=gpu, params=params, constants=const))
            attn = np.array([cm.attention_time(_shape(r)) if r.op_group in ("attention", "layer") else 0.0
                             for r in t.itertuples()])
            pred = np.where(groups == "attention", attn, pred)
            pred = np.where(groups == "layer", linear + attn, pred)
        out[[pos[ix] for ix in t.index]] = pred
    return out


def _fit_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per-op rows where a file has them; a file's ``linear`` rows only when it has no per-op rows."""
    keep = []
    for _, t in table.groupby("source"):
        has_ops = t["op_group"].isin(OP_GROUPS).any()
        keep.append(t[t["op_group"].isin(OP_GROUPS + ("attention",))] if has_ops
                    else t[t["op_group"].isin(("linear", "attention"))])
    return pd.concat(keep) if keep else table.iloc[:0]


def _solve(names: list[str], base: CalibratedParams, rows: pd.DataFrame, gpu: str,
           starts: Sequence[dict[str, float]]) -> tuple[CalibratedParams, float]:
    meas = rows["measured_s"].to_numpy(dtype=float)
    lo = [PARAM_SPECS[n][1] for n in names]
    hi = [PARAM_SPECS[n][2] for n in names]

    def resid(x):
        return predict(rows, gpu, replace(base, **dict(zip(names, x)))) / meas - 1.0

    best = None
    for s in starts:
        x0 = np.clip([s.get(n, getattr(base, n)) for n in names], lo, hi)
        r = least_squares(resid, x0, bounds=(lo, hi), x_scale="jac", diff_step=1e-3, loss=LOSS, f_scale=F_SCALE)
        if best is None or r.cost < best.cost:
            best = r
    return replace(base, **dict(zip(names, best.x))), float(best.cost)


def fit_params(table: pd.DataFrame, gpu: str, models: Sequence[str] | None = None,
               starts: int = 2, tps: Sequence[int] | None = None) -> FitResult:
    """Fit one GPU's parameters on its rows of ``table`` (optionally only some models, and only some
    tensor-parallel degrees ``tps``; default: every tp in the table)."""
    t = table[table["gpu"] == gpu]
    if models is not None:
        t = t[t["model"].isin(list(models))]
    if tps is not None:
        t = t[_tp(t).isin([int(x) for x in tps])]
    rows = _fit_rows(t).copy()
    if rows.empty:
        raise ValueError(f"no measurements for GPU {gpu!r}" + (f" and models {list(models)}" if models else ""))
    base = CalibratedParams(**{n: s[0] for n, s in PARAM_SPECS.items()})
    alt = [{}, {"knee_sharpness": 8.0, "wave_quantization": 0.1, "compute_efficiency": 0.8}][:max(1, starts)]
    cost, fitted = 0.0, []
    lin = rows[rows["op_group"] != "attention"]
    small = lin[lin["batch_tokens"] <= SMALL_TOKENS]
    if not small.empty:
        names = [n for n, s in PARAM_SPECS.items() if s[3] == "small"]
        if len(gpu_constants(gpu).kernels()) == 1:  # one kernel: no CTA count to limit streams (LATENCY)
            names.remove("memory_latency_s")
            base = replace(base, memory_latency_s=0.0)
        base, _ = _solve(names, base, small, gpu, [{}])
        fitted += names
    if not lin.empty:
        names = [n for n, s in PARAM_SPECS.items() if s[3] == "main"]
        if len(gpu_constants(gpu).kernels()) > 1:  # whole waves: wave_quantization is not used
            names.remove("wave_quantization")
        base, cost = _solve(names, base, lin, gpu, alt)
        fitted += names
    att = rows[rows["op_group"] == "attention"]
    if not att.empty:
        names = [n for n, s in PARAM_SPECS.items() if s[3] == "attention"]
        base, _ = _solve(names, base, att, gpu, [{}])
        fitted += names
    out = t[t["op_group"].isin(rows["op_group"].unique()) | (t["op_group"] == "linear")].copy()
    out["predicted_s"] = predict(out, gpu, base)
    out["rel_err"] = out["predicted_s"] / out["measured_s"] - 1.0
    return FitResult(gpu, base, out, cost, fitted)


def leave_one_model_out(table: pd.DataFrame, gpu: str, group: str = "linear",
                        starts: int = 2, tps: Sequence[int] | None = None) -> pd.DataFrame:
    """Fit on each model alone (its rows of every tp in ``tps``, default all) and predict every other
    model's unsplit (tp = 1) ``group`` rows.

    Returns rows (train, test, batch_tokens, measured_s, predicted_s, rel_err)."""
    t = table[table["gpu"] == gpu]
    models = sorted(t["model"].unique())
    out = []
    for train in models:
        fit = fit_params(t[t["model"] == train], gpu, [train], starts=starts, tps=tps)
        for test in models:
            if test == train:
                continue
            rows = t[(t["model"] == test) & (t["op_group"] == group) & (_tp(t) == 1)].copy()
            rows["predicted_s"] = predict(rows, gpu, fit.params)
            rows["train"], rows["test"] = train, test
            rows["rel_err"] = rows["predicted_s"] / rows["measured_s"] - 1.0
            out.append(rows)
    if not out:
        return pd.DataFrame(columns=["train", "test", "batch_tokens", "measured_s", "predicted_s", "rel_err"])
    return pd.concat(out, ignore_index=True)


def loo_summary(loo: pd.DataFrame) -> dict:
    """|relative error| median/p90 per direction and pooled over all directions."""
    out = {f"{a}->{b}": _quantiles(x["rel_err"].to_numpy()) for (a, b), x in loo.groupby(["train", "test"])}
    if len(loo):
        out["pooled"] = _quantiles(loo["rel_err"].to_numpy())
    return out


def fit_link(copy: pd.DataFrame) -> dict[str, float]:
    """Pinned, uncontended copies: seconds = latency + bytes / bandwidth, per direction (relative LSQ)."""
    out: dict[str, float] = {}
    if copy.empty:
        return out
    c = copy[(copy["memory"] == "pinned") & (copy["concurrent_compute"].astype(int) == 0)]
    lats = []
    for d, key in (("h2d", "h2d_bytes_per_s"), ("d2h", "d2h_bytes_per_s")):
        x = c[c["direction"] == d]
        if len(x) < 2:
            continue
        s, y = x["size_bytes"].to_numpy(float), x["seconds"].to_numpy(float)
        a = np.stack([np.ones_like(s), s], axis=1) / y[:, None]  # relative weighting
        (lat, inv_bw), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
        if inv_bw > 0:
            out[key] = float(1.0 / inv_bw)
            lats.append(max(0.0, float(lat)))
    if lats:
        out["link_latency_s"] = float(np.mean(lats))
    return out


# --- CLI ------------------------------------------------------------------------------------------------

def build_profile(paths: Sequence[str | Path], gpu: str, command: str, loo: bool = True,
                  starts: int = 2, tps: Sequence[int] | None = None) -> tuple[Profile, FitResult, pd.DataFrame]:
    table, copy, used = load_measurements(paths, gpu)
    fit = fit_params(table, gpu, starts=starts, tps=tps)
    t = table[table["gpu"] == gpu]
    loo_df = (leave_one_model_out(table, gpu, starts=starts, tps=tps) if loo and t["model"].nunique() > 1
              else pd.DataFrame())
    gpu_copy = copy[copy["gpu"].isin([gpu, ""])] if not copy.empty else copy
    stats = fit.stats()
    residuals = {"metric": "|predicted / measured - 1| per op group on the fitted tp = 1 rows "
                           "(linear_all_tp: the layer over every fitted tp)",
                 "per_op_group": stats}
    if len(loo_df):
        residuals["leave_one_model_out"] = {"metric": "|rel. error| of the held-out model's layer "
                                                      "non-attention time, tp = 1, fit on every tp of the other",
                                            **loo_summary(loo_df)}
    copy_sources = set(gpu_copy["source"]) if not gpu_copy.empty else set()
    files = [{"name": p.name, "sha256": sha256(p), "rows": int((t["source"] == p.name).sum())}
             for p in used if p.name in set(t["source"]) or p.name in copy_sources]
    prov = {"fit_date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "command": command, "data_files": files, "models": sorted(t["model"].unique()),
            "loss": f"{LOSS} (f_scale {F_SCALE}) on relative residuals, staged",
            "fitted_params": fit.fitted,
            "default_params": [n for n in asdict(fit.params) if n not in fit.fitted],
            "fit_tp": sorted(int(x) for x in _tp(fit.table).unique()),
            "note": "Vidur rows: per-op medians of every fitted tensor-parallel degree (single-GPU timings of "
                    "the sharded shapes); a (tp, token count) measured twice is averaged."}
    prof = Profile(gpu=gpu, params=fit.params, constants=gpu_constants(gpu), link=fit_link(gpu_copy),
                   residuals=residuals, provenance=prov)
    return prof, fit, loo_df


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m calibration.fit", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", help="measurement files or folders")
    ap.add_argument("--gpu", required=True, help="HardwareSpec preset the rows belong to (e.g. h100-sxm)")
    ap.add_argument("--out", required=True, type=Path, help="profile YAML to write")
    ap.add_argument("--no-loo", action="store_true", help="skip the leave-one-model-out check")
    ap.add_argument("--starts", type=int, default=2, help="starting points of the main stage (default 2)")
    ap.add_argument("--tp", type=int, action="append",
                    help="fit only rows of this tensor-parallel degree (repeatable; default: every tp in the data)")
    a = ap.parse_args(argv)
    get_hardware(a.gpu)  # fail early on an unknown GPU name
    cmd = "python -m calibration.fit " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    prof, fit, loo = build_profile(a.data, a.gpu, cmd, loo=not a.no_loo, starts=a.starts, tps=a.tp)
    prof.write(a.out)
    for k, v in asdict(fit.params).items():
        print(f"  {k:30s} {v:.4g}")
    s = prof.residuals["per_op_group"].get("linear")
    if s:
        print(f"fit residual (layer, non-attention): median {s['median']:.1%}, p90 {s['p90']:.1%}")
    for k, v in prof.residuals.get("leave_one_model_out", {}).items():
        if isinstance(v, dict):
            print(f"leave-one-model-out {k}: median {v['median']:.1%}, p90 {v['p90']:.1%}")
    print(f"wrote {a.out}")
    return a.out


if __name__ == "__main__":
    main()
