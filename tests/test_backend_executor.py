"""The offload executor on the CPU: offloaded runs compute exactly what a resident run computes, the
recorded spans obey the plan's dependencies, and the stream program it issues (replayed under CUDA stream
semantics) gives the simulator's schedule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from backend.executor import OffloadExecutor
from backend.kv import PaddedKVCache, StepInputs
from backend.streams import HostStreams
from backend.weights import ModelWeights
from sim.core.offload_plan import OffloadPlan
from sim.engine.iteration import compile_copies, run_closed_form

from .backend_cases import L, assert_logits_agree, check_dependencies, plan_sequences, prefill_then_decode, small_spec

SEQS = plan_sequences()


@pytest.fixture(scope="module")
def weights() -> ModelWeights:
    return ModelWeights(small_spec(), "cpu", seed=3)


@pytest.fixture(scope="module")
def reference(weights: ModelWeights) -> list[torch.Tensor]:
    n = max(len(s) for s in SEQS.values())
    outs, _ = prefill_then_decode(weights, [OffloadPlan.resident(L)] * n)
    return outs


def whole_layers(plans) -> bool:
    return all(p.fraction == 1 for p in plans)


@pytest.mark.parametrize("name", list(SEQS))
def test_offloaded_logits_equal_resident(weights, reference, name):
    """fp32 on the CPU. Plans that move whole layers run the same kernels on bit-identical weights, only
    read from a staging buffer or the host buffer (uva): bit-identical logits. A layer-wise fraction
    (flexgen, uva with a fraction) multiplies each weight as two row blocks; the BLAS library may block that
    product differently (it does on some AVX2 and AVX-512 CPUs), so those logits agree up to the summation
    order of fp32 dot products (`summation_order_tolerance`)."""
    plans = SEQS[name]
    outs, recs = prefill_then_decode(weights, plans)
    for k, (got, want) in enumerate(zip(outs, reference)):
        assert_logits_agree(got, want, weights.spec, whole_layers(plans[:k + 1]),
                                           f"{name}: iteration {k}")
    for rec in recs:
        check_dependencies(rec)


def test_the_tolerance_catches_a_wrong_layer(weights, reference):
    """A plan that skipped or misplaced one layer's weights would move the logits far beyond the
    summation-order tolerance: swapping two layers' weights does."""
    swapped = ModelWeights(weights.spec, "cpu", seed=3)
    swapped.host_layers[1], swapped.host_layers[2] = swapped.host_layers[2], swapped.host_layers[1]
    outs, _ = prefill_then_decode(swapped, [OffloadPlan.layerwise(L, 0.5)] * 2)
    with pytest.raises(AssertionError, match="more than a reordered"):
        assert_logits_agree(outs[0], reference[0], weights.spec, False, "swapped")


@pytest.mark.parametrize("plans", [[OffloadPlan.select_n(L, 2)] * 3, [OffloadPlan.deepspeed(L)] * 3,
                                   [OffloadPlan.layerwise(L, 0.5), OffloadPlan.select_n(L, 1),
                                    OffloadPlan.uva(L, range(L))]])
def test_opt_variant_equal(plans):
    w = ModelWeights(small_spec("opt"), "cpu", seed=4)
    want, _ = prefill_then_decode(w, [OffloadPlan.resident(L)] * len(plans))
    got, recs = prefill_then_decode(w, plans)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_logits_agree(a, b, w.spec, whole_layers(plans[:k + 1]), f"opt: iteration {k}")
    assert all(torch.isfinite(t).all() for t in got)


def test_copies_match_the_plan(weights):
    """Bytes and kinds per iteration: one copy per offloaded layer, of the offloaded part only."""
    lb = weights.layer_bytes
    for plan in (OffloadPlan.select_n(L, 2), OffloadPlan.deepspeed(L), OffloadPlan.layerwise(L, 0.5)):
        _, recs = prefill_then_decode(weights, [plan] * 2)
        for rec in recs:
            assert [c.layer for c in rec.copies] == list(plan.offloaded)
            assert {c.kind for c in rec.copies} == {"copy"}
            assert rec.copy_bytes == pytest.approx(plan.num_offloaded * plan.fraction * lb, rel=0.02)
    _, recs = prefill_then_decode(weights, [OffloadPlan.uva(L, range(2))] * 2)
    assert [(c.layer, c.kind) for c in recs[-1].copies] == [(0, "uva"), (1, "uva")]
    for l, c in enumerate(recs[-1].copies):  # uva bytes are read while the layer computes
        assert (c.start_s, c.end_s) == recs[-1].layers[l]


def test_promote_and_demote(weights):
    """Demoting frees the layer's device buffer at once; promoting copies it in at the start of the next
    iteration (compile_copies' promote list, before the plan's copies), and the layer waits for it."""
    ex = OffloadExecutor(weights, OffloadPlan.select_n(L, 2))
    kv = PaddedKVCache(weights.spec, 1, 16, "cpu", weights.dtype)
    step = lambda pos: ex.step(kv, StepInputs.build([[pos + 1]], [pos], "cpu"))[1]  # noqa: E731
    full = L * weights.layer_bytes
    assert ex.resident_bytes == full - 2 * weights.layer_bytes  # layers 1 and 3 offloaded
    staging = ex._staging[0].data_ptr()
    step(0)
    assert ex.set_plan(OffloadPlan.resident(L)) == [1, 3]
    rec = step(1)
    assert rec.promoted == (1, 3)
    assert [(c.layer, c.kind) for c in rec.copies] == [(1, "promote"), (3, "promote")]
    check_dependencies(rec)
    assert ex.resident_bytes == full
    assert step(2).copies == []  # promoted layers stay
    ex.set_plan(OffloadPlan.select_n(L, 1))  # demote everything
    assert ex.resident_bytes == 0
    rec = step(3)
    assert [c.kind for c in rec.copies] == ["copy"] * L
    ex.set_plan(OffloadPlan.select_n(L, 3))  # promote 0, 1, 3, 4; layer 2 stays offloaded
    rec = step(4)
    assert [(c.layer, c.kind) for c in rec.copies] == [(0, "promote"), (1, "promote"), (3, "promote"),
                                                        (4, "promote"), (2, "copy")]
    check_dependencies(rec)
    assert ex._staging[0].data_ptr() == staging  # staging buffer allocated once, reused by every plan


def test_promotion_cancelled_by_a_second_plan_change(weights):
    ex = OffloadExecutor(weights, OffloadPlan.select_n(L, 1))
    assert ex.set_plan(OffloadPlan.resident(L)) == list(range(L))
    assert ex.set_plan(OffloadPlan.select_n(L, 2)) == [0, 2, 4]  # 1 and 3 offloaded again: no promotion
    kv = PaddedKVCache(weights.spec, 1, 4, "cpu", weights.dtype)
    _, rec = ex.step(kv, StepInputs.build([[1]], [0], "cpu"))
    assert [(c.layer, c.kind) for c in rec.copies] == [(0, "promote"), (2, "promote"), (4, "promote"),
                                                        (1, "copy"), (3, "copy")]


def test_a_plan_staged_in_pieces_is_refused_and_the_plan_kept(weights):
    """The backend stages whole layers; a simulated-only plan (layers in pieces) is refused with a reason,
    and the executor keeps running its current plan."""
    ex = OffloadExecutor(weights, OffloadPlan.select_n(L, 2))
    with pytest.raises(ValueError, match="streams layers in 4 pieces.*staging_chunks: 1"):
        ex.set_plan(OffloadPlan.select_n(L, 2, chunks=4, slots=2))
    assert ex.plan == OffloadPlan.select_n(L, 2)


def test_staging_pool_grows_only_when_needed(weights):
    ex = OffloadExecutor(weights, OffloadPlan.select_n(L, 2))
    assert len(ex._staging) == 1
    ptr = ex._staging[0].data_ptr()
    ex.set_plan(OffloadPlan.deepspeed(L))
    assert len(ex._staging) == 2 and ex._staging[0].data_ptr() == ptr
    ex.set_plan(OffloadPlan.select_n(L, 1))
    ex.set_plan(OffloadPlan.layerwise(L, 0.5))  # smaller parts fit the existing buffers
    assert len(ex._staging) == 2 and ex._staging[0].data_ptr() == ptr
    assert ex.staging_bytes == 2 * weights.layer_bytes


def replay(log: list[tuple], compute_s: float, rate: float) -> dict[tuple[str, int], float]:
    """Execute a logged stream program the way CUDA does: each stream runs its operations in issue order;
    ``wait`` blocks the stream until the marker's time; a layer takes ``compute_s`` (between its start and
    end markers), a copy takes bytes / rate; the embedding and head take no time. Returns marker times by
    (what, layer) for layer and copy markers."""
    queues: dict[str, list[tuple]] = {"compute": [], "copy": []}
    for op in log:
        queues[op[1]].append(op)
    pos, now = {"compute": 0, "copy": 0}, {"compute": 0.0, "copy": 0.0}
    when: dict[int, float] = {}
    out: dict[tuple[str, int], float] = {}
    progress = True
    while progress:
        progress = False
        for s, q in queues.items():
            while pos[s] < len(q):
                op = q[pos[s]]
                if op[0] == "wait":
                    if op[2] not in when:
                        break  # the marker is recorded later on the other stream
                    now[s] = max(now[s], when[op[2]])
                elif op[0] == "copy":
                    now[s] += op[2] / rate
                else:  # record
                    _, _, mid, what, layer = op
                    if what == "layer_end":
                        now[s] += compute_s
                    when[mid] = now[s]
                    if layer >= 0:
                        out[(what, layer)] = now[s]
                pos[s] += 1
                progress = True
    assert all(pos[s] == len(q) for s, q in queues.items()), "the stream program deadlocks"
    return out


@pytest.mark.parametrize("name", [n for n in SEQS if not n.startswith(("uva", "promote"))] + ["promote"])
def test_stream_program_replays_to_the_simulators_schedule(weights, name):
    """What the executor issues on a GPU -- records, waits and copies per stream -- is logged on the CPU
    and replayed with CUDA's stream semantics and fixed durations; the times must equal the simulator's
    closed form for the same plan, float for float. This checks the GPU dependency logic (which waits on
    which event) without a GPU: a missing or wrong wait shows up as a different schedule."""
    compute_s, rate = 1.0, weights.layer_bytes / 2.5  # a full-layer copy takes 2.5 layers
    if name == "promote":
        first, plan, promote = OffloadPlan.select_n(L, 1), OffloadPlan.select_n(L, 3), [0, 1, 3, 4]
    else:
        first = plan = SEQS[name][0]
        promote = []
    log: list[tuple] = []
    ex = OffloadExecutor(weights, first, streams=HostStreams(log))
    ex.set_plan(plan)
    kv = PaddedKVCache(weights.spec, 1, 4, "cpu", weights.dtype)
    _, rec = ex.step(kv, StepInputs.build([[1]], [0], "cpu"))
    got = replay(log, compute_s, rate)
    # the simulator, charged the bytes this backend really moves (a flexgen split is rounded to a row)
    tasks = tuple(dataclasses.replace(t, nbytes=c.bytes) for t, c in
                  zip(compile_copies(plan, weights.layer_bytes, promote=promote), rec.copies))
    sim = run_closed_form(0.0, plan, compute_s, tasks, rate, 0.0, 0.0, record=True)
    for l in range(L):
        assert got[("layer_start", l)] == pytest.approx(sim.layer_start_s[l], abs=1e-12)
        assert got[("layer_end", l)] == pytest.approx(sim.layer_end_s[l], abs=1e-12)
    for l, s, e, _ in sim.copies:
        assert got[("copy_start", l)] == pytest.approx(s, abs=1e-12)
        assert got[("copy_end", l)] == pytest.approx(e, abs=1e-12)


def test_replay_catches_a_missing_wait(weights):
    """The replay is a real check: drop the waits of the copy stream and the schedule changes."""
    plan = OffloadPlan.deepspeed(L)
    log: list[tuple] = []
    ex = OffloadExecutor(weights, plan, streams=HostStreams(log))
    kv = PaddedKVCache(weights.spec, 1, 4, "cpu", weights.dtype)
    ex.step(kv, StepInputs.build([[1]], [0], "cpu"))
    good = replay(log, 1.0, weights.layer_bytes / 0.5)
    bad = replay([op for op in log if not (op[0] == "wait" and op[1] == "copy")], 1.0, weights.layer_bytes / 0.5)
    assert good != bad
    assert bad[("copy_start", 2)] < good[("layer_end", 0)]  # would overwrite layer 0's buffer while it runs
