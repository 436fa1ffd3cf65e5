"""Measurement readers: Vidur linear-op files (real, from the shared data folder) and the backend
profiler's CSVs (synthetic fixtures in tests/fixtures)."""

from pathlib import Path

import numpy as np
import pytest

from calibration.fit import fit_link
from calibration.measurements import (
    COLUMNS,
    OP_GROUPS,
    MeasurementError,
    gpu_from_name,
    load_measurements,
    read_copy_bandwidth,
    read_layer_times,
    read_vidur_linear_ops,
    shared_data_dir,
    vidur_files,
)

FIX = Path(__file__).parent / "fixtures"


def test_shared_data_is_found():
    # fails (not skips) with a message naming MEMSLO_SHARED when the shared folder is missing
    assert (shared_data_dir() / "measurements" / "vidur").is_dir()


def test_vidur_reader_h100_7b():
    (path,) = [p for p in vidur_files("h100") if "7b" in p.name]
    t = read_vidur_linear_ops(path)
    assert list(t.columns) == COLUMNS
    assert set(t["gpu"]) == {"h100-sxm"} and set(t["model"]) == {"llama-2-7b"}
    assert set(t["op_group"]) == set(OP_GROUPS) | {"linear"}
    assert set(t["tp"]) == {1, 2, 4, 8}  # every tensor-parallel degree is kept
    lin = t[(t["op_group"] == "linear") & (t["tp"] == 1)].set_index("batch_tokens")["measured_s"]
    assert lin.index.is_unique and lin.index.min() == 1 and lin.index.max() == 4096
    # data README: ~0.175 ms at 1 token, ~0.66 ms at 1,024, ~2.6 ms at 4,096 (two runs averaged)
    assert lin[1] == pytest.approx(0.175e-3, rel=0.02)
    assert lin[1024] == pytest.approx(0.657e-3, rel=0.02)
    assert lin[4096] == pytest.approx(2.6e-3, rel=0.02)
    ops = t[(t["op_group"] != "linear") & (t["tp"] == 1)].groupby("batch_tokens")["measured_s"].sum()
    assert np.allclose(ops.loc[lin.index].to_numpy(), lin.to_numpy())


def test_vidur_tp_rows_are_the_sharded_shapes():
    # tp rows time one GPU's share: QKV/O/up/down, RoPE and the activation shrink ~tp-fold at large
    # batches; the norms and the residual add work on the full hidden width and do not
    (path,) = [p for p in vidur_files("h100") if "70b" in p.name]
    t = read_vidur_linear_ops(path)
    at = t[t["batch_tokens"] == 4096].pivot_table(index="op_group", columns="tp", values="measured_s")
    for g in ("gemm_qkv", "gemm_o", "gemm_up", "gemm_down", "rope", "act"):
        assert 0.3 < at.loc[g, 2] / at.loc[g, 1] < 0.6 and at.loc[g, 8] / at.loc[g, 1] < 0.2, g
    for g in ("norm_input", "norm_post", "add"):
        assert 0.85 < at.loc[g, 8] / at.loc[g, 1] < 1.15, g


def test_vidur_folder_loads_all_gpus_and_skips_other_csvs():
    table, copy, used = load_measurements([shared_data_dir() / "measurements" / "vidur"])
    assert {p.name for p in used} == {p.name for p in vidur_files()}  # the nvlink file is not a linear-op file
    assert set(table["gpu"]) == {"a100-80g", "h100-sxm"}
    assert set(table["model"]) == {"llama-2-7b", "llama-2-70b"}
    assert copy.empty


def test_layer_times_reader():
    t = read_layer_times(FIX / "layer_times.csv")
    assert list(t.columns) == COLUMNS
    assert set(t["gpu"]) == {"h100-sxm"}  # from the '# gpu:' provenance line
    assert set(t["op_group"]) == {"layer", "attention", "linear"}
    dec = t[(t["phase"] == "decode") & (t["batch_size"] == 8) & (t["op_group"] == "layer")].iloc[0]
    assert dec["batch_tokens"] == 8 and dec["context_tokens"] == 512
    pre = t[(t["phase"] == "prefill") & (t["batch_size"] == 4) & (t["op_group"] == "linear")].iloc[0]
    assert pre["batch_tokens"] == 4 * 512


def test_layer_times_unknown_gpu_needs_override(tmp_path):
    p = tmp_path / "layer_times.csv"
    p.write_text((FIX / "layer_times.csv").read_text().replace("NVIDIA H100 80GB HBM3", "none"))
    with pytest.raises(MeasurementError, match="--gpu"):
        read_layer_times(p)
    assert set(read_layer_times(p, gpu="a10")["gpu"]) == {"a10"}


def test_layer_times_of_a_model_from_a_config_json(tmp_path):
    """A model the profiler read from a config.json is rebuilt from the copy beside the CSV (the fit needs
    its shape), and without that copy the error names the file."""
    from sim.core.model import get_model

    smoke = Path(__file__).resolve().parents[1] / "scenarios" / "backend_smoke_model.json"
    p = tmp_path / "layer_times.csv"
    p.write_text((FIX / "layer_times.csv").read_text().replace("llama-2-7b", "tiny-llama-smoke"))
    with pytest.raises(MeasurementError, match=r"layer_times.csv.*tiny-llama-smoke.*config.json"):
        read_layer_times(p)
    (tmp_path / "config.json").write_text(smoke.read_text())
    t = read_layer_times(p)
    assert set(t["model"]) == {str(tmp_path / "config.json")}
    assert get_model(t["model"].iloc[0]) == get_model(smoke)


def test_bad_file_names_itself(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(MeasurementError, match="x.csv"):
        load_measurements([p])


def test_copy_bandwidth_and_link_fit():
    c = read_copy_bandwidth(FIX / "copy_bandwidth.csv")
    assert set(c["direction"]) == {"h2d", "d2h"} and set(c["gpu"]) == {"h100-sxm"}
    link = fit_link(c)
    assert link["h2d_bytes_per_s"] == pytest.approx(50e9, rel=1e-3)
    assert link["d2h_bytes_per_s"] == pytest.approx(50e9, rel=1e-3)
    assert link["link_latency_s"] == pytest.approx(10e-6, rel=1e-2)


def test_gpu_names():
    assert gpu_from_name("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert gpu_from_name("NVIDIA A100-SXM4-80GB") == "a100-80g"
    assert gpu_from_name("NVIDIA A10") == "a10"
    assert gpu_from_name("NVIDIA GH200 480GB") == "gh200"
    assert gpu_from_name("none") is None
