"""The report: verdict wording from hand-made summaries, and the HTML's structure (every figure, plotly
inlined, the verdict and the metrics table) from a small real comparison."""

import math
import re

import pandas as pd
import pytest

from sim.api import SLO, PolicySpec, simulate
from sim.core.workload import Burst, LogNormal, Poisson, SyntheticWorkload
from sim.report import PolicyData, ReportData, verdict
from sim.report.html import SECTIONS, render
from sim.report.verdict import times


def summ(att: float, tput: float, **kw) -> dict:
    base = {"requests": 1000, "finished": 1000, "rejected": 0, "slo_attainment": att,
            "throughput_tokens_per_s": tput, "ttft_s": {"p50": 0.5, "p99": 1.0}, "tpot_s": {"p50": 0.05, "p99": 0.08},
            "offloaded_weight_bytes_mean": 0.0}
    base.update(kw)
    return base


def test_verdict_headline_names_the_best_and_the_ratio():
    v = verdict({"flexgen": summ(0.62, 1000.0), "select-n": summ(0.994, 1600.0, offloaded_weight_bytes_mean=3 * 2**30)},
                ttft_slo_s=2.0, tpot_slo_s=0.1)
    assert v[0] == ("select-n meets the SLO for 99.4% of requests at 1.6\u00d7 the throughput of flexgen, "
                    "the next best (62.0%).")
    assert "select-n keeps 3.0 GiB of weights in host memory on average." in v


def test_verdict_explains_misses_failures_rejections_and_interruptions():
    s = {"none": summ(0.99, 900.0),
         "deepspeed": summ(0.0, 100.0, tpot_s={"p50": 0.55, "p99": 0.6}, rejected=3, finished=997),
         "uva-big": {"error": "host memory exhausted: weights need 90 GiB.", "requests": 1000},
         "selectn": summ(0.99, 880.0, offloaded_weight_bytes_mean=2**30)}
    v = verdict(s, ttft_slo_s=2.0, tpot_slo_s=0.1, interrupted=True)
    assert v[0] == "Interrupted: these are partial results."
    assert v[1].startswith("none meets the SLO for 99.0% of requests at 1.0\u00d7 the throughput of selectn")
    assert "selectn also meets it for 99.0% with 1.0 GiB of weights in host memory." in v
    assert "deepspeed meets it for 0.0% (median TPOT 550 ms against 100 ms)." in v
    assert "deepspeed rejected 3 of 1000 requests." in v
    assert v[-1] == "uva-big could not run: host memory exhausted: weights need 90 GiB."


def test_verdict_without_slo_and_with_one_policy():
    v = verdict({"a": summ(1.0, 500.0), "b": summ(1.0, 1000.0)})
    assert v[0] == "No SLO set: b has the highest throughput, 2.0\u00d7 that of a."
    assert verdict({"a": summ(0.5, 500.0)}, 1.0)[0] == "a meets the SLO for 50.0% of requests (500 tokens/s)."
    assert verdict({"x": {"error": "does not fit", "requests": 5}}, 1.0) == ["No compared policy could run.",
                                                                             "x could not run: does not fit."]
    assert [times(r) for r in (1.64, 12.3, 0.05, math.inf)] == ["1.6\u00d7", "12\u00d7", "0.05\u00d7", "\u221e\u00d7"]


@pytest.fixture(scope="module")
def small_report():
    rs = SyntheticWorkload(Poisson(2.0), LogNormal(600, 0.6, 16, 2000), LogNormal(80, 0.6, 1, 300), 20.0,
                           [Burst(5, 5, 6.0)]).generate(1)
    slo = SLO(ttft_s=3.0, tpot_s=0.08)
    runs = simulate("llama-2-7b", "a10", rs, [PolicySpec("none"), PolicySpec("selectn-static", {"interval": 8}),
                                              PolicySpec("selectn-static", {"interval": 99}, name="broken")], slo=slo)
    pols = [PolicyData(n, r.summary, r.requests, r.series,
                       list(r.result.timeline.instants) if r.result.timeline else []) for n, r in runs.items()]
    pols[1].instants += [("gpu0/compute", "drop group 0", 4.0), ("gpu0/compute", "restore group 0", 12.0)]
    v = verdict({n: r.summary for n, r in runs.items()}, slo.ttft_s, slo.tpot_s)
    data = ReportData("small", "llama-2-7b on 1\u00d7 a10", pols, slo.ttft_s, slo.tpot_s, gpu_memory_bytes=24e9,
                      h2d_bytes_per_s=24e9, d2h_bytes_per_s=24e9, bus_bytes_per_s=24e9, bursts=[(5.0, 10.0)],
                      verdict=v)
    return data, render(data)


def test_report_html_has_every_figure_inline(small_report):
    data, html = small_report
    for sid, *_ in SECTIONS:  # all of them, including the interval and event panels
        assert f'id="{sid}"' in html, sid
    assert html.count("Plotly.newPlot") == len(SECTIONS)
    # opens offline: no script loaded from anywhere (the bundle only mentions a CDN for unused geo maps)
    assert not re.search(r"<script[^>]+src=", html) and "cdn.plot.ly/plotly" not in html
    assert len(re.findall(r"plotly\.js v\d", html)) >= 1  # the library itself is inlined (once)
    assert data.verdict[0] in html.replace("&#x27;", "'")
    assert "<table class='metrics' id='metrics'>" in html
    assert "could not run: selectn-static: interval must be in [1, 32]" in html
    assert "TTFT SLO" in html and "GPU memory by kind over time" in html


def test_conditional_panels_and_grids(small_report):
    data, _ = small_report
    plain = ReportData("p", "", [p for p in data.policies if p.name == "none"], 3.0, 0.08,
                       gpu_memory_bytes=24e9, verdict=["x"])
    html = render(plain)
    assert 'id="fig-interval"' not in html and 'id="fig-events"' not in html  # nothing to show
    assert 'id="fig-gpu-memory"' in html
    empty = ReportData("e", "", [PolicyData("x", {"error": "does not fit", "requests": 3}, pd.DataFrame(),
                                            pd.DataFrame())], verdict=["No compared policy could run."])
    assert "could not run: does not fit" in render(empty)
