"""Leave-one-model-out on the public Vidur data: fit on Llama-2-7B alone, predict Llama-2-70B, and the
reverse, over token counts 1..4096, on the layer's non-attention time.

Acceptance (issue 9): median |error| < 4 % and p90 < 10 %, pooled over both directions (the usual
cross-validation aggregate). A100 meets it. H100 does not, and we say so instead of tuning on the test
model: the Vidur H100 files time Llama-2-70B's compute-bound GEMMs ~6 % slower per FLOP than Llama-2-7B's
(fitted compute efficiency 0.71 vs 0.75; with the test model's efficiency the median error drops to ~3 %),
and H100 GEMMs switch kernels between token counts in a way the tile/wave terms only partly capture (p90).
The guard tests pin what the model does reach, and that it beats the plain three-number roofline.
"""

import numpy as np
import pytest

from calibration.fit import leave_one_model_out, loo_summary
from calibration.measurements import load_measurements, vidur_files
from calibration.report import roofline_loo

MEDIAN, P90 = 0.04, 0.10
_cache: dict = {}


def loo(gpu: str):
    if gpu not in _cache:
        table, _, _ = load_measurements(vidur_files(gpu.split("-")[0]))
        res = leave_one_model_out(table, gpu)
        assert set(res["test"]) == {"llama-2-7b", "llama-2-70b"}
        assert res["batch_tokens"].min() == 1 and res["batch_tokens"].max() == 4096
        _cache[gpu] = (table, res, loo_summary(res))
    return _cache[gpu]


def test_a100_leave_one_model_out_meets_the_target():
    _, _, s = loo("a100-80g")
    assert s["pooled"]["median"] < MEDIAN and s["pooled"]["p90"] < P90, s
    assert s["llama-2-7b->llama-2-70b"]["median"] < MEDIAN and s["llama-2-7b->llama-2-70b"]["p90"] < P90, s
    assert s["llama-2-70b->llama-2-7b"]["median"] < MEDIAN, s


@pytest.mark.xfail(strict=True, reason="H100: 70B and 7B files differ ~6% in compute-bound GEMM efficiency "
                                       "(see module docstring); pooled LOO is ~6.0% median / 11.6% p90")
def test_h100_leave_one_model_out_meets_the_target():
    _, _, s = loo("h100-sxm")
    assert s["pooled"]["median"] < MEDIAN and s["pooled"]["p90"] < P90, s


@pytest.mark.parametrize("gpu", ["a100-80g", "h100-sxm"])
def test_leave_one_model_out_guard_and_beats_roofline(gpu):
    table, res, s = loo(gpu)
    for key, v in s.items():  # what the model reaches today (A100: <=3.8 %/10.1 %, H100: <=6.7 %/13.1 %)
        assert v["median"] < 0.07 and v["p90"] < 0.14, (key, v)
    base = loo_summary(roofline_loo(table, gpu))
    assert s["pooled"]["median"] < base["pooled"]["median"]
    assert s["pooled"]["p90"] < 0.75 * base["pooled"]["p90"], (s["pooled"], base["pooled"])


def test_leave_one_model_out_is_honest():
    # the held-out model's rows never reach the fit: predicting the training model itself is better
    from calibration.fit import fit_params, predict
    table, res, _ = loo("h100-sxm")
    fit7 = fit_params(table, "h100-sxm", ["llama-2-7b"])
    lin = table[(table["gpu"] == "h100-sxm") & (table["op_group"] == "linear")]
    err = {m: np.median(np.abs(predict(x, "h100-sxm", fit7.params) / x["measured_s"].to_numpy() - 1))
           for m, x in lin.groupby("model")}
    held = res[res["train"] == "llama-2-7b"]["rel_err"].abs().median()
    assert err["llama-2-70b"] == pytest.approx(held)
    assert err["llama-2-7b"] < err["llama-2-70b"]
