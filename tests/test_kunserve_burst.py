"""The KunServe burst scenarios: they load, and a shortened run shows the headline relations."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.config.scenario import load_scenario

from .helpers import REPO, shared_dir

SCENARIOS = REPO / "scenarios"


def shortened(tmp_path: Path, name: str, window_s: float, burst_s: float, keep: tuple[str, ...]) -> Path:
    d = yaml.safe_load((SCENARIOS / f"{name}.yaml").read_text())
    d["workload"]["trace"]["window_s"] = window_s
    d["workload"]["trace"]["bursts"][0]["duration_s"] = burst_s
    d["compare"] = [c for c in d["compare"] if c["name"] in keep]
    p = tmp_path / f"{name}-short.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def burst_p99(run, start: float, end: float) -> float:
    df = run.requests
    b = df[(df.arrival_s >= start) & (df.arrival_s < end)]
    return float(np.nanpercentile(b.ttft_s, 99))


@pytest.mark.parametrize("name", ["kunserve_burst", "kunserve_burst_h100", "kunserve_imbalance"])
def test_shipped_burst_scenarios_load(name):
    sc = load_scenario(SCENARIOS / f"{name}.yaml", trace=shared_dir() / "data" / "traces" / "azure_conv_2023.csv")
    assert sc.sc.hardware.num_gpus == 4 and sc.model.name == "llama-2-13b"
    assert [c.handler for c in sc.sc.compare] == ["recompute", "swap", "migrate", "infercept", "kunserve"]
    assert sc.sc.workload.trace.window_s == 600  # ten minutes of the trace
    assert "path: ../../shared/data/traces/azure_conv_2023.csv" in (SCENARIOS / f"{name}.yaml").read_text()


def test_burst_h100_shortened(tmp_path):
    """Five minutes of the trace, a 60 s burst: KunServe drops, grows and absorbs the burst; its P99 TTFT
    during the burst is well below recompute's and migration's (which has no spare instance to move to)."""
    p = shortened(tmp_path, "kunserve_burst_h100", 300, 60, ("recompute", "migrate", "kunserve"))
    sc = load_scenario(p, trace=shared_dir() / "data" / "traces" / "azure_conv_2023.csv")
    runs = sc.simulate(detail_iterations=0)
    for r in runs.values():
        assert r.summary["finished"] == r.summary["requests"] == len(sc.requests)
    p99 = {n: burst_p99(r, 30, 90) for n, r in runs.items()}
    assert p99["kunserve"] * 10 < p99["recompute"] and p99["kunserve"] * 10 < p99["migrate"]
    k = runs["kunserve"]
    stats = k.result.stats
    # a pair drops, is still overloaded and grows into a group of four (this shortened replay ends ~20 s
    # after the burst, before the grown group's 15 s restore window has passed)
    assert stats["drops"] >= 2 and stats["kunserve_regroups"] >= 1 and stats.get("restores", 0) <= stats["drops"]
    names = [n for _r, n, _t in k.result.timeline.instants]
    assert any(n.startswith("drop g=2") for n in names) and any(n.startswith("drop g=4") for n in names)
    # the series show the groups and the KV capacity they add
    s = k.series
    assert (s.group >= 0).any() and (s.stages > 1).any()
    cap = s.groupby("gpu").kv_capacity_tokens
    assert (cap.max() > cap.min()).all()
    # TPOT is reported, not hidden: requests served by the pipelined groups (arriving in the burst) decode
    # slower than those before the drop
    df = k.requests
    before, during = df[df.arrival_s < 30], df[(df.arrival_s >= 30) & (df.arrival_s < 90)]
    assert np.nanpercentile(during.tpot_mean_s, 99) > 1.5 * np.nanpercentile(before.tpot_mean_s, 99)


def test_burst_a100_shortened(tmp_path):
    p = shortened(tmp_path, "kunserve_burst", 300, 100, ("recompute", "kunserve"))
    sc = load_scenario(p, trace=shared_dir() / "data" / "traces" / "azure_conv_2023.csv")
    runs = sc.simulate(detail_iterations=0)
    p99 = {n: burst_p99(r, 30, 130) for n, r in runs.items()}
    assert p99["kunserve"] * 4 < p99["recompute"]
    assert runs["kunserve"].result.stats["drops"] >= 1


def test_migration_acts_where_the_load_is_unequal(tmp_path):
    """kunserve_imbalance (five minutes, a 100 s burst of 1.1x): round-robin deals heavy-tailed requests, so
    one instance runs out of KV while another has room; live migration moves running requests there (it
    migrates, and no longer copies recompute's row): fewer preemptions, a lower P99 TTFT, more requests in
    their SLOs."""
    p = shortened(tmp_path, "kunserve_imbalance", 300, 100, ("recompute", "migrate"))
    sc = load_scenario(p, trace=shared_dir() / "data" / "traces" / "azure_conv_2023.csv")
    assert sc.sc.cluster.router == "round-robin"
    runs = sc.simulate(detail_iterations=0)
    rec, mig = runs["recompute"], runs["migrate"]
    assert mig.result.stats["migrations"] >= 3
    assert mig.summary["preemptions"] < rec.summary["preemptions"]
    assert mig.summary["ttft_s"]["p99"] < 0.5 * rec.summary["ttft_s"]["p99"]
    assert mig.summary["slo_attainment"] > rec.summary["slo_attainment"]
    for r in runs.values():
        assert r.summary["finished"] == r.summary["requests"] == len(sc.requests)


@pytest.mark.parametrize("name", ["kunserve_burst", "kunserve_burst_h100"])
def test_full_burst_headline(name):
    """The issue's headline on the full ten minutes: KunServe's P99 TTFT during the burst is at least 10x
    lower than recompute's. Recompute's comes from the preemption spiral under a full KV cache (requests
    prefilled in 2,048-token chunks need blocks chunk by chunk: over a thousand preemptions); KunServe's drop
    leaves room for the burst (few)."""
    path = SCENARIOS / f"{name}.yaml"
    sc = load_scenario(path, trace=shared_dir() / "data" / "traces" / "azure_conv_2023.csv")
    compare = [c.spec() for c in sc.sc.compare if c.name in ("recompute", "kunserve")]
    runs = sc.simulate(compare, detail_iterations=0)
    b = sc.sc.workload.trace.bursts[0]
    p99 = {n: burst_p99(r, b.start_s, b.start_s + b.duration_s) for n, r in runs.items()}
    assert p99["recompute"] >= 10 * p99["kunserve"]
    assert runs["recompute"].summary["preemptions"] > 100 > runs["kunserve"].summary["preemptions"]
    for r in runs.values():
        assert r.summary["finished"] == r.summary["requests"] == len(sc.requests)
