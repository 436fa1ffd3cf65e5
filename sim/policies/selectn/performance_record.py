"""Select-N's offline stage: the performance record.

For each phase (``prefill``: ``b`` fresh prompts of ``s`` tokens; ``decode``: ``b`` tokens each attending to
``s`` tokens of context), batch size and sequence length on a grid, the record holds the decoder-layer and
fixed time of the iteration, the iteration time at every offloading interval (1..L, and L+1 for "nothing
offloaded") for every bandwidth share of the host link (share m: m GPUs of a bus copy at once), the PCIe
bytes per iteration, and the GPU bytes the interval leaves for that batch's KV. From these: ``i_max`` (the
largest interval whose weights + staging + workspace + this batch's KV still fit) and, per SLO level (a
multiple of the no-offload time of the same shape), ``i_min`` (the smallest interval that meets it).

Iteration times come from `sim.engine.iteration.run_closed_form` -- the executor the simulator itself uses on a
private link -- so for a shape on the grid the record is exact. Lookups between grid points are
conservative: a shape is bounded by the grid point that dominates it (batch size and sequence length
rounded *up*; a mixed prefill+decode batch by the sum of its two parts' layer and fixed times, which
over-estimates because batching is sub-additive), and the executor's time is non-decreasing in both the
layer and the fixed time. Times and memory grow with batch size and sequence length (a measured record is
made monotone with a running maximum), so rounding up never promises what the shape cannot do.

The staging of an offloaded layer (whole, or ``staging_chunks`` pieces through ``staging_slots`` slots) is
a property of the record (``meta``): its plans, times and pools are for that staging.

Sources: a `CostModel` (`PerformanceRecord.build`) or the backend profiler's ``layer_times.csv`` and
``copy_bandwidth.csv`` (`PerformanceRecord.from_measurements`, see `record_measured`). Saved as JSON
(`save` / `load`); ``python -m sim.record SCENARIO.yaml`` builds and prints one.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.core.offload_plan import OffloadPlan
from sim.cost.base import CostModel
from sim.engine.iteration import compile_copies, run_closed_form
from sim.engine.kv import blocks_for
from sim.engine.memory import EngineConfig, workspace_bytes

FORMAT = "memslo-selectn-record/1"
PHASES = ("prefill", "decode")
# 1-1.5-2 steps: rounding up to the next grid point costs at most 50 % (and 1.33x on average)
DEFAULT_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
DEFAULT_SEQS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144,
                8192, 12288, 16384)
DEFAULT_SLO_LEVELS = (1.1, 1.25, 1.5, 2.0, 3.0)


def plan_for_interval(num_layers: int, interval: int, chunks: int = 1, slots: int = 2) -> OffloadPlan:
    """Select-N's plan; ``interval`` > L (no complete group) means nothing is offloaded. ``chunks`` and
    ``slots``: how an offloaded layer is staged (`OffloadPlan.select_n`)."""
    if interval > num_layers:
        return OffloadPlan.resident(num_layers)
    return OffloadPlan.select_n(num_layers, interval, chunks, slots)


def efficient_intervals(num_layers: int, min_interval: int = 1) -> tuple[int, ...]:
    """For each number of offloaded layers n, the largest interval that offloads n (floor(L/n)): same host
    memory and PCIe bytes, most compute to hide each copy. Plus L+1 (nothing offloaded). Ascending."""
    out = sorted({num_layers // n for n in range(1, num_layers + 1)} | {num_layers + 1})
    return tuple(i for i in out if i >= min_interval)


@dataclass
class RecordEntry:
    """One grid point. ``iteration_s[m, j]``: time at the (m+1)-th bandwidth share and interval j+1."""

    phase: str
    batch_size: int
    seq_len: int
    layer_s: float
    fixed_s: float
    kv_bytes: float
    iteration_s: np.ndarray
    i_max: int = 0
    i_min: dict[float, int | None] = field(default_factory=dict)

    @property
    def no_offload_s(self) -> float:
        return float(self.iteration_s[0, -1])


class PerformanceRecord:
    """The table plus what it needs to answer lookups. Intervals are 1..L+1 (L+1: nothing offloaded)."""

    def __init__(self, meta: dict[str, Any], grid: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                 entries: dict[tuple[str, int, int], RecordEntry]) -> None:
        self.meta = meta
        self.grid = grid
        self.entries = entries
        self.num_layers = int(meta["num_layers"])
        self.layer_bytes = float(meta["layer_bytes"])
        self.rates = tuple(float(r) for r in meta["link_rates_bytes_per_s"])
        self.latency_s = float(meta["link_latency_s"])
        self.slo_levels = tuple(float(x) for x in meta["slo_levels"])
        L = self.num_layers
        self.intervals = tuple(range(1, L + 2))
        # staging of an offloaded layer: whole (chunks 1) or in pieces through slots (older files: whole)
        self.chunks, self.slots = int(meta.get("staging_chunks", 1)), int(meta.get("staging_slots", 2))
        self.plans = tuple(plan_for_interval(L, i, self.chunks, self.slots) for i in self.intervals)
        self._tasks = tuple(compile_copies(p, self.layer_bytes) for p in self.plans)
        lb = self.layer_bytes
        self.host_bytes = np.array([p.num_offloaded * lb for p in self.plans])
        self.pcie_bytes = self.host_bytes.copy()  # every offloaded byte crosses the link once per iteration
        self.gpu_weight_bytes = np.array([meta["non_layer_bytes"] + (L - p.num_offloaded) * lb
                                          + p.staging_layers * lb for p in self.plans])
        self.cost: CostModel | None = None  # the cost model it was built from (not saved), for extrapolation
        self._times_cache: dict[tuple[float, float, int], np.ndarray] = {}

    # --- building -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: ModelSpec, hw: HardwareSpec, cost: CostModel, engine: EngineConfig | None = None,
              batch_sizes: Sequence[int] = DEFAULT_BATCHES, seq_lens: Sequence[int] = DEFAULT_SEQS,
              slo_levels: Sequence[float] = DEFAULT_SLO_LEVELS, decode_seq_lens: Sequence[int] | None = None,
              source: str | None = None, staging_chunks: int = 1, staging_slots: int = 2,
              link_rates: Sequence[float] | None = None) -> "PerformanceRecord":
        """From a cost model: every grid point timed by the iteration executor. ``link_rates``: one GPU's
        copy bandwidth when 1, 2, ... instances of its bus copy at once (default: from ``hw``, one GPU per
        instance); a tensor-parallel instance's GPUs share their switch even alone."""
        engine = engine or EngineConfig()
        seqs = tuple(sorted(set(int(s) for s in seq_lens)))
        dseqs = tuple(sorted(set(int(s) for s in (decode_seq_lens or seq_lens))))
        batches = tuple(sorted(set(int(b) for b in batch_sizes)))
        times: dict[tuple[str, int, int], tuple[float, float]] = {}
        for b in batches:
            for s in seqs:
                sh = BatchShape.prefill_batch(b, s)
                times[("prefill", b, s)] = (cost.layer_time(sh), cost.fixed_time(sh))
            for s in dseqs:
                sh = BatchShape.decode_batch(b, s)
                times[("decode", b, s)] = (cost.layer_time(sh), cost.fixed_time(sh))
        params = cost.params() if hasattr(cost, "params") else {}
        src = source or f"cost model {type(cost).__name__} {params}"
        rec = cls._assemble(model, hw, engine, {"prefill": (batches, seqs), "decode": (batches, dseqs)}, times,
                            hw.h2d_bytes_per_s, hw.link_latency_s, slo_levels, src, staging_chunks, staging_slots,
                            link_rates)
        rec.cost = cost
        return rec

    @classmethod
    def from_measurements(cls, model: ModelSpec, hw: HardwareSpec, layer_times_csv: str | Path,
                          copy_bandwidth_csv: str | Path | None = None, engine: EngineConfig | None = None,
                          fixed_cost: CostModel | None = None,
                          slo_levels: Sequence[float] = DEFAULT_SLO_LEVELS, staging_chunks: int = 1,
                          staging_slots: int = 2) -> "PerformanceRecord":
        """From the backend profiler's CSVs (see `record_measured` for the format)."""
        from sim.policies.selectn.record_measured import measured_inputs

        engine = engine or EngineConfig()
        grid, times, rate, latency, prov = measured_inputs(model, hw, layer_times_csv, copy_bandwidth_csv,
                                                           fixed_cost)
        return cls._assemble(model, hw, engine, grid, times, rate, latency, slo_levels, f"measured: {prov}",
                             staging_chunks, staging_slots)

    @classmethod
    def _assemble(cls, model: ModelSpec, hw: HardwareSpec, engine: EngineConfig,
                  grid: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                  times: dict[tuple[str, int, int], tuple[float, float]], h2d_rate: float, latency_s: float,
                  slo_levels: Sequence[float], source: str, staging_chunks: int = 1,
                  staging_slots: int = 2, link_rates: Sequence[float] | None = None) -> "PerformanceRecord":
        # bandwidth share m: m GPUs of one bus copy at once (processor sharing gives each at least this)
        rates = list(link_rates) if link_rates else [min(h2d_rate, hw.bus_bytes_per_s / m)
                                                     for m in range(1, hw.gpus_per_bus + 1)]
        meta = {
            "format": FORMAT, "model": model.name, "hardware": hw.name, "source": source,
            "num_layers": model.num_layers, "layer_bytes": float(model.weight_bytes_per_layer),
            "non_layer_bytes": float(model.non_layer_bytes),
            "usable_bytes": hw.gpu_memory_bytes * engine.gpu_memory_utilization,
            "workspace_bytes": workspace_bytes(model, engine), "block_size": engine.block_size,
            "block_bytes": float(engine.block_size * model.kv_bytes_per_token),
            "link_rates_bytes_per_s": rates, "link_latency_s": latency_s,
            "slo_levels": [float(x) for x in slo_levels],
            "staging_chunks": int(staging_chunks), "staging_slots": int(staging_slots),
        }
        rec = cls(meta, grid, {})
        for (phase, b, s), (layer_s, fixed_s) in sorted(times.items()):
            kv = b * blocks_for(s, engine.block_size) * meta["block_bytes"]
            arr = np.array([rec.times(layer_s, fixed_s, m) for m in range(len(rates))])
            rec.entries[(phase, b, s)] = rec._finish(RecordEntry(phase, b, s, layer_s, fixed_s, kv, arr))
        return rec

    def _finish(self, e: RecordEntry) -> RecordEntry:
        e.i_max = self.i_max_for(e.kv_bytes)
        base = e.no_offload_s
        e.i_min = {x: self.i_min_for(e.iteration_s[0], x * base) for x in self.slo_levels}
        return e

    # --- the executor over all intervals ------------------------------------------------------------
    def times(self, layer_s: float, fixed_s: float, share: int = 0) -> np.ndarray:
        """Iteration time at every interval for a shape with these layer and fixed times, at bandwidth
        share index ``share`` (0: the GPU alone on its bus)."""
        key = (layer_s, fixed_s, share)
        hit = self._times_cache.get(key)
        if hit is not None:
            return hit
        rate, lat, lb = self.rates[share], self.latency_s, self.layer_bytes
        out = np.array([run_closed_form(0.0, p, layer_s, t, rate, lat, fixed_s, lb).end_s
                        for p, t in zip(self.plans, self._tasks)])
        if len(self._times_cache) > 50_000:
            self._times_cache.clear()
        self._times_cache[key] = out
        return out

    def time_at(self, interval: int, layer_s: float, fixed_s: float, share: int = 0) -> float:
        """Iteration time at one interval (1..L+1) for these layer and fixed times (uncached)."""
        j = interval - 1
        return run_closed_form(0.0, self.plans[j], layer_s, self._tasks[j], self.rates[share], self.latency_s,
                               fixed_s, self.layer_bytes).end_s

    def pool_bytes(self) -> np.ndarray:
        """GPU bytes left for KV under each interval."""
        return self.meta["usable_bytes"] - self.meta["workspace_bytes"] - self.gpu_weight_bytes

    def i_max_for(self, kv_bytes: float) -> int:
        """Largest interval whose weights, staging buffer and workspace leave ``kv_bytes`` (0: none)."""
        fits = np.nonzero(self.pool_bytes() >= kv_bytes)[0]
        return int(self.intervals[fits[-1]]) if len(fits) else 0

    def i_min_for(self, times_s: np.ndarray, budget_s: float) -> int | None:
        """Smallest interval whose time meets ``budget_s`` (None: none does)."""
        ok = np.nonzero(times_s <= budget_s * (1 + 1e-12))[0]
        return int(self.intervals[ok[0]]) if len(ok) else None

    # --- lookups ------------------------------------------------------------------------------------
    def _round_up(self, phase: str, batch: int, seq: int) -> RecordEntry | None:
        bs, ss = self.grid[phase]
        jb = bisect.bisect_left(bs, batch)
        js = bisect.bisect_left(ss, seq)
        if jb == len(bs) or js == len(ss):
            return None
        return self.entries.get((phase, bs[jb], ss[js]))

    def lookup(self, phase: str, batch_size: int, seq_len: int) -> RecordEntry | None:
        """The grid point that bounds (``batch_size``, ``seq_len``): both rounded up. None beyond the grid."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        return self._round_up(phase, max(1, int(batch_size)), max(1, int(seq_len)))

    def prefill_key(self, shape: BatchShape) -> RecordEntry | None:
        """Bound the prefill part: p chunks of P tokens with X attention pairs reading K KV tokens are
        dominated by b >= p fresh prompts of s tokens with b*s >= P, b*s >= K and b*s*(s+1)/2 >= X."""
        p = shape.prefill_seqs
        if p == 0:
            return None
        s_pairs = math.ceil((-1 + math.sqrt(1 + 8 * shape.prefill_attn_pairs / p)) / 2 - 1e-9)
        s = max(-(-shape.prefill_tokens // p), -(-shape.prefill_kv_tokens // p), s_pairs, 1)
        return self._round_up("prefill", p, s)

    def decode_key(self, shape: BatchShape) -> RecordEntry | None:
        """Bound the decode part: n tokens reading C context tokens in all are dominated by b >= n tokens
        of s >= ceil(C/n) context each."""
        n = shape.decode_tokens
        if n == 0:
            return None
        return self._round_up("decode", n, -(-shape.decode_ctx_sum // n))

    def bound(self, shape: BatchShape) -> tuple[float, float] | None:
        """Layer and fixed time that are at least the shape's (None: the shape is beyond the grid)."""
        layer = fixed = 0.0
        if shape.prefill_tokens:
            e = self.prefill_key(shape)
            if e is None:
                return None
            layer, fixed = e.layer_s, e.fixed_s
        if shape.decode_tokens:
            e = self.decode_key(shape)
            if e is None:
                return None
            layer, fixed = layer + e.layer_s, fixed + e.fixed_s
        return layer, fixed

    def predict(self, shape: BatchShape, share: int = 0) -> np.ndarray | None:
        """Conservative iteration time of ``shape`` at every interval (None beyond the grid)."""
        b = self.bound(shape)
        return None if b is None else self.times(b[0], b[1], share)

    # --- tables -------------------------------------------------------------------------------------
    def summary(self) -> pd.DataFrame:
        """One row per grid point and SLO level: i_min, i_max, no-offload time."""
        rows = []
        for (phase, b, s), e in self.entries.items():
            for x, imin in e.i_min.items():
                rows.append((phase, b, s, x, imin, e.i_max, e.no_offload_s))
        return pd.DataFrame(rows, columns=["phase", "batch_size", "seq_len", "slo_x", "i_min", "i_max",
                                           "no_offload_s"])

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per grid point, share and interval."""
        rows = []
        for (phase, b, s), e in self.entries.items():
            for m in range(e.iteration_s.shape[0]):
                for j, i in enumerate(self.intervals):
                    rows.append((phase, b, s, m + 1, i, self.plans[j].num_offloaded, e.iteration_s[m, j],
                                 self.pcie_bytes[j], self.host_bytes[j], self.gpu_weight_bytes[j] + e.kv_bytes
                                 + self.meta["workspace_bytes"], i <= e.i_max))
        return pd.DataFrame(rows, columns=["phase", "batch_size", "seq_len", "share", "interval",
                                           "offloaded_layers", "iteration_s", "pcie_bytes", "host_weight_bytes",
                                           "gpu_bytes", "fits"])

    # --- files --------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        doc = {"meta": self.meta, "intervals": list(self.intervals),
               "host_bytes": self.host_bytes.tolist(), "pcie_bytes": self.pcie_bytes.tolist(),
               "gpu_weight_bytes": self.gpu_weight_bytes.tolist(),
               "grid": {ph: {"batch_sizes": list(g[0]), "seq_lens": list(g[1])} for ph, g in self.grid.items()},
               "entries": [{"phase": e.phase, "batch_size": e.batch_size, "seq_len": e.seq_len,
                            "layer_s": e.layer_s, "fixed_s": e.fixed_s, "kv_bytes": e.kv_bytes,
                            "i_max": e.i_max, "i_min": {str(k): v for k, v in e.i_min.items()},
                            "iteration_s": e.iteration_s.tolist()} for e in self.entries.values()]}
        path.write_text(json.dumps(doc))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PerformanceRecord":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: record file not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a record (invalid JSON: {e.msg})") from None
        if doc.get("meta", {}).get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        grid = {ph: (tuple(g["batch_sizes"]), tuple(g["seq_lens"])) for ph, g in doc["grid"].items()}
        rec = cls(doc["meta"], grid, {})
        for d in doc["entries"]:
            e = RecordEntry(d["phase"], d["batch_size"], d["seq_len"], d["layer_s"], d["fixed_s"], d["kv_bytes"],
                            np.array(d["iteration_s"]), d["i_max"], {float(k): v for k, v in d["i_min"].items()})
            rec.entries[(e.phase, e.batch_size, e.seq_len)] = e
        return rec

    def describe(self) -> str:
        m = self.meta
        staged = "whole layers" if self.chunks == 1 else f"{self.chunks} pieces through {self.slots} slots"
        return (f"performance record: {m['model']} on {m['hardware']}, intervals 1..{self.num_layers} "
                f"(+{self.num_layers + 1} = nothing offloaded), staged in {staged}, {len(self.entries)} grid points, "
                f"link {self.rates[0] / 1e9:.1f} GB/s ({len(self.rates)} shares), source: {m['source']}")


def _cost_key(cost: CostModel) -> tuple:
    if hasattr(cost, "params"):
        return (type(cost).__name__, tuple(sorted(cost.params().items())))
    return (type(cost).__name__, id(cost))


_CACHE: dict[tuple, PerformanceRecord] = {}


def record_for(model: ModelSpec, hw: HardwareSpec, cost: CostModel, engine: EngineConfig,
               batch_sizes: Sequence[int] = DEFAULT_BATCHES, seq_lens: Sequence[int] = DEFAULT_SEQS,
               slo_levels: Sequence[float] = DEFAULT_SLO_LEVELS, staging_chunks: int = 1,
               staging_slots: int = 2, link_rates: Sequence[float] | None = None) -> PerformanceRecord:
    """A record built from the cost model, memoised per process (policies of every run share it)."""
    key = (model, hw, _cost_key(cost), engine, tuple(batch_sizes), tuple(seq_lens), tuple(slo_levels),
           staging_chunks, staging_slots, tuple(link_rates or ()))
    rec = _CACHE.get(key)
    if rec is None:
        if len(_CACHE) > 32:
            _CACHE.clear()
        rec = _CACHE[key] = PerformanceRecord.build(model, hw, cost, engine, batch_sizes, seq_lens, slo_levels,
                                                    staging_chunks=staging_chunks, staging_slots=staging_slots,
                                                    link_rates=link_rates)
    return rec

