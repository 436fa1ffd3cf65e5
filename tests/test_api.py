"""The Python API: several policies on the same requests, failures isolated, determinism."""

import pandas as pd
import pytest

from sim.api import SLO, PolicySpec, simulate
from sim.core.workload import LogNormal, Poisson, SyntheticWorkload

SUMMARY_KEYS = {"requests", "finished", "rejected", "throughput_tokens_per_s", "throughput_requests_per_s",
                "slo_attainment", "ttft_s", "tpot_s", "e2e_s", "gpu_memory_peak_bytes", "host_memory_peak_bytes",
                "pcie_h2d_utilization", "preemptions"}


def workload():
    return SyntheticWorkload(Poisson(3.0), LogNormal(800, 0.7, 16, 3000), LogNormal(100, 0.7, 1, 500), 20.0)


def test_policies_on_same_requests():
    rs = workload().generate(3)
    out = simulate("llama-2-13b", "a100-80g", rs,
                   [PolicySpec("none"), PolicySpec("selectn-static", {"interval": 4}), PolicySpec("deepspeed"),
                    PolicySpec("uva", {"offload_gib": 5})], slo=SLO(ttft_s=5.0, tpot_s=0.2))
    for name, run in out.items():
        s = run.summary
        assert SUMMARY_KEYS <= set(s)
        assert s["finished"] + s["rejected"] == s["requests"] == len(rs)
        assert list(run.requests.prompt_tokens) == list(rs.prompt_tokens)
    # streaming every layer costs far more than a quarter of them, which costs more than none
    tp = {k: v.summary["tpot_s"]["p50"] for k, v in out.items()}
    assert tp["none"] < tp["selectn-static"] < tp["deepspeed"]
    assert out["none"].summary["pcie_h2d_utilization"] == 0
    assert out["deepspeed"].summary["pcie_h2d_utilization"] > 0.5
    # i=4 on 40 layers: 10 layers of 634 MB in host memory for the whole run
    assert out["selectn-static"].summary["host_weight_bytes"] == pytest.approx(10 * 634e6, rel=0.01)
    assert out["selectn-static"].summary["offloaded_weight_bytes_mean"] == pytest.approx(10 * 634e6, rel=0.01)
    assert out["selectn-static"].summary["host_memory_peak_bytes"] == pytest.approx(10 * 634e6, rel=0.01)
    assert out["none"].summary["host_memory_peak_bytes"] == 0.0
    assert out["uva"].summary["host_memory_peak_bytes"] == pytest.approx(5 * 2**30, rel=0.15)


def test_a_policy_that_cannot_run_does_not_stop_the_others():
    rs = workload().generate(1)
    out = simulate("llama-2-70b", "a100-80g", rs, [PolicySpec("none"), PolicySpec("deepspeed")])
    assert "does not fit" in out["none"].summary["error"]
    assert out["none"].requests.state.eq("rejected").all()
    assert out["deepspeed"].ok and out["deepspeed"].summary["finished"] > 0


def test_bad_policy_parameters_are_reported():
    out = simulate("llama-2-7b", "h100-sxm", workload().generate(1),
                   [PolicySpec("selectn-static", {"interval": 99}), PolicySpec("uva", {"gib": 2}, name="uva2")])
    assert "interval must be in [1, 32]" in out["selectn-static"].summary["error"]
    assert "bad parameters" in out["uva2"].summary["error"]


def test_same_seed_same_result():
    a = simulate("llama-2-7b", "a10", workload().generate(5), [PolicySpec("selectn-static", {"interval": 4})],
                 cost=None)["selectn-static"]
    b = simulate("llama-2-7b", "a10", workload().generate(5), [PolicySpec("selectn-static", {"interval": 4})],
                 cost=None)["selectn-static"]
    pd.testing.assert_frame_equal(a.requests, b.requests)
    sa, sb = dict(a.summary), dict(b.summary)
    sa.pop("wall_s"), sb.pop("wall_s")
    assert sa == sb


def test_two_gpus_on_one_bus_contend():
    """Two GPUs behind one bus, both streaming weights: event-level timing, and slower than alone."""
    rs = workload().generate(2)
    one = simulate("llama-2-7b", "a10", rs, [PolicySpec("selectn-static", {"interval": 2})], num_gpus=1)
    two = simulate("llama-2-7b", "a10", rs, [PolicySpec("selectn-static", {"interval": 2})], num_gpus=2)
    r2 = two["selectn-static"].result
    assert all(not i.private for i in r2.instances) and all(i.event_iterations > 0 for i in r2.instances)
    # each GPU serves half the load, but its copies share the bus: TPOT gets worse, not better
    assert two["selectn-static"].summary["tpot_s"]["p50"] > one["selectn-static"].summary["tpot_s"]["p50"]


def test_handlers_select_the_preemption_mode():
    from sim.engine.memory import EngineConfig

    rs = SyntheticWorkload(Poisson(8.0), LogNormal(1500, 0.5, 16, 3000), LogNormal(300, 0.5, 1, 800), 20.0).generate(4)
    small = EngineConfig(gpu_memory_utilization=0.75)  # ~2.5 GB of KV on an A10: preemptions happen
    out = simulate("llama-2-7b", "a10", rs, [PolicySpec("none", name="recompute", handler="recompute"),
                                             PolicySpec("none", name="swap", handler="swap")], engine=small)
    assert out["recompute"].summary["preemptions"] > 0
    assert out["recompute"].requests.swaps.sum() == 0
    assert out["swap"].requests.swaps.sum() > 0 and out["swap"].summary["pcie_d2h_utilization"] > 0
    with pytest.raises(KeyError):
        from sim.handlers import make_handler
        make_handler("teleport")
