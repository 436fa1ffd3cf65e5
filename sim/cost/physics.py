"""The physics of one decoder layer on one GPU, which `calibration.fit` fits and `CalibratedCostModel`
runs (everything outside attention is what Vidur's ``linear_ops`` files time):

- **Weight GEMMs** (QKV, O, gate+up, down), M tokens x K inputs -> N outputs, are a soft roofline
  ``(t_mem**p + t_comp**p)**(1/p) + gemm_overhead_s``:
  - ``t_mem``: DRAM bytes over ``hbm * memory_efficiency``. The bytes are L2-blocked: when the K-long
    panels of A (activations) and B (weights) do not fit in L2 together, the GEMM is cut into blocks whose
    panels do, and each block re-reads the other operand (`gemm_dram_bytes`). At small M this is just the
    weights: the flat region, where time is set by reading the weights once. Where
    ``memory_latency_s`` > 0 (fitted on GPUs with a kernel set), a kernel's DRAM stream is also
    concurrency-limited (Little's law, `gemm_stream_bandwidth`): its resident CTAs keep a fixed number of
    bytes per output column in flight per DRAM latency, so narrow GEMMs (few column tiles) read their
    weights at less than the HBM rate and wide ones at nearly all of it.
  - ``t_comp``: output tiles (``tile_m`` x ``tile_n``; M is padded to ``small_tile_m`` while
    M <= ``small_m_max``) run in waves over the SMs. With one kernel (A100) a partial last wave costs a
    fraction ``wave_quantization`` of a full one (0: perfect load balance, 1: hard waves), so time grows in
    steps with M (tile quantisation) and narrow GEMMs that leave SMs idle are slower per FLOP. Where the
    GPU lists several kernels (``GpuConstants.gemm_kernels``, Hopper: tile shapes x split-K), waves are
    whole and ``t_comp`` is the fastest kernel's (`gemm_kernel_times`), as the GEMM library switches
    kernels between neighbouring token counts.
  - ``p`` (``knee_sharpness``) sets how sharply the memory-bound flat region turns compute-bound.
- **Element-wise kernels** (two RMS/LayerNorms, RoPE, the activation, the residual add) each cost a launch
  overhead, a per-row latency for the one-block-per-token kernels (norms, activation: proportional to the
  row width) and bytes over ``hbm * <kind>_efficiency``; traffic beyond the L2 capacity is slower by a
  factor ``1 + l2_spill_penalty * (1 - L2/bytes)``.
- **Attention** as the roofline model (FLOP-bound prefill, KV-read-bound decode) with its own efficiencies
  and kernel overhead (fitted only from data that times attention: the backend profiler's ``attn_s``).

All parameters are per FLOP, per byte or per kernel, shared by every model shape on the GPU, so a profile
fitted on one model predicts another. The shape functions take a tensor-parallel degree (one GPU's shard
of the layer), so the fitter also learns from timings of sharded shapes. Functions here accept numpy
arrays so the fitter evaluates the same code the simulator runs. The parameters are `CalibratedParams`
(`sim.cost.calibrated`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.core.units import MiB
from sim.cost.params import CalibratedParams


@dataclass(frozen=True)
class GpuConstants:
    """Architectural facts the physics needs and HardwareSpec does not carry. Not fitted."""

    sm_count: int
    l2_bytes: float
    tile_m: int = 128
    tile_n: int = 128
    small_tile_m: int = 16
    small_m_max: int = 64
    # GEMM kernels the library chooses from, (tile_m, tile_n, split_k) each; the time is the fastest's.
    # Empty: the one kernel (tile_m, tile_n, 1), with partial waves costing ``wave_quantization``.
    # With several, waves are whole (a kernel's partial wave costs a full one; the choice among kernels
    # is what balances the load), and ``wave_quantization`` is not used.
    gemm_kernels: tuple = ()
    # Tile rows per wave in the DRAM-traffic bound: 0 = the square-ish footprint that minimises traffic,
    # else the raster swizzle width (rows of tiles a wave spans, at least what fills the SMs).
    raster_swizzle: int = 0
    # Bytes of the weight operand a GEMM CTA keeps in flight per output column of its tile (K-step x
    # dtype x pipeline stages: 64 x 2 x 4), for the concurrency limit on DRAM bandwidth (Little's law).
    cta_inflight_bytes_per_column: float = 512.0

    def kernels(self) -> tuple[tuple[int, int, int], ...]:
        if not self.gemm_kernels:
            return ((self.tile_m, self.tile_n, 1),)
        return tuple((int(a), int(b), int(c)) for a, b, c in self.gemm_kernels)


# Hopper's cuBLAS picks among warpgroup-MMA kernels of 128 or 64 rows by 256 or 128 columns, with
# split-K up to 8 for narrow GEMMs with long K, rastered in swizzles of 4 tile rows.
_HOPPER_KERNELS = tuple((tm, tn, s) for tm, tn in ((128, 256), (128, 128), (64, 256), (64, 128))
                        for s in (1, 2, 4, 8))

# Vendor whitepapers: A100 (GA100) 108 SMs, 40 MB L2; H100 SXM5 132 SMs, 50 MB L2; H200 as H100;
# GH200's Hopper die as H100 SXM; A10 (GA102) 72 SMs, 6 MB L2. Tile shapes: cuBLAS' large-M tensor-core
# tiles, 128x128 on Ampere (one kernel) and 128x256 (warpgroup MMA) on Hopper, where the GEMM time is the
# fastest of `_HOPPER_KERNELS`.
GPU_CONSTANTS: dict[str, GpuConstants] = {
    "a10": GpuConstants(sm_count=72, l2_bytes=6 * MiB),
    "a100-80g": GpuConstants(sm_count=108, l2_bytes=40 * MiB),
    "h100-sxm": GpuConstants(sm_count=132, l2_bytes=50 * MiB, tile_n=256, gemm_kernels=_HOPPER_KERNELS,
                             raster_swizzle=4),
    "h200": GpuConstants(sm_count=132, l2_bytes=50 * MiB, tile_n=256, gemm_kernels=_HOPPER_KERNELS,
                         raster_swizzle=4),
    "gh200": GpuConstants(sm_count=132, l2_bytes=50 * MiB, tile_n=256, gemm_kernels=_HOPPER_KERNELS,
                          raster_swizzle=4),
}


def gpu_constants(gpu: str) -> GpuConstants:
    return GPU_CONSTANTS.get(gpu.lower(), GpuConstants(sm_count=108, l2_bytes=40 * MiB))


def gemm_dram_bytes(m: Any, k: float, n: float, c: GpuConstants, dtype_bytes: int = 2) -> Any:
    """DRAM bytes of an M x K by K x N GEMM. Two bounds on operand re-reads, the smaller holds:
    - L2 blocking: blocks of Mb rows and Nb columns whose K-long panels fit in L2 together; each block row
      re-reads B and each block column re-reads A;
    - one wave: the SMs' concurrent output tiles share their A rows and B columns through L2, and nothing
      survives from one wave to the next.
    Never less than reading A and B once and writing C once."""
    m = np.asarray(m, dtype=float)
    once = m * k + k * n + m * n
    lines = c.l2_bytes / (k * dtype_bytes)  # rows + columns of K-long panels that fit in L2
    mb = np.maximum(np.minimum(m, max(lines / 2, lines - n)), 1.0)
    nb = np.minimum(n, np.maximum(lines - mb, 1.0))
    blocked = k * n * np.maximum(1.0, m / mb) + m * k * np.maximum(1.0, n / nb) + m * n
    tm = np.where(m <= c.small_m_max, c.small_tile_m, c.tile_m)
    tiles_m, tiles_n = np.ceil(m / tm), math.ceil(n / c.tile_n)
    if c.raster_swizzle:
        a = np.minimum(tiles_m, max(float(c.raster_swizzle), c.sm_count / tiles_n))  # tile rows per wave
    else:
        a = np.minimum(tiles_m, math.sqrt(c.sm_count * c.tile_n / c.tile_m))
    b = np.minimum(tiles_n, c.sm_count / np.maximum(a, 1.0))  # tile columns per wave
    waves = tiles_m * tiles_n / (a * b)
    per_wave = (a * tm + b * c.tile_n) * k
    return dtype_bytes * np.maximum(once, np.minimum(blocked, waves * per_wave + m * n))


def gemm_kernel_times(m: Any, k: float, n: float, hw: HardwareSpec, c: GpuConstants, p: CalibratedParams,
                      dtype_bytes: int = 2) -> dict[tuple[int, int, int], Any]:
    """Compute time of each of the GPU's GEMM kernels (tile_m, tile_n, split_k) for ``m`` tokens.

    A kernel runs ceil(M / tile_m) x ceil(N / tile_n) x split_k tiles, each over K / split_k, in waves of
    one tile per SM at ``compute_efficiency`` x peak / SM (M padded to ``small_tile_m`` while M <=
    ``small_m_max``). Split-K adds writing and reading back fp32 partial sums (split_k x M x N x 4 bytes,
    each way) at ``memory_efficiency`` x HBM bandwidth."""
    m = np.asarray(m, dtype=float)
    kernels = c.kernels()
    wq = 1.0 if len(kernels) > 1 else p.wave_quantization
    per_sm = hw.peak_flops * p.compute_efficiency / c.sm_count
    out = {}
    for tile_m, tile_n, split in kernels:
        tm = np.where(m <= c.small_m_max, c.small_tile_m, tile_m)
        waves = np.ceil(m / tm) * math.ceil(n / tile_n) * split / c.sm_count
        waves = waves + wq * (np.ceil(waves) - waves)
        t = waves * 2.0 * tm * tile_n * (k / split) / per_sm
        if split > 1:
            t = t + 2.0 * 4.0 * m * n * split / (hw.hbm_bytes_per_s * p.memory_efficiency)
        out[(tile_m, tile_n, split)] = t
    return out


def gemm_time(m: Any, k: float, n: float, hw: HardwareSpec, c: GpuConstants, p: CalibratedParams,
              dtype_bytes: int = 2) -> Any:
    """Time of one weight GEMM for ``m`` tokens (array or scalar): compute time (`gemm_kernel_times`)
    against DRAM time, joined by the p-norm knee, for the fastest kernel.

    With ``memory_latency_s`` = 0 the DRAM time is the same for every kernel (bytes over ``hbm *
    memory_efficiency``) and is joined with the fastest kernel's compute time. Otherwise each tile shape
    streams at its own concurrency-limited bandwidth (`gemm_stream_bandwidth`), and the time is the
    fastest tile shape's knee of that DRAM time and its fastest split-K's compute time."""
    m = np.asarray(m, dtype=float)
    bw = hw.hbm_bytes_per_s * p.memory_efficiency
    nbytes = gemm_dram_bytes(m, k, n, c, dtype_bytes)
    q = p.knee_sharpness
    comp: dict[tuple[int, int], Any] = {}  # tile shape -> fastest split-K's compute time
    for (tile_m, tile_n, _split), t in gemm_kernel_times(m, k, n, hw, c, p, dtype_bytes).items():
        key = (tile_m, tile_n) if p.memory_latency_s > 0 else (0, 0)
        comp[key] = t if key not in comp else np.minimum(comp[key], t)
    best = None
    for (tile_m, tile_n), t_comp in comp.items():
        stream = bw if p.memory_latency_s <= 0 else gemm_stream_bandwidth(m, n, tile_m, tile_n, bw, c, p)
        t = _knee(nbytes / stream, t_comp, q)
        best = t if best is None else np.minimum(best, t)
    return best + p.gemm_overhead_s


def _knee(t_mem: Any, t_comp: Any, q: float) -> Any:
    hi = np.maximum(t_mem, t_comp)  # p-norm computed stably
    return hi * (1.0 + (np.minimum(t_mem, t_comp) / hi) ** q) ** (1.0 / q)


def gemm_stream_bandwidth(m: Any, n: float, tile_m: int, tile_n: int, bw: float, c: GpuConstants,
                          p: CalibratedParams) -> Any:
    """DRAM bandwidth a GEMM with ``tile_m`` x ``tile_n`` output tiles streams at (Little's law, soft form).

    The CTAs resident at once, min(ceil(M / tile_m) x ceil(N / tile_n), SMs), each keep ``tile_n x
    cta_inflight_bytes_per_column`` bytes of the weights in flight per DRAM latency ``memory_latency_s``:
    that is a rate ``lim``, and a byte costs the DRAM's time plus the latency share,
    1 / bandwidth = 1 / (hbm x memory_efficiency) + 1 / lim. Narrow outputs (few column tiles) stream
    slower; split-K does not add streams (cuBLAS' memory-bound kernels on these shapes run without it,
    which the narrow-N shards' timings show)."""
    ctas = np.ceil(np.asarray(m, dtype=float) / tile_m) * math.ceil(n / tile_n)
    lim = np.minimum(ctas, c.sm_count) * tile_n * c.cta_inflight_bytes_per_column / p.memory_latency_s
    return 1.0 / (1.0 / bw + 1.0 / lim)


def elementwise_time(nbytes: Any, row_width: float, kind: str, hw: HardwareSpec, c: GpuConstants,
                     p: CalibratedParams) -> Any:
    """One element-wise kernel moving ``nbytes`` (array or scalar); ``kind`` in norm, rope, act, add."""
    nbytes = np.asarray(nbytes, dtype=float)
    eff = {"norm": p.norm_efficiency, "rope": p.rope_efficiency, "act": p.act_efficiency,
           "add": p.add_efficiency}[kind]
    launch = {"norm": p.row_kernel_overhead_s, "act": p.row_kernel_overhead_s, "rope": p.rope_overhead_s,
              "add": p.add_overhead_s}[kind]
    spill = np.maximum(0.0, 1.0 - c.l2_bytes / np.maximum(nbytes, 1.0))
    t_bytes = nbytes / (hw.hbm_bytes_per_s * eff) * (1.0 + p.l2_spill_penalty * spill)
    return launch + np.maximum(p.row_latency_s_per_element * row_width, t_bytes)


def layer_gemms(model: ModelSpec, tp: int = 1) -> dict[str, tuple[int, int]]:
    """(K, N) of the layer's weight GEMMs on one GPU, keyed as the measurement op groups. With ``tp``-way
    tensor parallelism (Megatron split) QKV and gate+up are split along N, O and down along K."""
    m = model
    n_up = m.intermediate_size * (2 if m.gated_mlp else 1)
    return {"gemm_qkv": (m.hidden_size, (m.q_dim + 2 * m.kv_dim) // tp), "gemm_o": (m.q_dim // tp, m.hidden_size),
            "gemm_up": (m.hidden_size, n_up // tp), "gemm_down": (m.intermediate_size // tp, m.hidden_size)}


def layer_elementwise(model: ModelSpec, tp: int = 1) -> dict[str, tuple[str, float, float]]:
    """(kind, bytes per token, row width) of the layer's element-wise kernels on one GPU (Vidur's op list:
    two norms, RoPE for rotary models, the activation and one residual add). With ``tp``-way tensor
    parallelism RoPE and the activation work on the GPU's heads / MLP columns; norms and the add on the
    full hidden width."""
    m, dt = model, model.dtype_bytes
    act_bytes = (3 if m.gated_mlp else 2) * m.intermediate_size * dt / tp
    out = {"norm_input": ("norm", 2 * m.hidden_size * dt, m.hidden_size),
           "norm_post": ("norm", 2 * m.hidden_size * dt, m.hidden_size)}
    if m.arch == "llama":
        out["rope"] = ("rope", 2 * (m.q_dim + m.kv_dim) * dt / tp, 0)
    out["act"] = ("act", act_bytes, m.intermediate_size / tp)
    out["add"] = ("add", 3 * m.hidden_size * dt, 0)
    return out


def linear_op_times(model: ModelSpec, hw: HardwareSpec, c: GpuConstants, p: CalibratedParams,
                    tokens: Any, tp: int = 1) -> dict[str, Any]:
    """Time of each non-attention op of one layer on one GPU, keyed by op group, for ``tokens`` (array or
    scalar); ``tp`` is the tensor-parallel degree the layer is split over."""
    tokens = np.asarray(tokens, dtype=float)
    out = {g: gemm_time(tokens, k, n, hw, c, p, model.dtype_bytes)
           for g, (k, n) in layer_gemms(model, tp).items()}
    for g, (kind, bpt, width) in layer_elementwise(model, tp).items():
        out[g] = elementwise_time(tokens * bpt, width, kind, hw, c, p)
    return out
