"""Workloads: arrival processes, burst overlays, length distributions and trace replay.

Everything draws from ``numpy.random.default_rng`` streams derived from one seed, so the same seed gives
the same requests bit for bit. A workload produces a `RequestSet` (three aligned arrays), which every
compared policy then serves unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from sim.core.request import Request
from sim.core.trace import TRACE_LAYOUTS, WorkloadError, read_trace  # noqa: F401 -- re-exported


@dataclass
class RequestSet:
    """Requests as columns, sorted by arrival time."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __post_init__(self) -> None:
        self.arrival_s = np.asarray(self.arrival_s, dtype=float)
        self.prompt_tokens = np.asarray(self.prompt_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(self.output_tokens, dtype=np.int64)
        if not (len(self.arrival_s) == len(self.prompt_tokens) == len(self.output_tokens)):
            raise WorkloadError("arrival, prompt and output arrays differ in length")
        # nothing is clipped: a request has at least one prompt and one output token, at a finite time
        if len(self) and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise WorkloadError(f"token counts must be >= 1, got prompt {int(self.prompt_tokens.min())} and "
                                f"output {int(self.output_tokens.min())} at the lowest")
        if len(self) and not np.isfinite(self.arrival_s).all():
            raise WorkloadError("arrival times must be finite")
        order = np.argsort(self.arrival_s, kind="stable")
        self.arrival_s = self.arrival_s[order]
        self.prompt_tokens = self.prompt_tokens[order]
        self.output_tokens = self.output_tokens[order]

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    def to_requests(self, ttft_slo_s: float = float("inf"), tpot_slo_s: float = float("inf")) -> list[Request]:
        return [Request(i, float(a), int(p), int(o), ttft_slo_s, tpot_slo_s)
                for i, (a, p, o) in enumerate(zip(self.arrival_s, self.prompt_tokens, self.output_tokens))]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"arrival_s": self.arrival_s, "prompt_tokens": self.prompt_tokens,
                             "output_tokens": self.output_tokens})

    @classmethod
    def concat(cls, parts: list["RequestSet"]) -> "RequestSet":
        if not parts:
            return cls(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        return cls(np.concatenate([p.arrival_s for p in parts]),
                   np.concatenate([p.prompt_tokens for p in parts]),
                   np.concatenate([p.output_tokens for p in parts]))


# --- length distributions -------------------------------------------------------------------------------
class LengthDist(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Fixed:
    value: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    low: int
    high: int  # inclusive

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, size=n)


@dataclass(frozen=True)
class LogNormal:
    median: float
    sigma: float
    min: int = 1
    max: int = 1 << 20

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = rng.lognormal(np.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(x), self.min, self.max).astype(np.int64)


@dataclass(frozen=True)
class Empirical:
    """Resample observed lengths (e.g. a trace's prompt column); keeps multi-modal mixes intact."""

    values: tuple[int, ...]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if not self.values:
            raise WorkloadError("empirical length distribution has no values")
        return rng.choice(np.asarray(self.values, dtype=np.int64), size=n, replace=True)


# --- arrival processes ----------------------------------------------------------------------------------
class ArrivalProcess(Protocol):
    def times(self, rng: np.random.Generator, start_s: float, end_s: float) -> np.ndarray: ...


@dataclass(frozen=True)
class Poisson:
    rate_per_s: float

    def times(self, rng: np.random.Generator, start_s: float, end_s: float) -> np.ndarray:
        return _renewal(rng.exponential, (1.0 / self.rate_per_s,), rng, self.rate_per_s, start_s, end_s)


@dataclass(frozen=True)
class Gamma:
    """Renewal process with gamma inter-arrival times: mean 1/rate, coefficient of variation ``cv``
    (cv=1 is Poisson, > 1 burstier)."""

    rate_per_s: float
    cv: float

    def times(self, rng: np.random.Generator, start_s: float, end_s: float) -> np.ndarray:
        shape = 1.0 / self.cv**2
        scale = 1.0 / (self.rate_per_s * shape)
        return _renewal(rng.gamma, (shape, scale), rng, self.rate_per_s, start_s, end_s)


@dataclass(frozen=True)
class Constant:
    rate_per_s: float

    def times(self, rng: np.random.Generator, start_s: float, end_s: float) -> np.ndarray:
        return np.arange(start_s, end_s, 1.0 / self.rate_per_s)


@dataclass(frozen=True)
class Batch:
    """``count`` requests all arriving at ``at_s`` (fixed-batch experiments)."""

    count: int
    at_s: float = 0.0

    def times(self, rng: np.random.Generator, start_s: float, end_s: float) -> np.ndarray:
        return np.full(self.count, self.at_s) if start_s <= self.at_s <= end_s else np.zeros(0)


def _renewal(draw, args: tuple, rng: np.random.Generator, rate: float, start_s: float, end_s: float) -> np.ndarray:
    """Cumulative inter-arrival gaps drawn in chunks until ``end_s``."""
    if rate <= 0 or end_s <= start_s:
        return np.zeros(0)
    out: list[np.ndarray] = []
    t = start_s
    chunk = max(16, int((end_s - start_s) * rate * 1.2) + 16)
    while t < end_s:
        ts = t + np.cumsum(draw(*args, size=chunk))
        out.append(ts[ts < end_s])
        t = float(ts[-1])
    return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class Burst:
    """Extra arrivals at ``rate_per_s`` (Poisson) during [start_s, start_s + duration_s)."""

    start_s: float
    duration_s: float
    rate_per_s: float


# --- synthetic workloads --------------------------------------------------------------------------------
@dataclass
class SyntheticWorkload:
    arrivals: ArrivalProcess
    prompt: LengthDist
    output: LengthDist
    duration_s: float = 60.0
    bursts: list[Burst] = field(default_factory=list)
    max_requests: int | None = None

    def generate(self, seed: int) -> RequestSet:
        rng = np.random.default_rng([seed, 0])
        times = [self.arrivals.times(rng, 0.0, self.duration_s)]
        for k, b in enumerate(self.bursts):
            brng = np.random.default_rng([seed, 1, k])
            times.append(Poisson(b.rate_per_s).times(brng, b.start_s, min(b.start_s + b.duration_s, self.duration_s)))
        t = np.sort(np.concatenate(times), kind="stable")
        if self.max_requests is not None:
            t = t[: self.max_requests]
        lrng = np.random.default_rng([seed, 2])
        n = len(t)
        return RequestSet(t, self.prompt.sample(lrng, n), self.output.sample(lrng, n))


# --- traces (reading and checking them: sim.core.trace) ------------------------------------------------
@dataclass(frozen=True)
class TraceBurst:
    """Extra load on a replayed trace: ``rate_scale`` x the requests arriving in [start_s, start_s +
    duration_s) of the replayed (windowed, time-scaled) timeline, by replicating them as ``rate_scale`` does."""

    start_s: float
    duration_s: float
    rate_scale: float


@dataclass
class TraceWorkload:
    """Replay a trace. ``window_start_s``/``window_s`` cut a window of the original timeline; then
    ``time_scale`` multiplies timestamps (0.1 compresses time 10x) and ``rate_scale`` multiplies the
    request count at unchanged timing (2.0 duplicates every request, 0.5 keeps each with probability 1/2).
    ``bursts`` scale the count further inside windows of the replayed timeline."""

    path: Path
    window_start_s: float = 0.0
    window_s: float | None = None
    time_scale: float = 1.0
    rate_scale: float = 1.0
    max_requests: int | None = None
    bursts: tuple[TraceBurst, ...] = ()
    on_bad_rows: Literal["error", "drop"] = "error"  # see `read_trace`
    max_expected_requests: int | None = None  # refuse (WorkloadLimitError) to replicate the window beyond this
    trace_info: dict = field(default_factory=dict, init=False)  # read_trace's counts, after `generate`

    def generate(self, seed: int) -> RequestSet:
        if self.time_scale <= 0 or self.rate_scale <= 0:
            raise WorkloadError("time_scale and rate_scale must be > 0")
        df = read_trace(self.path, self.on_bad_rows)
        self.trace_info = dict(df.attrs)
        t = df.arrival_s.to_numpy()
        keep = t >= self.window_start_s
        if self.window_s is not None:
            keep &= t < self.window_start_s + self.window_s
        df = df[keep]
        t = (df.arrival_s.to_numpy() - self.window_start_s) * self.time_scale
        p, o = df.prompt_tokens.to_numpy(), df.output_tokens.to_numpy()
        if self.max_expected_requests is not None:
            scale = np.full(len(t), self.rate_scale)
            for b in self.bursts:
                scale *= np.where((t >= b.start_s) & (t < b.start_s + b.duration_s), b.rate_scale, 1.0)
            expected = float(scale.sum())
            if expected > self.max_expected_requests:
                raise WorkloadLimitError(expected, f"{len(t):,} trace rows in the window x rate_scale and bursts")
        if self.rate_scale != 1.0:
            t, p, o = _replicate(t, p, o, np.full(len(t), self.rate_scale), np.random.default_rng([seed, 3]))
        for k, b in enumerate(self.bursts):
            if b.rate_scale <= 0 or b.duration_s <= 0:
                raise WorkloadError("a trace burst needs duration_s > 0 and rate_scale > 0")
            inside = (t >= b.start_s) & (t < b.start_s + b.duration_s)
            t, p, o = _replicate(t, p, o, np.where(inside, b.rate_scale, 1.0), np.random.default_rng([seed, 4, k]))
        rs = RequestSet(t, p, o)
        if self.max_requests is not None and len(rs) > self.max_requests:
            rs = RequestSet(rs.arrival_s[: self.max_requests], rs.prompt_tokens[: self.max_requests],
                            rs.output_tokens[: self.max_requests])
        return rs


class WorkloadLimitError(WorkloadError):
    """A workload that would be larger than allowed: ``expected`` requests, made as ``how`` says."""

    def __init__(self, expected: float, how: str) -> None:
        super().__init__(f"about {expected:,.0f} requests ({how})")
        self.expected, self.how = expected, how


def _replicate(t: np.ndarray, p: np.ndarray, o: np.ndarray, scale: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each request becomes floor(scale) copies plus one more with probability frac(scale)."""
    whole = np.floor(scale).astype(np.int64)
    copies = whole + (rng.random(len(t)) < scale - whole)
    idx = np.repeat(np.arange(len(t)), copies)
    # replicas land within 1 ms after their original: distinct, but the trace's timing is kept
    replica = np.r_[False, idx[1:] == idx[:-1]] if len(idx) else np.zeros(0, dtype=bool)
    jitter = rng.random(len(idx)) * 1e-3 * replica
    return t[idx] + jitter, p[idx], o[idx]


def empirical_from_trace(path: str | Path) -> tuple[Empirical, Empirical]:
    """Prompt and output length distributions resampled from a trace (the trace's length mix)."""
    df = read_trace(path)
    return Empirical(tuple(int(x) for x in df.prompt_tokens)), Empirical(tuple(int(x) for x in df.output_tokens))
