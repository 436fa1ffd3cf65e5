"""Tensor-parallel layer times predicted against measurements the fit never saw.

``python -m calibration.tp_layers [DATA...] [--gpu a100-80g --gpu h100-sxm]``

Vidur's linear-op files time each model's decoder layer (everything but attention) at
``num_tensor_parallel_workers`` = 1, 2, 4, 8: the tp > 1 rows are one GPU's shard of the layer (QKV and
gate+up split along N, O and down along K, RoPE and the activation over the GPU's heads and MLP columns,
the norms and the residual add whole). Here the calibrated model is fitted on the tp = 1 rows only and
predicts every tp > 1 row (Llama-2-7B and Llama-2-70B, 1 to 4,096 tokens) through
`sim.cost.physics.linear_op_times(model, ..., tp)`, the cost of the per-rank shard that the simulator
runs for a TP rank. No tp > 1 row reaches the fit. Reported per GPU, model and tp: median and p90 of
|predicted / measured - 1|, next to the in-sample tp = 1 error and to perfect scaling (the measured tp = 1
time over tp).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .fit import FitResult, fit_params, predict
from .measurements import load_measurements, vidur_files


def _q(e: pd.Series) -> dict[str, float]:
    return {"median": float(e.median()), "p90": float(e.quantile(0.9)), "n": len(e)}


def score_tp(table: pd.DataFrame, gpu: str) -> tuple[pd.DataFrame, dict, FitResult]:
    """Fit ``gpu``'s parameters on its tp = 1 rows and predict its tp > 1 layer (``linear``) rows.

    Returns (scored rows with predicted_s, rel_err, scaled_s, scaled_err; summary; the fit). The summary has
    per (model, tp) the error of the prediction (``model``) and of perfect scaling (``scaled``), ``pooled``
    over every tp > 1 row, and ``in_sample_tp1`` (the fit's own error on the tp = 1 layer rows)."""
    t = table[table["gpu"] == gpu]
    fit = fit_params(t, gpu, tps=[1])
    if set(fit.table["tp"].astype(int)) != {1}:
        raise AssertionError("the fit saw a tp > 1 row")
    lin = t[t["op_group"] == "linear"]
    one = lin[lin["tp"] == 1].set_index(["model", "batch_tokens"])["measured_s"]
    rows = lin[lin["tp"] > 1].copy()
    rows["predicted_s"] = predict(rows, gpu, fit.params)
    rows["rel_err"] = rows["predicted_s"] / rows["measured_s"] - 1.0
    rows["scaled_s"] = [one.get((m, b), np.nan) / tp for m, b, tp in
                        zip(rows["model"], rows["batch_tokens"], rows["tp"])]
    rows["scaled_err"] = rows["scaled_s"] / rows["measured_s"] - 1.0
    summary: dict = {"cells": {}}
    for (model, tp), x in rows.groupby(["model", "tp"]):
        summary["cells"][(model, int(tp))] = {"model": _q(x["rel_err"].abs()),
                                              "scaled": _q(x["scaled_err"].abs().dropna())}
    summary["pooled"] = {"model": _q(rows["rel_err"].abs()), "scaled": _q(rows["scaled_err"].abs().dropna())}
    summary["in_sample_tp1"] = fit.stats()["linear"]
    return rows, summary, fit


def lines(gpu: str, summary: dict) -> list[str]:
    ins = summary["in_sample_tp1"]
    title = f"{gpu}: fitted on tp = 1 only (in-sample layer error: median {ins['median']:.1%}, p90 {ins['p90']:.1%})"
    head = f"  {'model':12s} {'tp':>2s} {'n':>4s}  {'median':>7s} {'p90':>7s}   perfect scaling: {'median':>7s} {'p90':>7s}"
    out = [title, head]
    cells = sorted(summary["cells"].items()) + [(("pooled", 0), summary["pooled"])]
    for (model, tp), s in cells:
        m, sc = s["model"], s["scaled"]
        out.append(f"  {model:12s} {tp if tp else '':>2} {m['n']:4d}  {m['median']:7.1%} {m['p90']:7.1%}   "
                   f"{'':16s} {sc['median']:7.1%} {sc['p90']:7.1%}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m calibration.tp_layers", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="*", type=Path, help="Vidur *_linear_ops.csv files or folders "
                                                       "(default: the shared data's)")
    ap.add_argument("--gpu", action="append", help="GPU preset (repeatable; default a100-80g and h100-sxm)")
    a = ap.parse_args(argv)
    for gpu in a.gpu or ["a100-80g", "h100-sxm"]:
        table, _, _ = load_measurements(a.data or vidur_files(gpu.split("-")[0]), gpu)
        _, summary, _ = score_tp(table, gpu)
        print("\n".join(lines(gpu, summary)))


if __name__ == "__main__":
    main()
