"""``python -m sim.run`` end to end: the run folder, the summary contract, determinism, a policy that cannot
run, Ctrl-C, and the shipped scenarios' headline relations."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from sim.config.scenario import load_scenario

from .helpers import REPO, run_cli, shared_dir

DESIGN_KEYS = {"requests", "finished", "rejected", "throughput_tokens_per_s", "throughput_requests_per_s",
               "slo_attainment", "ttft_s", "tpot_s", "e2e_s", "gpu_memory_peak_bytes", "host_memory_peak_bytes",
               "pcie_h2d_utilization", "preemptions"}
FILES = ("scenario.yaml", "summary.json", "requests.csv", "timeline.json", "report.html")


@pytest.fixture(scope="module")
def short_burst(tmp_path_factory):
    """scenarios/burst.yaml cut to 40 s, three of its policies, plus one that cannot run."""
    d = yaml.safe_load((REPO / "scenarios" / "burst.yaml").read_text())
    d["name"] = "short"
    d["workload"]["duration_s"] = 40
    d["workload"]["bursts"] = [{"start_s": 10, "duration_s": 10, "rate_per_s": 2.0}]
    d["compare"] = [c for c in d["compare"] if c["name"] in ("none", "selectn-i8", "deepspeed")]
    d["compare"].append({"name": "i64", "policy": "selectn-static", "params": {"interval": 64}})
    path = tmp_path_factory.mktemp("scen") / "short.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_runs(short_burst, tmp_path_factory):
    """The same scenario twice: once quiet into --out, once with progress lines into the default folder."""
    base = tmp_path_factory.mktemp("runs")
    a = run_cli(short_burst, "--out", base / "a", "--quiet", cwd=base)
    b = run_cli(short_burst, cwd=base)
    return base, a, b


def test_run_folder_and_summary_contract(two_runs):
    base, a, _ = two_runs
    assert a.returncode == 0, a.stderr
    out = base / "a"
    for f in FILES:
        assert (out / f).stat().st_size > 0, f
    s = json.loads((out / "summary.json").read_text())
    assert {"scenario", "seed", "wall_s", "simulated_s", "policies"} <= set(s)
    assert s["scenario"] == "short" and s["seed"] == 7 and s["simulated_s"] > 40
    assert s["compare"] == ["none", "selectn-i8", "deepspeed", "i64"]
    assert s["wall_s"] is None and json.loads((out / "run_info.json").read_text())["wall_s"] > 0
    for name, m in s["policies"].items():
        assert DESIGN_KEYS <= set(m), name
        assert m["finished"] + m["rejected"] == m["requests"] == s["requests"], name
    # the policy that cannot run is reported; the others ran
    assert "interval must be in [1, 32]" in s["policies"]["i64"]["error"]
    assert "warning: short.yaml: compare.3 (i64): could not run" in a.stderr
    assert s["policies"]["none"]["finished"] > 0 and s["policies"]["deepspeed"]["finished"] > 0
    assert s["verdict"][0].startswith("none meets the SLO for") or "meets the SLO" in s["verdict"][0]
    req = pd.read_csv(out / "requests.csv")
    assert list(req.columns[:4]) == ["policy", "id", "instance", "arrival_s"] and "ttft_s" in req.columns
    assert (req.groupby("policy").size() == s["requests"]).all()
    assert (req[req.policy == "i64"].state == "rejected").all()
    # the table on stdout
    assert "SLO attain." in a.stdout and "could not run" in a.stdout and "wrote" in a.stdout


def test_same_seed_same_bytes(two_runs):
    base, a, b = two_runs
    assert b.returncode == 0, b.stderr
    [default] = list((base / "reports").glob("short-*"))  # default folder: reports/<scenario>-<time>/
    assert "[1/4] none: simulating" in b.stderr  # progress lines when stderr is not a terminal
    for f in ("summary.json", "requests.csv"):
        assert (base / "a" / f).read_bytes() == (default / f).read_bytes(), f
    # the run folder's scenario.yaml runs again, from anywhere, to the same bytes
    again = run_cli(base / "a" / "scenario.yaml", "--out", base / "again", "--quiet", cwd=REPO)
    assert again.returncode == 0, again.stderr
    for f in ("summary.json", "requests.csv"):
        assert (base / "a" / f).read_bytes() == (base / "again" / f).read_bytes(), f


def test_another_seed_differs(short_burst, tmp_path):
    p = run_cli(short_burst, "--out", tmp_path / "c", "--quiet", "--seed", "8")
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert s["seed"] == 8


def test_timeline_has_a_track_per_stream_engine_and_bus(two_runs):
    base, _, _ = two_runs
    trace = json.loads((base / "a" / "timeline.json").read_text())
    ev = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in ev if e.get("name") == "process_name"}
    assert sorted(procs.values()) == ["deepspeed", "i64", "none", "selectn-i8"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    for p in ("none", "selectn-i8", "deepspeed"):
        for t in ("gpu0/compute", "gpu0/h2d", "gpu0/d2h", "bus0/h2d", "bus0/d2h"):
            assert f"{p} {t}" in threads.values()
    count = {}
    for e in ev:
        if e["ph"] == "X":
            name = threads[(e["pid"], e["tid"])]
            count[name] = count.get(name, 0) + 1
    assert count["selectn-i8 gpu0/compute"] > 0 and count["selectn-i8 gpu0/h2d"] > 0
    assert count["selectn-i8 bus0/h2d"] > 0 and count["deepspeed bus0/h2d"] > 0  # closed-form copies reach the bus
    assert "none bus0/h2d" not in count  # no traffic, no spans
    assert trace["otherData"]["policies"]["none"]["dropped_spans"] == 0


def test_ctrl_c_writes_partial_results(tmp_path):
    """SIGINT while the first policy simulates: its partial results and the rest are written, exit 130."""
    (tmp_path / "long.yaml").write_text(
        "model: llama-2-7b\nhardware: {gpu: h100-sxm}\nslo: {ttft_s: 2, tpot_s: 0.1}\n"
        "workload: {duration_s: 1500, arrivals: {kind: poisson, rate_per_s: 40}, prompt: {kind: fixed, value: 500},"
        " output: {kind: fixed, value: 100}}\n"
        "compare: [{name: none}, {name: i8, policy: selectn-static, params: {interval: 8}}]\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "sim.run", "long.yaml", "--out", "out"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert re.match(r"\[1/2] none: simulating \d{5} requests", line), line  # ~60,000 requests: many seconds of work
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: partial results written to out" in stderr and "Traceback" not in stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["interrupted"] is True and s["not_run"] == ["i8"] and s["verdict"][0].startswith("Interrupted")
    m = s["policies"]["none"]
    assert m["interrupted"] is True and 0 < m["finished"] < m["requests"]
    assert m["finished"] + m["rejected"] == m["requests"] and m["reject_reasons"]["interrupted"] > 0
    for f in FILES:
        assert (tmp_path / "out" / f).exists(), f
    assert "not run" in stdout


def test_shipped_scenarios_headlines():
    """Each shipped scenario loads, and the relations its comment promises hold."""
    burst = load_scenario(REPO / "scenarios" / "burst.yaml").simulate()
    att = {n: r.summary["slo_attainment"] for n, r in burst.items()}
    tpot = {n: r.summary["tpot_s"]["p50"] for n, r in burst.items()}
    assert att["selectn-i16"] >= att["none"] - 0.02 > att["selectn-i8"] > att["deepspeed"] == 0
    assert tpot["none"] < tpot["selectn-i8"] < tpot["uva-2g"] < tpot["deepspeed"]
    assert burst["none"].summary["preemptions"] > 0  # the burst overloads the KV cache
    steady = load_scenario(REPO / "scenarios" / "steady.yaml").simulate()
    att = {n: r.summary["slo_attainment"] for n, r in steady.items()}
    assert att["none"] > 0.95 and att["none"] > att["selectn-i20"] > att["selectn-i10"]
    trace = shared_dir() / "data" / "traces" / "azure_conv_2023.csv"
    az = load_scenario(REPO / "scenarios" / "azure_conv.yaml", trace=trace)
    assert 1000 < len(az.requests) < 2500 and az.requests.arrival_s.max() < 181
    att = {n: r.summary["slo_attainment"] for n, r in az.simulate().items()}
    assert att["none"] > 0.95 and att["selectn-i16"] > 0.95 > att["selectn-i8"] > att["uva-4g"]
