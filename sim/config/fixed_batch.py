"""Fixed-batch experiments: one batch shape run under one offload plan, many times.

This is the contract between the simulator, the torch backend (`python -m backend.run`) and calibration
(`python -m calibration.verify`): a scenario's ``experiments:`` list names batch shapes and plans, both
sides time every (experiment, plan) pair, and both write `FixedBatchRow` rows to ``iterations.csv`` plus
their per-layer spans to ``timeline.json`` (`sim.core.timeline`).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.core.offload_plan import OffloadPlan
from sim.core.timeline import Timeline
from sim.core.units import GiB
from sim.cost.base import CostModel

PlanName = Literal["none", "resident", "deepspeed"]


class SelectNSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    select_n: Union[int, Literal["all"]] = Field(description="interval, or 'all' for every interval 1..L")


class LayerwiseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flexgen: float = Field(gt=0, le=1, description="fraction of each layer's weights in host memory")


class Prefetch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group_size: int = Field(ge=1)
    offload_per_group: int = Field(ge=0)
    prefetch_step: int = Field(default=1, ge=0)


class PrefetchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefetch: Prefetch


class UvaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uva_gib: float = Field(ge=0, description="GiB of weights read over the host link (vLLM --cpu-offload-gb)")


PlanSpec = Union[PlanName, SelectNSpec, LayerwiseSpec, PrefetchSpec, UvaSpec]


def plans_from_spec(spec: PlanSpec, model: ModelSpec) -> list[OffloadPlan]:
    """Expand one plan spec into concrete plans for ``model``."""
    L = model.num_layers
    if isinstance(spec, str):
        return [OffloadPlan.deepspeed(L)] if spec == "deepspeed" else [OffloadPlan.resident(L)]
    if isinstance(spec, SelectNSpec):
        if spec.select_n == "all":
            return [OffloadPlan.select_n(L, i) for i in range(1, L + 1)]
        return [OffloadPlan.select_n(L, spec.select_n)]
    if isinstance(spec, LayerwiseSpec):
        return [OffloadPlan.layerwise(L, spec.flexgen)]
    if isinstance(spec, PrefetchSpec):
        p = spec.prefetch
        return [OffloadPlan.prefetch_groups(L, p.group_size, p.offload_per_group, p.prefetch_step)]
    return [OffloadPlan.uva_bytes(model, spec.uva_gib * GiB)]


class FixedBatchExperiment(BaseModel):
    """A batch of ``batch_size`` sequences: prefill of ``seq_len`` fresh tokens each, or one decode step
    with ``seq_len`` tokens of context each."""

    model_config = ConfigDict(extra="forbid")
    name: str
    phase: Literal["prefill", "decode"]
    batch_size: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    plans: list[PlanSpec] = Field(default_factory=lambda: ["none"], min_length=1)
    repeats: int = Field(default=20, ge=1, description="timed iterations per plan (the backend's median)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in ",\n"):
            raise ValueError("must be non-empty without commas or newlines")
        return v

    def shape(self) -> BatchShape:
        if self.phase == "prefill":
            return BatchShape.prefill_batch(self.batch_size, self.seq_len)
        return BatchShape.decode_batch(self.batch_size, self.seq_len)

    def expand(self, model: ModelSpec) -> list[OffloadPlan]:
        out: list[OffloadPlan] = []
        for spec in self.plans:
            for p in plans_from_spec(spec, model):
                if p not in out:
                    out.append(p)
        return out


@dataclass
class FixedBatchRow:
    """One timed (experiment, plan): what ``iterations.csv`` holds, from the simulator or the backend."""

    source: str  # "sim" or "backend"
    experiment: str
    plan: str
    interval: int  # Select-N interval, 0 when the plan is not Select-N
    phase: str
    batch_size: int
    seq_len: int
    offloaded_layers: int
    iteration_s: float  # median over repeats (backend) or the simulated time
    layers_s: float  # from the first layer's start to the last layer's end
    compute_s: float  # sum of layer compute spans
    copy_s: float  # sum of copy spans
    copy_bytes: float
    repeats: int = 1
    iteration_p10_s: float = 0.0
    iteration_p90_s: float = 0.0


def write_rows(path: str | Path, rows: list[FixedBatchRow]) -> Path:
    path = Path(path)
    names = [f.name for f in fields(FixedBatchRow)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    return path


def read_rows(path: str | Path) -> list[FixedBatchRow]:
    types = {f.name: f.type for f in fields(FixedBatchRow)}
    out = []
    with Path(path).open() as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]  # provenance header lines start with '#'
    for rec in csv.DictReader(lines):
        kw: dict[str, Any] = {}
        for k, v in rec.items():
            t = types[k]
            kw[k] = int(v) if t in ("int", int) else float(v) if t in ("float", float) else v
        out.append(FixedBatchRow(**kw))
    return out


def simulate_fixed_batch(model: ModelSpec, hw: HardwareSpec, cost: CostModel,
                         experiments: list[FixedBatchExperiment], timeline: Timeline | None = None,
                         gpu: int = 0, gap_s: float = 1e-3) -> list[FixedBatchRow]:
    """Time every (experiment, plan) with the closed-form executor on a private link. Iterations are laid
    one after another on ``timeline`` (``gap_s`` apart), each span labelled ``experiment|plan``."""
    from sim.engine.iteration import compile_copies, run_closed_form

    rows: list[FixedBatchRow] = []
    rate = min(hw.h2d_bytes_per_s, hw.bus_bytes_per_s)
    t0 = 0.0
    for exp in experiments:
        shape = exp.shape()
        c = cost.layer_time(shape)
        fixed = cost.fixed_time(shape)
        for plan in exp.expand(model):
            tasks = compile_copies(plan, model.weight_bytes_per_layer)
            tm = run_closed_form(t0, plan, c, tasks, rate, hw.link_latency_s, fixed,
                                 layer_bytes=model.weight_bytes_per_layer, record=True)
            label = f"{exp.name}|{plan.name}"
            copies = tm.copies + tm.uva
            if timeline is not None:
                tm.add_spans(timeline, gpu, label, fixed=True)
            rows.append(FixedBatchRow(
                source="sim", experiment=exp.name, plan=plan.name, interval=plan.interval or 0,
                phase=exp.phase, batch_size=exp.batch_size, seq_len=exp.seq_len,
                offloaded_layers=plan.num_offloaded, iteration_s=tm.duration_s,
                layers_s=tm.layers_end_s - tm.layer_start_s[0], compute_s=c * plan.num_layers,
                copy_s=sum(e - s for _, s, e, _ in copies), copy_bytes=tm.copy_bytes,
                iteration_p10_s=tm.duration_s, iteration_p90_s=tm.duration_s))
            t0 = tm.end_s + gap_s
    return rows
