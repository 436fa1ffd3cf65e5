"""What the report draws, gathered once: per policy its summary, request records, time series and instants,
plus the scenario facts the figures need (SLOs, link capacities, bursts). Also the time-grid helpers that
turn per-GPU samples taken at irregular iteration ends into per-policy curves on one grid."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from sim.api import PolicyRun
    from sim.config.scenario import LoadedScenario

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


@dataclass
class PolicyData:
    name: str
    summary: dict[str, Any]
    requests: pd.DataFrame
    series: pd.DataFrame
    instants: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return self.summary.get("error")

    @property
    def ran(self) -> bool:
        return self.error is None and len(self.series) > 0


@dataclass
class ReportData:
    title: str
    subtitle: str
    policies: list[PolicyData]
    slo_ttft_s: float = math.inf
    slo_tpot_s: float = math.inf
    description: str = ""
    num_gpus: int = 1
    gpus_per_bus: int = 1
    gpus_per_node: int = 8
    gpu_memory_bytes: float = 0.0
    h2d_bytes_per_s: float = 1.0
    d2h_bytes_per_s: float = 1.0
    bus_bytes_per_s: float = 1.0
    bursts: list[tuple[float, float]] = field(default_factory=list)  # (start_s, end_s)
    interrupted: bool = False
    not_run: list[str] = field(default_factory=list)  # compared policies skipped (interrupted run)
    verdict: list[str] = field(default_factory=list)

    def color(self, name: str) -> str:
        names = [p.name for p in self.policies]
        return PALETTE[names.index(name) % len(PALETTE)] if name in names else "#333333"

    @property
    def ran(self) -> list[PolicyData]:
        return [p for p in self.policies if p.ran]

    @classmethod
    def from_scenario(cls, loaded: "LoadedScenario", runs: dict[str, "PolicyRun"], verdict: list[str],
                      interrupted: bool = False) -> "ReportData":
        hw, sc = loaded.hardware, loaded.sc
        pols = [PolicyData(n, r.summary, r.requests, r.series,
                           list(r.result.timeline.instants) if r.result.timeline is not None else [])
                for n, r in runs.items()]
        n_req = len(loaded.requests) if loaded.requests is not None else 0
        sub = (f"{loaded.model.name} on {sc.hardware.num_gpus}\u00d7 {hw.name} \u00b7 {n_req} requests "
               f"\u00b7 seed {sc.seed}")
        bursts = [(b.start_s, b.start_s + b.duration_s) for b in (sc.workload.bursts if sc.workload else [])]
        if sc.workload is not None and sc.workload.trace is not None:
            bursts += [(b.start_s, b.start_s + b.duration_s) for b in sc.workload.trace.bursts]
        return cls(title=loaded.name, subtitle=sub, policies=pols, slo_ttft_s=loaded.slo.ttft_s,
                   slo_tpot_s=loaded.slo.tpot_s, description=sc.description, num_gpus=sc.hardware.num_gpus,
                   gpus_per_bus=hw.gpus_per_bus, gpus_per_node=hw.gpus_per_node,
                   gpu_memory_bytes=hw.gpu_memory_bytes, h2d_bytes_per_s=hw.h2d_bytes_per_s,
                   d2h_bytes_per_s=hw.d2h_bytes_per_s, bus_bytes_per_s=hw.bus_bytes_per_s, bursts=bursts,
                   interrupted=interrupted, not_run=[c.name for c in sc.compare if c.name not in runs],
                   verdict=verdict)


# --- time grid ------------------------------------------------------------------------------------------
def time_grid(data: ReportData, max_points: int = 400, min_step_s: float = 0.25) -> np.ndarray:
    """Bin edges shared by every time-series figure: from 0 to the last sample of any policy."""
    ends = [float(p.series.time_s.max()) for p in data.ran]
    horizon = max(ends, default=0.0)
    if horizon <= 0:
        return np.array([0.0])
    step = max(min_step_s, horizon / max_points)
    return np.arange(0.0, horizon + step, step)


def _held(t: np.ndarray, v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The last sample at or before each grid time (the first sample before it)."""
    idx = np.searchsorted(t, grid, side="right") - 1
    return v[np.clip(idx, 0, None)].astype(float)


def on_grid(p: PolicyData, column: str, grid: np.ndarray, gpus: list[int] | None = None) -> np.ndarray:
    """A sampled quantity summed over GPUs (or over ``gpus``), each held at its last sample while the others
    still run; NaN after the policy's last sample (plus one grid step)."""
    s = p.series
    total = np.zeros(len(grid))
    seen = False
    for g, part in s.groupby("gpu", sort=True):
        if gpus is not None and g not in gpus:
            continue
        seen = True
        total = total + _held(part.time_s.to_numpy(), part[column].to_numpy(dtype=float), grid)
    if not seen:
        return np.full(len(grid), np.nan)
    hold = float(grid[1] - grid[0]) if len(grid) > 1 else 0.0
    total[grid > float(s.time_s.max()) + hold] = np.nan
    return total


def rate_on_grid(p: PolicyData, column: str, grid: np.ndarray, gpu: int) -> np.ndarray:
    """Bytes/s of a cumulative byte counter of one GPU, per grid bin (interpolated between samples);
    one value per bin, placed at the bin's start."""
    part = p.series[p.series.gpu == gpu]
    if len(part) < 2 or len(grid) < 2:
        return np.full(max(len(grid) - 1, 0), np.nan)
    t = part.time_s.to_numpy()
    cum = np.interp(grid, t, part[column].to_numpy(dtype=float))
    rate = np.diff(cum) / np.diff(grid)
    rate[grid[1:] > t[-1] + (grid[1] - grid[0])] = np.nan
    return rate


def cdf_points(x: pd.Series, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and their cumulative share, thinned to ``max_points`` (the largest value is kept)."""
    v = np.sort(x.dropna().to_numpy(dtype=float))
    if len(v) == 0:
        return v, v
    y = np.arange(1, len(v) + 1) / len(v)
    if len(v) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(v) - 1, max_points).astype(int), len(v) - 1])
        v, y = v[keep], y[keep]
    return v, y


def thin(df: pd.DataFrame, max_rows: int = 4000) -> pd.DataFrame:
    """Every k-th row so that at most ``max_rows`` remain (deterministic)."""
    if len(df) <= max_rows:
        return df
    return df.iloc[:: int(math.ceil(len(df) / max_rows))]
