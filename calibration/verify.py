"""Verify the simulator against a backend run: same plans, same batch shapes, compare the times.

``python -m calibration.verify BACKEND_RUN_DIR SCENARIO.yaml [--profile P] [--gpu G] [--out DIR]``

BACKEND_RUN_DIR is what ``python -m backend.run`` writes: ``iterations.csv`` (`FixedBatchRow` rows),
``timeline.json`` (per-layer spans on ``gpu0/compute`` labelled ``experiment|plan``) and
``provenance.json``. The scenario gives the model, the experiments and ``hardware: {gpu, profile}``
(``--gpu``/``--profile`` override it). Every (experiment, plan) is simulated with `simulate_fixed_batch`
and compared: error = simulated / measured - 1 for the iteration time, the layer phase (first layer start
to last layer end), the summed compute, and each layer's compute span (the backend's median over repeats).
Writes ``verify.csv`` and ``verify.html`` into ``--out`` (default ``BACKEND_RUN_DIR/verify/``) and prints
median and p90 of the absolute errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sim.config.fixed_batch import FixedBatchRow, read_rows, simulate_fixed_batch
from sim.config.scenario import load_experiment_file
from sim.core.hardware import HardwareSpec, get_hardware
from sim.core.timeline import Timeline
from sim.cost.calibrated import apply_profile_link, load_profile, make_cost_model

from .measurements import gpu_from_name


class VerifyError(ValueError):
    pass


def scenario_hardware(scenario: str | Path, gpu: str | None = None, profile: str | None = None,
                      run_dir: Path | None = None) -> tuple[HardwareSpec, str | None]:
    """(HardwareSpec, profile path) from the scenario's ``hardware:`` block, CLI overrides, or the backend's
    provenance (GPU name) as a last resort."""
    import yaml

    data = yaml.safe_load(Path(scenario).read_text()) or {}
    hwd = data.get("hardware") or {}
    if isinstance(hwd, str):
        hwd = {"gpu": hwd}
    gpu = gpu or hwd.get("gpu")
    if gpu is None and run_dir is not None and (run_dir / "provenance.json").exists():
        gpu = gpu_from_name(str(json.loads((run_dir / "provenance.json").read_text()).get("gpu", "")))
    if gpu is None:
        raise VerifyError(f"{Path(scenario).name}: no hardware.gpu, and none given with --gpu")
    allowed = {f.name for f in fields(HardwareSpec)} - {"name"}
    over = {k: v for k, v in hwd.items() if k in allowed}
    hw = get_hardware(str(gpu), **over)
    return hw, profile or hwd.get("profile")


def layer_durations(tl: Timeline, resource: str = "gpu0/compute") -> dict[str, dict[int, float]]:
    """Median compute-span duration per (label, layer)."""
    acc: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in tl.spans:
        if s.resource == resource and s.kind == "layer" and s.layer >= 0:
            acc[s.label][s.layer].append(s.end_s - s.start_s)
    return {lab: {l: float(np.median(v)) for l, v in d.items()} for lab, d in acc.items()}


def _err(sim: float, meas: float) -> float:
    return sim / meas - 1.0 if meas > 0 else float("nan")


def compare(backend: list[FixedBatchRow], sim: list[FixedBatchRow], backend_tl: Timeline | None,
            sim_tl: Timeline) -> pd.DataFrame:
    """One row per (experiment, plan) found in both runs."""
    simd = {(r.experiment, r.plan): r for r in sim}
    b_layers = layer_durations(backend_tl) if backend_tl is not None else {}
    s_layers = layer_durations(sim_tl)
    rows = []
    for b in backend:
        s = simd.get((b.experiment, b.plan))
        if s is None:
            continue
        label = f"{b.experiment}|{b.plan}"
        bl, sl = b_layers.get(label, {}), s_layers.get(label, {})
        common = sorted(set(bl) & set(sl))
        le = np.array([_err(sl[l], bl[l]) for l in common]) if common else np.array([])
        rows.append({
            "experiment": b.experiment, "plan": b.plan, "interval": b.interval, "phase": b.phase,
            "batch_size": b.batch_size, "seq_len": b.seq_len, "offloaded_layers": b.offloaded_layers,
            "backend_iteration_s": b.iteration_s, "sim_iteration_s": s.iteration_s,
            "iteration_err": _err(s.iteration_s, b.iteration_s),
            "backend_layers_s": b.layers_s, "sim_layers_s": s.layers_s, "layers_err": _err(s.layers_s, b.layers_s),
            "backend_compute_s": b.compute_s, "sim_compute_s": s.compute_s,
            "compute_err": _err(s.compute_s, b.compute_s),
            "layer_span_err_mean": float(le.mean()) if le.size else float("nan"),
            "layer_span_abs_err_median": float(np.median(np.abs(le))) if le.size else float("nan"),
            "layer_span_abs_err_p90": float(np.percentile(np.abs(le), 90)) if le.size else float("nan"),
            "layers_compared": int(le.size),
            "backend_repeats": b.repeats,
        })
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    out = {}
    for col in ("iteration_err", "layers_err", "compute_err", "layer_span_err_mean"):
        a = np.abs(df[col].dropna().to_numpy()) if col in df else np.array([])
        if a.size:
            out[col] = {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "n": int(a.size)}
    return out


def write_html(df: pd.DataFrame, summary: dict, path: Path, title: str) -> Path:
    import plotly.graph_objects as go

    names = df["experiment"] + " | " + df["plan"]
    f1 = go.Figure()
    for col, lab in (("iteration_err", "iteration"), ("layers_err", "layer phase"),
                     ("layer_span_err_mean", "per-layer span (mean)")):
        f1.add_trace(go.Bar(x=names, y=df[col] * 100, name=lab))
    f1.update_layout(title="simulated / measured − 1 (%) per experiment and plan", barmode="group",
                     yaxis_title="%", height=460)
    f2 = go.Figure(go.Scatter(x=df["backend_iteration_s"] * 1e3, y=df["sim_iteration_s"] * 1e3,
                              mode="markers", text=names, marker=dict(size=7)))
    hi = float(max(df["backend_iteration_s"].max(), df["sim_iteration_s"].max()) * 1e3) if len(df) else 1.0
    f2.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", line=dict(dash="dot"), showlegend=False))
    f2.update_layout(title="iteration time, ms: backend (x) vs simulator (y)", xaxis_title="backend ms",
                     yaxis_title="simulated ms", height=460, showlegend=False)
    stab = "".join(f"<tr><td>{k}</td><td>{v['median']:.1%}</td><td>{v['p90']:.1%}</td><td>{v['n']}</td></tr>"
                   for k, v in summary.items())
    cols = ["experiment", "plan", "phase", "batch_size", "seq_len", "offloaded_layers", "backend_iteration_s",
            "sim_iteration_s", "iteration_err", "layers_err", "layer_span_abs_err_median", "layer_span_abs_err_p90"]
    table = df[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(df) else "<p>(no rows)</p>"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:"
            "sans-serif;max-width:1300px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            f"padding:2px 6px;text-align:right}}</style></head><body><h1>{title}</h1>"
            f"<table><tr><th>error (|sim/backend − 1|)</th><th>median</th><th>p90</th><th>n</th></tr>{stab}"
            "</table>" + f1.to_html(full_html=False, include_plotlyjs="inline") +
            f2.to_html(full_html=False, include_plotlyjs=False) + table + "</body></html>")
    path.write_text(page)
    return path


def verify(run_dir: str | Path, scenario: str | Path, out: str | Path | None = None, gpu: str | None = None,
           profile: str | None = None) -> tuple[pd.DataFrame, dict]:
    run_dir = Path(run_dir)
    if not (run_dir / "iterations.csv").exists():
        raise VerifyError(f"{run_dir}: no iterations.csv (is this a `python -m backend.run` output folder?)")
    model, exps = load_experiment_file(scenario)
    hw, prof_path = scenario_hardware(scenario, gpu, profile, run_dir)
    if prof_path:
        hw = apply_profile_link(hw, load_profile(prof_path))
    cost = make_cost_model(model, hw, prof_path)
    backend = [r for r in read_rows(run_dir / "iterations.csv") if r.source != "sim"]
    tl_path = run_dir / "timeline.json"
    backend_tl = Timeline.from_chrome_trace(tl_path) if tl_path.exists() else None
    sim_tl = Timeline()
    sim = simulate_fixed_batch(model, hw, cost, exps, sim_tl)
    df = compare(backend, sim, backend_tl, sim_tl)
    if df.empty:
        raise VerifyError(f"{run_dir}: no (experiment, plan) pair of the backend run is in {Path(scenario).name}")
    missing = sorted({(r.experiment, r.plan) for r in backend} - set(zip(df["experiment"], df["plan"])))
    summary = summarize(df)
    out = Path(out) if out else run_dir / "verify"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "verify.csv", index=False)
    title = (f"memslo verify: {model.name} on {hw.name}, cost model "
             f"{type(cost).__name__}{' (' + str(prof_path) + ')' if prof_path else ''}")
    write_html(df, summary, out / "verify.html", title)
    (out / "verify_summary.json").write_text(json.dumps({"summary": summary, "missing_in_scenario": missing,
                                                          "profile": str(prof_path or "")}, indent=2))
    return df, summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibration.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="backend run folder (iterations.csv, timeline.json)")
    ap.add_argument("scenario", type=Path, help="the scenario YAML the backend ran")
    ap.add_argument("--profile", help="calibration profile (overrides the scenario's hardware.profile)")
    ap.add_argument("--gpu", help="GPU preset (overrides the scenario's hardware.gpu)")
    ap.add_argument("--out", type=Path, help="output folder (default RUN_DIR/verify)")
    a = ap.parse_args(argv)
    try:
        df, summary = verify(a.run_dir, a.scenario, a.out, a.gpu, a.profile)
    except (VerifyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df[["experiment", "plan", "backend_iteration_s", "sim_iteration_s", "iteration_err",
                  "layer_span_abs_err_median", "layer_span_abs_err_p90"]].to_string(index=False))
    for k, v in summary.items():
        print(f"{k}: median {v['median']:.1%}, p90 {v['p90']:.1%} (n={v['n']})")
    print(f"wrote {(a.out or a.run_dir / 'verify')}/verify.csv and verify.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
