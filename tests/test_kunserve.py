"""KunServe's pieces by hand: capacity gain, drop plan, pipeline step time, restore time, and the engine
doing what the pure functions say."""

import pytest

from sim.core.batch import BatchShape
from sim.core.hardware import get_hardware
from sim.core.model import get_model
from sim.core.request import Request, State
from sim.engine.cluster import Cluster
from sim.engine.memory import EngineConfig
from sim.handlers import make_handler
from sim.handlers.kunserve import KunServeParams, capacity_gain_tokens, group_capacity_blocks
from sim.handlers.kunserve.drop_plan import InstanceLoad, assign_slices, drop_plan
from sim.handlers.kunserve.forming import begin
from sim.handlers.kunserve.group import PipelineGroup
from sim.handlers.kunserve.pipeline import (
    StepWork,
    fcfs_micro_batches,
    lookahead_micro_batches,
    pipeline_schedule,
    plan_step,
    stage_slices,
)
from sim.handlers.kunserve.placement import incoming, moves, spread, whole
from sim.handlers.kunserve.restore import restore, restore_copy_time
from sim.handlers.kunserve.trigger import DemandWindow, votes_to_drop
from sim.policies import make_policy

from .helpers import ConstCost, tiny_hw, tiny_model
from .test_engine import gpu_bytes_for_blocks


class LinearCost:
    """layer_time = 1 ms (the stage's weight reads) + 0.01 ms per token; no fixed time."""

    def layer_time(self, shape: BatchShape) -> float:
        return 1e-3 + 1e-5 * shape.tokens

    def fixed_time(self, shape: BatchShape) -> float:
        return 0.0


# --- capacity ---------------------------------------------------------------------------------------------
def test_capacity_gain_by_hand():
    """L=12 layers of 100 B, 10-B blocks, each instance's KV pool 1,000 B (100 blocks) with all layers.
    A pair: each member keeps 6 layers, frees 600 B -> pool 1,600 B holding half of every block's bytes
    -> 320 blocks = 2*100 + (2-1)*P/block (P = 1,200 B = 120 blocks). Four: 400 + 3*120 = 760."""
    assert group_capacity_blocks([1000.0], 12, 100.0, 10.0) == 100
    assert group_capacity_blocks([1000.0] * 2, 12, 100.0, 10.0) == 320
    assert group_capacity_blocks([1000.0] * 4, 12, 100.0, 10.0) == 760
    # in tokens (16-token blocks: 10/16 B per token): the gain is (g-1) * P / k
    assert capacity_gain_tokens(2, 12, 100.0, 10 / 16) == pytest.approx(120 * 16)
    assert capacity_gain_tokens(4, 12, 100.0, 10 / 16) == pytest.approx(3 * 120 * 16)
    # uneven slices: the member with more layers bounds the group (L=4, g=3 keeps 1, 1, 2 layers)
    assert stage_slices(4, 3) == [(0, 1), (1, 2), (2, 4)]
    assert group_capacity_blocks([1000.0] * 3, 4, 100.0, 10.0) == 240  # (1000 + 200) / (10 * 2/4)


def test_capacity_gain_llama_13b_on_a100():
    """P/k for Llama-2-13B: 40 x 634.4 MB over 800 KiB per token = 30,976 tokens per dropped replica."""
    m = get_model("llama-2-13b")
    gain = capacity_gain_tokens(2, m.num_layers, m.weight_bytes_per_layer, m.kv_bytes_per_token)
    assert gain == pytest.approx(40 * m.weight_bytes_per_layer / (800 * 1024))
    assert 30_900 < gain < 31_000


# --- drop plan ----------------------------------------------------------------------------------------------
def loads(demands, votes, cap=100, pool=1000.0):
    return [InstanceLoad(i, d, cap, pool, v) for i, (d, v) in enumerate(zip(demands, votes))]


def test_drop_plan_pairs_most_with_least_loaded():
    """Capacities 100 blocks, P = 120 blocks (pair: 320, triple: 540). Deficits: A +50, B +10, C -40,
    D -50. A takes D (320 >= 200), B takes C (320 >= 170): two pairs."""
    plan = drop_plan(loads([150, 110, 60, 50], [True, True, False, False]), 12, 100.0, 10.0)
    assert plan == [(0, 3), (1, 2)]


def test_drop_plan_grows_a_group_until_it_covers():
    """A = 300 needs more than a pair: A+D = 320 < 340, A+D+C = 540 >= 390 -- but only 1 of 3 votes, so A
    waits; B+D = 320 >= 240 (1 of 2 votes) acts, and A then joins it: 540 >= 540."""
    plan = drop_plan(loads([300, 200, 50, 40], [True, True, False, False]), 12, 100.0, 10.0)
    assert plan == [(0, 1, 3)]


def test_drop_plan_needs_voters_and_partners():
    assert drop_plan(loads([90, 80, 70, 60], [False] * 4), 12, 100.0, 10.0) == []
    assert drop_plan(loads([150], [True]), 12, 100.0, 10.0) == []
    # groups never span NVLink domains
    ls = [InstanceLoad(0, 150, 100, 1000.0, True, 0), InstanceLoad(1, 10, 100, 1000.0, False, 1)]
    assert drop_plan(ls, 12, 100.0, 10.0) == []
    # headroom 1.8 asks for more capacity than the demand: A+D (320 < 360) and A+D+C (540 >= 468, but 1 vote
    # of 3) do not act; B+D does (320 >= 288) and A joins it
    assert drop_plan(loads([150, 110, 60, 50], [True, True, False, False]), 12, 100.0, 10.0, headroom=1.8) \
        == [(0, 1, 3)]


def test_drop_plan_grows_an_overloaded_pair_into_four():
    """Pools of 1000 B, P = 120 blocks. A pair (0,2) with demand 350 over its 320 blocks votes; the other
    pair (1,3) has room (150 of 320). Merged: capacity of four GPUs, 4 x 100 + 3 x 120 = 760 >= 500, so the
    overloaded pair grows by merging with the other (ids: the groups' leaders)."""
    pair_a = InstanceLoad(0, 350, 320, 0.0, True, members=(0, 2), member_pools=(1000.0, 1000.0))
    pair_b = InstanceLoad(1, 150, 320, 0.0, False, members=(1, 3), member_pools=(1000.0, 1000.0))
    assert drop_plan([pair_a, pair_b], 12, 100.0, 10.0) == [(0, 1)]
    # a solo instance with room is the first partner tried (most spare): 3 GPUs, 540 >= 350 + 10
    solo = InstanceLoad(4, 10, 100, 1000.0, False)
    assert drop_plan([pair_a, solo], 12, 100.0, 10.0) == [(0, 4)]
    # max_group counts GPUs: a pair cannot merge with a pair into 4 when at most 3 are allowed
    assert drop_plan([pair_a, pair_b], 12, 100.0, 10.0, max_group=3) == []


def test_stage_order_keeps_every_slice_where_it_is():
    """Two pairs of a 4-layer model (layers 0-1 and 2-3 per pair) merge into a group of four that keeps one
    layer each: each member keeps a layer it holds; a pair and a solo instance form a group of three."""
    half = [frozenset({0, 1}), frozenset({2, 3}), frozenset({0, 1}), frozenset({2, 3})]
    order = assign_slices(half, 4)
    assert [set(half[i]) >= {r} for r, i in enumerate(order)] == [True] * 4
    three = assign_slices([frozenset(range(6)), frozenset(range(6, 12)), frozenset(range(12))], 12)
    assert three == [0, 2, 1]  # slices [0,4) [4,8) [8,12): the solo instance takes the middle one
    assert assign_slices([frozenset({0, 1}), frozenset({0, 1})], 4) is None


def test_moves_by_placement():
    """A request spread as a pair keeps it (layers 0-1 on member 0, 2-3 on member 2 of the new group) moves
    to one layer per member: layer 1 from 0 to 1, layer 3 from 2 to 3; the new group's members receive a
    quarter each where they lacked it."""
    p = spread([(0, 2), (2, 4)], [0, 2])
    slices = stage_slices(4, 4)
    assert moves(p, slices) == {(0, 1): 1, (2, 3): 1}
    assert incoming(p, slices, 4) == [0.0, 0.25, 0.0, 0.25]
    assert moves(whole(4, 2), slices) == {(2, 0): 1, (2, 1): 1, (2, 3): 1}


def test_a_grown_group_holds_more_kv_than_its_pairs():
    """Four GPUs paired (0,1) and (2,3), each pair serving four requests; the controller then merges the
    pairs into one group of four: every member keeps one of the 4 layers, so the group holds one more
    replica's weights (P) of KV than the two pairs did -- (4M + 3P) against 2 (2M + P) -- and every request
    finishes, its KV moved by placement (memory checked at every iteration)."""
    c, h = tiny_cluster(gpus=4, blocks=20.0, restore=False, interval_s=1e3)
    reqs = [Request(i, 0.0, 60, 30) for i in range(8)] + late()
    p = KunServeParams(restore=False)
    seen = {}

    def settled(*gs):
        return all(g.state == "pipelined" and not g.unexchanged for g in gs)

    def scenario():
        yield c.env.timeout(0.01)
        a, b = PipelineGroup(c, c.instances[:2], p), PipelineGroup(c, c.instances[2:], p)
        begin(a)
        begin(b)
        while not settled(a, b):
            yield c.env.timeout(1e-3)
        seen["pairs"] = (a.capacity(), b.capacity(), a.leader.bm.used + b.leader.bm.used)
        grown = h.controller._group((a.leader.gpu, b.leader.gpu))
        begin(grown)
        while not settled(grown):
            yield c.env.timeout(1e-3)
        seen["grown"] = (grown.capacity(), grown.g, sorted(len(x) for x in grown.held), a.state, b.state)

    c.env.process(scenario())
    c.run(reqs)
    i0 = c.instances[0]
    model, bb = i0.ctx.model, i0.layout.block_bytes
    pools = [i.layout.kv_pool_bytes for i in c.instances]
    pair = group_capacity_blocks(pools[:2], 4, model.weight_bytes_per_layer, bb)
    four = group_capacity_blocks(pools, 4, model.weight_bytes_per_layer, bb)
    assert seen["pairs"][:2] == (pair, pair)
    assert seen["grown"] == (four, 4, [1, 1, 1, 1], "merged", "merged")
    P = model.num_layers * model.weight_bytes_per_layer / bb
    assert four - 2 * pair == pytest.approx(P, abs=2)
    assert all(r.state == State.FINISHED and r.generated == r.output_tokens for r in reqs)
    assert c.stats["kunserve_regroups"] == 1 and c.stats["kunserve_max_group"] == 4


def test_triggers():
    # 100 blocks, 88 in use, 12 free: 14 queued blocks cannot all be admitted -> vote (demand 102)
    assert votes_to_drop(102, 100, 14)
    # 10 queued would fit in the 12 free...
    assert not votes_to_drop(98, 100, 10)
    # ... unless the first queued request alone needs more than the free blocks (with the watermark)
    assert votes_to_drop(98, 100, 10, head_blocks=13)
    assert not votes_to_drop(90, 100, 10, head_blocks=30)  # demand below 95 %
    assert not votes_to_drop(100, 100, 0)  # nothing queued
    w = DemandWindow(samples=3, low=0.5)
    for x in (0.6, 0.5, 0.4):
        w.add(x)
    assert w.should_restore(0) and not w.should_restore(5)
    w.add(0.45)  # window (0.5, 0.4, 0.45): still falling overall
    assert w.should_restore(0)
    w.add(0.6)
    assert not w.should_restore(0)


# --- pipeline -----------------------------------------------------------------------------------------------
WORK = StepWork(prefill=((300, 0),), decode_tokens=100, decode_ctx_sum=100 * 50)


def test_two_stage_step_fcfs_by_hand():
    """Two 1-layer stages, LinearCost, no transfer time. FCFS cuts the 101 sequences into 51 + 50: 51 decode
    tokens, then 49 decodes and the 300-token prompt: 1.51 ms and 4.49 ms per stage.
    Stage 0: [0, 1.51] [1.51, 6.00]; stage 1: [1.51, 3.02] [6.00, 10.49]: step 10.49 ms, each stage busy 6 ms,
    bubbles 2*10.49 - 12 = 8.98 ms."""
    mbs = fcfs_micro_batches(WORK, 2)
    assert [b.tokens for b in mbs] == [51, 349]
    assert sum(b.decode_ctx_sum for b in mbs) == WORK.decode_ctx_sum
    p = plan_step(WORK, LinearCost(), [1, 1], 0.0, 1e12, 0.0, mode="fcfs", overlap=False)
    assert p.timing.step_s == pytest.approx(10.49e-3)
    assert p.timing.busy_s == pytest.approx([6e-3, 6e-3])
    assert p.timing.bubble_s == pytest.approx(8.98e-3)


def test_two_stage_step_lookahead_by_hand():
    """Lookahead: the prompt's predicted cost (2.99 ms above a 1-token batch) exceeds half the step's
    (3.98/2), so it is cut into two 150-token pieces, one per micro-batch, and the decodes split 50/50:
    200 tokens = 3 ms per stage and micro-batch. Stage 0: [0,3] [3,6]; stage 1: [3,6] [6,9]: step 9 ms,
    bubbles 6 ms (FCFS: 8.98). One or three or four micro-batches would take 10, 9.33, 10 ms."""
    mbs = lookahead_micro_batches(WORK, 2, LinearCost())
    assert [b.tokens for b in mbs] == [200, 200] and [b.prefill_tokens for b in mbs] == [150, 150]
    # the second piece attends to the first: its context starts at 150
    assert mbs[1].prefill_attn_pairs == pytest.approx(BatchShape.chunk_pairs(150, 150))
    p = plan_step(WORK, LinearCost(), [1, 1], 0.0, 1e12, 0.0, overlap=False)
    assert len(p.micro_batches) == 2
    assert p.timing.step_s == pytest.approx(9e-3)
    assert p.timing.bubble_s == pytest.approx(6e-3)


def test_two_stage_step_with_transfer_and_overlap():
    """A 0.5 ms activation transfer delays each stage-1 start: balanced, synchronous: stage 1 runs
    [3.5, 6.5] [6.5, 9.5] -> 9.5 ms. With steps overlapping (asynchronous pipeline), the period is set by
    the busiest stage (6 ms) or a micro-batch's round trip (3 + 0.5 + 3 + 0.5 return = 7 ms): 7 ms.
    FCFS overlapped: the heavy micro-batch's round trip 4.49 + 0.5 + 4.49 + 0.5 = 9.98 ms."""
    lat = 0.5e-3
    sync = plan_step(WORK, LinearCost(), [1, 1], 0.0, 1e12, lat, overlap=False, max_micro_batches=2)
    assert sync.timing.step_s == pytest.approx(9.5e-3)
    over = plan_step(WORK, LinearCost(), [1, 1], 0.0, 1e12, lat, overlap=True, max_micro_batches=2)
    assert over.timing.step_s == pytest.approx(7e-3)
    fcfs = plan_step(WORK, LinearCost(), [1, 1], 0.0, 1e12, lat, mode="fcfs", overlap=True)
    assert fcfs.timing.step_s == pytest.approx(9.98e-3)
    assert over.timing.bubble_s < fcfs.timing.bubble_s


def test_pipeline_schedule_recurrence():
    t = pipeline_schedule([[1.0, 2.0, 1.0], [2.0, 1.0, 1.0]], [0.5, 0.5, 0.5])
    # stage 0: [0,1] [1,3] [3,4]; stage 1: [1.5,3.5] [3.5,4.5] [4.5,5.5]
    assert t.start == [[0.0, 1.0, 3.0], [1.5, 3.5, 4.5]]
    assert t.step_s == pytest.approx(5.5) and t.bubble_s == pytest.approx(2 * 5.5 - 8.0)


def test_lookahead_cuts_bubbles_on_llama():
    """On Llama-2-13B / A100, a step with two long prompts and 200 decodes: balanced micro-batches need
    much less bubble time than FCFS ones, synchronous or overlapped."""
    m, hw = get_model("llama-2-13b"), get_hardware("a100-80g")
    from sim.cost.roofline import RooflineCostModel
    cost = RooflineCostModel(m, hw)
    w = StepWork(((2000, 0), (500, 0)), 200, 200 * 1300)
    for overlap in (False, True):
        la = plan_step(w, cost, [20, 20], m.hidden_size * 2, hw.gpu_link_bytes_per_s, hw.gpu_link_latency_s,
                       overlap=overlap)
        ff = plan_step(w, cost, [20, 20], m.hidden_size * 2, hw.gpu_link_bytes_per_s, hw.gpu_link_latency_s,
                       mode="fcfs", overlap=overlap)
        assert la.timing.bubble_s < 0.6 * ff.timing.bubble_s
        assert la.timing.step_s < 0.85 * ff.timing.step_s


# --- restore ------------------------------------------------------------------------------------------------
def test_restore_time_host_vs_peer_by_hand():
    """4 layers of 100 MB, a pair on GPUs 0 and 1: each member copies back 2 layers (200 MB).
    Host: 10 GB/s per GPU link, but both GPUs share one 15 GB/s bus: 400 MB / 15 GB/s = 26.7 ms.
    Peer: each member sends its 200 MB to the other over 100 GB/s links: 2 ms (+ latency)."""
    hw = tiny_hw(80e9, h2d_bytes_per_s=10e9, bus_bytes_per_s=15e9, gpus_per_bus=2, gpu_link_bytes_per_s=100e9,
                 link_latency_s=0.0, gpu_link_latency_s=1e-5)
    sl = stage_slices(4, 2)
    assert restore_copy_time("host", sl, 100e6, [0, 1], hw) == pytest.approx(400e6 / 15e9)
    assert restore_copy_time("peer", sl, 100e6, [0, 1], hw) == pytest.approx(1e-5 + 200e6 / 100e9)
    # on separate buses each GPU has its own 10 GB/s link: 20 ms
    assert restore_copy_time("host", sl, 100e6, [0, 2], hw) == pytest.approx(200e6 / 10e9)
    # four members, each keeping one layer: the peer path sends 3 x 100 MB from every GPU
    assert restore_copy_time("peer", stage_slices(4, 4), 100e6, [0, 1, 2, 3], hw) == pytest.approx(1e-5 + 3e-3)
    # docs/architecture.md, 'Reference figures': from a peer ~ L*(g-1)/g * layer bytes / link bandwidth (Llama-2-13B pair on A100)
    m, a100 = get_model("llama-2-13b"), get_hardware("a100-80g")
    t = restore_copy_time("peer", stage_slices(40, 2), m.weight_bytes_per_layer, [0, 1], a100)
    assert t == pytest.approx(20 * m.weight_bytes_per_layer / a100.gpu_link_bytes_per_s, rel=1e-3)
    assert restore_copy_time("host", stage_slices(40, 2), m.weight_bytes_per_layer, [0, 1], a100) > 10 * t


# --- the engine does what the functions say -----------------------------------------------------------------
def tiny_cluster(gpus=2, blocks=20.0, handler="kunserve", cost=None, hw_kw=None, cfg=None, **hp):
    cfg = cfg or EngineConfig(max_num_seqs=8, max_num_batched_tokens=128)
    hw = tiny_hw(gpu_bytes_for_blocks(blocks, cfg), **(hw_kw or {}))
    c = Cluster(tiny_model(), hw, cost or ConstCost(), lambda: make_policy("none"), cfg, gpus, "least-loaded")
    h = make_handler(handler, **hp)
    for i in c.instances:
        i.debug_checks = True
    h.attach(c)
    return c, h


def late() -> list[Request]:
    """A request arriving at 2 s: keeps the arrivals open while a test drives the group."""
    return [Request(99, 2.0, 1, 1)]


def test_drop_turns_weights_into_blocks_and_restore_takes_them_back():
    c, _ = tiny_cluster(gpus=2, blocks=20.0, restore=False, interval_s=1e3)
    i0, i1 = c.instances
    solo = i0.bm.num_blocks
    pools = [i.layout.kv_pool_bytes for i in c.instances]
    model = i0.ctx.model
    grp = PipelineGroup(c, [i0, i1], KunServeParams(restore=False))
    seen = {}

    def scenario():
        begin(grp)
        yield c.env.timeout(0)
        seen["formed"] = (grp.state, i0.bm.num_blocks, i1.bm.num_blocks, [len(h) for h in grp.held])
        c.env.process(restore(grp))
        yield c.env.timeout(1.0)
        seen["split"] = (grp.state, i0.bm.num_blocks, i1.bm.num_blocks, [len(h) for h in grp.held])

    c.env.process(scenario())
    c.run(late())
    expect = group_capacity_blocks(pools, 4, model.weight_bytes_per_layer, i0.layout.block_bytes)
    assert expect - 2 * solo == int(model.num_layers * model.weight_bytes_per_layer // i0.layout.block_bytes) or \
        abs(expect - 2 * solo - model.num_layers * model.weight_bytes_per_layer / i0.layout.block_bytes) < 2
    assert seen["formed"] == ("pipelined", expect, 0, [2, 2])
    assert seen["split"] == ("split", solo, solo, [4, 4])
    # the copy-back took what restore_copy_time predicts for the faster source (peer here)
    t = restore_copy_time("peer", stage_slices(4, 2), model.weight_bytes_per_layer, [0, 1], i0.ctx.hw)
    assert c.stats["kunserve_restore_from_peer"] == 1
    assert c.stats["kunserve_restore_copy_s"] == pytest.approx(t)
    marks = [n for _r, n, _t in (c.timeline.instants if c.timeline else [])]
    assert not marks or any(n.startswith("drop") for n in marks)


def test_restore_from_host_takes_the_predicted_time():
    c, _ = tiny_cluster(gpus=2, blocks=20.0, restore=False, interval_s=1e3, restore_from="host",
                        hw_kw={"gpus_per_bus": 2, "bus_bytes_per_s": 1.5e9})
    i0, i1 = c.instances
    grp = PipelineGroup(c, [i0, i1], KunServeParams(restore=False, restore_from="host"))

    def scenario():
        begin(grp)
        yield c.env.timeout(0)
        c.env.process(restore(grp))

    c.env.process(scenario())
    c.run(late())
    model = i0.ctx.model
    t = restore_copy_time("host", stage_slices(4, 2), model.weight_bytes_per_layer, [0, 1], i0.ctx.hw)
    assert t == pytest.approx(4 * model.weight_bytes_per_layer / 1.5e9)  # both GPUs share the bus
    assert c.stats["kunserve_restore_copy_s"] == pytest.approx(t)
    assert c.hosts[0].by_kind["weights_copy"] == 4 * model.weight_bytes_per_layer


def test_running_requests_stall_until_their_kv_is_exchanged():
    """Two GPUs, one request running on each; a forced drop moves half of each request's KV to the other
    GPU over the 10 GB/s link, during which both stall; then they finish on the group, none lost."""
    c, _ = tiny_cluster(gpus=2, blocks=20.0, restore=False, interval_s=1e3)
    reqs = [Request(0, 0.0, 100, 40), Request(1, 0.0, 100, 40), *late()]

    def scenario():
        yield c.env.timeout(0.05)
        begin(PipelineGroup(c, list(c.instances), KunServeParams(restore=False)))

    c.env.process(scenario())
    c.run(reqs)
    assert all(r.state == State.FINISHED and r.generated == r.output_tokens for r in reqs)
    assert c.stats["kunserve_exchanged_requests"] == 2
    bb = c.instances[0].layout.block_bytes
    blocks = 2 * -(-(100 + 40) // 16)  # at most the two requests' whole KV
    assert 0 < c.stats["kunserve_exchange_bytes"] <= blocks * bb
    # the stall shows in the gap between tokens
    assert max(r.max_gap_s for r in reqs[:2]) > 4.5e-3
