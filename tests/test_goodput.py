"""memslo's goodput controller: offloads only for memory the queue or growth needs, weighs queued deadlines,
rejects what it cannot serve in time (at arrival when its forecast is sure), and beats the baselines where
memory is the bottleneck."""

from __future__ import annotations

import pytest
import yaml

from sim.api import SLO, PolicySpec, simulate
from sim.config.scenario import LoadedScenario, Scenario
from sim.core.workload import LogNormal, Poisson, SyntheticWorkload
from sim.policies.goodput.forecast import release_schedule, start_times

from .helpers import REPO


def test_release_schedule_and_start_times_by_hand():
    """Two running requests: A frees 10 blocks after 3 steps, B 6 blocks after 1 step (0.1 s a step, now 5 s).
    Queue: 4 blocks (holds 1 s), 8 (2 s), 20 blocks (never fits a 15-block pool). Free now: 2.
    - first needs 4 > 2: waits for B at 5.1 s (free 8), starts, holds until 6.1 s; free 4;
    - second needs 8 > 4: A frees 10 at 5.3 s -> 14, starts at 5.3 s; free 6;
    - third needs 20: everything frees (first at 6.1, second at 7.3) -> 6 + 4 + 8 = 18 < 20: never."""
    times, cum = release_schedule([3, 1], [10, 6], 0.1, 5.0)
    assert times == pytest.approx([5.1, 5.3]) and cum == [6, 16]
    starts = start_times([4, 8, 20], [1.0, 2.0, 1.0], 2, times, cum, 5.0)
    assert starts[:2] == pytest.approx([5.1, 5.3]) and starts[2] == float("inf")
    assert start_times([2], [1.0], 2, times, cum, 5.0) == [5.0]  # fits now


def _burst(tmp_path, rate=2.0, duration=200, policies=None, extra=None):
    d = yaml.safe_load((REPO / "scenarios" / "burst.yaml").read_text())
    d["workload"]["duration_s"] = duration
    d["workload"]["bursts"] = [b for b in d["workload"]["bursts"] if b["start_s"] < duration]
    for b in d["workload"]["bursts"]:
        b["rate_per_s"] = rate
    d["compare"] = policies or d["compare"]
    d.update(extra or {})
    return LoadedScenario(tmp_path / "burst.yaml", Scenario.model_validate(d))


def test_light_load_offloads_nothing_where_select_n_does():
    """Nothing queues at 0.3 requests/s on an A10: goodput keeps every layer on the GPU (Select-N spends the
    latency slack on offloading anyway)."""
    rs = SyntheticWorkload(Poisson(0.3), LogNormal(500, 0.5, 16, 2000), LogNormal(100, 0.5, 1, 400),
                           duration_s=60).generate(seed=1)
    runs = simulate("llama-2-7b", "a10", rs, [PolicySpec("goodput"), PolicySpec("selectn")],
                    slo=SLO(ttft_s=10.0, tpot_s=0.1), detail_iterations=0)
    g, s = runs["goodput"].result.instances[0].policy, runs["selectn"].result.instances[0].policy
    assert g.mean_host_bytes() == 0 and g.offloaded_for_queue == 0
    assert set(i for _, i in g.iterations) == {g.L + 1}
    assert s.mean_host_bytes() > 0
    assert runs["goodput"].summary["slo_attainment"] == 1.0


def test_burst_beats_the_baselines_and_serves_nobody_late(tmp_path):
    """Two of burst.yaml's bursts: memory blocks admission; goodput offloads a few layers only while queued
    deadlines are at stake, rejects what cannot make its TTFT, serves none late, and meets the SLO for more
    requests than none, swap, static and online Select-N."""
    sc = _burst(tmp_path, policies=[{"name": "none", "policy": "none"},
                                    {"name": "swap", "policy": "none", "handler": "swap"},
                                    {"name": "selectn", "policy": "selectn"},
                                    {"name": "selectn-i16", "policy": "selectn-static", "params": {"interval": 16}},
                                    {"name": "goodput", "policy": "goodput"}])
    runs = sc.simulate(detail_iterations=0)
    att = {k: v.summary["slo_attainment"] for k, v in runs.items()}
    g = runs["goodput"]
    assert att["goodput"] > max(v for k, v in att.items() if k != "goodput") + 0.05
    df = g.requests
    assert int(((df.state == "finished") & ~df.slo_met.astype(bool)).sum()) == 0
    rej = df[df.state == "rejected"]
    assert len(rej) > 0 and rej.reject_reason.str.startswith("TTFT SLO").all()
    pol = g.result.instances[0].policy
    assert pol.offloaded_for_queue > 0 and 0 < pol.mean_host_bytes() < 0.5 * pol.host[0]


def test_rejects_at_arrival_once_its_forecast_has_proven_optimistic(tmp_path):
    """Bursts of 8 requests/s: the forecast (the most favourable case) has been checked on served requests;
    then requests whose first token it cannot place within 10 s are rejected as they arrive."""
    sc = _burst(tmp_path, rate=8.0, duration=150, policies=[{"name": "goodput", "policy": "goodput"}])
    run = sc.simulate(detail_iterations=0)["goodput"]
    pol = run.result.instances[0].policy
    df = run.requests
    at_arrival = df[df.reject_reason.str.contains("rejected at arrival")]
    assert pol.rejected_at_arrival == len(at_arrival) >= 10
    # rejected when they arrive, not after waiting
    assert (at_arrival.finish_s == at_arrival.arrival_s).all()
    assert len(pol._errors) >= pol.min_evidence
