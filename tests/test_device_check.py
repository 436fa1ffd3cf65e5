"""scripts/device_check.sh, the prepared GPU-machine command, as a CPU dry run on the smoke model: every step's
command line is valid, the results travel in one archive, a failed step does not lose the others' results, and
--finish turns the archive into committed data, a fitted profile and a verification."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd

from sim.config.scenario import load_experiment_file
from sim.cost.calibrated import load_profile

from .backend_cases import ROOT, SMOKE

SCRIPT = ROOT / "scripts" / "device_check.sh"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable, DEVICE="cpu", GPU="h200", QUICK="1", SKIP_TESTS="1",
               MODEL=str(ROOT / "scenarios" / "backend_smoke_model.json"), SCENARIO=str(SMOKE),
               OUT=str(tmp_path / "out"), DATA_ROOT=str(tmp_path / "data"), PROFILE_DIR=str(tmp_path / "profiles"))
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_then_finish(tmp_path):
    env = _env(tmp_path)
    r = _run([], env)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "out" / "device_check.log").read_text()
    for step in ("ceilings", "profile", "backend-run"):
        assert f"== {step}: rc=0" in log, log
    with tarfile.open(tmp_path / "out" / "results.tgz") as tar:
        names = {n.lstrip("./") for n in tar.getnames()}
    model_dir = "data/backend_smoke_model"
    assert {f"{model_dir}/{f}" for f in ("layer_times.csv", "copy_bandwidth.csv", "microbatch.csv", "config.json")} \
        <= names
    assert {f"run/backend_smoke/{f}" for f in ("iterations.csv", "timeline.json", "provenance.json")} <= names
    assert {"ceilings.json", "gpu"} <= names

    r = _run(["--finish", str(tmp_path / "out")], env)
    assert r.returncode == 0, r.stdout + r.stderr
    data = tmp_path / "data" / "h200"
    assert (data / "backend_smoke_model" / "layer_times.csv").exists() and (data / "ceilings.json").exists()
    prof = load_profile(tmp_path / "profiles" / "h200.yaml")
    assert prof.gpu == "h200"
    verify = pd.read_csv(data / "runs" / "backend_smoke" / "verify" / "verify.csv")
    model, exps = load_experiment_file(SMOKE)
    assert len(verify) == sum(len(e.expand(model)) for e in exps)


def test_a_failed_step_keeps_the_others_results(tmp_path):
    env = _env(tmp_path, MODEL="no-such-model", SCENARIO=str(tmp_path / "missing.yaml"))
    r = _run([], env)
    log = (tmp_path / "out" / "device_check.log").read_text()
    assert "== ceilings: rc=0" in log
    assert "unknown model 'no-such-model'" in log and "missing.yaml" in log  # both later steps were tried
    summary = r.stdout[r.stdout.index("== summary"):]
    assert "profile rc=1" in summary and "backend-run rc=" in summary and "backend-run rc=0" not in summary
    with tarfile.open(tmp_path / "out" / "results.tgz") as tar:
        assert any(n.endswith("ceilings.json") for n in tar.getnames())


def test_finish_without_results_is_an_error(tmp_path):
    r = _run(["--finish", str(tmp_path)], _env(tmp_path))
    assert r.returncode == 2 and "results.tgz" in r.stderr
