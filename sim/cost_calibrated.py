"""The calibrated cost model: per-operator physics with parameters fitted by `calibration.fit`.

A profile (YAML, written by ``python -m calibration.fit``) holds one GPU's fitted parameters, the GPU's
fixed architectural constants, residual statistics and provenance. `CalibratedCostModel` turns it into a
`CostModel`; `make_cost_model` is what scenarios call.

Physics of one decoder layer (everything outside attention is what Vidur's ``linear_ops`` files time):

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
of the layer), so the fitter also learns from timings of sharded shapes. Functions here accept numpy arrays so the fitter evaluates the same
code the simulator runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .cost import BatchShape, RooflineCostModel
from .hardware import HardwareSpec
from .model import ModelSpec
from .units import MiB

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE_FORMAT = 1


class ProfileError(ValueError):
    """A profile file that cannot be read or does not match the hardware it is used with."""


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


@dataclass(frozen=True)
class CalibratedParams:
    """Fitted parameters (SI units; efficiencies are fractions of the HardwareSpec peaks)."""

    compute_efficiency: float = 0.75
    memory_efficiency: float = 0.85
    gemm_overhead_s: float = 5e-6
    knee_sharpness: float = 3.0
    wave_quantization: float = 0.1
    norm_efficiency: float = 0.4
    rope_efficiency: float = 0.5
    act_efficiency: float = 0.6
    add_efficiency: float = 1.0
    row_kernel_overhead_s: float = 2e-6
    rope_overhead_s: float = 4e-6
    add_overhead_s: float = 1.5e-6
    row_latency_s_per_element: float = 4e-10
    l2_spill_penalty: float = 0.4
    memory_latency_s: float = 0.0  # GEMM DRAM latency in Little's law (0: bandwidth not concurrency-limited)
    attention_efficiency: float = 0.5
    attention_memory_efficiency: float = 0.7
    attention_overhead_s: float = 5e-6
    iteration_overhead_s: float = 1e-3

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "profile") -> "CalibratedParams":
        bad = sorted(set(data) - set(cls.names()))
        if bad:
            raise ProfileError(f"{where}: unknown parameter(s) {bad}; allowed: {cls.names()}")
        out = {}
        for k, v in data.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ProfileError(f"{where}: parameter {k} must be a finite number >= 0, got {v!r}")
            out[k] = float(v)
        return cls(**out)


@dataclass
class Profile:
    """One GPU's calibration: what `calibration.fit` writes and `load_profile` reads."""

    gpu: str
    params: CalibratedParams = field(default_factory=CalibratedParams)
    constants: GpuConstants | None = None
    link: dict[str, float] = field(default_factory=dict)  # h2d_bytes_per_s, link_latency_s when fitted
    residuals: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.constants is None:
            self.constants = gpu_constants(self.gpu)

    def to_dict(self) -> dict[str, Any]:
        params = {k: float(f"{v:.6g}") for k, v in asdict(self.params).items()}
        return {"format": PROFILE_FORMAT, "gpu": self.gpu, "params": params,
                "constants": asdict(self.constants), "link": dict(self.link),
                "residuals": self.residuals, "provenance": self.provenance}

    def write(self, path: str | Path) -> Path:
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# memslo calibration profile for {self.gpu}; written by calibration.fit "
                  f"(regenerate with the command under provenance.command)\n")
        path.write_text(header + yaml.safe_dump(_plain(self.to_dict()), sort_keys=False, width=110))
        return path


def _plain(x: Any) -> Any:
    """numpy scalars and tuples to plain YAML-safe Python."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def resolve_profile_path(path: str | Path) -> Path:
    """A profile path as scenarios write it: absolute, or relative to the repository root (or the cwd)."""
    p = Path(path)
    if p.is_absolute():
        return p
    for base in (REPO_ROOT, Path.cwd()):
        if (base / p).exists():
            return base / p
    return REPO_ROOT / p


def load_profile(path: str | Path) -> Profile:
    import yaml

    p = resolve_profile_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: calibration profile not found (paths are relative to {REPO_ROOT})") from None
    except yaml.YAMLError as e:
        raise ProfileError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or "gpu" not in data or "params" not in data:
        raise ProfileError(f"{p}: a profile needs the keys 'gpu' and 'params'")
    params = CalibratedParams.from_mapping(data["params"] or {}, where=f"{p.name}: params")
    const = gpu_constants(str(data["gpu"]))
    if data.get("constants"):
        cdata = dict(data["constants"])
        if "gemm_kernels" in cdata:  # YAML lists back to the tuples GpuConstants holds
            cdata["gemm_kernels"] = tuple(tuple(int(x) for x in kern) for kern in cdata["gemm_kernels"] or ())
        try:
            const = replace(const, **cdata)
        except TypeError as e:
            raise ProfileError(f"{p.name}: constants: {e}") from None
    return Profile(gpu=str(data["gpu"]), params=params, constants=const, link=dict(data.get("link") or {}),
                   residuals=dict(data.get("residuals") or {}), provenance=dict(data.get("provenance") or {}),
                   path=p)


# --- physics (numpy-vectorised) ------------------------------------------------------------------------

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


class CalibratedCostModel:
    """`CostModel` from a fitted profile. Non-attention time is a pure function of the token count and is
    cached; attention follows `RooflineCostModel` with the profile's attention efficiencies."""

    def __init__(self, model: ModelSpec, hw: HardwareSpec, profile: Profile | CalibratedParams) -> None:
        if isinstance(profile, CalibratedParams):
            profile = Profile(gpu=hw.name, params=profile)
        self.model, self.hw, self.profile = model, hw, profile
        self.p: CalibratedParams = profile.params
        self.c: GpuConstants = profile.constants  # type: ignore[assignment]
        self._linear = lru_cache(maxsize=65536)(self._linear_uncached)
        self._fixed = lru_cache(maxsize=65536)(self._fixed_uncached)
        self._attn = RooflineCostModel(
            model, hw, compute_efficiency=min(1.0, max(1e-3, self.p.compute_efficiency)),
            memory_efficiency=min(1.0, max(1e-3, self.p.attention_memory_efficiency)),
            attention_efficiency=min(1.0, max(1e-3, self.p.attention_efficiency)),
            kernel_overhead_s=self.p.attention_overhead_s)

    # --- pieces ---------------------------------------------------------------------------------------
    def op_times(self, tokens: Any) -> dict[str, Any]:
        return linear_op_times(self.model, self.hw, self.c, self.p, tokens)

    def _linear_uncached(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return float(sum(self.op_times(tokens).values()))

    def linear_time(self, tokens: int) -> float:
        """Everything in a layer except attention (what Vidur's ``linear_ops`` profiles measure)."""
        return self._linear(int(tokens))

    def gemm_time(self, tokens: int) -> float:
        t = self.op_times(tokens)
        return float(sum(v for k, v in t.items() if k.startswith("gemm_")))

    def elementwise_time(self, tokens: int) -> float:
        t = self.op_times(tokens)
        return float(sum(v for k, v in t.items() if not k.startswith("gemm_")))

    def attention_time(self, shape: BatchShape) -> float:
        return self._attn.attention_time(shape)

    # --- CostModel ------------------------------------------------------------------------------------
    def layer_time(self, shape: BatchShape) -> float:
        return self.linear_time(shape.prefill_tokens + shape.decode_tokens) + self.attention_time(shape)

    def fixed_time(self, shape: BatchShape) -> float:
        return self._fixed(shape.prefill_seqs + shape.decode_tokens, shape.prefill_tokens + shape.decode_tokens)

    def _fixed_uncached(self, seqs: int, tokens: int) -> float:
        m, p, c = self.model, self.p, self.c
        if tokens == 0:
            return p.iteration_overhead_s
        lm_head = float(gemm_time(seqs, m.hidden_size, m.vocab_size, self.hw, c, p, m.dtype_bytes))
        embed = float(elementwise_time(tokens * m.hidden_size * m.dtype_bytes * 2, 0, "add", self.hw, c, p))
        final_norm = float(elementwise_time(seqs * m.hidden_size * m.dtype_bytes * 2, m.hidden_size, "norm",
                                            self.hw, c, p))
        sampling = float(elementwise_time(seqs * m.vocab_size * 4, m.vocab_size, "norm", self.hw, c, p))
        return p.iteration_overhead_s + lm_head + embed + final_norm + sampling

    def iteration_compute_time(self, shape: BatchShape, num_layers: int | None = None) -> float:
        n = self.model.num_layers if num_layers is None else num_layers
        return n * self.layer_time(shape) + self.fixed_time(shape)

    def params(self) -> dict[str, float]:
        return asdict(self.p)


def make_cost_model(model: ModelSpec, hw: HardwareSpec, profile_path: str | Path | None = None):
    """The calibrated model when a profile is named (scenario ``hardware.profile``), else the roofline.

    Profile paths are absolute or relative to the repository root. The profile's GPU must be the one the
    scenario runs on.
    """
    if profile_path is None:
        return RooflineCostModel(model, hw)
    prof = load_profile(profile_path)
    if prof.gpu.lower() != hw.name.lower():
        raise ProfileError(f"{profile_path}: profile is for GPU {prof.gpu!r} but the hardware is {hw.name!r}")
    return CalibratedCostModel(model, hw, prof)


def apply_profile_link(hw: HardwareSpec, profile: Profile) -> HardwareSpec:
    """``hw`` with the host-link numbers the profile measured (when it has any)."""
    keys = {"h2d_bytes_per_s", "d2h_bytes_per_s", "link_latency_s"}
    over = {k: float(v) for k, v in profile.link.items() if k in keys}
    return hw.with_overrides(**over) if over else hw
