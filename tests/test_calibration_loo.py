"""Leave-one-model-out on the public Vidur data: fit on Llama-2-7B alone, predict Llama-2-70B, and the
reverse, over token counts 1..4096, on the layer's non-attention time of the held-out model's unsplit
(tp = 1) rows. The fit uses every tensor-parallel degree of the training model (Vidur's tp = 2, 4, 8 rows
are single-GPU timings of its sharded GEMM shapes); no row of the held-out model, of any tp, reaches it.

Acceptance (issue 9): median |error| < 4 % and p90 < 10 %, pooled over both directions (the usual
cross-validation aggregate). A100 meets it. H100 does not (pooled 3.9 % / 10.8 %, with the GEMM time the
fastest of several cuBLAS-like kernels, the knee bounded to p >= 3 and the weight read concurrency-limited
(Little's law: narrow GEMMs stream slower); 4.3 % / 15.9 % before the kernel set, 4.3 % / 11.0 % before the
stream limit), and we say so instead of tuning on the test model:
- the Vidur H100 files time Llama-2-70B's large GEMMs ~5-8 % slower per FLOP than Llama-2-7B's shapes of
  similar size: most of them have a row stride (K x 2 B) that is a multiple of 4 KiB, which on H100 costs
  ~0.70 of peak against 0.82-0.89 (calibration/README.md, second follow-up), but fitted on 7B's rows the
  penalty is not identified, and where it is (fitted on >= 1,024 tokens) 7B -> 70B still misses;
- cuBLAS switches kernels between token counts on H100 (e.g. 70B's down projection is faster at 648-768
  tokens than at 520-640; 7B's gate+up at 200-256 tokens takes 1.9x the roofline), which smooth physics
  cannot follow: each model fitted on its own rows already scores 10.9 % (7B) and 11.1 % (70B) p90 on its
  own tp = 1 rows, so a held-out p90 < 10 % is out of reach for this model class. What remains: 7B's slow
  kernels at 64-256 tokens (the 70B -> 7B tail) and kernel switches at 256-768 tokens in both models (70B's
  down projection takes 750 us at 528-640 tokens, 270 us at 512).
The guard tests pin what the model does reach, and compare it with the plain three-number roofline.
"""

import numpy as np
import pytest

from calibration.fit import fit_params, leave_one_model_out, loo_summary, predict
from calibration.measurements import load_measurements, vidur_files
from calibration.report import roofline_loo

MEDIAN, P90 = 0.04, 0.10
# what the model reaches today (median, p90), with some slack
GUARD = {"a100-80g": {"llama-2-70b->llama-2-7b": (0.04, 0.085),  # 3.4 % / 7.4 %
                      "llama-2-7b->llama-2-70b": (0.025, 0.05),  # 1.9 % / 4.1 %
                      "pooled": (0.03, 0.07)},  # 2.5 % / 5.6 %
         "h100-sxm": {"llama-2-70b->llama-2-7b": (0.045, 0.12),  # 4.0 % / 11.1 %
                      "llama-2-7b->llama-2-70b": (0.042, 0.115),  # 3.7 % / 10.7 %
                      "pooled": (0.043, 0.115)}}  # 3.9 % / 10.8 %
_cache: dict = {}


def loo(gpu: str):
    if gpu not in _cache:
        table, _, _ = load_measurements(vidur_files(gpu.split("-")[0]))
        res = leave_one_model_out(table, gpu)
        assert set(res["test"]) == {"llama-2-7b", "llama-2-70b"}
        assert res["batch_tokens"].min() == 1 and res["batch_tokens"].max() == 4096
        assert set(res["tp"]) == {1} and len(res) == 2 * 259  # scored: the held-out model's tp = 1 rows
        _cache[gpu] = (table, res, loo_summary(res))
    return _cache[gpu]


def test_a100_leave_one_model_out_meets_the_target():
    _, _, s = loo("a100-80g")
    assert s["pooled"]["median"] < MEDIAN and s["pooled"]["p90"] < P90, s
    assert s["llama-2-7b->llama-2-70b"]["median"] < MEDIAN and s["llama-2-7b->llama-2-70b"]["p90"] < P90, s
    assert s["llama-2-70b->llama-2-7b"]["median"] < MEDIAN and s["llama-2-70b->llama-2-7b"]["p90"] < P90, s


@pytest.mark.xfail(strict=True, reason="H100: cuBLAS kernel switching bounds p90 even in-sample (each model's own "
                                       "fit: 10.9% / 11.1% p90 on its tp = 1 rows; see module docstring); "
                                       "pooled LOO is ~3.9% median / 10.8% p90")
def test_h100_leave_one_model_out_meets_the_target():
    _, _, s = loo("h100-sxm")
    assert s["pooled"]["median"] < MEDIAN and s["pooled"]["p90"] < P90, s


@pytest.mark.parametrize("gpu", ["a100-80g", "h100-sxm"])
def test_leave_one_model_out_guard_and_beats_roofline(gpu):
    table, res, s = loo(gpu)
    assert set(s) == set(GUARD[gpu])
    for key, (med, p90) in GUARD[gpu].items():
        assert s[key]["median"] < med and s[key]["p90"] < p90, (key, s[key])
    # the roofline (fitted on the training model's tp = 1 rows): A100 3.9 % / 19.1 %, H100 8.8 % / 15.7 %.
    # The calibrated model beats it on both GPUs (on H100's p90 by less: 10.8 % vs 15.7 %).
    base = loo_summary(roofline_loo(table, gpu))
    assert s["pooled"]["median"] < 0.65 * base["pooled"]["median"], (s["pooled"], base["pooled"])
    if gpu == "a100-80g":
        assert s["pooled"]["p90"] < 0.5 * base["pooled"]["p90"], (s["pooled"], base["pooled"])
    else:
        assert s["pooled"]["p90"] < 0.8 * base["pooled"]["p90"], (s["pooled"], base["pooled"])


def test_leave_one_model_out_is_honest():
    # corrupt every held-out row that is not scored (70B's tp > 1 rows and its per-op rows): the 7B fit,
    # which sees all 7B rows of every tp, predicts 70B exactly as in the leave-one-out run, while a fit that
    # does see the corrupted rows is off by far more (so a leak would show)
    table, res, _ = loo("h100-sxm")
    bad = table[table["gpu"] == "h100-sxm"].copy()
    hit = (bad["model"] == "llama-2-70b") & ((bad["tp"] > 1) | (bad["op_group"] != "linear"))
    bad.loc[hit, "measured_s"] *= 10.0
    fit7 = fit_params(bad, "h100-sxm", ["llama-2-7b"])
    assert set(fit7.table["model"]) == {"llama-2-7b"} and set(fit7.table["tp"]) == {1, 2, 4, 8}
    held = res[res["train"] == "llama-2-7b"].sort_values("batch_tokens")
    lin = bad[(bad["op_group"] == "linear") & (bad["tp"] == 1)]
    x = lin[lin["model"] == "llama-2-70b"].sort_values("batch_tokens")
    assert np.array_equal(predict(x, "h100-sxm", fit7.params), held["predicted_s"].to_numpy())
    err = {m: np.median(np.abs(predict(g, "h100-sxm", fit7.params) / g["measured_s"].to_numpy() - 1))
           for m, g in lin.groupby("model")}
    assert err["llama-2-70b"] == pytest.approx(held["rel_err"].abs().median())
    leaked = fit_params(bad, "h100-sxm", ["llama-2-70b"], starts=1, tps=[8])  # sees corrupted rows only
    assert np.median(np.abs(predict(x, "h100-sxm", leaked.params) / x["measured_s"].to_numpy() - 1)) > 1.0
