"""Select-N's online stage: the per-bus coordinator by hand, hysteresis, SLO admission; the baselines."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.api import SLO, PolicySpec, simulate
from sim.core.batch import BatchShape
from sim.core.hardware import get_hardware
from sim.core.model import get_model
from sim.core.offload_plan import OffloadPlan
from sim.core.request import Request, State
from sim.core.workload import Batch, Fixed, SyntheticWorkload
from sim.cost.roofline import RooflineCostModel
from sim.engine.cluster import Cluster
from sim.engine.memory import EngineConfig
from sim.engine.policy import InstanceContext
from sim.policies import make_policy
from sim.policies.selectn.coordinator import BusCoordinator, IntervalCandidate, bus_others, choose, idle_candidate

from .helpers import ConstCost, lone_bus, tiny_hw, tiny_model

GB = 1e9


def cand(i, host, demand, ok=(True, True)):
    return IntervalCandidate(i, host * GB, demand > 0, ok, (demand * GB,) * 2)


def test_coordinator_by_hand():
    """Bus 20 GB/s. GPU A: i=2 keeps 20 GB in host memory and asks 10 GB/s, i=4 10 GB at 6 GB/s, or nothing.
    GPU B: i=2 20 GB at 14 GB/s, i=5 8 GB at 5 GB/s, or nothing. (2,2) needs 24 GB/s: too much. The feasible
    combination with the most host memory is A i=4 + B i=2: 30 GB at exactly 20 GB/s (A i=2 + B i=5: 28 GB)."""
    A = [cand(2, 20, 10), cand(4, 10, 6), cand(41, 0, 0)]
    B = [cand(2, 20, 14), cand(5, 8, 5), cand(41, 0, 0)]
    assert choose([A, B], 20 * GB) == (1, 0)
    # if B's i=2 meets its SLO only with the bus to itself, sharing rules out (4, 2): next best is (2, 5)
    B2 = [cand(2, 20, 14, ok=(True, False)), B[1], B[2]]
    assert choose([A, B2], 20 * GB) == (0, 1)
    # and if A is copying right now, B's i=2 is shared even when A picks nothing
    A2 = [cand(41, 0, 0)]
    assert choose([A2, B2], 20 * GB, busy=[True, False]) == (0, 1)
    assert choose([A2, B2], 20 * GB, busy=[False, False]) == (0, 0)
    # nothing feasible: every candidate needs more than the bus
    assert choose([[cand(1, 40, 30)], [cand(1, 40, 30)]], 20 * GB) is None


def test_bus_coordinator_uses_an_idle_peer_bandwidth():
    bc = BusCoordinator(20 * GB, 2)
    bc.join(0)
    bc.join(1)
    mine = [cand(2, 20, 15, ok=(True, False)), cand(4, 10, 8)]
    # the peer posted a heavy candidate set, but it is idle now: GPU 0 gets the bus to itself
    bc.posted[1] = [cand(2, 20, 15)]
    assert bc.decide(0, mine, {1: idle_candidate(0, 0.0, 2)}, {1: False}).interval == 2
    # busy peer: GPU 0's i=2 is only feasible alone, and i=4 fits the bus only with the peer's lighter i=8
    bc.posted[1] = [cand(2, 20, 15), cand(8, 5, 4)]
    assert bc.decide(0, mine, {}, {1: True}).interval == 4
    assert bc.last_choice == {0: 4, 1: 8}


def selectn_on_tiny(hysteresis=3):
    cfg = EngineConfig(max_num_batched_tokens=64, max_num_seqs=4)
    ctx = InstanceContext(tiny_model(), tiny_hw(1e7), ConstCost(), cfg, 0, lone_bus())
    pol = make_policy("selectn", hysteresis=hysteresis)
    pol.setup(ctx)
    return pol


def test_hysteresis_waits_to_offload_more_and_promotes_at_once():
    pol = selectn_on_tiny(3)
    assert pol.cands == (1, 2, 4, 5)
    ok = np.array([True] * 4)
    v = np.full(4, -1.0)
    assert pol._hysteresis("decode", 2, v, ok) == 2  # first decision: at once
    pol.state["decode"] = 2
    assert [pol._hysteresis("decode", 1, v, ok) for _ in range(3)] == [2, 2, 1]  # more offload: 3rd time
    pol.state["decode"] = 1
    assert pol._hysteresis("decode", 4, v, ok) == 4  # less offload needed for the SLO: at once
    pol.state["decode"] = 4
    late = np.array([-1.0, -1.0, 0.5, 0.5])  # staying at 4 would be late, 2 is not
    assert pol._hysteresis("decode", 2, late, ok) == 2
    pol.state["decode"] = 4
    assert pol._hysteresis("decode", 2, v, np.array([True, True, False, True])) == 2  # 4 no longer fits


A10 = get_hardware("a10")
OPT = get_model("opt-6.7b")


def ref_latency(batch, prompt, ctx):
    c = RooflineCostModel(OPT, A10)
    p, d = BatchShape.prefill_batch(batch, prompt), BatchShape.decode_batch(batch, ctx)
    return 32 * c.layer_time(p) + c.fixed_time(p), 32 * c.layer_time(d) + c.fixed_time(d)


def test_infeasible_requests_are_rejected_with_the_slo_and_the_prediction():
    rs = SyntheticWorkload(Batch(2), Fixed(64), Fixed(8), 1.0).generate(0)
    out = simulate(OPT, A10, rs, [PolicySpec("selectn")], slo=SLO(ttft_s=0.01, tpot_s=1.0))["selectn"]
    assert out.summary["rejected"] == 2 and out.summary["finished"] == 0
    reason = out.requests.reject_reason[0]
    assert reason.startswith("TTFT SLO 0.01 s: first token predicted") and "nothing offloaded" in reason
    out = simulate(OPT, A10, rs, [PolicySpec("selectn")], slo=SLO(ttft_s=10, tpot_s=0.005))["selectn"]
    assert out.requests.reject_reason[0].startswith("TPOT SLO 5.0 ms: predicted")


def test_tight_but_feasible_slos_are_served_not_rejected():
    """SLO 1.05x the no-offload latency: almost nothing may be offloaded, but every request is served
    within its SLO (the controller stays at or near the resident plan)."""
    ttft, tpot = ref_latency(8, 64, 72)
    rs = SyntheticWorkload(Batch(8), Fixed(64), Fixed(16), 1.0).generate(0)
    out = simulate(OPT, A10, rs, [PolicySpec("selectn")], slo=SLO(1.05 * ttft, 1.05 * tpot))["selectn"]
    assert out.summary["rejected"] == 0 and out.summary["slo_attainment"] == 1.0
    pol = out.result.instances[0].policy
    assert pol.chosen("decode") >= 16  # at most two layers in host memory


def test_requests_that_fit_later_wait_instead_of_being_rejected():
    """More requests than the SLO-feasible plan can hold: the rest wait (DEFER) for the next wave."""
    rs = SyntheticWorkload(Batch(48), Fixed(64), Fixed(8), 1.0).generate(0)
    out = simulate("opt-13b", A10, rs, [PolicySpec("selectn")], slo=SLO(600, 0.4),
                   engine=EngineConfig(max_num_seqs=48))["selectn"]
    s = out.summary
    assert s["rejected"] == 0 and s["slo_attainment"] == 1.0 and s["preemptions"] == 0
    assert out.requests.queue_s.max() > 1.0  # a second wave


def test_flexgen_chooses_once_with_peak_compute_and_worst_case_bandwidth():
    rs = SyntheticWorkload(Batch(16), Fixed(64), Fixed(4), 1.0).generate(0)
    ttft, _ = ref_latency(16, 64, 64)
    run = simulate(OPT, A10, rs, [PolicySpec("flexgen", {"batch_size": 16})], slo=SLO(1.5 * ttft, 10.0))["flexgen"]
    pol = run.result.instances[0].policy
    assert pol.worst_bw == pytest.approx(12e9)  # 24 GB/s bus shared by 2 GPUs, though this GPU is alone
    assert pol.peak.compute_efficiency == 1 and pol.peak.iteration_overhead_s == 0
    f = pol.fraction
    pre = BatchShape.prefill_batch(16, 64)
    assert pol.predict(f, pre) <= 1.5 * ttft < pol.predict(f + pol.step, pre)
    assert run.result.instances[0].plan == OffloadPlan.layerwise(32, f)
    assert run.summary["slo_attainment"] == 1.0


def test_flexgen_alone_plans_with_the_whole_link():
    """link_bandwidth="alone": the link as measured by one GPU (24 GB/s on the A10 preset), not bus / 2; with
    more bandwidth in its model it offloads at least as much for the same SLO."""
    rs = SyntheticWorkload(Batch(16), Fixed(64), Fixed(4), 1.0).generate(0)
    ttft, _ = ref_latency(16, 64, 64)
    specs = [PolicySpec("flexgen", {"batch_size": 16}, name="worst"),
             PolicySpec("flexgen", {"batch_size": 16, "link_bandwidth": "alone"}, name="alone")]
    runs = simulate(OPT, A10, rs, specs, slo=SLO(1.5 * ttft, 10.0))
    worst, alone = (runs[n].result.instances[0].policy for n in ("worst", "alone"))
    assert alone.worst_bw == pytest.approx(24e9) and worst.worst_bw == pytest.approx(12e9)
    assert alone.fraction >= worst.fraction
    with pytest.raises(ValueError, match="link_bandwidth must be"):
        make_policy("flexgen", link_bandwidth="best")


def test_prefetch_policy_is_the_static_group_plan():
    rs = SyntheticWorkload(Batch(4), Fixed(64), Fixed(4), 1.0).generate(0)
    run = simulate(OPT, A10, rs, [PolicySpec("prefetch", {"group_size": 8, "offload_per_group": 2,
                                                          "prefetch_step": 3})])["prefetch"]
    assert run.result.instances[0].plan == OffloadPlan.prefetch_groups(32, 8, 2, 3)
    assert run.summary["finished"] == 4


arrivals = st.lists(st.tuples(st.floats(0, 0.05), st.integers(1, 100), st.integers(1, 40)), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=arrivals, gpu_kb=st.floats(560, 900), preemption=st.sampled_from(["recompute", "swap"]),
       ttft=st.floats(0.002, 0.2), tpot=st.floats(0.004, 0.05), gpus=st.sampled_from([1, 2]),
       pieces=st.sampled_from([1, 4]))
def test_selectn_engine_invariants(reqs, gpu_kb, preemption, ttft, tpot, gpus, pieces):
    """Whatever the load and SLOs: memory within capacity every iteration, every request ends finished or
    rejected (never lost, never stuck behind a deferral), time moves forward -- on one GPU or two sharing a
    bus (coordinator on), layers staged whole or in pieces."""
    cfg = EngineConfig(max_num_batched_tokens=128, max_num_seqs=8, preemption=preemption, swap_space_gib=1e-4)
    hw = tiny_hw(gpu_kb * 1e3, h2d_bytes_per_s=82_176 / 2e-3, bus_bytes_per_s=82_176 / 2e-3, gpus_per_bus=2)
    dep = Cluster(tiny_model(), hw, ConstCost(), lambda: make_policy("selectn", hysteresis=2, staging_chunks=pieces),
                     cfg, num_gpus=gpus)
    for inst in dep.instances:
        inst.debug_checks = True
    rs = [Request(i, t, p, o, ttft, tpot) for i, (t, p, o) in enumerate(sorted(reqs))]
    res = dep.run(rs)
    assert sorted(r.id for i in res.instances for r in i.done) == list(range(len(rs)))
    for r in rs:
        assert r.state in (State.FINISHED, State.REJECTED)
    for inst in res.instances:
        assert all(a <= b for a, b in zip(inst.sched.iter_end, inst.sched.iter_end[1:]))
        assert inst.bm.used == 0


# --- a bus shared by two GPUs: who may copy while an iteration planned alone is in flight ---------------
# Tiny model (4 layers of 82,176 B), 1 ms per layer + 0.5 ms fixed, one layer's copy 2 ms alone on the bus
# and 4 ms shared. Interval 2 (layers 1 and 3 in host memory): alone 6.5 ms (copy 1 at 0-2, layers 0 0-1,
# 1 2-3, 2 3-4, copy 3 at 3-5, layer 3 5-6, fixed), shared 10.5 ms; interval 4 (layer 3): 4.5 / 5.5 ms.
def two_gpus_on_a_bus():
    cfg = EngineConfig(max_num_batched_tokens=64, max_num_seqs=4)
    hw = tiny_hw(1e7, h2d_bytes_per_s=82_176 / 2e-3, bus_bytes_per_s=82_176 / 2e-3, gpus_per_bus=2)
    return Cluster(tiny_model(), hw, ConstCost(), lambda: make_policy("selectn", hysteresis=1), cfg, num_gpus=2)


def test_a_peer_with_nothing_to_run_does_not_share_the_bus():
    """A peer whose work has ended holds an offloaded plan (and its last iteration copied), but runs nothing:
    it is idle. A peer with requests queued for admission, or running, may copy."""
    dep = two_gpus_on_a_bus()
    a, b = dep.instances
    b.plan = a.policy.rec.plans[1]  # interval 2: two layers in host memory
    b.bus_member.link.uses_link_now = True  # what its last iteration did
    idle, busy, queued = bus_others(a.policy.ctx, a.policy.shares)
    assert set(idle) == {1} and not idle[1].uses_link and busy == {} and queued == {}
    b.sched.add(Request(0, 0.0, 8, 4, 1.0, 1.0))
    idle, busy, queued = bus_others(a.policy.ctx, a.policy.shares)
    assert idle == {} and busy == {} and queued == {1: True}


def test_an_iteration_planned_alone_on_the_bus_is_not_slowed_by_a_peer():
    """GPU 0 starts alone at TPOT SLO 7 ms and so runs interval 2 (6.5 ms alone). GPU 1 gets a request at
    20 ms: it starts with nothing offloaded (4.5 ms, no copies) and would then offload to interval 2 too,
    which only fits 7 ms per token if shared with nobody -- while GPU 0's iteration is in flight, planned
    with the bus to itself, GPU 1 stays off the link; GPU 0 then plans with the peer (interval 4, 5.5 ms
    shared). No iteration takes longer than the time it was planned with, and every request meets its SLO."""
    dep = two_gpus_on_a_bus()
    rs = [Request(0, 0.0, 8, 20, 1.0, 7e-3), Request(1, 0.02, 8, 20, 1.0, 7e-3)]
    res = dep.run(rs)
    for inst in res.instances:
        log = inst.policy.log
        assert len(log) == len(inst.sched.iter_end)
        for (t, _, _, _, pred), end in zip(log, inst.sched.iter_end):
            assert end - t <= pred + 1e-12
    a = res.instances[0].policy
    assert a.log[0][2] == 2 and a.log[0][4] == pytest.approx(6.5e-3)
    assert all(r.state == State.FINISHED and r.meets_slo() for r in rs)


def test_a_long_ttft_budget_does_not_buy_a_prefill_plan_the_decode_plan_would_copy_back():
    """One GPU, TPOT SLO 7 ms, TTFT SLO an hour. The decode plan is interval 2 (6.5 ms; interval 1, every
    layer in host memory, takes 12.5 ms). The prefill must not run at interval 1 just because the hour of
    TTFT budget hides the copies back in (layers 0 and 2, 2 ms each): it runs at interval 2, 6.5 ms."""
    cfg = EngineConfig(max_num_batched_tokens=64, max_num_seqs=4)
    hw = tiny_hw(1e7, h2d_bytes_per_s=82_176 / 2e-3, bus_bytes_per_s=82_176 / 2e-3)
    dep = Cluster(tiny_model(), hw, ConstCost(), lambda: make_policy("selectn", hysteresis=1), cfg)
    rs = [Request(0, 0.0, 8, 30, 3600.0, 7e-3), Request(1, 0.03, 8, 30, 3600.0, 7e-3)]
    res = dep.run(rs)
    log = res.instances[0].policy.log
    assert [(k, i) for _, k, i, _, _ in log[:2]] == [("prefill", 2), ("decode", 2)]
    assert log[0][4] == pytest.approx(6.5e-3) and log[1][4] == pytest.approx(6.5e-3)
    assert all(i == 2 for _, k, i, _, _ in log if k == "prefill")
    assert all(r.meets_slo() for r in rs)


def test_staging_in_pieces_is_checked_against_the_record(tmp_path):
    """A saved record stages layers one way; a policy asking for another is refused, naming both."""
    from sim.policies.selectn.performance_record import PerformanceRecord

    cfg = EngineConfig(max_num_batched_tokens=64, max_num_seqs=4)
    rec = PerformanceRecord.build(tiny_model(), tiny_hw(1e7), ConstCost(), cfg, batch_sizes=(1, 4), seq_lens=(16, 32))
    path = rec.save(tmp_path / "whole.json")
    ctx = InstanceContext(tiny_model(), tiny_hw(1e7), ConstCost(), cfg, 0, lone_bus())
    make_policy("selectn", record=str(path)).setup(ctx)  # the same staging: fine
    with pytest.raises(ValueError, match="stages layers in 1 piece.*staging_chunks=4"):
        make_policy("selectn", record=str(path), staging_chunks=4).setup(ctx)
    with pytest.raises(ValueError, match=r"staging_slots in \[1, staging_chunks\]"):
        make_policy("selectn", staging_chunks=2, staging_slots=3)


def test_the_ttft_budget_is_the_tightest_deadline_over_the_chunks_left():
    """By hand: a 1000-token prompt with 256 computed, chunks of 256, arrived at 0 with a 2 s TTFT SLO,
    needs ceil(744/256) = 3 more iterations; at t = 0.5 that leaves 1.5 s / 3 = 0.5 s per iteration. A
    600-token prompt arrived at 0.2 (SLO 1 s) ends with this 600-token chunk: 0.7 s. A request without a
    TTFT SLO, or whose first token is out, sets no budget."""
    from types import SimpleNamespace

    from sim.policies.selectn.state import ttft_budget_s

    a = Request(0, 0.0, 1000, 10, ttft_slo_s=2.0)
    a.computed = 256
    b = Request(1, 0.2, 600, 10, ttft_slo_s=1.0)
    free = Request(2, 0.0, 50, 10)
    assert ttft_budget_s(SimpleNamespace(prefill=[(a, 256)]), 0.5) == pytest.approx(0.5)
    assert ttft_budget_s(SimpleNamespace(prefill=[(a, 256), (b, 600), (free, 50)]), 0.5) == pytest.approx(0.5)
    assert ttft_budget_s(SimpleNamespace(prefill=[(b, 600)]), 0.5) == pytest.approx(0.7)
    assert ttft_budget_s(SimpleNamespace(prefill=[(free, 50)]), 0.5) == float("inf")
    assert ttft_budget_s(None, 0.5) == float("inf")
    a.first_token_s = 0.4
    assert ttft_budget_s(SimpleNamespace(prefill=[(a, 256)]), 0.5) == float("inf")
    shape = BatchShape.build(prefill=[(300, 0)], decode=[40, 60])
    assert shape.decode_part() == BatchShape.decode_batch(2, 50)
