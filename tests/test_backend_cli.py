"""`python -m backend.profile --quick` and `python -m backend.run` on the smoke scenario, on the CPU."""

from __future__ import annotations

import json
from collections import defaultdict

from backend import profile, run
from backend.timing import read_csv
from sim.config.fixed_batch import read_rows
from sim.config.scenario import load_experiment_file
from sim.core.timeline import Timeline

from .backend_cases import ROOT, SMOKE

PROVENANCE = {"device", "gpu", "driver", "torch", "cuda", "date", "command", "dtype"}


def test_profile_quick_writes_three_csvs_with_provenance(tmp_path):
    profile.main(["--model", str(ROOT / "scenarios" / "backend_smoke_model.json"), "--out", str(tmp_path),
                  "--quick", "--device", "cpu"])
    timing_columns = {"layer_times.csv": ["layer_s", "layer_p10_s", "layer_p90_s", "attn_s", "linear_s"],
                      "copy_bandwidth.csv": ["seconds", "gb_per_s"], "microbatch.csv": ["layer_s", "overhead_ratio"]}
    for name, cols in timing_columns.items():
        prov, rows = read_csv(tmp_path / name)
        assert PROVENANCE <= prov.keys(), name
        assert prov["device"] == "cpu" and prov["command"].startswith("python -m backend.profile")
        assert rows, name
        for r in rows:
            for c in cols:
                assert float(r[c]) > 0, f"{name}: {c} = {r[c]}"
    _, layers = read_csv(tmp_path / "layer_times.csv")
    assert {r["phase"] for r in layers} == {"prefill", "decode"}
    _, copies = read_csv(tmp_path / "copy_bandwidth.csv")
    assert {(r["direction"], r["concurrent_compute"]) for r in copies} == {("h2d", "0"), ("h2d", "1"),
                                                                          ("d2h", "0"), ("d2h", "1")}
    _, micro = read_csv(tmp_path / "microbatch.csv")
    assert {r["num_microbatches"] for r in micro} == {"1", "2"}


def test_run_smoke_scenario_writes_the_simulators_outputs(tmp_path):
    out = run.main([str(SMOKE), "--out", str(tmp_path), "--device", "cpu", "--repeats", "3", "--warmup", "1"])
    model, exps = load_experiment_file(SMOKE)
    rows = read_rows(out / "iterations.csv")
    expected = [(e.name, p.name) for e in exps for p in e.expand(model)]
    assert [(r.experiment, r.plan) for r in rows] == expected
    for r in rows:
        assert r.source == "backend" and r.repeats == 3
        assert 0 < r.iteration_p10_s <= r.iteration_s <= r.iteration_p90_s
        assert 0 < r.compute_s and 0 < r.layers_s <= r.iteration_p90_s
        assert (r.copy_bytes > 0) == (r.offloaded_layers > 0) == (r.copy_s > 0)
    tl = Timeline.from_chrome_trace(out / "timeline.json")
    by_label = defaultdict(list)
    for s in tl:
        by_label[s.label].append(s)
    assert sorted(by_label) == sorted(f"{e}|{p}" for e, p in expected)
    last_end = 0.0
    for label in (f"{e}|{p}" for e, p in expected):  # laid out one after another, in order
        spans = by_label[label]
        assert min(s.start_s for s in spans) >= last_end
        last_end = max(s.end_s for s in spans)
        layers = {s.layer: s for s in spans if s.kind == "layer"}
        assert sorted(layers) == list(range(model.num_layers))
        for c in (s for s in spans if s.kind == "copy"):  # no layer starts before its copy ends
            assert layers[c.layer].start_s >= c.end_s - 1e-9
    prov = json.loads((out / "provenance.json").read_text())
    assert PROVENANCE <= prov.keys() and prov["device"] == "cpu" and prov["skipped"] == []


def test_backend_run_exit_codes(tmp_path):
    """cli(): bad scenario exit 2 (one line), a non-empty --out exit 2, an --out under a file exit 1."""
    import contextlib
    import io

    def cli(*args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = run.cli([str(a) for a in args])
        return code, err.getvalue()

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: llama-2-7b\nhardware: {gpu: a10}\n")
    code, err = cli(bad, "--device", "cpu")
    assert code == 2 and err.strip() == "bad.yaml: (top level): needs a workload (with compare) or experiments"
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    code, err = cli(SMOKE, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 2 and "output folder is not empty (x); use --force" in err
    (tmp_path / "f").write_text("x")
    code, err = cli(SMOKE, "--out", tmp_path / "f" / "o", "--device", "cpu")
    assert code == 1 and "cannot write the output folder: Not a directory" in err
