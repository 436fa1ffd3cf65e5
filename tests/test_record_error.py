"""Record error: executed iterations stray from the record by a bias and a seeded noise; the self-correcting
Select-N (``correct: true``) learns the bias from what it observes, the paper's controller does not."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sim.api import PolicySpec, simulate
from sim.config.scenario import load_scenario
from sim.core.workload import Batch, Fixed, SyntheticWorkload
from sim.engine.record_error import RecordError

from .helpers import REPO


def _batch_runs(err: RecordError | None, policy: PolicySpec):
    rs = SyntheticWorkload(Batch(8), Fixed(256), Fixed(32), duration_s=1).generate(seed=0)
    return simulate("llama-2-7b", "a10", rs, [policy], record_error=err, detail_iterations=0)[policy.label]


@pytest.mark.parametrize("policy", [PolicySpec("none"), PolicySpec("selectn-static", {"interval": 8})])
def test_a_bias_stretches_every_iteration_by_exactly_its_factor(policy):
    """Same requests, same plans: with a 10 % bias (no noise) every request's end comes 1.1x later (the
    iterations, compute and copies alike, each take 1.1x -- all but a copy's fixed ~10 us link latency;
    nothing else happens between them)."""
    base = _batch_runs(None, policy).requests
    slow = _batch_runs(RecordError(bias=0.1), policy).requests
    assert np.allclose(slow.e2e_s.to_numpy(), 1.1 * base.e2e_s.to_numpy(), rtol=1e-4)
    assert not np.allclose(slow.e2e_s.to_numpy(), base.e2e_s.to_numpy(), rtol=0.05)


def test_noise_is_seeded_and_unbiased():
    a = [RecordError(0.0, 0.1, seed=5).stream(0).next() for _ in range(1)]
    s1, s2 = RecordError(0.0, 0.1, seed=5).stream(0), RecordError(0.0, 0.1, seed=5).stream(0)
    x = np.array([s1.next() for _ in range(20000)])
    assert np.array_equal(x[:100], np.array([s2.next() for _ in range(100)])) and a[0] == x[0]
    assert abs(x.mean() - 1.0) < 0.005 and 0.09 < np.log(x).std() < 0.11
    other = RecordError(0.0, 0.1, seed=5).stream(1)
    assert other.next() != x[0]  # each GPU has its own stream
    with pytest.raises(ValueError):
        RecordError(bias=-0.95)


def test_self_correction_beats_trusting_the_record_under_a_10_percent_bias(tmp_path):
    """burst.yaml (two of its bursts), executed iterations 10 % slower than the record: the paper's
    controller plans to its record and serves many requests late (mean TPOT over the SLO); the
    self-correcting one learns a scale of ~1.1 and serves them in time."""
    d = yaml.safe_load((REPO / "scenarios" / "burst.yaml").read_text())
    d["workload"]["duration_s"] = 200
    d["workload"]["bursts"] = d["workload"]["bursts"][:2]
    d["compare"] = [{"name": "trusting", "policy": "selectn"},
                    {"name": "correcting", "policy": "selectn", "params": {"correct": True}}]
    d["record_error"] = {"bias": 0.1, "noise": 0.05}
    p = tmp_path / "burst-error.yaml"
    p.write_text(yaml.safe_dump(d))
    runs = load_scenario(p).simulate(detail_iterations=0)

    def late(run):
        df = run.requests
        return int(((df.state == "finished") & ~df.slo_met.astype(bool)).sum())

    t, c = runs["trusting"], runs["correcting"]
    assert c.summary["slo_attainment"] >= t.summary["slo_attainment"] + 0.1
    assert late(t) >= 10 * max(late(c), 1) / 2
    assert c.result.instances[0].policy.time_scale == pytest.approx(1.1, abs=0.03)
    assert t.result.instances[0].policy.time_scale == 1.0
