"""Measurement readers: everything calibration fits on, as one table.

Columns of the table (`COLUMNS`): ``gpu`` (HardwareSpec preset name), ``model`` (ModelSpec preset name, or
the path of the ``config.json`` beside a backend CSV for a model the profiler read from one),
``phase`` (``prefill``, ``decode`` or ``any`` for phase-independent ops), ``batch_size`` (sequences),
``batch_tokens`` (new tokens in the batch), ``context_tokens`` (per sequence, what attention reads),
``tp`` (tensor-parallel degree: the row times one GPU's share of a layer split ``tp`` ways; 1 = unsplit),
``op_group`` (``gemm_qkv``, ``gemm_o``, ``gemm_up``, ``gemm_down``, ``norm_input``, ``norm_post``, ``rope``,
``act``, ``add``; ``linear`` = all of those; ``attention``; ``layer`` = linear + attention), ``measured_s``
and ``source`` (file name).

Readers:
- Vidur's public ``{gpu}_{model}_linear_ops.csv`` (per-operator medians in ms). Every
  ``num_tensor_parallel_workers`` is kept, as ``tp``: those rows are single-GPU timings of the same model's
  sharded GEMM shapes (QKV and gate+up split along N, O and down along K; RoPE and the activation over the
  GPU's share; norms and the residual add unsplit). A (tp, token count) measured twice is averaged.
- the backend profiler's ``layer_times.csv`` (``# key: value`` provenance lines, then model, phase,
  batch_size, context_tokens, new_tokens, layer_s, ..., attn_s, linear_s, repeats).
- the backend profiler's ``copy_bandwidth.csv`` (`read_copy_bandwidth`, a separate table).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from sim.core.model import PRESETS as MODEL_PRESETS

COLUMNS = ["gpu", "model", "tp", "phase", "batch_size", "batch_tokens", "context_tokens", "op_group", "measured_s",
           "source"]
VIDUR_OPS = {"attn_pre_proj": "gemm_qkv", "attn_post_proj": "gemm_o", "mlp_up_proj": "gemm_up",
             "mlp_down_proj": "gemm_down", "input_layernorm": "norm_input",
             "post_attention_layernorm": "norm_post", "attn_rope": "rope", "mlp_act": "act", "add": "add"}
GEMM_GROUPS = ("gemm_qkv", "gemm_o", "gemm_up", "gemm_down")
OP_GROUPS = tuple(VIDUR_OPS.values())
_VIDUR_GPUS = {"a100": "a100-80g", "h100": "h100-sxm", "a10": "a10", "h200": "h200"}


class MeasurementError(ValueError):
    """A measurement file memslo cannot read; the message names the file and what is wrong."""


def shared_data_dir() -> Path:
    """The shared data folder: ``$MEMSLO_SHARED``, else ``<repo>/../shared`` or ``<repo>/../../shared``."""
    env = os.environ.get("MEMSLO_SHARED")
    repo = Path(__file__).resolve().parents[1]
    cands = ([Path(env)] if env else []) + [repo.parent / "shared", repo.parent.parent / "shared"]
    for c in cands:
        if (c / "data").is_dir():
            return c / "data"
    raise FileNotFoundError(
        "shared data folder not found: set MEMSLO_SHARED to the folder holding data/measurements/vidur, or "
        f"check out the shared folder beside the repository (looked in {', '.join(str(c) for c in cands)})")


def vidur_files(gpu_prefix: str | None = None) -> list[Path]:
    """The public Vidur linear-op files in the shared data folder (optionally one GPU's: 'a100', 'h100')."""
    d = shared_data_dir() / "measurements" / "vidur"
    files = sorted(d.glob(f"{gpu_prefix or '*'}_*_linear_ops.csv"))
    if not files:
        raise FileNotFoundError(f"{d}: no *_linear_ops.csv files")
    return files


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gpu_from_name(name: str) -> str | None:
    """A HardwareSpec preset from a device name such as 'NVIDIA H100 80GB HBM3' (None when unknown)."""
    s = name.lower()
    if "gh200" in s:
        return "gh200"
    if "h200" in s:
        return "h200"
    if "h100" in s:
        return "h100-sxm"
    if "a100" in s:
        return "a100-80g"
    if "a10" in s:
        return "a10"
    return None


def _model_from_shape(row: pd.Series, fallback: str) -> str:
    for name, m in MODEL_PRESETS.items():
        if (m.hidden_size == row["n_embd"] and m.num_heads == row["n_head"] and m.num_kv_heads == row["n_kv_head"]
                and m.intermediate_size == row["n_expanded_embd"] and bool(m.gated_mlp) == bool(row["use_gated_mlp"])
                and m.arch == "llama"):
            return name
    return fallback


def read_vidur_linear_ops(path: str | Path, gpu: str | None = None) -> pd.DataFrame:
    """One Vidur ``linear_ops`` file -> table rows (one per op group and token count, plus ``linear``)."""
    path = Path(path)
    try:
        d = pd.read_csv(path)
    except FileNotFoundError:
        raise MeasurementError(f"{path}: file not found") from None
    need = ["num_tokens", "num_tensor_parallel_workers", "n_embd", "n_head", "n_kv_head", "n_expanded_embd",
            "use_gated_mlp"] + [f"time_stats.{op}.median" for op in VIDUR_OPS]
    missing = [c for c in need if c not in d.columns]
    if missing:
        raise MeasurementError(f"{path.name}: not a Vidur linear_ops file, missing columns {missing}")
    if d.empty:
        raise MeasurementError(f"{path.name}: no rows")
    prefix = path.name.split("_", 1)[0].lower()
    gpu = gpu or _VIDUR_GPUS.get(prefix)
    if gpu is None:
        raise MeasurementError(f"{path.name}: cannot tell the GPU from the file name; pass gpu=")
    model = _model_from_shape(d.iloc[0], fallback=path.name.split("_")[1].lower())
    keys = ["num_tensor_parallel_workers", "num_tokens"]
    med = {op: d.groupby(keys)[f"time_stats.{op}.median"].mean() for op in VIDUR_OPS}
    tp = med["add"].index.get_level_values(0).to_numpy().astype(int)
    tokens = med["add"].index.get_level_values(1).to_numpy()
    parts = []
    total = 0.0
    for op, group in VIDUR_OPS.items():
        secs = med[op].to_numpy() * 1e-3
        total = total + secs
        parts.append(pd.DataFrame({"op_group": group, "tp": tp, "batch_tokens": tokens, "measured_s": secs}))
    parts.append(pd.DataFrame({"op_group": "linear", "tp": tp, "batch_tokens": tokens, "measured_s": total}))
    out = pd.concat(parts, ignore_index=True)
    out["gpu"], out["model"], out["phase"], out["source"] = gpu, model, "any", path.name
    out["batch_size"], out["context_tokens"] = 0, 0
    return out[COLUMNS]


def read_provenance_header(path: str | Path) -> dict[str, str]:
    """The ``# key: value`` lines at the top of a backend CSV."""
    prov: dict[str, str] = {}
    with Path(path).open() as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            k, _, v = line[1:].partition(":")
            prov[k.strip()] = v.strip()
    return prov


def _read_backend_csv(path: Path, need: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    try:
        d = pd.read_csv(path, comment="#")
    except FileNotFoundError:
        raise MeasurementError(f"{path}: file not found") from None
    missing = [c for c in need if c not in d.columns]
    if missing:
        raise MeasurementError(f"{path.name}: missing columns {missing} (have {list(d.columns)})")
    return d, read_provenance_header(path)


def read_layer_times(path: str | Path, gpu: str | None = None) -> pd.DataFrame:
    """The backend profiler's ``layer_times.csv`` -> rows for ``layer``, ``attention`` and ``linear``."""
    path = Path(path)
    d, prov = _read_backend_csv(path, ["model", "phase", "batch_size", "context_tokens", "new_tokens", "layer_s",
                                       "attn_s", "linear_s"])
    gpu = gpu or gpu_from_name(prov.get("gpu", ""))
    if gpu is None:
        raise MeasurementError(f"{path.name}: provenance names GPU {prov.get('gpu', '(none)')!r}, which is not "
                               "a known preset; pass --gpu")
    bad = sorted(set(d["phase"]) - {"prefill", "decode"})
    if bad:
        raise MeasurementError(f"{path.name}: phase must be prefill or decode, got {bad}")
    tokens = d["batch_size"] * d["new_tokens"]
    tp = 1  # the backend profiles one GPU running the whole layer
    model = d["model"].astype(str).str.lower()
    custom = sorted(set(model) - set(MODEL_PRESETS))
    if custom:  # a model the profiler read from a config.json, which it copied beside the CSV
        config = path.parent / "config.json"
        if not config.exists():
            raise MeasurementError(f"{path}: model {custom[0]!r} is not a preset and there is no config.json beside "
                                   f"the file (the profiler copies the --model config there)")
        model = model.where(model.isin(list(MODEL_PRESETS)), str(config))
    parts = []
    for col, group in (("layer_s", "layer"), ("attn_s", "attention"), ("linear_s", "linear")):
        parts.append(pd.DataFrame({"gpu": gpu, "model": model, "tp": tp, "phase": d["phase"],
                                   "batch_size": d["batch_size"], "batch_tokens": tokens,
                                   "context_tokens": d["context_tokens"], "op_group": group,
                                   "measured_s": d[col].astype(float), "source": path.name}))
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def read_copy_bandwidth(path: str | Path) -> pd.DataFrame:
    """The backend profiler's ``copy_bandwidth.csv`` (direction, memory, size_bytes, seconds, ...)."""
    path = Path(path)
    d, prov = _read_backend_csv(path, ["direction", "memory", "size_bytes", "seconds", "concurrent_compute"])
    d = d.copy()
    d["gpu"] = gpu_from_name(prov.get("gpu", "")) or ""
    d["source"] = path.name
    return d


def sniff(path: str | Path) -> str:
    """'vidur', 'layer_times' or 'copy_bandwidth' from a file's header row."""
    with Path(path).open() as fh:
        for line in fh:
            if not line.startswith("#"):
                header = line
                break
        else:
            header = ""
    if "time_stats.attn_pre_proj" in header and "num_tokens" in header:
        return "vidur"
    if "layer_s" in header and "linear_s" in header:
        return "layer_times"
    if "size_bytes" in header and "direction" in header:
        return "copy_bandwidth"
    raise MeasurementError(f"{path}: not a Vidur linear_ops, layer_times or copy_bandwidth CSV")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a folder contributes the CSVs in it that are measurement files (e.g.
    ``calibration/data/h100-sxm/`` or ``../shared/data/measurements/vidur``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.csv")):
                try:
                    sniff(f)
                except MeasurementError:
                    continue
                out.append(f)
        elif p.exists():
            out.append(p)
        else:
            raise MeasurementError(f"{p}: no such file or folder")
    return out


def load_measurements(paths: Iterable[str | Path], gpu: str | None = None,
                      ) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """(timing table, copy-bandwidth table, files used). Rows of other GPUs are kept; filter on ``gpu``.

    Every tensor-parallel degree is kept (column ``tp``): `calibration.fit` fits on all of them (more GEMM
    shapes for the same physics) and scores leave-one-model-out on the held-out model's ``tp == 1`` rows.
    A caller that wants unsplit single-GPU layer times only filters ``table[table["tp"] == 1]``."""
    tables, copies, used = [], [], []
    for p in expand_paths(paths):
        kind = sniff(p)
        if kind == "vidur":
            tables.append(read_vidur_linear_ops(p))
        elif kind == "layer_times":
            tables.append(read_layer_times(p, gpu))
        else:
            copies.append(read_copy_bandwidth(p))
        used.append(p)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)
    copy = pd.concat(copies, ignore_index=True) if copies else pd.DataFrame()
    return table, copy, used
