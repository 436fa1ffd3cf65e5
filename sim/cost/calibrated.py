"""The calibrated cost model: per-operator physics with parameters fitted by `calibration.fit`.

A profile (YAML, written by ``python -m calibration.fit``) holds one GPU's fitted parameters, the GPU's
fixed architectural constants, residual statistics and provenance. `CalibratedCostModel` turns it into a
`CostModel`; `make_cost_model` is what scenarios call.

The physics of one decoder layer (the kernel-level formulas and the GPUs' constants) is in
`sim.cost.physics`; this module holds the fitted parameters, the profile file and the cost model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.cost.params import CalibratedParams, ProfileError
from sim.cost.physics import GpuConstants, elementwise_time, gemm_time, gpu_constants, linear_op_times
from sim.cost.roofline import RooflineCostModel

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_FORMAT = 1


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


# --- the cost model ----------------------------------------------------------------------------------------

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
