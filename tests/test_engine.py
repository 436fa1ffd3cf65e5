"""The serving engine: KV blocks, continuous batching, preemption, every request accounted for."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.core.offload_plan import OffloadPlan
from sim.core.request import Request, State
from sim.engine.cluster import Cluster
from sim.engine.kv import BlockManager, KVCacheError
from sim.engine.memory import EngineConfig, MemoryLayout, ModelDoesNotFit
from sim.policies import make_policy

from .helpers import ConstCost, tiny_hw, tiny_model

T = 4 * 1e-3 + 0.5e-3  # one iteration of the 4-layer tiny model under ConstCost()


def gpu_bytes_for_blocks(blocks: float, cfg: EngineConfig, model=None) -> float:
    """GPU size whose KV pool holds ``blocks`` blocks with everything resident."""
    model = model or tiny_model()
    probe = MemoryLayout.build(model, tiny_hw(1e12), cfg, OffloadPlan.resident(model.num_layers), check=False)
    fixed = probe.weights_bytes + probe.staging_bytes + probe.workspace_bytes
    return (fixed + blocks * probe.block_bytes) / cfg.gpu_memory_utilization


def deploy(blocks: float, cfg: EngineConfig | None = None, policy: str = "none", debug: bool = True, **params):
    cfg = cfg or EngineConfig()
    model = tiny_model()
    dep = Cluster(model, tiny_hw(gpu_bytes_for_blocks(blocks, cfg)), ConstCost(),
                     lambda: make_policy(policy, **params), cfg)
    for inst in dep.instances:
        inst.debug_checks = debug
    return dep


def test_block_manager_cycle():
    bm = BlockManager(num_blocks=4, block_size=16)
    assert bm.blocks_for(16) == 1 and bm.blocks_for(17) == 2
    assert bm.can_allocate(3) and not bm.can_allocate(4, watermark=1)
    bm.allocate(3)
    with pytest.raises(KVCacheError):
        bm.allocate(2)
    assert not bm.can_resize(2)
    bm.release(2)  # a preempted request gives its blocks back
    bm.resize(2)
    assert (bm.free, bm.used, bm.peak_used) == (1, 1, 3)
    with pytest.raises(KVCacheError):
        bm.release(2)


def test_single_request_by_hand():
    dep = deploy(100)
    [r] = reqs = [Request(0, 0.0, 32, 4)]
    dep.run(reqs)
    assert r.state == State.FINISHED
    assert r.ttft_s == pytest.approx(T, rel=1e-12)
    assert r.finish_s == pytest.approx(4 * T, rel=1e-12)
    assert r.tpot_mean_s == pytest.approx(T, rel=1e-12) and r.max_gap_s == pytest.approx(T, rel=1e-12)


def test_chunked_prefill_by_hand():
    cfg = EngineConfig(max_num_batched_tokens=40)
    dep = deploy(100, cfg)
    r = Request(0, 0.0, 100, 2)
    dep.run([r])
    assert r.ttft_s == pytest.approx(3 * T, rel=1e-12)  # chunks of 40, 40, 20
    assert r.finish_s == pytest.approx(4 * T, rel=1e-12)


def test_preemption_by_recompute_by_hand():
    """4 blocks of 16 tokens, two requests of 30 prompt + 20 output tokens arriving together.
    k=0 prefill both (2 blocks each) -> first tokens at T. k=3: A's KV reaches 33 tokens and needs a 3rd
    block; none is free, so B (arrived last) is preempted (3 tokens generated) and A takes one of its
    blocks. B must re-prefill 33 tokens (3 blocks) and waits for A, which finishes after k=19 (20T).
    k=20 re-prefills B -> its 4th token at 21T; 16 more decode steps -> finish at 37T."""
    dep = deploy(4.5)
    a, b = reqs = [Request(0, 0.0, 30, 20), Request(1, 0.0, 30, 20)]
    dep.run(reqs)
    assert a.finish_s == pytest.approx(20 * T, rel=1e-12) and a.preemptions == 0
    assert b.preemptions == 1 and b.state == State.FINISHED
    assert b.ttft_s == pytest.approx(T, rel=1e-12)
    assert b.finish_s == pytest.approx(37 * T, rel=1e-12)
    assert b.max_gap_s == pytest.approx(21 * T - 3 * T, rel=1e-12)
    assert b.generated == 20 and a.generated == 20
    assert dep.instances[0].bm.peak_used == 4 and dep.instances[0].bm.used == 0


def test_preemption_by_swap_by_hand():
    """Same as above, but B's 2 blocks go to host memory over the D2H link (iteration 3 waits for the copy)
    and come back over H2D at k=20 before it resumes decoding (3 tokens done, 17 to go: k=20..36)."""
    cfg = EngineConfig(preemption="swap")
    dep = deploy(4.5, cfg)
    inst = dep.instances[0]
    swap = 2 * inst.layout.block_bytes / 1e9  # tiny_hw links: 1 GB/s, no latency
    a, b = reqs = [Request(0, 0.0, 30, 20), Request(1, 0.0, 30, 20)]
    res = dep.run(reqs)
    assert b.swaps == 1 and b.preemptions == 1
    assert a.finish_s == pytest.approx(20 * T + swap, rel=1e-12)
    assert b.finish_s == pytest.approx(37 * T + 2 * swap, rel=1e-12)
    assert res.fabric.bytes_moved["gpu0/d2h"] == res.fabric.bytes_moved["gpu0/h2d"] == 2 * inst.layout.block_bytes
    assert res.hosts[0].by_kind["kv_swap"] == 0 and res.hosts[0].peak_bytes >= 2 * inst.layout.block_bytes


@pytest.mark.parametrize("seed", range(3))
def test_admission_after_preemption_v0_and_v1(seed):
    """vLLM V0's chunked-prefill scheduler admits in an iteration that preempted (here: the decode it just
    preempted, restarted from its first chunk); V1's does not. Small budget and pool, so partial prefills
    hold blocks and decodes preempt them."""
    import random

    def run(v0: bool) -> tuple[int, int]:
        """(iterations that preempted, those of them that also started a prefill, i.e. admitted a request)"""
        rnd = random.Random(seed)
        dep = deploy(12, EngineConfig(max_num_batched_tokens=24, admit_after_preemption=v0))
        sched = dep.instances[0].sched
        counts = [0, 0]
        schedule = sched.schedule

        def watched(now):
            continuing = {r.id for r in sched.prefilling}
            batch = schedule(now)
            if batch is not None and batch.preempted:
                counts[0] += 1
                counts[1] += any(r.id not in continuing for r, _ in batch.prefill)
            return batch

        sched.schedule = watched
        reqs = [Request(i, i * 0.002, rnd.randint(10, 60), rnd.randint(5, 40)) for i in range(30)]
        dep.run(reqs)
        assert all(r.state == State.FINISHED for r in reqs)
        return counts[0], counts[1]

    p0, a0 = run(True)
    p1, a1 = run(False)
    assert p0 > 0 and a0 > 0  # V0: some preempting iterations admit
    assert p1 > 0 and a1 == 0  # V1: none does


def test_request_larger_than_pool_is_rejected_with_reason():
    dep = deploy(4.5)
    r = Request(0, 0.0, 60, 10)  # 70 tokens = 5 blocks > 4
    dep.run([r])
    assert r.state == State.REJECTED and "needs 5 KV blocks" in r.reject_reason


def test_model_that_does_not_fit_names_itself():
    cfg = EngineConfig()
    with pytest.raises(ModelDoesNotFit, match="tiny does not fit on tiny-gpu"):
        Cluster(tiny_model(), tiny_hw(1e5), ConstCost(), lambda: make_policy("none"), cfg)


def test_offloading_buys_kv_blocks():
    cfg = EngineConfig()
    model = tiny_model()
    hw = tiny_hw(gpu_bytes_for_blocks(4.5, cfg))
    none = MemoryLayout.build(model, hw, cfg, OffloadPlan.resident(4))
    sel = MemoryLayout.build(model, hw, cfg, OffloadPlan.select_n(4, 2))
    # two layers to host, one layer-sized staging buffer back on the GPU: one layer's bytes freed
    assert sel.kv_pool_bytes - none.kv_pool_bytes == pytest.approx(model.weight_bytes_per_layer)
    assert sel.kv_blocks == int((none.kv_pool_bytes + model.weight_bytes_per_layer) // none.block_bytes)


arrivals = st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 120), st.integers(1, 60)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=arrivals, blocks=st.floats(8, 30), preemption=st.sampled_from(["recompute", "swap"]),
       chunked=st.booleans(), budget=st.integers(16, 256), policy=st.sampled_from(["none", "sel2", "deepspeed"]),
       v0=st.booleans())
def test_engine_invariants(reqs, blocks, preemption, chunked, budget, policy, v0):
    """Memory never exceeds capacity (checked every iteration), every request ends in exactly one state,
    and each request's times are ordered."""
    cfg = EngineConfig(preemption=preemption, chunked_prefill=chunked, max_num_batched_tokens=budget,
                       max_num_seqs=8, swap_space_gib=1e-4, admit_after_preemption=v0)
    kind, params = ("selectn-static", {"interval": 2}) if policy == "sel2" else (policy, {})
    dep = deploy(blocks, cfg, kind, **params)
    rs = [Request(i, t, p, o) for i, (t, p, o) in enumerate(sorted(reqs))]
    res = dep.run(rs)
    inst = res.instances[0]
    assert sorted(r.id for r in inst.done) == list(range(len(rs)))  # each once
    for r in rs:
        assert r.state in (State.FINISHED, State.REJECTED)
        if r.state == State.FINISHED:
            assert r.generated == r.output_tokens
            assert r.arrival_s <= r.first_scheduled_s <= r.first_token_s <= r.finish_s
            assert r.max_gap_s >= 0 and not math.isnan(r.tpot_mean_s)
    assert all(a <= b for a, b in zip(inst.sched.iter_end, inst.sched.iter_end[1:]))
    assert inst.bm.used == 0 and res.hosts[0].by_kind.get("kv_swap", 0.0) == pytest.approx(0.0)
