"""The cluster and its overload handlers on small clusters: O(1) demand, routing, and properties checked at
every iteration (memory within capacity on every GPU) and at every instant (no request in two places, every
layer held by some member of every group), and at the end (every request in exactly one final state)."""

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.core.request import Request, State
from sim.engine.cluster import Cluster
from sim.engine.memory import EngineConfig
from sim.engine.queues import DemandQueue
from sim.handlers import make_handler
from sim.policies import make_policy

from .helpers import ConstCost, tiny_hw, tiny_model
from .test_engine import gpu_bytes_for_blocks


def where_are(c: Cluster) -> Counter:
    """How many places hold each unfinished request right now."""
    n: Counter = Counter()
    for i in c.instances:
        s = i.sched
        for q in (s.waiting, s.prefilling, s.swapped, getattr(s, "paused", ())):
            n.update(r.id for r in q)
        n.update(list(s.decoding))
    for g in c.groups:
        n.update(list(g.unexchanged))
        n.update(list(g.inflight))
        n.update(list(g.converted))
        n.update(r.id for r in g.pending)
        n.update(r.id for r in g.holding)
    return n


def run_cluster(reqs, handler, hp, gpus, blocks, cfg, router="least-loaded", gpus_per_bus=1):
    h = make_handler(handler, **hp)
    eng = EngineConfig(**{**cfg.__dict__, **h.engine_overrides()})
    c = Cluster(tiny_model(), tiny_hw(gpu_bytes_for_blocks(blocks, cfg), gpus_per_bus=gpus_per_bus), ConstCost(),
                lambda: make_policy("none"), eng, gpus, router, scheduler_class=h.scheduler_class)
    for i in c.instances:
        i.debug_checks = True
    h.attach(c)
    problems: list = []

    def watch():
        while True:
            for g in c.groups:
                if not g.layers_covered():
                    problems.append(("layers", c.env.now, g.id))
            twice = [k for k, v in where_are(c).items() if v > 1]
            if twice:
                problems.append(("twice", c.env.now, twice))
            yield c.env.timeout(2e-4)

    c.env.process(watch())
    res = c.run(reqs)
    return c, h, res, problems


def check_outcome(c, reqs, problems):
    assert not problems, problems[:3]
    done = Counter(r.id for i in c.instances for r in i.done)
    assert sorted(done) == sorted(r.id for r in reqs) and max(done.values()) == 1  # each exactly once
    for r in reqs:
        assert r.state in (State.FINISHED, State.REJECTED)
        if r.state == State.FINISHED:
            assert r.generated == r.output_tokens
            assert r.arrival_s <= r.first_token_s <= r.finish_s
    for i in c.instances:
        assert i.bm.used == 0 and i.reserved_blocks == 0


# --- demand and routing ---------------------------------------------------------------------------------------
def test_demand_queue_counts_blocks():
    q = DemandQueue(16)
    a, b = Request(0, 0, 15, 4), Request(1, 0, 40, 4)
    q.append(a)
    q.appendleft(b)
    assert q.blocks == 1 + 3  # (15+1)/16 -> 1, (40+1)/16 -> 3
    q.remove(a)
    assert q.blocks == 3 and q.popleft() is b and q.blocks == 0
    b.generated = 8  # a preempted request comes back with the tokens it had generated: 49 -> 4 blocks
    q.extend([a, b])
    assert q.blocks == 1 + 4


class ScanningCluster(Cluster):
    """Least-loaded routing that recounts every queued request's blocks on each arrival."""

    def route(self, req):
        def load(i):
            bs = i.bm.block_size
            queued = sum(-(-(r.prompt_tokens + r.generated + 1) // bs) for r in [*i.sched.waiting, *i.sched.swapped])
            return ((i.bm.used + queued) / max(i.bm.num_blocks, 1), i.gpu)
        return min(self.instances, key=load)


def test_cluster_routes_like_a_scan_of_the_queues():
    """Least-loaded by demand / capacity: the cluster's O(1) counters pick what scanning the queues picks."""
    cfg = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64)
    reqs = lambda: [Request(i, i * 0.002, 30 + (i * 37) % 90, 5 + (i * 11) % 40) for i in range(120)]  # noqa: E731
    hw = tiny_hw(gpu_bytes_for_blocks(12, cfg))
    a = ScanningCluster(tiny_model(), hw, ConstCost(), lambda: make_policy("none"), cfg, 3, "least-loaded")
    b = Cluster(tiny_model(), hw, ConstCost(), lambda: make_policy("none"), cfg, 3, "least-loaded")
    ra, rb = reqs(), reqs()
    a.run(ra)
    b.run(rb)
    assert [r.instance for r in ra] == [r.instance for r in rb]
    assert [r.finish_s for r in ra] == [r.finish_s for r in rb]


def test_unknown_handler_parameters_name_themselves():
    with pytest.raises(ValueError, match="unknown parameter.*drop_at.*allowed"):
        make_handler("kunserve", drop_at=3)
    with pytest.raises(ValueError, match="bad parameters"):
        make_handler("migrate", speed=2)


# --- properties -----------------------------------------------------------------------------------------------
request_lists = st.lists(st.tuples(st.floats(0, 0.6), st.integers(1, 150), st.integers(1, 90)), min_size=5,
                         max_size=120)
engines = st.builds(lambda seqs, budget, chunked, swap, v1: EngineConfig(
                        max_num_seqs=seqs, max_num_batched_tokens=budget, chunked_prefill=chunked,
                        swap_space_gib=swap, admit_after_preemption=not v1, watermark=0.0 if v1 else 0.01),
                    st.sampled_from([4, 8, 16]), st.sampled_from([32, 128, 512]), st.booleans(),
                    st.sampled_from([1e-4, 1e-3]), st.booleans())  # v1: vLLM V1's admission (the burst scenarios')


def as_requests(raw, tail):
    # a trickle after the burst lets groups restore while requests still arrive
    rows = sorted(raw) + [(0.6 + 0.1 * k, 20, 10) for k in range(tail)]
    return [Request(i, t, p, o) for i, (t, p, o) in enumerate(rows)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=request_lists, tail=st.integers(0, 30), gpus=st.integers(2, 4), blocks=st.floats(12, 40), cfg=engines,
       per_step=st.sampled_from([1, 2, 8]), source=st.sampled_from(["auto", "host", "peer"]),
       batching=st.sampled_from(["lookahead", "fcfs"]), overlap=st.booleans(),
       headroom=st.sampled_from([1.0, 1.5, 3.0]), router=st.sampled_from(["least-loaded", "round-robin"]))
def test_kunserve_properties(raw, tail, gpus, blocks, cfg, per_step, source, batching, overlap, headroom, router):
    reqs = as_requests(raw, tail)
    hp = dict(interval_s=0.02, restore_window_samples=3, exchange_per_step=per_step, restore_from=source,
              micro_batching=batching, overlap_steps=overlap, plan_headroom=headroom)
    c, _h, _res, problems = run_cluster(reqs, "kunserve", hp, gpus, blocks, cfg, router)
    check_outcome(c, reqs, problems)
    for g in c.groups:
        assert g.state in ("split", "ended", "pipelined", "merged")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=request_lists, gpus=st.integers(2, 4), blocks=st.floats(10, 40), cfg=engines,
       inflight=st.integers(1, 3), stop=st.integers(0, 2), router=st.sampled_from(["least-loaded", "round-robin"]))
def test_migration_properties(raw, gpus, blocks, cfg, inflight, stop, router):
    reqs = as_requests(raw, 0)
    c, _h, _res, problems = run_cluster(reqs, "migrate", dict(interval_s=0.01, max_inflight=inflight,
                                                              stop_blocks=stop, low=0.9, high=0.9),
                                        gpus, blocks, cfg, router)
    check_outcome(c, reqs, problems)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=request_lists, gpus=st.integers(1, 3), blocks=st.floats(8, 30), cfg=engines,
       per_bus=st.sampled_from([1, 2]))
def test_infercept_properties(raw, gpus, blocks, cfg, per_bus):
    reqs = as_requests(raw, 0)
    c, _h, _res, problems = run_cluster(reqs, "infercept", {}, gpus, blocks, cfg, "round-robin", per_bus)
    check_outcome(c, reqs, problems)
    for i in c.instances:
        assert not i.sched.paused and i.sched.paused_blocks == 0


def test_migration_moves_running_requests_with_their_kv():
    """Round-robin onto two GPUs, but every long request lands on GPU 0 first: GPU 0 overloads while GPU 1
    idles, so running requests move to GPU 1 (their KV over the 10 GB/s link) and keep decoding there."""
    cfg = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256)
    reqs = [Request(i, 0.001 * i, 100, 200) for i in range(8)] + [Request(8 + i, 0.2 + 0.01 * i, 20, 2)
                                                                    for i in range(4)]
    c = Cluster(tiny_model(), tiny_hw(gpu_bytes_for_blocks(40, cfg)), ConstCost(), lambda: make_policy("none"), cfg,
                2, "round-robin")
    c.unit_of[1] = c.instances[0]  # route everything to GPU 0
    h = make_handler("migrate", interval_s=0.01)
    for i in c.instances:
        i.debug_checks = True
    h.attach(c)
    c.run(reqs)
    assert c.stats["migrations"] >= 1
    moved = [r for r in reqs if r.instance == 1]
    assert moved and all(r.state == State.FINISHED and r.generated == r.output_tokens for r in reqs)
    assert c.fabric.bytes_moved["gpu0/peer_tx"] == c.stats["migrated_bytes"]


def test_infercept_chooses_per_request():
    """A tight pool: InferCept pauses (keeps) requests when something will finish soon and discards or
    swaps otherwise; every choice is counted."""
    cfg = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, swap_space_gib=1e-3)
    reqs = [Request(i, 0.002 * i, 40 + 7 * i, 30 + 3 * i) for i in range(24)]
    c, h, _res, problems = run_cluster(reqs, "infercept", {}, 1, 10, cfg)
    check_outcome(c, reqs, problems)
    d = h.decisions(c.instances)
    assert sum(d.values()) > 0 and set(d) <= {"keep", "swap", "discard"}
