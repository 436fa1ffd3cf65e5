"""Headlines as distributions: the median with its bootstrap interval, the per-knob summary, the page of
figures, and the Select-N sweep's ratios at equal attainment (by hand)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd

from sim.report.distribution import by_knob, curve, fmt_ci, median_ci, save_figure, write_page

from .helpers import REPO


def test_median_and_its_bootstrap_interval():
    med, lo, hi = median_ci(range(1, 10))
    assert med == 5.0 and 1 <= lo <= 5 <= hi <= 9 and lo < hi
    assert median_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert median_ci([7.0]) == (7.0, 7.0, 7.0)
    assert all(math.isnan(x) for x in median_ci([np.nan, None]))
    assert median_ci(range(1, 10)) == median_ci(range(1, 10))  # seeded
    # a wider spread gives a wider interval around the same median
    narrow, wide = median_ci([4.9, 5.0, 5.1] * 5), median_ci([1.0, 5.0, 9.0] * 5)
    assert narrow[0] == wide[0] == 5.0 and wide[2] - wide[1] > narrow[2] - narrow[1]
    assert fmt_ci((2.0, 1.5, 3.25), "{:.1f}", "x") == "2.0x [1.5x, 3.2x]"


def test_per_knob_summary_curve_and_page(tmp_path):
    df = pd.DataFrame({"scale": [1.1] * 3 + [1.5] * 3, "seed": [0, 1, 2] * 2, "ratio": [1, 1, 1, 2, 4, 8],
                       "gpu": ["a"] * 6})
    s = by_knob(df, "scale", "ratio", ["gpu"])
    assert list(s["median"]) == [1.0, 4.0] and list(s.n) == [3, 3]
    fig = curve(df, "scale", "ratio", "gpu", "t", "x", "y", log_y=True, ref=10.0)
    save_figure(fig, tmp_path, "one", "caption one", order=2)
    save_figure(fig, tmp_path, "two", "caption two", order=1)
    page = write_page(tmp_path, tmp_path / "page.html").read_text()
    assert page.count("plotly.js v") <= 2 and page.index("caption two") < page.index("caption one")


def _replication():
    spec = importlib.util.spec_from_file_location("selectn_replication", REPO / "scripts" / "selectn_replication.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_select_n_ratios_count_only_points_where_both_attain():
    """Two points of (b): at batch 32 Select-N 60 tokens/s, FlexGen 30 (both attain): 2x; at batch 4 the
    contention-blind FlexGen misses its SLO: no ratio there, counted as a FlexGen miss."""
    R = _replication()
    rows = []
    for B, sn, fg, alone_ok in ((32, 60.0, 30.0, True), (4, 10.0, 15.0, False)):
        for pol, t, ok in (("selectn-whole", sn, True), ("selectn", sn, True), ("flexgen", fg, True),
                           ("flexgen-alone", fg * 2, alone_ok), ("deepspeed", 1.0, False)):
            rows.append({"scenario": "b", "gpu": "a10", "batch": B, "slo": 0.4, "tpot_slo_s": 0.4, "policy": pol,
                         "throughput": t, "ok": ok, "attainment": 1.0 if ok else 0.0, "host_gb": 9.0 if pol != "flexgen" else 6.0,
                         "tpot_mean": 0.9 if pol == "deepspeed" else 0.3})
    table, _ = R.bc_markdown(pd.DataFrame(rows))
    whole = next(line for line in table.splitlines() if "worst-case link" in line and line.startswith("| (b)"))
    assert "2 of 2 points" in whole and "best point 2.00x at batch 32" in whole
    alone = next(line for line in table.splitlines() if "measured alone" in line and line.startswith("| (b)"))
    assert "1 of 2 points" in alone and "FlexGen misses its SLO at 1" in alone
    assert "1.50x [1.50x, 1.50x]" in next(line for line in table.splitlines() if "host memory" in line and "(b)" in line)
    assert "2.25x" in next(line for line in table.splitlines() if "DeepSpeed" in line and "(b)" in line)
