"""How far executed iterations stray from what the cost model (and so Select-N's record) predicts.

A performance record is profiled once; the iterations it then predicts never run exactly as profiled
(other kernels, clocks, temperature, a profile taken on another card). `RecordError` makes that explicit
in a simulation: every iteration takes ``(1 + bias) x e`` times what the record predicts, ``e``
log-normal of mean 1 and log-standard deviation ``noise``, drawn per iteration from a stream seeded by
(``seed``, GPU): its kernels (compute and fixed time) and its host-link copies (weights, KV swaps) alike,
as a record profiled on another day or card would be wrong about both. The record, the policies and the
cost model stay unchanged, so a policy that trusts its record is wrong by exactly this much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RecordError:
    """Executed iteration time = predicted x (1 + ``bias``) x per-iteration noise (log-normal, mean 1,
    log-sd ``noise``), seeded by ``seed`` and the GPU."""

    bias: float = 0.0
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not -0.9 <= self.bias <= 10:
            raise ValueError(f"record error bias must be in [-0.9, 10], got {self.bias}")
        if not 0 <= self.noise <= 1:
            raise ValueError(f"record error noise must be in [0, 1], got {self.noise}")

    @property
    def active(self) -> bool:
        return self.bias != 0.0 or self.noise > 0.0

    def stream(self, gpu: int) -> "ErrorStream":
        return ErrorStream(self, gpu)


class ErrorStream:
    """One GPU's per-iteration factors, in iteration order (so the same seed gives the same run)."""

    def __init__(self, err: RecordError, gpu: int) -> None:
        self.scale = 1.0 + err.bias
        self.noise = err.noise
        self._mu = -0.5 * err.noise * err.noise  # E[exp(N(mu, s^2))] = 1
        self._rng = np.random.default_rng([err.seed, 19, gpu]) if err.noise > 0 else None

    def next(self) -> float:
        if self._rng is None:
            return self.scale
        return self.scale * math.exp(self._mu + self.noise * float(self._rng.standard_normal()))
