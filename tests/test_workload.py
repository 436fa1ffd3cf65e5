"""Workloads: arrival processes, lengths, and trace replay of the real Azure files."""

import numpy as np
import pytest

from sim.core.workload import (
    Batch,
    Burst,
    Constant,
    Empirical,
    Fixed,
    Gamma,
    LogNormal,
    Poisson,
    SyntheticWorkload,
    TraceWorkload,
    Uniform,
    WorkloadError,
    empirical_from_trace,
    read_trace,
)

from .helpers import FIXTURES


def test_azure_conv_replay(shared):
    rs = TraceWorkload(shared / "data" / "traces" / "azure_conv_2023.csv").generate(seed=0)
    assert len(rs) == 19366
    assert 3400 < rs.duration_s < 3600
    assert np.median(rs.prompt_tokens) == pytest.approx(1020, abs=5)  # published median prompt
    assert np.median(rs.output_tokens) == pytest.approx(129, abs=2)  # published median output
    assert np.all(np.diff(rs.arrival_s) >= 0)


def test_azure_code_replay_window_and_scaling(shared):
    path = shared / "data" / "traces" / "azure_code_2023.csv"
    full = TraceWorkload(path).generate(0)
    assert len(full) == 8819 and np.median(full.prompt_tokens) == pytest.approx(1469, abs=10)
    win = TraceWorkload(path, window_start_s=600, window_s=300, time_scale=0.1).generate(0)
    n_in = int(((full.arrival_s >= 600) & (full.arrival_s < 900)).sum())
    assert len(win) == n_in and win.arrival_s.max() < 30.0  # 300 s compressed 10x
    doubled = TraceWorkload(path, window_s=300, rate_scale=2.0).generate(0)
    once = TraceWorkload(path, window_s=300).generate(0)
    assert len(doubled) == 2 * len(once)
    assert np.allclose(np.sort(doubled.arrival_s)[::2], np.sort(once.arrival_s), atol=1e-3)


def test_original_azure_and_burstgpt_layouts():
    az = read_trace(FIXTURES / "azure_original.csv")
    assert list(az.prompt_tokens) == [374, 396, 879, 91]
    assert az.arrival_s.iloc[1] == pytest.approx(50.9951690 - 46.6805900)
    bg = read_trace(FIXTURES / "burstgpt.csv")
    assert list(bg.output_tokens) == [18, 30, 303]  # the failed (0-token) response is dropped
    assert list(bg.arrival_s) == [0.0, 113.0, 125.0]


def test_bad_traces(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        read_trace(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(WorkloadError, match="unknown trace layout"):
        read_trace(tmp_path / "x.csv")


def test_same_seed_same_requests_and_different_seed_differs():
    w = SyntheticWorkload(Gamma(5.0, 2.0), LogNormal(500, 1.0), Uniform(10, 100), 100.0, [Burst(40, 10, 30)])
    a, b, c = w.generate(7), w.generate(7), w.generate(8)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_arrival_rates_and_burst():
    rng = lambda k: np.random.default_rng(k)  # noqa: E731
    t = Poisson(10.0).times(rng(0), 0, 1000)
    assert len(t) == pytest.approx(10_000, rel=0.03)
    g = Gamma(10.0, 3.0).times(rng(1), 0, 2000)
    gaps = np.diff(g)
    assert gaps.mean() == pytest.approx(0.1, rel=0.1) and gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.15)
    assert np.allclose(Constant(4.0).times(rng(2), 0, 1), [0, 0.25, 0.5, 0.75])
    assert list(Batch(3, 0.0).times(rng(3), 0, 10)) == [0.0, 0.0, 0.0]
    w = SyntheticWorkload(Poisson(2.0), Fixed(10), Fixed(5), 100.0, [Burst(50, 10, 100.0)])
    t = w.generate(1).arrival_s
    in_burst = ((t >= 50) & (t < 60)).sum()
    assert in_burst == pytest.approx(10 * 102, rel=0.1)


def test_length_distributions():
    rng = np.random.default_rng(0)
    x = LogNormal(1000, 0.5, 1, 3000).sample(rng, 20000)
    assert np.median(x) == pytest.approx(1000, rel=0.03) and x.max() <= 3000
    assert set(Empirical((3, 7)).sample(rng, 100)) == {3, 7}
    u = Uniform(5, 6).sample(rng, 100)
    assert set(u) == {5, 6}


def test_empirical_from_trace_keeps_mix(shared):
    p, o = empirical_from_trace(shared / "data" / "traces" / "azure_conv_2023.csv")
    s = p.sample(np.random.default_rng(0), 50000)
    assert np.median(s) == pytest.approx(1020, rel=0.03)
