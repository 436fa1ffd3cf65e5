"""The fitted parameters of the calibrated cost model (`sim.cost.calibrated`) and the error its profiles raise."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping


class ProfileError(ValueError):
    """A profile file that cannot be read or does not match the hardware it is used with."""


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
