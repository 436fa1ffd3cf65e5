"""Capacity planner: bisection, pruning and dominance against hand-computed answers, resume, and the CLI.

Most tests drive the real search (`CapacitySearch`) with a toy evaluation whose answer is known: a
configuration sustains every rate up to ``THRESHOLD`` (by GPU, times the GPU count, x1.2 for strategy
``fast``), so the right table can be computed by hand and compared with what the search reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config.schema import ScenarioError
from sim.planner.capacity_search import CapacitySearch
from sim.planner.cli import write_outputs
from sim.planner.config import load_plan
from sim.planner.evaluate import EvalTask, evaluate
from sim.planner.rate_search import RateSearch, dominated_by, max_passing
from sim.planner.space import enumerate_space, hardware, rate_grid, roofline_rate, uses_host_memory
from sim.planner.tables import configs_frame, front_of, pareto, usd_per_million_tokens

REPO = Path(__file__).resolve().parents[1]

TOY = """
name: toy
seed: 3
models:
  - {name: m, model: llama-2-7b, rates_per_s: [1, 3, 6], ttft_s: 1.0, tpot_s: 0.1}
workload:
  prompt: {kind: fixed, value: 128}
  output: {kind: fixed, value: 16}
gpus:
  - {gpu: a10, usd_per_hour: 1.0}
  - {gpu: a100-80g, usd_per_hour: 2.0}
  - {gpu: h100-sxm, usd_per_hour: 3.0}
counts: [1, 2]
host_memory_gib_per_gpu: [16, 64]
host_memory_usd_per_gib_hour: 0.01
strategies:
  - {name: plain, policy: none}
  - {name: fast, policy: selectn-static, params: {interval: 8}}
  - {name: pair, policy: none, handler: kunserve, min_gpus: 2}
search: {rate_step: 0.1, min_rate_per_s: 0.25, max_rate_per_s: 16}
burst: {max_factor: 3, factor_step: 0.25}
"""

GPU_CAP = {"a10": 0.9, "a100-80g": 2.6, "h100-sxm": 3.3}


def threshold(config: str) -> float:
    """The toy's truth: the highest rate a configuration sustains."""
    _, shape, _, strategy = config.split("|")
    count, gpu = shape.split("x", 1)
    return GPU_CAP[gpu] * int(count) * (1.2 if strategy == "fast" else 1.0)


def toy_evaluate(t: EvalTask) -> dict:
    """Stands in for a simulation: passes at or below the threshold (bursts: up to 1.75x)."""
    ok = t.burst_factor <= 1.75 if t.burst_factor else t.rate_per_s <= threshold(t.config)
    return {"key": t.key, "config": t.config, "rate_per_s": t.rate_per_s, "burst_factor": t.burst_factor,
            "passed": ok, "error": "", "output_tokens_per_s": t.rate_per_s * 16, "wall_s": 0.0}


def no_probe(*args) -> None:
    return None


@pytest.fixture
def toy_plan(tmp_path: Path):
    p = tmp_path / "toy.yaml"
    p.write_text(TOY)
    return load_plan(p)


def run_toy(plan, out: Path, **kw):
    res = CapacitySearch(plan, out, evaluate_fn=toy_evaluate, probe_fn=no_probe, **kw).run()
    write_outputs(res, out)
    return res


# --- bisection ------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(thr=st.floats(0.0, 20.0), first=st.integers(0, 60))
def test_bisection_finds_the_largest_grid_rate_under_a_known_threshold(thr: float, first: int) -> None:
    grid = [0.25 * 1.1 ** k for k in range(45)]
    calls: list[float] = []

    def passes(r: float) -> bool:
        calls.append(r)
        return r <= thr

    best, n = max_passing(grid, passes, first)
    expect = max([g for g in grid if g <= thr], default=0.0)
    assert best == expect
    assert n == len(calls) <= 2 * 6 + 2  # galloping then bisection: O(log2 45) probes each way


def test_bisection_trusts_the_failure_when_outcomes_are_not_monotone() -> None:
    s = RateSearch([1.0, 2.0, 3.0, 4.0], first=2)
    s.record(2, False)
    s.record(3, True)  # noise: passes above a failure
    assert (s.lo, s.hi, s.max_rate, s.fail_rate) == (-1, 2, 0.0, 3.0)  # nothing below the failure was tried
    s = RateSearch([1.0, 2.0, 3.0, 4.0, 5.0], first=0)
    for i, ok in ((0, True), (3, False), (4, True)):
        s.record(i, ok)
    assert (s.max_rate, s.fail_rate) == (1.0, 4.0)  # only what was really seen to pass


def test_rate_grid_holds_the_planned_rates_and_steps_by_the_ratio(toy_plan) -> None:
    g = rate_grid(toy_plan, "m")
    assert {1.0, 3.0, 6.0} <= set(g) and g[0] == 0.25 and g[-1] >= 16 / 1.1
    ratios = [b / a for a, b in zip(g, g[1:])]
    assert max(ratios) <= 1.1 * 1.01  # three significant digits move a step by well under 1%


def test_prices_and_host_memory_by_hand(toy_plan) -> None:
    assert usd_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)  # $3.6/h over 3.6 M tokens an hour
    assert usd_per_million_tokens(3.6, 0.0) is None
    gib = 1024**3
    # a deployment gets the host memory it pays for: per GPU x its GPUs on the node (8 per h100 node)
    assert hardware("h100-sxm", 64, 1).host_memory_bytes == 64 * gib
    assert hardware("h100-sxm", 64, 16).host_memory_bytes == 8 * 64 * gib
    plain = next(s for s in toy_plan.cfg.strategies if s.name == "plain")
    assert not uses_host_memory(plain) and uses_host_memory(plain, "swap")  # swapped KV lives in host memory


def test_roofline_estimate_scales_with_replicas(toy_plan) -> None:
    from sim.engine.memory import EngineConfig
    m = toy_plan.models["m"]
    one = roofline_rate(m, hardware("a100-80g", 16, 1), EngineConfig(), 1, 500, 100)
    assert one > 0
    assert roofline_rate(m, hardware("a100-80g", 16, 4), EngineConfig(), 4, 500, 100) == pytest.approx(4 * one)
    # longer answers take longer: fewer requests per second
    assert roofline_rate(m, hardware("a100-80g", 16, 1), EngineConfig(), 1, 500, 400) < one


# --- pruning and dominance ------------------------------------------------------------------------------
def test_static_pruning(toy_plan) -> None:
    kept, pruned = enumerate_space(toy_plan)
    reasons = {p["config"]: p["reason"] for p in pruned}
    # 3 GPUs x 2 counts x 2 hosts x 3 strategies = 36
    assert len(kept) + len(pruned) == 36
    # 'pair' below 2 GPUs: 3 GPUs x 2 hosts
    assert sum("needs at least 2 instances" in r for r in reasons.values()) == 6
    # 'plain' keeps everything on the GPU: the 64 GiB variant duplicates the 16 GiB one (6 of them)
    assert "m|1xa10|64GiB|plain" in reasons and "same as m|1xa10|16GiB|plain" in reasons["m|1xa10|64GiB|plain"]
    assert "m|1xa10|16GiB|plain" not in reasons
    # KunServe keeps host copies of dropped layers and Select-N offloads: host memory size matters
    assert "m|2xa10|64GiB|pair" not in reasons and "m|1xa10|64GiB|fast" not in reasons
    # price = GPU price x count + host GiB x count x price per GiB-hour
    c = next(k for k in kept if k.id == "m|2xa100-80g|64GiB|fast")
    assert c.usd_per_hour == pytest.approx(2 * 2.0 + 64 * 2 * 0.01)
    assert [k.usd_per_hour for k in kept] == sorted(k.usd_per_hour for k in kept)


def test_dominance_rules_by_hand() -> None:
    others = [("a", 2.0, 5.0), ("b", 3.0, 9.0)]
    assert dominated_by(3.0, 4.0, others) == "a"  # a costs less and sustains 5 >= 4, where this one failed
    assert dominated_by(1.5, 4.0, others) is None  # nothing at or below its price
    assert dominated_by(3.0, 6.0, others) == "b"  # same price, b proven at 9 > 6
    assert dominated_by(3.0, None, others) is None  # never failed: may be the fastest
    # Pareto: cheapest first, each strictly faster than everything cheaper; zero-rate points never on it
    pts = [("x", 1.0, 0.0), ("y", 1.0, 2.0), ("z", 2.0, 2.0), ("w", 2.0, 3.0), ("v", 4.0, 2.5), ("u", 5.0, 7.0)]
    assert pareto(pts) == ["y", "w", "u"]


def test_search_matches_the_known_answer_and_prunes_only_dominated(toy_plan, tmp_path: Path) -> None:
    res = run_toy(toy_plan, tmp_path / "out")
    df = configs_frame(res)
    grid = rate_grid(toy_plan, "m")
    searched = df[df.status.isin(["done", "dominated"])]
    truth = {c: max(g for g in grid if g <= threshold(c)) for c in searched.config}
    price = dict(zip(df.config, df.usd_per_hour))
    for _, r in searched.iterrows():
        if r.status == "done":
            assert r.max_rate_per_s == truth[r.config], r.config
        else:  # dominated: some configuration at no higher price truly sustains more
            assert any(price[o] <= r.usd_per_hour and truth[o] > truth[r.config] for o in truth if o != r.config), \
                r.config
            assert r.max_rate_per_s <= truth[r.config] < r.fail_rate_per_s
    assert (df.status == "dominated").sum() > 0  # the rule did prune something here
    # cheapest per rate, by brute force over the truth
    cheap = pd.read_csv(tmp_path / "out" / "cheapest.csv")
    for _, r in cheap.iterrows():
        ok = [(price[c], c) for c in truth if truth[c] >= r.rate_per_s]
        assert r.usd_per_hour == pytest.approx(min(ok)[0])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    chosen = summary["models"]["m"]["chosen"]
    assert chosen["planned_peak_rate_per_s"] == 6.0 and chosen["burst_headroom_factor"] == 1.75
    assert "sustains" in summary["models"]["m"]["verdict"] and "1.75x" in summary["models"]["m"]["verdict"]


def test_a_failing_configuration_is_recorded_and_the_sweep_goes_on(toy_plan, tmp_path: Path) -> None:
    def flaky(t: EvalTask) -> dict:
        rec = toy_evaluate(t)
        if t.config == "m|1xh100-sxm|16GiB|plain":
            rec.update(passed=False, error="RuntimeError: boom")
        return rec

    res = CapacitySearch(toy_plan, tmp_path / "o", evaluate_fn=flaky, probe_fn=no_probe).run()
    df = configs_frame(res).set_index("config")
    assert df.loc["m|1xh100-sxm|16GiB|plain", "status"] == "error"
    assert "boom" in df.loc["m|1xh100-sxm|16GiB|plain", "reason"]
    assert (df.status == "done").sum() > 5


def test_an_error_keeps_its_proven_rate_on_the_front_and_in_the_cheapest_table(toy_plan, tmp_path: Path) -> None:
    victim = "m|2xa100-80g|16GiB|fast"  # the fastest configuration at its price (2 x 2.6 x 1.2 = 6.24 req/s)

    seen_pass: list[float] = []

    def late_error(t: EvalTask) -> dict:  # the victim's first probe above a proven rate raises
        rec = toy_evaluate(t)
        if t.config == victim and not t.burst_factor:
            if seen_pass and t.rate_per_s > seen_pass[0]:
                rec.update(passed=False, error="RuntimeError: late")
            elif rec["passed"]:
                seen_pass.append(t.rate_per_s)
        return rec

    res = CapacitySearch(toy_plan, tmp_path / "o", evaluate_fn=late_error, probe_fn=no_probe).run()
    job = next(j for j in res.jobs if j.cand.id == victim)
    assert job.status == "error" and job.search.max_rate > 0
    front = front_of(res, "m")
    from sim.planner.capacity_search import cheapest
    best = cheapest(res.jobs, "m", job.search.max_rate)
    assert best is not None and best.cand.id in front  # the table and the front agree


def test_evaluate_turns_an_exception_into_a_record(toy_plan) -> None:
    cs = CapacitySearch(toy_plan, Path("unused"))
    kept, _ = enumerate_space(toy_plan)
    t = cs.task(kept[0], 1.0)
    from sim.api import PolicySpec
    bad = EvalTask(**{**t.__dict__, "strategy": PolicySpec("no-such-policy")})
    rec = evaluate(bad)
    assert rec["passed"] is False and "no-such-policy" in rec["error"]


# --- resume ---------------------------------------------------------------------------------------------
def test_resume_after_an_interruption_gives_the_same_tables(toy_plan, tmp_path: Path) -> None:
    full = run_toy(toy_plan, tmp_path / "full")
    part = run_toy(toy_plan, tmp_path / "part", max_new=17)
    assert part.interrupted
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["complete"] is False
    with (tmp_path / "part" / "evaluations.jsonl").open("a") as f:
        f.write('{"key": "cut sho')  # a line cut short by the interruption
    calls = []

    def counting(t: EvalTask) -> dict:
        calls.append(t.key)
        return toy_evaluate(t)

    again = CapacitySearch(toy_plan, tmp_path / "part", evaluate_fn=counting, probe_fn=no_probe, resume=True,
                           max_new=5).run()  # interrupted a second time
    assert again.interrupted
    resumed = CapacitySearch(toy_plan, tmp_path / "part", evaluate_fn=counting, probe_fn=no_probe, resume=True).run()
    write_outputs(resumed, tmp_path / "part")
    assert len(calls) == len(full.evaluations) - 17  # nothing done twice
    lines = (tmp_path / "part" / "evaluations.jsonl").read_text().splitlines()
    good = []
    for line in lines:
        try:
            good.append(json.loads(line)["key"])
        except json.JSONDecodeError:
            pass
    assert len(lines) == len(good) + 1 and sorted(good) == sorted(e["key"] for e in full.evaluations)
    for name in ("configs.csv", "cheapest.csv", "summary.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_resume_refuses_results_of_a_different_plan(toy_plan, tmp_path: Path) -> None:
    run_toy(toy_plan, tmp_path / "o", max_new=3)
    changed = tmp_path / "changed.yaml"
    changed.write_text(TOY.replace("seed: 3", "seed: 4"))
    with pytest.raises(ScenarioError, match="different plan"):
        CapacitySearch(load_plan(changed), tmp_path / "o", evaluate_fn=toy_evaluate, probe_fn=no_probe,
                       resume=True).run()


# --- config errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (("usd_per_hour: 1.0", "usd_per_hour: -1"), "toy.yaml: gpus.0.usd_per_hour: must be > 0, got -1"),
    (("counts: [1, 2]", "counts: [1, 2]\nbogus: 1"), "toy.yaml: bogus: unknown key (allowed: name, description"),
    (("{name: plain, policy: none}", "{name: plain, policy: none, colour: red}"),
     "toy.yaml: strategies.0.colour: unknown key (allowed: name, policy"),
    (("gpu: a10,", "gpu: a11,"), "toy.yaml: gpus.0.gpu: unknown GPU 'a11'"),
    (("rates_per_s: [1, 3, 6]", "rates_per_s: [1, -3]"), "toy.yaml: models.0.rates_per_s.1: must be > 0, got -3"),
    (("counts: [1, 2]", "counts: [0, 2]"), "toy.yaml: counts.0: must be >= 1, got 0"),
    (("output: {kind: fixed, value: 16}", "output: {kind: fixed, value: 16}\n  duration_s: 5"),
     "toy.yaml: (top level): workload.duration_s (5 s) must be at least 10x the largest ttft_s"),
])
def test_bad_plans_name_the_file_and_field(tmp_path: Path, edit, message) -> None:
    p = tmp_path / "toy.yaml"
    p.write_text(TOY.replace(*edit))
    with pytest.raises(ScenarioError) as e:
        load_plan(p)
    assert str(e.value).startswith(message), str(e.value)


# --- the real simulator: pools agree bit for bit, and the command -------------------------------------------
TINY = """
name: tiny
seed: 5
models:
  - {name: l7, model: llama-2-7b, rates_per_s: [1, 4], ttft_s: 1.0, tpot_s: 0.05}
workload:
  prompt: {kind: uniform, low: 64, high: 256}
  output: {kind: fixed, value: 16}
  duration_s: 10
  min_requests: 20
gpus:
  - {gpu: a10, usd_per_hour: 0.75}
  - {gpu: h100-sxm, usd_per_hour: 2.99}
counts: [1, 2]
host_memory_gib_per_gpu: [32]
strategies:
  - {name: none, policy: none}
  - {name: kunserve, policy: none, handler: kunserve, min_gpus: 2}
search: {rate_step: 0.5, min_rate_per_s: 0.5, max_rate_per_s: 64}
burst: {start_s: 2, duration_s: 5, max_factor: 2, factor_step: 0.5}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny") / "tiny.yaml"
    p.write_text(TINY)
    return p


def _files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("configs.csv", "cheapest.csv", "summary.json")}


def _run(plan_path: Path, out: Path, ex) -> dict[str, bytes]:
    with ex:
        res = CapacitySearch(load_plan(plan_path), out, ex).run()
    write_outputs(res, out)
    return _files(out)


def test_serial_local_and_ray_pools_give_identical_results(tiny: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from sim.pools.local import LocalPool, SerialPool
    from sim.pools.ray_pool import RayPool

    serial = _run(tiny, tmp_path / "serial", SerialPool())
    local = _run(tiny, tmp_path / "local", LocalPool(2))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = _run(tiny, tmp_path / "ray", RayPool("auto"))
    finally:
        ray.shutdown()
    assert serial == local == on_ray
    s = json.loads(serial["summary.json"])
    assert s["complete"] and s["evaluations"] > 5 and s["failed_evaluations"] == 0
    # a higher planned rate never has a cheaper answer, and each answer sustains its rate
    cheap = pd.read_csv(tmp_path / "serial" / "cheapest.csv").sort_values("rate_per_s")
    assert cheap.usd_per_hour.is_monotonic_increasing and (cheap.max_rate_per_s >= cheap.rate_per_s).all()


def test_the_early_stop_never_changes_a_verdict(tiny: Path) -> None:
    """A run stopped once the target is out of reach fails exactly when the whole run would have failed."""
    from sim.api import SLO, simulate
    from sim.planner.evaluate import _workload

    plan = load_plan(tiny)
    cs = CapacitySearch(plan, Path("unused"))
    kept, _ = enumerate_space(plan)
    cand = next(k for k in kept if k.id == "l7|1xa10|32GiB|none")
    stopped = 0
    for rate in (1.0, 4.0, 16.0, 48.0):
        t = cs.task(cand, rate)
        rec = evaluate(t)
        rs = _workload(t).generate(t.seed)
        full = simulate(t.model, hardware(t.gpu, t.host_gib_per_gpu, t.count), rs, [t.strategy],
                        slo=SLO(t.ttft_slo_s, t.tpot_slo_s), engine=t.engine, timeline_max_spans=0)["none"]
        assert rec["passed"] == (full.summary["slo_attainment"] >= t.target), rate
        stopped += rec["stopped_early"]
    assert stopped >= 1  # the overloaded rates did stop early


def test_plan_command_writes_the_answer_and_rejects_bad_input(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "sim.plan", str(tiny), "--out", str(out), "--workers", "1"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "sustains" in r.stdout and "RuntimeWarning" not in r.stderr
    page = (out / "plan.html").read_text()
    verdict = json.loads((out / "summary.json").read_text())["models"]["l7"]["verdict"]
    assert verdict.split(":")[0] in page and "Pareto" in page and "per million output tokens" in page
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("min_requests: 20", "min_requests: 0"))
    r = subprocess.run([sys.executable, "-m", "sim.plan", str(bad), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "bad.yaml: workload.min_requests: must be >= 1, got 0"  # one line, no prefix



def test_tensor_parallel_degrees_are_searched_and_impossible_layouts_pruned(tmp_path) -> None:
    """With tensor_parallel [1, 2, 4] on counts [1, 2, 4]: TP 2 on 2 and 4 GPUs, TP 4 on 4; a degree larger
    than the count is no layout at all; KunServe needs two instances (4 GPUs at TP 2); an A10 box (two GPUs
    per switch, four per node) takes TP 4 but a model whose heads TP cannot split is pruned with the field."""
    plan_text = TOY.replace("counts: [1, 2]", "counts: [1, 2, 4]\ntensor_parallel: [1, 2, 4]")
    path = tmp_path / "tp.yaml"
    path.write_text(plan_text)
    kept, pruned = enumerate_space(load_plan(path))
    ids = {k.id for k in kept}
    assert "m|2xh100-sxm|tp2|16GiB|plain" in ids and "m|4xh100-sxm|tp4|16GiB|plain" in ids
    assert not any("tp4" in k.id and k.count < 4 for k in kept)
    reasons = {p["config"]: p["reason"] for p in pruned}
    assert reasons["m|2xh100-sxm|tp2|16GiB|pair"] == "pair needs at least 2 instances"
    assert "m|4xh100-sxm|tp2|16GiB|pair" in ids
    k = next(k for k in kept if k.id == "m|4xa100-80g|tp2|16GiB|fast")
    assert (k.tp, k.instances) == (2, 2) and k.usd_per_hour == pytest.approx(4 * 2.0 + 16 * 4 * 0.01)
    odd = TOY.replace("model: llama-2-7b", "model: opt-6.7b").replace(
        "counts: [1, 2]", "counts: [4]\ntensor_parallel: [4]").replace("{name: m,", "{name: m, dtype_bytes: 2,")
    path.write_text(odd.replace("model: opt-6.7b", "model: tiny3.json"))
    (tmp_path / "tiny3.json").write_text(
        '{"model_type": "llama", "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 6, '
        '"intermediate_size": 192, "num_hidden_layers": 4, "vocab_size": 100}')
    _, pruned = enumerate_space(load_plan(path))
    assert all("tp=4 must divide num_heads (6)" in p["reason"] for p in pruned if "tp4" in p["config"])
