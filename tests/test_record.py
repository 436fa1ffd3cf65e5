"""Select-N's performance record: hand-computed i_min/i_max, conservative lookups, files, measured input."""

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.core.batch import BatchShape
from sim.core.hardware import get_hardware
from sim.core.model import get_model
from sim.cost.roofline import RooflineCostModel
from sim.engine.iteration import compile_copies, run_events
from sim.engine.link import Fabric
from sim.engine.memory import EngineConfig
from sim.policies.selectn.performance_record import PerformanceRecord, efficient_intervals, plan_for_interval

from .helpers import FIXTURES, ConstCost, tiny_hw, tiny_model

LAYER = 82_176  # bytes of one tiny_model layer
ENGINE = EngineConfig(max_num_batched_tokens=64, max_num_seqs=4, gpu_memory_utilization=1.0)


def tiny_record(gpu_bytes: float = 550_000) -> PerformanceRecord:
    """4 layers of 1 ms, 0.5 ms fixed, a copy takes 2 ms (bandwidth = one layer per 2 ms), no latency."""
    hw = tiny_hw(gpu_bytes, h2d_bytes_per_s=LAYER / 2e-3, bus_bytes_per_s=LAYER / 2e-3)
    return PerformanceRecord.build(tiny_model(), hw, ConstCost(1e-3, 0.5e-3), ENGINE, batch_sizes=(1, 4),
                                   seq_lens=(16, 32), slo_levels=(1.0, 1.5, 3.0))


def test_record_by_hand():
    """Times: i=1 streams every layer: copy 0-2, layer 0 2-3, copy 3-5, layer 1 5-6, ... layer 3 11-12, +0.5
    fixed = 12.5 ms. i=2 (layers 1, 3 offloaded): copy L1 0-2, L0 0-1, L1 2-3, copy L3 3-5, L2 3-4, L3 5-6 ->
    6.5 ms. i=3, i=4 (one layer, copy hidden behind 2-3 layers) and resident: 4.5 ms.
    Memory (GPU 550,000 B, all usable): non-layer 65,664 + workspace 94,208 (64 tokens x 1,408 + 4 x 256 x 4
    logits) + KV of 4 x 32 tokens = 8 blocks x 16,384 = 131,072; layers on the GPU incl. the staging buffer:
    i=1 one (373,120 in all), i=2 three (537,472), i=3/4/resident four (619,648 > 550,000) -> i_max = 2.
    SLO 1.0x (4.5 ms) -> i_min 3; 1.5x (6.75 ms) -> 2; 3x (13.5 ms) -> 1."""
    rec = tiny_record()
    e = rec.lookup("decode", 4, 32)
    assert e.iteration_s[0] * 1e3 == pytest.approx([12.5, 6.5, 4.5, 4.5, 4.5], rel=1e-12)
    assert e.kv_bytes == 131_072
    assert rec.gpu_weight_bytes.tolist() == [65_664 + LAYER, 65_664 + 3 * LAYER] + [65_664 + 4 * LAYER] * 3
    assert e.i_max == 2
    assert e.i_min == {1.0: 3, 1.5: 2, 3.0: 1}
    assert rec.host_bytes.tolist() == [4 * LAYER, 2 * LAYER, LAYER, LAYER, 0]
    # with room for everything, i_max is L+1 (nothing needs to be offloaded)
    assert tiny_record(700_000).lookup("decode", 4, 32).i_max == 5
    # the range per SLO level is in the summary table
    s = rec.summary()
    row = s[(s.phase == "decode") & (s.batch_size == 4) & (s.seq_len == 32) & (s.slo_x == 1.5)]
    assert (row.i_min.item(), row.i_max.item()) == (2, 2)


def test_lookups_round_up_and_mixed_batches_add_up():
    rec = tiny_record()
    assert (rec.lookup("decode", 3, 20).batch_size, rec.lookup("decode", 3, 20).seq_len) == (4, 32)
    assert rec.lookup("prefill", 5, 16) is None and rec.lookup("decode", 1, 33) is None  # beyond the grid
    mixed = BatchShape.build(prefill=[(10, 0)], decode=[12])
    assert rec.bound(mixed) == pytest.approx((2e-3, 1e-3))
    # a chunk after 20 tokens of context is bounded by a fresh prompt of its whole span (30 -> 32)
    chunk = BatchShape.build(prefill=[(10, 20)])
    assert rec.prefill_key(chunk).seq_len == 32
    assert rec.bound(BatchShape.build(prefill=[(40, 0)])) is None


def test_save_and_load_round_trip(tmp_path):
    rec = tiny_record()
    back = PerformanceRecord.load(rec.save(tmp_path / "r.json"))
    for key, e in rec.entries.items():
        f = back.entries[key]
        assert np.array_equal(e.iteration_s, f.iteration_s) and (e.i_min, e.i_max) == (f.i_min, f.i_max)
    assert back.to_frame().shape == rec.to_frame().shape
    hw = tiny_hw(550_000, h2d_bytes_per_s=LAYER / 2e-3, bus_bytes_per_s=LAYER / 2e-3)
    rec8 = PerformanceRecord.build(tiny_model(), hw, ConstCost(1e-3, 0.5e-3), ENGINE, batch_sizes=(1, 4),
                                   seq_lens=(16, 32), slo_levels=(1.0, 1.5, 3.0), staging_chunks=4, staging_slots=2)
    back8 = PerformanceRecord.load(rec8.save(tmp_path / "r8.json"))
    assert (back8.chunks, back8.slots) == (4, 2) and back8.plans[0].chunks == 4
    # half a layer of staging instead of one: half a layer more for KV at every interval that offloads
    more = back8.pool_bytes() - back.pool_bytes()
    assert np.allclose(more[:-1], 0.5 * rec.layer_bytes) and more[-1] == 0
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a memslo-selectn-record"):
        PerformanceRecord.load(tmp_path / "bad.json")


def test_efficient_intervals():
    assert efficient_intervals(32) == (1, 2, 3, 4, 5, 6, 8, 10, 16, 32, 33)
    assert efficient_intervals(40, 3) == (3, 4, 5, 6, 8, 10, 13, 20, 40, 41)
    assert plan_for_interval(4, 5).num_offloaded == 0


OPT = get_model("opt-6.7b")
A10 = get_hardware("a10")
COST = RooflineCostModel(OPT, A10)
SMALL = dict(batch_sizes=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), seq_lens=(16, 24, 32, 48, 64, 96, 128, 192, 256, 384,
                                                                        512, 768, 1024))
REC = PerformanceRecord.build(OPT, A10, COST, EngineConfig(), **SMALL)
REC8 = PerformanceRecord.build(OPT, A10, COST, EngineConfig(), **SMALL, staging_chunks=8, staging_slots=2)


def test_times_grow_with_batch_and_sequence():
    """Rounding up is conservative only because time and memory grow with batch size and length."""
    for phase in ("prefill", "decode"):
        bs, ss = REC.grid[phase]
        t = np.array([[REC.entries[(phase, b, s)].iteration_s[0] for s in ss] for b in bs])  # (b, s, interval)
        assert (np.diff(t, axis=0) >= -1e-15).all() and (np.diff(t, axis=1) >= -1e-15).all()
        kv = np.array([[REC.entries[(phase, b, s)].kv_bytes for s in ss] for b in bs])
        assert (np.diff(kv, axis=0) >= 0).all() and (np.diff(kv, axis=1) >= 0).all()
    base = REC.times(1e-3, 2e-3)
    assert (REC.times(1.1e-3, 2e-3) >= base).all() and (REC.times(1e-3, 3e-3) >= base).all()


def _event_time(shape: BatchShape, interval: int, contend: bool = False, chunks: int = 1) -> float:
    env = simpy.Environment()
    fab = Fabric.for_gpus(env, A10, 2)
    plan = plan_for_interval(OPT.num_layers, interval, chunks, 2)
    lb = OPT.weight_bytes_per_layer
    if contend:  # the other GPU of the bus streams all the time
        fab.transfer(fab.h2d_route(1), 1e12)
    proc = env.process(run_events(env, fab, 0, plan, COST.layer_time(shape), compile_copies(plan, lb),
                                  A10.link_latency_s, COST.fixed_time(shape), lb))
    env.run(until=proc)
    return proc.value.duration_s


chunks = st.lists(st.tuples(st.integers(1, 200), st.integers(0, 300)), max_size=5)
decodes = st.lists(st.integers(1, 900), max_size=24)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pre=chunks, dec=decodes, contend=st.booleans(), pieces=st.sampled_from([1, 8]))
def test_record_never_promises_what_the_event_simulation_misses(pre, dec, contend, pieces):
    """For any batch shape on the grid (prefill chunks with earlier context, decodes of any length, mixed),
    the record's time at every interval is at least what the event-level executor gives -- on a private
    link at share 1, and with the other GPU of the bus streaming at share 2; layers staged whole or in
    8 pieces through 2 slots."""
    if not pre and not dec:
        dec = [1]
    shape = BatchShape.build(prefill=pre, decode=dec)
    rec = REC if pieces == 1 else REC8
    pred = rec.predict(shape, share=1 if contend else 0)
    assert pred is not None
    b = rec.bound(shape)
    assert b[0] >= COST.layer_time(shape) * (1 - 1e-12) and b[1] >= COST.fixed_time(shape) * (1 - 1e-12)
    for i in (1, 2, 3, 5, 8, 16, 33):
        assert _event_time(shape, i, contend, pieces) <= pred[i - 1] * (1 + 1e-9)


def test_measured_record_from_the_profiler_csv():
    """The backend profiler's format: p90 layer times, fresh prompts only, pinned h2d copies measured while
    compute runs (the fixture's concurrent rows are slower), unmeasured points filled conservatively."""
    m, hw = get_model("llama-2-7b"), get_hardware("h100-sxm")
    rec = PerformanceRecord.from_measurements(m, hw, FIXTURES / "layer_times.csv", FIXTURES / "copy_bandwidth.csv")
    assert rec.grid["prefill"] == ((1, 4), (128, 512, 2048))
    assert rec.entries[("decode", 8, 512)].layer_s >= 2.270234e-04
    assert rec.entries[("prefill", 4, 512)].layer_s == pytest.approx(1.432492e-03)
    # (1, 2048) prefill measured; (4, 2048) not: filled from nothing larger -> absent; (4, 128) from (4, 512)
    assert rec.entries[("prefill", 4, 128)].layer_s == pytest.approx(1.432492e-03)
    assert 40e9 < rec.rates[0] < 50e9 and rec.latency_s >= 10e-6
    with pytest.raises(ValueError, match="no rows for model 'opt-13b'"):
        PerformanceRecord.from_measurements(get_model("opt-13b"), hw, FIXTURES / "layer_times.csv")


def test_record_cli_builds_prints_and_saves(tmp_path, capsys):
    from sim.record import main

    from .helpers import REPO

    assert main([str(REPO / "scenarios" / "selectn_a_prefill.yaml"), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "opt-6.7b on a10" in out and "prefill seq" in out and "decode seq" in out
    rec = PerformanceRecord.load(tmp_path / "r.json")
    assert rec.lookup("prefill", 16, 64).i_min[1.5] == 3 and rec.lookup("decode", 128, 96).i_min[1.5] == 8


def test_record_cli_takes_the_scenarios_staging_and_one_file_per_model(tmp_path, capsys):
    """(c) runs two models and stages Select-N's layers in 8 pieces: two records, beside --out, in pieces."""
    from sim.record import main

    from .helpers import REPO

    assert main([str(REPO / "scenarios" / "selectn_c_contention.yaml"), "--out", str(tmp_path / "r.json")]) == 0
    assert "staged in 8 pieces through 2 slots" in capsys.readouterr().out
    for m in ("opt-13b", "llama-2-13b"):
        rec = PerformanceRecord.load(tmp_path / f"r-{m}.json")
        assert (rec.chunks, rec.slots, rec.meta["model"]) == (8, 2, m)
