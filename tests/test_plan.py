"""OffloadPlan constructors and validation."""

import pytest

from sim.core.offload_plan import OffloadPlan, PlanError

from .helpers import tiny_model


def test_select_n_layout():
    p = OffloadPlan.select_n(10, 3)
    assert p.offloaded == (2, 5, 8)  # last layer of each full group; layer 9 is a partial group, resident
    assert p.issue_at == (0, 3, 6)  # copy starts when the group's first layer starts
    assert p.num_buffers == 1 and p.interval == 3
    assert OffloadPlan.select_n(4, 1).offloaded == (0, 1, 2, 3)
    assert OffloadPlan.select_n(4, 4).offloaded == (3,)
    with pytest.raises(PlanError, match=r"interval must be in \[1, 4\]"):
        OffloadPlan.select_n(4, 5)


def test_select_n_in_pieces_stages_slots_over_chunks_of_a_layer():
    m = tiny_model(layers=8)
    p = OffloadPlan.select_n(8, 4, chunks=8, slots=2)
    assert p.offloaded == (3, 7) and p.issue_at == (0, 4) and p.interval == 4
    assert p.staging_bytes(m) == 2 / 8 * m.weight_bytes_per_layer  # two slots of one eighth
    assert p.host_bytes(m) == OffloadPlan.select_n(8, 4).host_bytes(m)  # same bytes offloaded
    assert OffloadPlan.select_n(8, 4).staging_bytes(m) == m.weight_bytes_per_layer
    assert "8 pieces through 2 slots" in p.describe()
    with pytest.raises(PlanError, match=r"slots must be in \[1, chunks=4\]"):
        OffloadPlan.select_n(8, 4, chunks=4, slots=5)
    with pytest.raises(PlanError, match="chunks must be >= 1"):
        OffloadPlan.uva(8, (0,), 1.0).__class__(8, (0,), (), 0, 1.0, "uva", chunks=2)


def test_baseline_plans():
    d = OffloadPlan.deepspeed(4)
    assert d.offloaded == (0, 1, 2, 3) and d.issue_at == (0, 0, 1, 2) and d.num_buffers == 2
    g = OffloadPlan.prefetch_groups(8, group_size=4, offload_per_group=2, prefetch_step=2)
    assert g.offloaded == (2, 3, 6, 7) and g.issue_at == (0, 1, 4, 5) and g.num_buffers == 2
    assert OffloadPlan.prefetch_groups(8, 4, 0).offloaded == ()
    f = OffloadPlan.layerwise(4, 0.25)
    m = tiny_model()
    assert f.host_bytes(m) == 4 * 0.25 * m.weight_bytes_per_layer
    assert f.staging_bytes(m) == 2 * 0.25 * m.weight_bytes_per_layer


def test_uva_bytes_fills_whole_layers_first():
    m = tiny_model(layers=8)
    p = OffloadPlan.uva_bytes(m, 3.5 * m.weight_bytes_per_layer)
    assert p.mode == "uva" and p.offloaded == (0, 1, 2) and p.staging_bytes(m) == 0


def test_memory_accounting_conserves_bytes():
    m = tiny_model(layers=12)
    for i in range(1, 13):
        p = OffloadPlan.select_n(12, i)
        assert p.host_bytes(m) + p.resident_layer_bytes(m) == 12 * m.weight_bytes_per_layer
        assert p.num_offloaded == 12 // i


@pytest.mark.parametrize("kw,msg", [
    (dict(offloaded=(2, 1), issue_at=(0, 0), num_buffers=1), "increasing"),
    (dict(offloaded=(1,), issue_at=(2,), num_buffers=1), "at or before"),
    (dict(offloaded=(1,), issue_at=(0,), num_buffers=0), "staging buffer"),
    (dict(offloaded=(5,), issue_at=(0,), num_buffers=1), r"\[0, 4\)"),
    (dict(offloaded=(1,), issue_at=(0,), num_buffers=1, fraction=0), "fraction"),
])
def test_invalid_plans(kw, msg):
    with pytest.raises(PlanError, match=msg):
        OffloadPlan(4, **kw)
