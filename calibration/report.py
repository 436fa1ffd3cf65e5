"""Calibration report: one self-contained HTML page (plotly inlined, opens offline).

``python -m calibration.report DATA... --out calibration/report.html``

For each GPU in the data: the fitted parameters (fit on every model and every tensor-parallel degree),
measured vs predicted time per operator group against the token count and the distribution of relative
residuals (unsplit, tp = 1 rows), and the leave-one-model-out error (fit on one model's rows of every tp,
predict the other's tp = 1 rows) next to a plain three-parameter roofline fitted on the training model's
tp = 1 rows (it has no notion of sharding), for scale.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy.optimize import least_squares

from sim.core.hardware import get_hardware
from sim.core.model import get_model
from sim.cost.roofline import RooflineCostModel

from .fit import FitResult, fit_params, leave_one_model_out, loo_summary
from .measurements import OP_GROUPS, load_measurements, sha256

GROUP_ORDER = ("linear",) + OP_GROUPS


def roofline_loo(table: pd.DataFrame, gpu: str) -> pd.DataFrame:
    """Leave-one-model-out of `RooflineCostModel.linear_time` with three fitted numbers (compute and memory
    efficiency, per-kernel overhead), relative least squares on the layer's non-attention time."""
    hw = get_hardware(gpu)
    t = table[(table["gpu"] == gpu) & (table["op_group"] == "linear")]
    if "tp" in t.columns:
        t = t[t["tp"] == 1]
    models = sorted(t["model"].unique())

    def pred(x, name, tokens):
        cm = RooflineCostModel(get_model(name), hw, compute_efficiency=x[0], memory_efficiency=x[1],
                               kernel_overhead_s=x[2])
        return np.array([cm.linear_time(int(n)) for n in tokens])

    out = []
    for train in models:
        tr = t[t["model"] == train]
        r = least_squares(lambda x: pred(x, train, tr["batch_tokens"]) / tr["measured_s"].to_numpy() - 1,
                          [0.7, 0.8, 4e-6], bounds=([0.05, 0.05, 0.0], [1.0, 1.0, 1e-4]), x_scale="jac")
        for test in models:
            if test != train:
                te = t[t["model"] == test].copy()
                te["predicted_s"] = pred(r.x, test, te["batch_tokens"])
                te["train"], te["test"] = train, test
                te["rel_err"] = te["predicted_s"] / te["measured_s"] - 1
                out.append(te)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _table_html(rows: list[list], header: list[str]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _unsplit(t: pd.DataFrame) -> pd.DataFrame:
    return t[t["tp"] == 1] if "tp" in t.columns else t


def fig_measured_vs_predicted(fit: FitResult) -> go.Figure:
    t = _unsplit(fit.table)
    groups = [g for g in GROUP_ORDER if g in set(t["op_group"])]
    cols = 4
    rows = (len(groups) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=groups, horizontal_spacing=0.05,
                        vertical_spacing=0.09)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for i, g in enumerate(groups):
        r, c = i // cols + 1, i % cols + 1
        for j, (model, x) in enumerate(t[t["op_group"] == g].groupby("model")):
            x = x.sort_values("batch_tokens")
            col = colors[j % len(colors)]
            fig.add_trace(go.Scatter(x=x["batch_tokens"], y=x["measured_s"] * 1e3, mode="markers",
                                     marker=dict(size=3, color=col), name=f"{model} measured",
                                     legendgroup=f"{model}m", showlegend=i == 0), row=r, col=c)
            fig.add_trace(go.Scatter(x=x["batch_tokens"], y=x["predicted_s"] * 1e3, mode="lines",
                                     line=dict(width=1.2, color=col), name=f"{model} predicted",
                                     legendgroup=f"{model}p", showlegend=i == 0), row=r, col=c)
        fig.update_xaxes(type="log", row=r, col=c)
        fig.update_yaxes(type="log", row=r, col=c)
    fig.update_layout(height=260 * rows, title=f"{fit.gpu}: measured (dots) vs predicted (lines), ms per op "
                      "against batch tokens (tp = 1)", legend=dict(orientation="h", y=-0.05))
    return fig


def fig_residuals(fit: FitResult) -> go.Figure:
    t = _unsplit(fit.table)
    fig = go.Figure()
    for g in [g for g in GROUP_ORDER if g in set(t["op_group"])]:
        fig.add_trace(go.Box(y=t.loc[t["op_group"] == g, "rel_err"] * 100, name=g, boxpoints="outliers"))
    fig.update_layout(title=f"{fit.gpu}: residual distribution (predicted / measured − 1, %, tp = 1), fit on all "
                      "models",
                      yaxis_title="%", height=420, showlegend=False)
    return fig


def fig_loo(loo: pd.DataFrame, base: pd.DataFrame, gpu: str) -> go.Figure:
    fig = go.Figure()
    for (a, b), x in loo.groupby(["train", "test"]):
        x = x.sort_values("batch_tokens")
        fig.add_trace(go.Scatter(x=x["batch_tokens"], y=x["rel_err"] * 100, mode="lines+markers",
                                 marker=dict(size=3), name=f"calibrated: fit {a} → predict {b}"))
    for (a, b), x in base.groupby(["train", "test"]) if len(base) else []:
        x = x.sort_values("batch_tokens")
        fig.add_trace(go.Scatter(x=x["batch_tokens"], y=x["rel_err"] * 100, mode="lines", opacity=0.45,
                                 line=dict(dash="dot"), name=f"3-number roofline: fit {a} → predict {b}"))
    fig.update_xaxes(type="log", title="batch tokens")
    fig.update_layout(title=f"{gpu}: leave-one-model-out error of the layer's non-attention time (%)",
                      yaxis_title="%", height=420, legend=dict(orientation="h", y=-0.25))
    return fig


def gpu_section(table: pd.DataFrame, gpu: str) -> tuple[str, list[go.Figure]]:
    fit = fit_params(table, gpu)
    figs = [fig_measured_vs_predicted(fit), fig_residuals(fit)]
    parts = [f"<h2>{html.escape(gpu)}</h2>",
             f"<p>Models: {', '.join(sorted(fit.table['model'].unique()))}. Rows: {len(fit.table)} (tensor-parallel "
             f"degrees {', '.join(str(x) for x in sorted(set(fit.table.get('tp', pd.Series([1])))))}: single-GPU "
             "timings of each model's sharded shapes, all fitted).</p>"]
    parts.append(_table_html([[k, _fmt(v), "fitted" if k in fit.fitted else "default (no data for it)"]
                              for k, v in asdict(fit.params).items()], ["parameter", "value", ""]))
    stats = fit.stats()
    parts.append("<h3>Fit residuals (all models, tp = 1 rows; linear_all_tp: every tp)</h3>" + _table_html(
        [[g, f"{s['median']:.1%}", f"{s['p90']:.1%}", f"{s['max']:.1%}", s["n"]] for g, s in stats.items()],
        ["op group", "median |err|", "p90 |err|", "max |err|", "rows"]))
    t = table[table["gpu"] == gpu]
    if t["model"].nunique() > 1:
        loo = leave_one_model_out(table, gpu)
        base = roofline_loo(table, gpu)
        s, sb = loo_summary(loo), loo_summary(base) if len(base) else {}
        rows = [[k, f"{v['median']:.1%}", f"{v['p90']:.1%}",
                 f"{sb[k]['median']:.1%}" if k in sb else "", f"{sb[k]['p90']:.1%}" if k in sb else ""]
                for k, v in s.items()]
        parts.append("<h3>Leave-one-model-out (layer non-attention time of the held-out model, tp = 1, token "
                     "counts 1..4096; fit on every tp of the training model)</h3>" +
                     _table_html(rows, ["fit → predict", "median |err|", "p90 |err|", "roofline median",
                                        "roofline p90"]))
        figs.append(fig_loo(loo, base, gpu))
    return "\n".join(parts), figs


CSS = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;"
       "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}")


def build_report(paths: Sequence[str | Path], out: str | Path, gpus: Sequence[str] | None = None,
                 command: str = "") -> Path:
    table, _, used = load_measurements(paths)
    gpus = list(gpus) if gpus else sorted(table["gpu"].unique())
    body = [f"<h1>memslo calibration report</h1><p>Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
            f"UTC by <code>{html.escape(command)}</code>.</p>",
            "<p>Data: " + ", ".join(f"{html.escape(p.name)} (sha256 {sha256(p)[:12]}…)" for p in used) + "</p>",
            "<p>Physics: <code>sim/cost/physics.py</code>; parameters: <code>sim/cost/params.py</code>; fitting: "
            "<code>calibration/fit.py</code>.</p>"]
    first = True
    for gpu in gpus:
        text, figs = gpu_section(table, gpu)
        body.append(text)
        for f in figs:
            body.append(f.to_html(full_html=False, include_plotlyjs="inline" if first else False))
            first = False
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>memslo calibration</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m calibration.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", help="measurement files or folders")
    ap.add_argument("--out", type=Path, default=Path("calibration/report.html"))
    ap.add_argument("--gpu", action="append", help="only these GPUs (repeatable); default: all in the data")
    a = ap.parse_args(argv)
    cmd = "python -m calibration.report " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    out = build_report(a.data, a.out, a.gpu, cmd)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
