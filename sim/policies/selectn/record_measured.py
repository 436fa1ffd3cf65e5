"""Measured input for the performance record: the backend profiler's CSV files.

Both files start with provenance lines ``# key: value`` (GPU, driver, torch/CUDA versions, date), then a
header row.

``layer_times.csv`` -- one decoder layer's time, columns ``model, phase, batch_size, context_tokens,
new_tokens, layer_s, layer_p10_s, layer_p90_s, attn_s, linear_s, repeats``:
- ``phase=prefill``: ``batch_size`` sequences each computing ``new_tokens`` tokens whose attention spans
  ``context_tokens`` (the chunk included). The record uses fresh prompts, ``context_tokens = new_tokens``
  (grid point (batch, new_tokens)); chunked rows (context > new) are ignored.
- ``phase=decode``: ``batch_size`` sequences decoding one token (``new_tokens = 1``) with
  ``context_tokens`` of context each (grid point (batch, context_tokens)).
The record takes ``layer_p90_s`` (``layer_s`` where p90 is missing): a conservative per-layer time.

``copy_bandwidth.csv`` -- host<->device copies, columns ``direction (h2d|d2h), memory (pinned|pageable),
size_bytes, seconds, gb_per_s, concurrent_compute (0|1), repeats``. The record uses pinned h2d copies,
those measured while compute runs if there are any (that is how offloaded weights move): the bandwidth of
the largest size (the slowest row at that size) and, as the fixed latency, the largest excess of any row
over that bandwidth (so the copy model is never faster than a measured copy).

Grid points the profile did not measure are filled from the smallest measured point that dominates them,
and times are made non-decreasing in batch size and sequence length (running maximum), so rounding up to
a grid point stays conservative even with measurement noise. The fixed per-iteration time (embedding, LM
head, sampling) is not in the profile; it comes from ``fixed_cost`` (default: the roofline cost model).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.cost.base import CostModel
from sim.cost.roofline import RooflineCostModel

LAYER_COLUMNS = ("model", "phase", "batch_size", "context_tokens", "new_tokens", "layer_s", "layer_p10_s",
                 "layer_p90_s", "attn_s", "linear_s", "repeats")
COPY_COLUMNS = ("direction", "memory", "size_bytes", "seconds", "gb_per_s", "concurrent_compute", "repeats")


def read_profile_csv(path: str | Path, required: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, str]]:
    """A profiler CSV: its ``# key: value`` provenance and its rows (errors name the file and column)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: profile file not found")
    prov: dict[str, str] = {}
    body: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            k, _, v = line[1:].partition(":")
            if k.strip():
                prov[k.strip()] = v.strip()
        elif line.strip():
            body.append(line)
    if not body:
        raise ValueError(f"{path}: no rows")
    df = pd.read_csv(io.StringIO("\n".join(body)))
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(required)}")
    return df, prov


def _monotone(grid: dict[tuple[int, int], float], bs: list[int], ss: list[int]) -> dict[tuple[int, int], float]:
    """Fill unmeasured points from the smallest dominating measured one, then running max over both axes."""
    arr = np.full((len(bs), len(ss)), np.nan)
    for (b, s), t in grid.items():
        arr[bs.index(b), ss.index(s)] = t
    filled = arr.copy()
    for i in range(len(bs)):
        for j in range(len(ss)):
            if np.isnan(filled[i, j]):
                dom = arr[i:, j:]
                vals = [(bs[i + a] * ss[j + c], dom[a, c]) for a in range(dom.shape[0]) for c in range(dom.shape[1])
                        if not np.isnan(dom[a, c])]
                if vals:
                    filled[i, j] = min(vals)[1]
    mono = filled.copy()
    for i in range(len(bs)):
        for j in range(len(ss)):
            if np.isnan(mono[i, j]):
                continue
            prev = [mono[i - 1, j] if i else np.nan, mono[i, j - 1] if j else np.nan]
            mono[i, j] = np.nanmax([mono[i, j], *prev])
    return {(b, s): float(mono[i, j]) for i, b in enumerate(bs) for j, s in enumerate(ss) if not np.isnan(mono[i, j])}


def measured_inputs(model: ModelSpec, hw: HardwareSpec, layer_times_csv: str | Path,
                    copy_bandwidth_csv: str | Path | None, fixed_cost: CostModel | None = None):
    """Grid, per-point (layer_s, fixed_s), h2d bytes/s, latency and a provenance string for the record."""
    df, prov = read_profile_csv(layer_times_csv, ("model", "phase", "batch_size", "context_tokens",
                                                  "new_tokens", "layer_s"))
    models = sorted(set(str(m) for m in df.model))
    df = df[df.model.astype(str).str.lower() == model.name.lower()]
    if df.empty:
        raise ValueError(f"{layer_times_csv}: no rows for model {model.name!r} (the file has {models})")
    t = df["layer_p90_s"] if "layer_p90_s" in df.columns else df["layer_s"]
    df = df.assign(t=t.where(t.notna() & (t > 0), df["layer_s"]))
    fixed_cost = fixed_cost or RooflineCostModel(model, hw)
    grid: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    times: dict[tuple[str, int, int], tuple[float, float]] = {}
    for phase in ("prefill", "decode"):
        if phase == "prefill":
            rows = df[(df.phase == "prefill") & (df.context_tokens == df.new_tokens)]
            pts = {(int(r.batch_size), int(r.new_tokens)): float(r.t) for r in rows.itertuples()}
        else:
            rows = df[(df.phase == "decode") & (df.new_tokens == 1)]
            pts = {(int(r.batch_size), int(r.context_tokens)): float(r.t) for r in rows.itertuples()}
        if not pts:
            raise ValueError(f"{layer_times_csv}: no usable {phase} rows for {model.name}")
        bs = sorted({b for b, _ in pts})
        ss = sorted({s for _, s in pts})
        mono = _monotone(pts, bs, ss)
        grid[phase] = (tuple(bs), tuple(ss))
        for (b, s), layer_s in mono.items():
            sh = BatchShape.prefill_batch(b, s) if phase == "prefill" else BatchShape.decode_batch(b, s)
            times[(phase, b, s)] = (layer_s, fixed_cost.fixed_time(sh))
    rate, latency = hw.h2d_bytes_per_s, hw.link_latency_s
    src = f"{Path(layer_times_csv).name} ({', '.join(f'{k}={v}' for k, v in prov.items())})"
    if copy_bandwidth_csv is not None:
        cp, cprov = read_profile_csv(copy_bandwidth_csv, ("direction", "memory", "size_bytes", "seconds"))
        sel = cp[(cp.direction == "h2d") & (cp.memory == "pinned")]
        if sel.empty:
            raise ValueError(f"{copy_bandwidth_csv}: no pinned h2d rows")
        if "concurrent_compute" in sel.columns and (sel.concurrent_compute == 1).any():
            sel = sel[sel.concurrent_compute == 1]
        big = sel[sel.size_bytes == sel.size_bytes.max()]
        rate = float((big.size_bytes / big.seconds).min())
        latency = max(0.0, float((sel.seconds - sel.size_bytes / rate).max()))
        src += f"; {Path(copy_bandwidth_csv).name}: {rate / 1e9:.2f} GB/s, latency {latency * 1e6:.1f} us"
    return grid, times, rate, latency, src
