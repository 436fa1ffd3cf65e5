"""calibration.verify on a synthetic backend run: the simulator's own output with every (experiment, plan)
slowed by a known factor; verify must report exactly those errors."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from calibration.verify import main as verify_main
from calibration.verify import scenario_hardware, verify
from sim.config.fixed_batch import simulate_fixed_batch, write_rows
from sim.config.scenario import load_experiment_file
from sim.core.hardware import get_hardware
from sim.core.timeline import Timeline
from sim.cost.calibrated import make_cost_model

PROFILE = "calibration/profiles/h100-sxm.yaml"
SCENARIO = {
    "model": "llama-2-7b",
    "hardware": {"gpu": "h100-sxm", "profile": PROFILE},
    "experiments": [
        {"name": "decode32", "phase": "decode", "batch_size": 32, "seq_len": 512,
         "plans": ["none", {"select_n": 4}], "repeats": 3},
        {"name": "prefill1k", "phase": "prefill", "batch_size": 1, "seq_len": 1024,
         "plans": ["none", "deepspeed"], "repeats": 3},
    ],
}


def make_backend_run(tmp_path: Path, factors: dict[str, float], repeats: int = 3) -> tuple[Path, Path]:
    """A run folder as `python -m backend.run` writes it, with times = simulated x factor[experiment|plan]."""
    scen = tmp_path / "scenario.yaml"
    scen.write_text(yaml.safe_dump(SCENARIO))
    model, exps = load_experiment_file(scen)
    hw = get_hardware("h100-sxm")
    tl = Timeline()
    rows = simulate_fixed_batch(model, hw, make_cost_model(model, hw, PROFILE), exps, tl)
    out_rows, spans = [], Timeline()
    for r in rows:
        f = factors[f"{r.experiment}|{r.plan}"]
        out_rows.append(replace(r, source="backend", iteration_s=r.iteration_s * f, layers_s=r.layers_s * f,
                                compute_s=r.compute_s * f, copy_s=r.copy_s * f, repeats=repeats,
                                iteration_p10_s=r.iteration_s * f * 0.98, iteration_p90_s=r.iteration_s * f * 1.02))
    for s in tl.spans:
        f = factors[s.label]
        for k in range(repeats):  # the backend records every timed repeat; verify takes the median per layer
            jitter = 1.0 + 0.01 * (k - 1)  # median over the repeats is exactly f
            spans.add(s.resource, s.kind, s.start_s * f + k, s.start_s * f + k + (s.end_s - s.start_s) * f * jitter,
                      s.layer, s.bytes, s.label)
    run = tmp_path / "run"
    run.mkdir()
    write_rows(run / "iterations.csv", out_rows)
    spans.write_chrome_trace(run / "timeline.json")
    (run / "provenance.json").write_text(json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "synthetic": True}))
    return run, scen


FACTORS = {"decode32|none": 1.10, "decode32|selectn-4": 0.80, "prefill1k|none": 1.25, "prefill1k|deepspeed": 1.0}


def _plan_names(tmp_path):
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(SCENARIO))
    model, exps = load_experiment_file(scen)
    return {f"{e.name}|{p.name}" for e in exps for p in e.expand(model)}


def test_verify_reports_the_known_factors(tmp_path):
    names = _plan_names(tmp_path)
    factors = {n: FACTORS.get(n, 1.0 + 0.05 * i) for i, n in enumerate(sorted(names))}
    run, scen = make_backend_run(tmp_path, factors)
    df, summary = verify(run, scen)
    assert len(df) == len(factors)
    for r in df.itertuples():
        f = factors[f"{r.experiment}|{r.plan}"]
        assert r.iteration_err == pytest.approx(1 / f - 1, abs=1e-9)
        assert r.layers_err == pytest.approx(1 / f - 1, abs=1e-9)
        assert r.layer_span_err_mean == pytest.approx(1 / f - 1, abs=1e-9)
        assert r.layer_span_abs_err_p90 == pytest.approx(abs(1 / f - 1), abs=1e-9)
        assert r.layers_compared == 32
    errs = np.abs([1 / f - 1 for f in factors.values()])
    assert summary["iteration_err"]["median"] == pytest.approx(np.median(errs))
    assert summary["iteration_err"]["p90"] == pytest.approx(np.percentile(errs, 90))
    out = run / "verify"
    assert (out / "verify.csv").exists() and (out / "verify.html").read_text().startswith("<!DOCTYPE html>")


def test_verify_exact_match_and_cli(tmp_path, capsys):
    names = _plan_names(tmp_path)
    run, scen = make_backend_run(tmp_path, {n: 1.0 for n in names}, repeats=1)
    assert verify_main([str(run), str(scen), "--out", str(tmp_path / "v")]) == 0
    text = capsys.readouterr().out
    assert "iteration_err: median 0.0%, p90 0.0%" in text
    # the cost model matters: without the profile (roofline) the same run shows errors
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(dict(SCENARIO, hardware={"gpu": "h100-sxm"})))
    df, summary = verify(run, plain, out=tmp_path / "v2")
    assert summary["iteration_err"]["median"] > 1e-3


def test_scenario_hardware(tmp_path):
    s = tmp_path / "s.yaml"
    s.write_text(yaml.safe_dump({"model": "llama-2-7b", "experiments": [],
                                 "hardware": {"gpu": "a100-80g", "h2d_bytes_per_s": 2e10, "profile": "x.yaml"}}))
    hw, prof = scenario_hardware(s)
    assert hw.name == "a100-80g" and hw.h2d_bytes_per_s == 2e10 and prof == "x.yaml"
    hw, prof = scenario_hardware(s, gpu="h100-sxm", profile="y.yaml")
    assert hw.name == "h100-sxm" and prof == "y.yaml"


def test_verify_errors(tmp_path):
    names = _plan_names(tmp_path)
    run, scen = make_backend_run(tmp_path, {n: 1.0 for n in names})
    assert verify_main([str(tmp_path), str(scen)]) == 2  # no iterations.csv there
    other = tmp_path / "other.yaml"
    d = dict(SCENARIO, experiments=[{"name": "zzz", "phase": "decode", "batch_size": 1, "seq_len": 8}])
    other.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match="no .experiment, plan. pair"):
        verify(run, other)
