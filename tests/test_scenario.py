"""Scenario files: bad input through the command line (one line, the file and the field, no traceback, exit
2), relative SLOs computed by hand from the cost model, trace paths relative to the scenario file."""

import json
import shutil

import pytest

from sim.config.scenario import ScenarioError, load_scenario
from sim.core.batch import BatchShape
from sim.core.hardware import get_hardware
from sim.core.model import get_model
from sim.cost.roofline import RooflineCostModel

from .helpers import FIXTURES, GOOD, run_cli

TRACE = """\
model: llama-2-7b
hardware: {gpu: h100-sxm}
workload:
  trace: {path: data/trace.csv}
compare: [{name: none}]
"""

# (case, scenario text (None: no file), extra CLI arguments, what the one line must contain)
BAD = [
    ("unknown key", GOOD.replace("{gpu: a10}", "{gpu: a10, colour: red}"), [],
     ["bad.yaml: hardware.colour: unknown key", "allowed: gpu, num_gpus"]),
    ("wrong type", GOOD.replace("{gpu: a10}", "{gpu: a10, num_gpus: two}"), [],
     ["bad.yaml: hardware.num_gpus: must be an integer, got 'two'"]),
    ("negative rate", GOOD.replace("rate_per_s: 1}", "rate_per_s: -2}"), [],
     ["bad.yaml: workload.arrivals.rate_per_s: must be > 0, got -2"]),
    ("unknown model", GOOD.replace("llama-2-7b", "gpt-9"), [], ["bad.yaml: model: unknown model 'gpt-9'", "llama-2-7b"]),
    ("unknown gpu", GOOD.replace("{gpu: a10}", "{gpu: tpu-v9}"), [], ["bad.yaml: hardware.gpu: unknown GPU 'tpu-v9'", "a10"]),
    ("model does not fit", GOOD.replace("llama-2-7b", "llama-2-70b").replace(
        "  - {name: none, policy: none}", "  - {name: none, policy: none}\n  - {name: i8, policy: selectn-static, params: {interval: 8}}"),
     [], ["bad.yaml: model: llama-2-70b cannot run under any compared policy", "does not fit on a10"]),
    ("bad policy parameter", GOOD.replace("policy: none}", "policy: selectn-static, params: {interval: 99}}"), [],
     ["bad.yaml: compare.0 (none): could not run", "interval must be in [1, 32]"]),
    ("unknown policy", GOOD.replace("policy: none}", "policy: teleport}"), [],
     ["bad.yaml: compare.0: policy must be one of", "'teleport'"]),
    ("missing trace file", TRACE, [], ["bad.yaml: workload.trace.path:", "trace.csv: trace file not found"]),
    ("trace given, no trace", GOOD, ["--trace", "x.csv"], ["bad.yaml: workload.trace: a trace path was given"]),
    ("broken yaml", "model: [llama-2-7b\nhardware: {gpu: a10}\n", [], ["bad.yaml: not valid YAML at line"]),
    ("not a mapping", "- just\n- a list\n", [], ["bad.yaml: (top level): must be a mapping"]),
    ("missing scenario file", None, [], ["bad.yaml: scenario file not found"]),
]


@pytest.mark.parametrize("case,text,extra,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_file_and_field(tmp_path, case, text, extra, expect):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    p = run_cli(path, "--out", tmp_path / "out", "--quiet", *extra, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    for s in expect:
        assert s in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_relative_slo_from_the_cost_model(tmp_path):
    """ttft_x / tpot_x multiply the no-offload latency of the reference shape: L layers of the cost model's
    layer time plus its fixed time, for prefill of the reference prompt and decode at the reference context."""
    text = GOOD.replace("slo: {ttft_s: 5, tpot_s: 0.2}",
                        "slo: {ttft_x: 2.0, tpot_x: 3.0, reference: {batch_size: 4, prompt_tokens: 512, "
                        "context_tokens: 640}}")
    (tmp_path / "rel.yaml").write_text(text)
    sc = load_scenario(tmp_path / "rel.yaml")
    model, hw = get_model("llama-2-7b"), get_hardware("a10")
    cm = RooflineCostModel(model, hw)
    pre, dec = BatchShape.prefill_batch(4, 512), BatchShape.decode_batch(4, 640)
    ttft = 2.0 * (32 * cm.layer_time(pre) + cm.fixed_time(pre))
    tpot = 3.0 * (32 * cm.layer_time(dec) + cm.fixed_time(dec))
    assert sc.slo.ttft_s == pytest.approx(ttft, rel=1e-12) and sc.slo.tpot_s == pytest.approx(tpot, rel=1e-12)
    assert 0.05 < sc.slo.ttft_s < 5 and 0.01 < sc.slo.tpot_s < 1  # sane magnitudes on an A10
    # default reference: one request, the workload's median prompt (100), decode context 100 + 10 // 2
    (tmp_path / "rel1.yaml").write_text(GOOD.replace("slo: {ttft_s: 5, tpot_s: 0.2}", "slo: {tpot_x: 1.5}"))
    sc1 = load_scenario(tmp_path / "rel1.yaml")
    d1 = BatchShape.decode_batch(1, 105)
    assert sc1.slo.tpot_s == pytest.approx(1.5 * (32 * cm.layer_time(d1) + cm.fixed_time(d1)), rel=1e-12)
    assert sc1.slo.ttft_s == float("inf")
    with pytest.raises(ScenarioError, match=r"rel2.yaml: slo: give ttft_s or ttft_x, not both"):
        (tmp_path / "rel2.yaml").write_text(text.replace("ttft_x: 2.0", "ttft_x: 2.0, ttft_s: 1"))
        load_scenario(tmp_path / "rel2.yaml")


def test_trace_path_relative_to_the_scenario_and_overridden(tmp_path):
    scen_dir, elsewhere = tmp_path / "scen", tmp_path / "elsewhere"
    (scen_dir / "data").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(FIXTURES / "azure_original.csv", scen_dir / "data" / "trace.csv")
    (scen_dir / "replay.yaml").write_text(TRACE)
    p = run_cli(scen_dir / "replay.yaml", "--out", "out", "--quiet", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    s = json.loads((elsewhere / "out" / "summary.json").read_text())
    assert s["requests"] == 4 and s["policies"]["none"]["finished"] == 4
    # --trace is relative to the working directory, and replaces the scenario's path
    shutil.copy(FIXTURES / "azure_original.csv", elsewhere / "mine.csv")
    (scen_dir / "data" / "trace.csv").unlink()
    p = run_cli(scen_dir / "replay.yaml", "--out", "out2", "--quiet", "--trace", "mine.csv", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    resolved = (elsewhere / "out2" / "scenario.yaml").read_text()
    assert str(elsewhere / "mine.csv") in resolved


def test_shipped_trace_scenario_points_beside_the_checkout():
    """azure_conv.yaml names the trace relative to itself: ../../shared/... from scenarios/ (CI layout)."""
    from .helpers import REPO

    text = (REPO / "scenarios" / "azure_conv.yaml").read_text()
    assert "path: ../../shared/data/traces/azure_conv_2023.csv" in text


def test_readme_scenario_tour_is_a_valid_scenario(tmp_path):
    import re

    import yaml

    from .helpers import REPO

    block = re.search(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    d = yaml.safe_load(block)
    assert d["hardware"].pop("profile")  # a calibration profile the tour only names
    (tmp_path / "tour.yaml").write_text(yaml.safe_dump(d))
    sc = load_scenario(tmp_path / "tour.yaml")
    assert [c.name for c in sc.sc.compare] == ["none", "swap", "selectn-i16", "uva-2g", "deepspeed", "kunserve-pairs"]
    assert sc.sc.compare[-1].handler_params == {"grow": False}
    assert sc.hardware.host_memory_bytes == 256 * 2**30 and sc.slo.tpot_s == 0.1
