"""Collective costs (sim/cost/collectives.py) and the table behind them (calibration/collectives.py): the
interpolation's laws, the rules outside the data, the ring model by hand, the held-out error against the
data's own noise, and the committed table being what the command builds from ../shared."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import yaml

from calibration import collectives as build_mod
from sim.cost.collectives import (
    COLLECTIVES_PATH,
    CollectiveError,
    CollectiveModel,
    SizeCurve,
    collective_tables,
    measured_collectives,
    ring_collectives,
)

TABLES = ("a100-nvlink-pairs", "a100-nvswitch", "a100-nvswitch-2nodes", "h100-nvlink-pairs", "h100-nvswitch",
          "h100-nvswitch-2nodes")
MiB = 1 << 20


def _curves():
    for name in collective_tables():
        m = measured_collectives(name)
        for w, c in m.all_reduce.items():
            yield f"{name}/all_reduce/{w}", c
        if m.send_recv is not None:
            yield f"{name}/send_recv", m.send_recv


def test_tables_and_protocol():
    assert collective_tables() == TABLES
    for name in TABLES:
        assert isinstance(measured_collectives(name), CollectiveModel)
    assert isinstance(ring_collectives(25e9, 5e-6), CollectiveModel)
    assert measured_collectives("h100-nvswitch").workers == (2, 4, 8)
    assert measured_collectives("a100-nvswitch-2nodes").workers == (2, 4, 8, 16)
    assert measured_collectives("h100-nvlink-pairs").workers == (2, 4)


def test_exact_at_the_knots():
    for key, c in _curves():
        assert len(c.size_bytes) > 50, key
        for s, t in zip(c.size_bytes, c.time_s):
            assert c(s) == t, key


def test_monotone_between_knots_where_the_data_is():
    """Between two knots the interpolant moves monotonically from one knot's time to the other's: rising
    where the data rises, falling where it falls (an NCCL algorithm switch), never outside the two."""
    for key, c in _curves():
        s, t = c.size_bytes, c.time_s
        for i in range(len(s) - 1):
            xs = np.geomspace(s[i], s[i + 1], 9)[1:-1]
            ys = np.array([c(x) for x in xs])
            lo, hi = min(t[i], t[i + 1]), max(t[i], t[i + 1])
            assert np.all(ys >= lo * (1 - 1e-12)) and np.all(ys <= hi * (1 + 1e-12)), (key, i)
            d = np.diff(np.r_[t[i], ys, t[i + 1]])
            assert np.all(d >= -1e-18) if t[i + 1] >= t[i] else np.all(d <= 1e-18), (key, i)


def test_log_log_interpolation_by_hand():
    c = SizeCurve((1000.0, 4000.0), (1e-5, 4e-5))  # time proportional to size between the knots
    assert c(2000.0) == pytest.approx(2e-5, rel=1e-12)  # halfway in log size: the geometric mean
    c = SizeCurve((1000.0, 4000.0), (1e-5, 1e-5 * 9))
    assert c(2000.0) == pytest.approx(3e-5, rel=1e-12)  # sqrt(1 * 9) = 3


def test_outside_the_data():
    c = SizeCurve((1000.0, 2000.0, 4000.0, 8000.0), (10e-6, 12e-6, 20e-6, 36e-6))
    # below the smallest size: the smallest size's time (latency floor)
    assert c(1.0) == c(999.0) == 10e-6
    # beyond the largest: the marginal bandwidth of the last octave, (36 - 20) us per 4000 bytes
    assert c(16000.0) == pytest.approx(36e-6 + 8000 * 16e-6 / 4000, rel=1e-12)
    m = measured_collectives("h100-nvswitch")
    assert m.all_reduce_s(64 * MiB, 1) == 0.0 and m.all_reduce_s(0, 8) == 0.0 and m.send_recv_s(0) == 0.0
    # a worker count between measured ones takes the next larger one (never faster than measured)
    assert m.all_reduce_s(8 * MiB, 3) == m.all_reduce_s(8 * MiB, 4)
    assert m.all_reduce_s(8 * MiB, 6) == m.all_reduce_s(8 * MiB, 8)
    with pytest.raises(CollectiveError, match="measured for 2, 4, 8 workers, not 16; use ring_collectives"):
        m.all_reduce_s(MiB, 16)
    with pytest.raises(CollectiveError, match="h100-nvswitch-2nodes: no all-reduce was measured"):
        measured_collectives("h100-nvswitch-2nodes").all_reduce_s(MiB, 2)
    with pytest.raises(CollectiveError, match="unknown collectives table 'h100-pcie': allowed are a100-nvlink-pairs"):
        measured_collectives("h100-pcie")


def test_ring_model_by_hand():
    r = ring_collectives(link_bytes_per_s=25e9, latency_s=5e-6)
    # 4 GPUs, 1 MB: 2 * 3 steps; each link carries 2 * 3/4 of the message: 0.75e6 * 2 / 25e9 = 60 us, plus 6 x 5 us
    assert r.all_reduce_s(1e6, 4) == pytest.approx(60e-6 + 30e-6, rel=1e-12)
    assert r.all_reduce_s(1e6, 2) == pytest.approx(1e6 / 25e9 + 2 * 5e-6, rel=1e-12)  # 2(n-1)/n = 1
    assert r.all_reduce_s(1e6, 1) == 0.0
    assert r.send_recv_s(1e6) == pytest.approx(5e-6 + 40e-6, rel=1e-12)
    with pytest.raises(CollectiveError, match="link_bytes_per_s > 0"):
        ring_collectives(0, 1e-6)


@pytest.mark.parametrize("table,workers,link_gb_per_s", [("h100-nvswitch", 8, 450), ("a100-nvswitch", 8, 300),
                                                         ("h100-nvswitch", 4, 450), ("a100-nvswitch", 2, 300)])
def test_large_all_reduce_bus_bandwidth_is_physical(table, workers, link_gb_per_s):
    """At 64 MiB a ring all-reduce is bandwidth-bound: its bus bandwidth, 2(n-1)/n x bytes / time, must stay
    under the GPU's NVLink bandwidth per direction (H100 NVLink 4: 450 GB/s; A100 NVLink 3: 300 GB/s) and
    be a sizeable part of it."""
    n, size = workers, 64 * MiB
    bus = 2 * (n - 1) / n * size / measured_collectives(table).all_reduce_s(size, n) / 1e9
    assert 0.3 * link_gb_per_s < bus < link_gb_per_s


def test_fabrics_order_as_their_links():
    """Same GPUs, same message: NVSwitch beats NVLink pairs at 4 GPUs (pairs must cross PCIe), and two
    nodes over the network are slower than one node."""
    for size in (4 * MiB, 32 * MiB):
        assert (measured_collectives("h100-nvswitch").all_reduce_s(size, 4)
                < measured_collectives("h100-nvlink-pairs").all_reduce_s(size, 4))
        assert (measured_collectives("a100-nvswitch").all_reduce_s(size, 8)
                < measured_collectives("a100-nvswitch-2nodes").all_reduce_s(size, 8))
        assert (measured_collectives("h100-nvswitch").send_recv_s(size)
                < measured_collectives("h100-nvswitch-2nodes").send_recv_s(size))


def test_loads_from_a_copy_without_the_shared_data(tmp_path):
    """The simulator needs only the committed file: a copy elsewhere gives the same model."""
    p = tmp_path / "collectives.yaml"
    shutil.copy(COLLECTIVES_PATH, p)
    a, b = measured_collectives("a100-nvswitch"), measured_collectives("a100-nvswitch", p)
    assert a.all_reduce_s(3 * MiB, 4) == b.all_reduce_s(3 * MiB, 4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: 1\ntables: {x: {all_reduce: {2: {size_bytes: [2, 1], time_s: [1, 1]}}}}\n")
    with pytest.raises(CollectiveError, match="increasing positive sizes"):
        measured_collectives("x", bad)


# --- against ../shared ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(shared):
    return shared / "data" / "measurements" / "vidur"


def test_committed_table_is_what_the_command_builds(data_dir):
    tables, scores, files = build_mod.build(data_dir)
    doc = build_mod.to_document(tables, scores, files, "cmd")
    committed = yaml.safe_load(COLLECTIVES_PATH.read_text())
    fresh = yaml.safe_load(yaml.safe_dump(doc, sort_keys=False))  # the same YAML round trip as the file
    assert committed["tables"] == fresh["tables"]
    assert committed["scores"] == fresh["scores"]
    assert committed["provenance"]["data_files"] == fresh["provenance"]["data_files"]
    assert committed["provenance"]["command"].startswith("python -m calibration.collectives")


def test_held_out_error_within_the_datas_own_noise(data_dir):
    """The table is built from every other measured size; on the sizes it never saw, its error stays within
    what the data itself scatters. Bound, per series and below / from 1 MiB: a held-out time and the knots
    it is interpolated from each carry the measurements' scatter (each time against the median of its 4
    nearest sizes: ``noise``), so their difference spreads up to about twice it; plus the files' 1 us
    resolution relative to the times (medians: at the median time; p90: at the 10th-percentile time)."""
    worst = 0.0
    for (table, op, w), (rows, _src, _which) in build_mod.series(data_dir).items():
        sizes, train = build_mod.split_sizes(rows)
        is_train = rows["size_bytes"].isin(sizes[train]).to_numpy()
        ks, kt = build_mod.build_knots(rows[is_train])
        curve = SizeCurve(tuple(float(x) for x in ks), tuple(kt))
        size, t = rows["size_bytes"].to_numpy(), rows["time_s"].to_numpy()
        err = np.abs(np.array([curve(x) for x in size]) / t - 1.0)
        noise, noise_size = build_mod.neighbour_noise(rows)
        assert len(sizes[~train]) >= 400  # 993 measured sizes (A100 pairs: 2247), half held out
        for below in (True, False):
            m = ~is_train & ((size < MiB) if below else (size >= MiB))
            nm = (noise_size < MiB) if below else (noise_size >= MiB)
            h, th = err[m], t[m]
            med_bound = 2 * np.median(noise[nm]) + 1e-6 / np.median(th)
            p90_bound = 2 * np.quantile(noise[nm], 0.9) + 1e-6 / np.quantile(th, 0.1)
            key = (table, op, w, "< 1 MiB" if below else ">= 1 MiB")
            assert np.median(h) <= med_bound, (key, np.median(h), med_bound)
            assert np.quantile(h, 0.9) <= p90_bound, (key, np.quantile(h, 0.9), p90_bound)
            worst = max(worst, np.median(h) / med_bound, np.quantile(h, 0.9) / p90_bound)
        # from 1 MiB (bandwidth-bound, 87 % of the rows) the held-out median is within 1.5 %
        big = ~is_train & (size >= MiB)
        assert np.median(err[big]) < 0.015, (table, op, w)
    assert worst > 0.5  # the bound is not slack: some series come close to their data's noise


def test_pairwise_send_recv_files_are_one_measurement(data_dir):
    from calibration.measurements import sha256

    assert sha256(data_dir / "a100_pairwise_nvlink_send_recv.csv") == sha256(
        data_dir / "h100_pairwise_nvlink_send_recv.csv")
    assert (measured_collectives("a100-nvlink-pairs").send_recv.time_s
            == measured_collectives("h100-nvlink-pairs").send_recv.time_s)


def test_interpolation_beats_a_straight_line(data_dir):
    """The point of interpolating: a latency + bytes/bandwidth line through the smallest and largest sizes
    (what 'a fitted line through two points' gives) misses the measured curve by far more."""
    rows, _, _ = build_mod.series(data_dir)[("h100-nvswitch", "all_reduce", 8)]
    size, t = rows["size_bytes"].to_numpy(), rows["time_s"].to_numpy()
    i0, i1 = np.argmin(size), np.argmax(size)
    slope = (t[i1] - t[i0]) / (size[i1] - size[i0])
    line = t[i0] + (size - size[i0]) * slope
    table = measured_collectives("h100-nvswitch")
    ours = np.array([table.all_reduce_s(s, 8) for s in size])
    assert np.median(np.abs(ours / t - 1)) < 0.2 * np.median(np.abs(line / t - 1))
    assert math.isfinite(ours.sum())
