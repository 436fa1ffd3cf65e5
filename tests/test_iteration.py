"""The iteration executor: hand-computed timelines and closed form = event level, exactly."""

import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.core.offload_plan import OffloadPlan
from sim.engine.iteration import compile_copies, run_closed_form, run_events
from sim.engine.link import Fabric


def fabric(rate: float, bus_rate: float | None = None) -> tuple[simpy.Environment, Fabric]:
    env = simpy.Environment()
    br = rate if bus_rate is None else bus_rate
    return env, Fabric(env, {"gpu0/h2d": rate, "gpu0/d2h": rate, "bus0/h2d": br, "bus0/d2h": br})


def events(plan, compute, tasks, rate, lat, fixed, layer_bytes=0.0, swaps=(), t0=0.0, bus_rate=None):
    env, fab = fabric(rate, bus_rate)
    out = {}

    def proc():
        if t0:
            yield env.timeout(t0)
        out["t"] = yield from run_events(env, fab, 0, plan, compute, tasks, lat, fixed, layer_bytes, swaps,
                                         record=True)

    env.process(proc())
    env.run()
    return out["t"]


def test_select_n_four_layers_by_hand():
    """L=4, i=2: layers 1 and 3 offloaded. Compute 1 s/layer; a copy is 3 bytes at 2 B/s = 1.5 s.
    copy L1: 0 -> 1.5 (issued at start);  L0: 0-1;  L1 waits: 1.5-2.5;
    copy L3: issued when L2 is reached (2.5), buffer free after L1 (2.5): 2.5 -> 4.0;
    L2: 2.5-3.5;  L3 waits: 4.0-5.0;  + fixed 0.5 -> 5.5."""
    plan = OffloadPlan.select_n(4, 2)
    tasks = compile_copies(plan, 3.0)
    for tm in (run_closed_form(0.0, plan, 1.0, tasks, 2.0, 0.0, 0.5, record=True),
               events(plan, 1.0, tasks, 2.0, 0.0, 0.5)):
        assert tm.layer_start_s == [0.0, 1.5, 2.5, 4.0]
        assert tm.layer_end_s == [1.0, 2.5, 3.5, 5.0]
        assert [(l, s, e) for l, s, e, _ in tm.copies] == [(1, 0.0, 1.5), (3, 2.5, 4.0)]
        assert tm.end_s == 5.5 and tm.copy_bytes == 6.0


def test_select_n_in_pieces_by_hand():
    """L=2, i=2: layer 1 offloaded, 2 bytes at 1 B/s, compute 1 s/layer, no latency.
    Whole layer (1 buffer): copy 0-2, L0 0-1, L1 waits: 2-3.
    2 pieces, 2 slots (the same memory): pieces 0-1 and 1-2; L1's first half computes 1-1.5 as soon as
    it lands, its second 2-2.5: the layer starts before it has fully arrived.
    2 pieces, 1 slot (half the memory): piece 2 must wait for piece 1's compute (1-1.5): 1.5-2.5; 2.5-3."""
    for (chunks, slots), copies, start, end in (((1, 2), [(1, 0.0, 2.0)], 2.0, 3.0),
                                                ((2, 2), [(1, 0.0, 1.0), (1, 1.0, 2.0)], 1.0, 2.5),
                                                ((2, 1), [(1, 0.0, 1.0), (1, 1.5, 2.5)], 1.0, 3.0)):
        plan = OffloadPlan.select_n(2, 2, chunks, slots)
        tasks = compile_copies(plan, 2.0)
        for tm in (run_closed_form(0.0, plan, 1.0, tasks, 1.0, 0.0, 0.0, record=True),
                   events(plan, 1.0, tasks, 1.0, 0.0, 0.0)):
            assert [(l, s, e) for l, s, e, _ in tm.copies] == copies
            assert tm.layer_start_s == [0.0, start] and tm.layer_end_s == [1.0, end]
            assert tm.end_s == end and tm.copy_bytes == 2.0


def test_select_n_copy_hidden_when_group_compute_is_longer():
    """i=4 with a copy shorter than 3 layers of compute: the iteration equals the resident one."""
    plan = OffloadPlan.select_n(8, 4)
    tm = run_closed_form(0.0, plan, 1.0, compile_copies(plan, 5.0), 2.0, 0.25, 0.0, record=True)
    assert tm.end_s == 8.0  # copy 0.25 + 2.5 = 2.75 < 3 layers


def test_deepspeed_by_hand():
    """Every layer offloaded, issued one layer ahead, 2 buffers; compute 1, copy 2 (copy-bound):
    copies back to back 0-2, 2-4, 4-6, 6-8 (buffer of L2 frees when L0 ends at 3 < 4; L3's at 5 < 6);
    layers start on arrival: 2-3, 4-5, 6-7, 8-9."""
    plan = OffloadPlan.deepspeed(4)
    tm = run_closed_form(0.0, plan, 1.0, compile_copies(plan, 4.0), 2.0, 0.0, 0.0, record=True)
    assert tm.layer_start_s == [2.0, 4.0, 6.0, 8.0]
    assert [(s, e) for _, s, e, _ in tm.copies] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]
    assert tm.end_s == 9.0


def test_buffer_reuse_blocks_prefetch():
    """deepspeed with compute 3 and copy 1: copy of L2 must wait for L0 to free its buffer (end 4),
    even though it is issued when L1 is reached (4) -- and copy L3 waits for L1 (end 7)."""
    plan = OffloadPlan.deepspeed(4)
    tm = run_closed_form(0.0, plan, 3.0, compile_copies(plan, 1.0), 1.0, 0.0, 0.0, record=True)
    assert [(s, e) for _, s, e, _ in tm.copies] == [(0.0, 1.0), (1.0, 2.0), (4.0, 5.0), (7.0, 8.0)]
    assert tm.layer_start_s == [1.0, 4.0, 7.0, 10.0]


def test_uva_layer_is_max_of_compute_and_read():
    plan = OffloadPlan.uva(3, (0, 2))
    tm = run_closed_form(0.0, plan, 1.0, (), 2.0, 0.5, 0.0, layer_bytes=4.0, record=True)
    # L0: max(1, 0.5 + 2) = 2.5; L1: 1 -> 3.5; L2: max(4.5, 3.5 + 0.5 + 2 = 6.0) = 6.0
    assert tm.layer_end_s == [2.5, 3.5, 6.0]
    assert tm == events(plan, 1.0, (), 2.0, 0.5, 0.0, layer_bytes=4.0)


def test_promotion_goes_first_on_the_copy_stream():
    """Promoting layer 0 (4 bytes, 2 s) delays the plan's copy of layer 3 and layer 0 itself."""
    plan = OffloadPlan.select_n(4, 4)
    tasks = compile_copies(plan, 4.0, promote=(0,))
    tm = run_closed_form(0.0, plan, 1.0, tasks, 2.0, 0.0, 0.0, record=True)
    assert tm.layer_start_s == [2.0, 3.0, 4.0, 5.0]  # copy L3 runs 2-4, hidden
    assert [(l, s, e) for l, s, e, _ in tm.copies] == [(0, 0.0, 2.0), (3, 2.0, 4.0)]


def test_swaps_delay_the_first_layer_in_both_forms():
    plan = OffloadPlan.resident(2)
    tm_c = run_closed_form(0.0, plan, 1.0, (), 2.0, 0.1, 0.0, swap_ready_s=max(0.1 + 6 / 2.0, 0.1 + 2 / 2.0),
                           record=True)
    tm_e = events(plan, 1.0, (), 2.0, 0.1, 0.0, swaps=[("h2d", 6.0), ("d2h", 2.0)])
    assert tm_c.layer_start_s == tm_e.layer_start_s == [3.1, 4.1]


plans = st.one_of(
    st.builds(lambda L, i: OffloadPlan.select_n(L, min(i, L)), st.integers(1, 12), st.integers(1, 12)),
    st.builds(lambda L, i, c, k: OffloadPlan.select_n(L, min(i, L), c, min(k, c)), st.integers(1, 12),
              st.integers(1, 12), st.integers(2, 8), st.integers(1, 8)),
    st.builds(OffloadPlan.deepspeed, st.integers(1, 12)),
    st.builds(lambda L, f: OffloadPlan.layerwise(L, f), st.integers(1, 12), st.floats(0.05, 1.0)),
    st.builds(lambda L, n, k, s: OffloadPlan.prefetch_groups(L, min(n, L), min(k, min(n, L)), s),
              st.integers(1, 12), st.integers(1, 6), st.integers(0, 6), st.integers(0, 3)),
    st.builds(lambda L, n: OffloadPlan.uva(L, range(min(n, L))), st.integers(1, 12), st.integers(0, 12)),
    st.builds(OffloadPlan.resident, st.integers(1, 12)),
)


@settings(max_examples=300, deadline=None)
@given(plan=plans, compute=st.floats(1e-6, 1e-2), nbytes=st.floats(1e3, 1e9), rate=st.floats(1e8, 1e11),
       lat=st.sampled_from([0.0, 1e-5, 3.3e-6]), fixed=st.floats(0, 1e-2), t0=st.floats(0, 1e3),
       promote_mask=st.integers(0, 2**12 - 1), bus_factor=st.sampled_from([1.0, 1.5]))
def test_closed_form_equals_event_level(plan, compute, nbytes, rate, lat, fixed, t0, promote_mask, bus_factor):
    """Float for float, on random plans, batch costs, promotions and start times."""
    promote = tuple(l for l in range(plan.num_layers) if promote_mask >> l & 1 and l not in plan.offloaded_set) \
        if plan.mode == "prefetch" else ()
    tasks = compile_copies(plan, nbytes, promote)
    ev = events(plan, compute, tasks, rate, lat, fixed, nbytes, t0=t0, bus_rate=rate * bus_factor)
    # SimPy reaches t0 by one timeout from 0, so the closed form starts from the same float
    cf = run_closed_form(0.0 + t0, plan, compute, tasks, rate, lat, fixed, nbytes, record=True)
    assert cf.layer_start_s == ev.layer_start_s
    assert cf.layer_end_s == ev.layer_end_s
    assert [c[:3] for c in cf.copies] == [c[:3] for c in ev.copies]
    assert cf.end_s == ev.end_s
    assert cf.copy_bytes == ev.copy_bytes
    # and the laws: time never goes backwards; no layer starts before its weights arrive
    assert all(s <= e for s, e in zip(cf.layer_start_s, cf.layer_end_s))
    assert all(a <= b for a, b in zip(cf.layer_end_s, cf.layer_start_s[1:]))
    first, last = {}, {}  # a layer streamed in pieces starts on its first piece and ends after its last
    for l, _, e, _ in cf.copies:
        first.setdefault(l, e)
        last[l] = e
    assert all(cf.layer_start_s[l] >= t for l, t in first.items())
    assert all(cf.layer_end_s[l] >= t + compute / plan.chunks * (1 - 1e-9) for l, t in last.items())
