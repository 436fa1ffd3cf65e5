"""Tensor and pipeline parallelism on a server topology, by hand: one GPU's slice of a model, a TP layer with
a known all-reduce, GPUs sharing a PCIe switch (and a root complex), sharded KV capacity, a pipeline stage
boundary; and the engine's invariants with TP and PP degrees sampled."""

from __future__ import annotations

import math

import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.core.batch import BatchShape
from sim.core.model import ModelSpecError, get_model
from sim.core.offload_plan import OffloadPlan
from sim.core.request import Request, State
from sim.cost.parallel import ParallelCost
from sim.engine.cluster import Cluster, link_rates
from sim.engine.iteration import compile_copies, run_closed_form, run_events
from sim.engine.link import Fabric
from sim.engine.memory import EngineConfig, MemoryLayout
from sim.policies import make_policy

from .helpers import ConstCost, tiny_hw, tiny_model


class KnownCollectives:
    """All-reduce: 100 us + bytes / 10 GB/s (whatever the worker count); send/recv: 50 us + bytes / 20 GB/s."""

    def all_reduce_s(self, nbytes: float, workers: int) -> float:
        return 1e-4 + nbytes / 1e10

    def send_recv_s(self, nbytes: float) -> float:
        return 5e-5 + nbytes / 2e10


# --- one GPU's slice ------------------------------------------------------------------------------------
def test_llama2_70b_slice_at_tp4_by_hand():
    m = get_model("llama-2-70b")  # hidden 8192, 64 heads (head 128), 8 KV heads, MLP 28672, vocab 32000
    s = m.shard(4)
    assert (s.num_heads, s.num_kv_heads, s.intermediate_size, s.vocab_size, s.num_layers) == (16, 2, 7168, 8000, 80)
    # QKV 8192 x (16 + 2*2) heads x 128; O 2048 x 8192; gate+up 2 x 8192 x 7168; down 7168 x 8192; 2 norms
    params = 8192 * (16 + 4) * 128 + 2048 * 8192 + 2 * 8192 * 7168 + 7168 * 8192 + 2 * 8192
    assert s.weight_bytes_per_layer == 2 * params
    assert s.kv_bytes_per_token == 80 * 2 * 2 * 128 * 2  # 80 layers x (K, V) x 2 heads x 128 x fp16
    assert s.non_layer_bytes == 2 * (2 * 8000 * 8192 + 8192)  # vocabulary-parallel embedding and LM head
    p = m.shard(2, 4)  # 2-way TP, 4 pipeline stages of 20 layers
    assert (p.num_layers, p.num_heads, p.num_kv_heads) == (20, 32, 4)
    assert m.shard(1, 1) is m


def test_kv_heads_are_replicated_beyond_their_number_and_bad_splits_name_the_field():
    s = get_model("llama-3-70b").shard(16)  # 8 KV heads over 16 GPUs: one (replicated) head each
    assert (s.num_heads, s.num_kv_heads) == (4, 1)
    with pytest.raises(ModelSpecError, match="tp=3 must divide num_heads"):
        get_model("llama-2-70b").shard(3)
    with pytest.raises(ModelSpecError, match="pp=81 exceeds num_layers"):
        get_model("llama-2-70b").shard(1, 81)


# --- a TP layer with a known all-reduce --------------------------------------------------------------------
def test_tp_layer_pays_two_allreduces_and_the_logit_gather():
    m = tiny_model()  # hidden 64, fp16
    s = m.shard(2)
    cost = ParallelCost(ConstCost(1e-3, 0.5e-3), KnownCollectives(), s, tp=2, full_vocab=m.vocab_size)
    shape = BatchShape.prefill_batch(1, 100)  # 100 tokens of activations: 100 x 64 x 2 = 12,800 bytes
    assert cost.layer_time(shape) == pytest.approx(1e-3 + 2 * (1e-4 + 12_800 / 1e10), rel=1e-12)
    # the logits of the one sampling sequence: 256 x 2 bytes, gathered as half an all-reduce
    assert cost.fixed_time(shape) == pytest.approx(0.5e-3 + 0.5 * (1e-4 + 512 / 1e10), rel=1e-12)
    one = ParallelCost(ConstCost(1e-3, 0.5e-3), KnownCollectives(), m, tp=1)
    assert one.layer_time(shape) == 1e-3 and one.fixed_time(shape) == 0.5e-3  # no collectives on one GPU


def tp_cluster(tp: int, pp: int = 1, instances: int = 1, policy: str = "none", gpu_bytes: float = 1e8,
               cfg: EngineConfig | None = None, **hw_kw) -> Cluster:
    cfg = cfg or EngineConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp, max_num_batched_tokens=256,
                              max_num_seqs=8)
    m = tiny_model()
    s = m.shard(tp, pp)
    cost = ParallelCost(ConstCost(1e-3, 0.5e-3), KnownCollectives(), s, tp, pp, full_vocab=m.vocab_size)
    hw = tiny_hw(gpu_bytes, **hw_kw)
    c = Cluster(s, hw, cost, lambda: make_policy(policy), cfg, tp * pp * instances)
    for i in c.instances:
        i.debug_checks = True
    return c


def test_a_two_rank_instance_serves_a_request_at_the_hand_computed_pace():
    c = tp_cluster(2)
    req = Request(0, 0.0, 100, 3)
    c.run([req])
    ar = lambda tokens: 1e-4 + tokens * 64 * 2 / 1e10  # noqa: E731
    gather = 0.5 * (1e-4 + 256 * 2 / 1e10)
    prefill = 4 * (1e-3 + 2 * ar(100)) + 0.5e-3 + gather
    decode = 4 * (1e-3 + 2 * ar(1)) + 0.5e-3 + gather
    assert req.ttft_s == pytest.approx(prefill, rel=1e-12)
    assert req.finish_s == pytest.approx(prefill + 2 * decode, rel=1e-12)
    assert c.instances[0].gpus == (0, 1) and len(c.instances) == 1


# --- a PCIe switch and a root complex -----------------------------------------------------------------------
def two_copies(gpu_a: int, gpu_b: int, **hw_kw) -> tuple[float, float]:
    """Two 1 GB host->GPU copies started together; their end times."""
    env = simpy.Environment()
    hw = tiny_hw(1e9, h2d_bytes_per_s=1e9, bus_bytes_per_s=1e9, gpus_per_bus=2, **hw_kw)
    fab = Fabric.for_gpus(env, hw, 8)
    a = fab.transfer(fab.h2d_route(gpu_a), 1e9)
    b = fab.transfer(fab.h2d_route(gpu_b), 1e9)
    env.run()
    return a.value, b.value


def test_two_gpus_under_one_switch_halve_each_others_copy_bandwidth():
    assert two_copies(0, 1) == (2.0, 2.0)  # one 1 GB/s uplink for two 1 GB copies
    assert two_copies(0, 2) == (1.0, 1.0)  # different switches: each has its own uplink
    # a root complex narrower than its two switches' uplinks (1 GB/s for 2 x 1 GB/s) is shared by them
    assert two_copies(0, 2, gpus_per_root=4, root_bytes_per_s=1e9) == (2.0, 2.0)
    assert two_copies(0, 4, gpus_per_root=4, root_bytes_per_s=1e9) == (1.0, 1.0)  # another socket
    # a root as wide as its switches adds nothing (and is not modelled)
    assert two_copies(0, 2, gpus_per_root=4, root_bytes_per_s=2e9) == (1.0, 1.0)


def test_a_tp_group_shares_its_switch_with_itself():
    """Two ranks under one switch copy their slices at half the uplink each; four ranks over two switches
    likewise (two per switch); one rank per switch at the full link."""
    hw = tiny_hw(1e9, h2d_bytes_per_s=1e9, bus_bytes_per_s=1e9, gpus_per_bus=2)
    assert link_rates(hw, ranks=2) == (0.5e9,)  # the instance owns the switch
    assert link_rates(hw, ranks=1) == (1e9, 0.5e9)  # alone, or with the switch's other instance
    wide = tiny_hw(1e9, h2d_bytes_per_s=1e9, bus_bytes_per_s=1e9, gpus_per_bus=4)
    assert link_rates(wide, ranks=2) == (0.5e9, 0.25e9)  # two TP-2 instances per switch
    c = tp_cluster(2, gpus_per_bus=2, h2d_bytes_per_s=1e9, bus_bytes_per_s=1e9)
    assert c.instances[0].h2d_rate == 0.5e9


def test_closed_form_equals_events_for_a_tp_stage_on_a_shared_switch():
    """Each rank of a TP stage copies its slice over its own link; under one switch they share its uplink,
    so the stage's copies run at half the uplink -- what the closed form assumes."""
    plan = OffloadPlan.select_n(6, 2)
    tasks = compile_copies(plan, 3e8)
    env = simpy.Environment()
    hw = tiny_hw(1e9, h2d_bytes_per_s=1e9, bus_bytes_per_s=1e9, gpus_per_bus=2)
    fab = Fabric.for_gpus(env, hw, 2)
    out = {}

    def proc():
        out["t"] = yield from run_events(env, fab, [0, 1], plan, 2e-3, tasks, 1e-5, 1e-3, 3e8, record=True)

    env.process(proc())
    env.run()
    cf = run_closed_form(0.0, plan, 2e-3, tasks, 0.5e9, 1e-5, 1e-3, 3e8, record=True)
    assert out["t"].end_s == pytest.approx(cf.end_s, rel=1e-12)
    assert out["t"].layer_end_s == pytest.approx(cf.layer_end_s, rel=1e-12)
    assert fab.bytes_moved["gpu0/h2d"] == fab.bytes_moved["gpu1/h2d"] == pytest.approx(cf.copy_bytes)
    assert fab.bytes_moved["bus0/h2d"] == pytest.approx(2 * cf.copy_bytes)


# --- sharded KV capacity ------------------------------------------------------------------------------------
def test_each_gpu_holds_its_heads_kv_so_a_tp_group_holds_twice_the_tokens():
    """Tiny model (4 layers, 4 KV heads of 16): fp16 KV of one token is 4 x 2 x 64 x 2 = 1,024 bytes on one GPU,
    512 on each of two TP ranks. The ranks' pools (the same GPU memory, half the weights each) hold blocks of
    16 x 512 bytes."""
    cfg = EngineConfig(tensor_parallel_size=2, max_num_batched_tokens=256, max_num_seqs=8)
    gpu = 4e6
    c = tp_cluster(2, cfg=cfg, gpu_bytes=gpu)
    m = tiny_model()
    s = m.shard(2)
    assert s.kv_bytes_per_token == 512 and m.kv_bytes_per_token == 1024
    weights = s.non_layer_bytes + 4 * s.weight_bytes_per_layer
    ws = 256 * (64 * 2 + s.q_dim + 2 * s.kv_dim + 3 * s.intermediate_size) * 2 + 8 * s.vocab_size * 4
    blocks = math.floor((gpu * 0.9 - weights - ws) / (16 * 512))
    assert c.instances[0].bm.num_blocks == blocks
    one = MemoryLayout.build(m, tiny_hw(gpu), EngineConfig(max_num_batched_tokens=256, max_num_seqs=8),
                             OffloadPlan.resident(4))
    assert blocks > 2 * one.kv_blocks  # twice the heads' memory, and the weights halved on top


# --- a pipeline stage boundary ------------------------------------------------------------------------------
def test_pipeline_stages_run_one_after_another_with_a_handoff():
    """pp = 2: each stage holds 2 of the 4 layers; the iteration is stage 0's layers, the hand-off of the
    activations (send/recv), stage 1's layers, the fixed work."""
    c = tp_cluster(1, pp=2)
    req = Request(0, 0.0, 100, 2)
    c.run([req])
    handoff = 5e-5 + 100 * 64 * 2 / 2e10
    assert req.ttft_s == pytest.approx(2 * (2 * 1e-3) + handoff + 0.5e-3, rel=1e-12)
    assert c.instances[0].stages == [(0,), (1,)]


def test_each_stage_streams_its_own_offloaded_layer():
    """pp = 2 with Select-N interval 2: each stage (2 layers) keeps its second layer in host memory and
    copies it over its own GPU's link while its first layer computes. Copy: 82,176 / 2 x ... bytes of the tiny
    layer at 30 MB/s takes longer than a layer, so each stage pass is copy + one layer."""
    cfg = EngineConfig(pipeline_parallel_size=2, max_num_batched_tokens=256, max_num_seqs=8)
    m = tiny_model()
    s = m.shard(1, 2)
    cost = ParallelCost(ConstCost(1e-3, 0.5e-3), KnownCollectives(), s, 1, 2)
    hw = tiny_hw(1e8, h2d_bytes_per_s=3e7, bus_bytes_per_s=3e7)
    c = Cluster(s, hw, cost, lambda: make_policy("selectn-static", interval=2), cfg, 2)
    req = Request(0, 0.0, 100, 2)
    c.run([req])
    copy = s.weight_bytes_per_layer / 3e7
    assert copy > 1e-3
    stage = copy + 1e-3  # layer 1 waits for its copy, issued when layer 0 starts
    handoff = 5e-5 + 100 * 64 * 2 / 2e10
    assert req.ttft_s == pytest.approx(2 * stage + handoff + 0.5e-3, rel=1e-12)
    assert c.fabric.bytes_moved["gpu0/h2d"] == c.fabric.bytes_moved["gpu1/h2d"] > 0


def test_layouts_that_do_not_align_are_refused():
    with pytest.raises(ValueError, match="multiple of tensor_parallel_size"):
        tp_cluster(2, instances=1, cfg=EngineConfig(tensor_parallel_size=4))
    with pytest.raises(ValueError, match="align with switches"):
        tp_cluster(2, instances=3, gpus_per_bus=3, gpus_per_node=6)


# --- invariants with TP and PP sampled --------------------------------------------------------------------
arrivals = st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 120), st.integers(1, 60)), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=arrivals, tp=st.sampled_from([1, 2, 4]), pp=st.sampled_from([1, 2]), instances=st.integers(1, 2),
       preemption=st.sampled_from(["recompute", "swap"]), policy=st.sampled_from(["none", "selectn-static"]),
       per_bus=st.sampled_from([1, 2, 4]), gpu_kb=st.floats(1500, 4000))
def test_engine_invariants_with_tp_and_pp(reqs, tp, pp, instances, preemption, policy, per_bus, gpu_kb):
    """Memory never over capacity (checked every iteration on every instance), every request ends in
    exactly one state, times ordered, nothing left on the GPUs or in host memory."""
    if tp % per_bus and per_bus % tp:
        return
    cfg = EngineConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp, preemption=preemption,
                       max_num_batched_tokens=128, max_num_seqs=8, swap_space_gib=1e-4)
    m = tiny_model()
    s = m.shard(tp, pp)
    cost = ParallelCost(ConstCost(1e-3, 0.5e-3), KnownCollectives(), s, tp, pp, full_vocab=m.vocab_size)
    hw = tiny_hw(gpu_kb * 1e3, gpus_per_bus=per_bus, h2d_bytes_per_s=1e8, bus_bytes_per_s=1e8)
    params = {"interval": 2} if policy == "selectn-static" and s.num_layers >= 2 else {}
    c = Cluster(s, hw, cost, lambda: make_policy(policy if params or policy == "none" else "none", **params), cfg,
                tp * pp * instances, "least-loaded")
    for i in c.instances:
        i.debug_checks = True
    rs = [Request(i, t, p, o) for i, (t, p, o) in enumerate(sorted(reqs))]
    res = c.run(rs)
    assert sorted(r.id for i in res.instances for r in i.done) == list(range(len(rs)))
    for r in rs:
        assert r.state in (State.FINISHED, State.REJECTED)
        if r.state == State.FINISHED:
            assert r.generated == r.output_tokens
            assert r.arrival_s <= r.first_scheduled_s <= r.first_token_s <= r.finish_s
    for inst in res.instances:
        assert inst.bm.used == 0
        assert all(a <= b for a, b in zip(inst.sched.iter_end, inst.sched.iter_end[1:]))
    assert res.hosts[0].by_kind.get("kv_swap", 0.0) == pytest.approx(0.0)


def test_a_request_over_the_context_is_refused_by_its_instance_under_tp():
    """The front end refuses a request longer than max_model_len whichever instance it was routed to: with
    two TP-2 instances the second one's id is 1 (its first GPU is 2)."""
    cfg = EngineConfig(tensor_parallel_size=2, max_num_batched_tokens=256, max_num_seqs=8, max_model_len=200)
    c = tp_cluster(2, instances=2, cfg=cfg)
    reqs = [Request(0, 0.0, 100, 50), Request(1, 0.001, 150, 100), Request(2, 0.002, 20, 5)]
    c.run(reqs)
    assert reqs[1].state == State.REJECTED and "exceed the context of 200 tokens" in reqs[1].reject_reason
    assert reqs[1].instance == 1 and c.instances[1].gpus == (2, 3)
    assert reqs[0].state == reqs[2].state == State.FINISHED
