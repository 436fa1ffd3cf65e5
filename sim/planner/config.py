"""The capacity-planning file (``scenarios/capacity.yaml``): schema, validation and loading.

A plan names the models to serve (each with its SLOs and the rates to plan for), the workload's length mix,
and the candidate space: GPU types with prices, GPU counts, host memory per GPU, and strategies (an offload
policy plus an optional overload handler, the same entries as a scenario's ``compare:``). Errors come out as
one line, ``capacity.yaml: field.path: problem``, like a scenario's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.config.errors import short
from sim.config.scenario import length_dist, read_yaml_mapping, resolve_beside
from sim.config.schema import (
    MAX_PATH,
    MAX_RATE_PER_S,
    MAX_SEED,
    MAX_TIME_S,
    CompareEntry,
    EngineSettings,
    Length,
    Limits,
    ScenarioError,
    format_validation_error,
)
from sim.core.hardware import HardwareSpecError, get_hardware
from sim.core.model import ModelSpec, ModelSpecError, get_model
from sim.core.workload import LengthDist

PositiveFloat = Annotated[float, Field(gt=0, le=MAX_RATE_PER_S)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelCandidate(_Strict):
    """One model to plan for, with its latency SLOs and the request rates to plan for."""

    name: str | None = Field(default=None, min_length=1, max_length=100, description="label (default: the model)")
    model: str = Field(max_length=MAX_PATH, description="preset name or path to a Hugging Face config.json")
    dtype_bytes: int | None = Field(default=None, ge=1, le=4, description="bytes per weight (1 = fp8)")
    rates_per_s: list[PositiveFloat] = Field(min_length=1, max_length=1000, description="request rates to plan for")
    ttft_s: float = Field(gt=0, le=MAX_TIME_S)
    tpot_s: float = Field(gt=0, le=MAX_TIME_S)
    tensor_parallel: list[Annotated[int, Field(ge=1, le=64)]] | None = Field(
        default=None, min_length=1, max_length=10,
        description="tensor-parallel degrees for this model (default: the plan's)")

    @property
    def label(self) -> str:
        return self.name or self.model


class GPUCandidate(_Strict):
    gpu: str = Field(max_length=100)
    usd_per_hour: float = Field(gt=0, le=1e6, description="price of one GPU per hour")


class Strategy(CompareEntry):
    """A scenario ``compare:`` entry plus the smallest number of data-parallel instances (replicas) it makes
    sense on (KunServe drops replicated parameters, so it needs at least two); an instance is one GPU, or
    ``tp`` x ``pp`` GPUs under tensor / pipeline parallelism."""

    min_gpus: int = Field(default=1, ge=1, description="the fewest instances (replicas) it makes sense on")


class PlanWorkload(_Strict):
    prompt: Length
    output: Length
    duration_s: float = Field(default=60.0, gt=0, le=MAX_TIME_S, description="simulated arrival window per evaluation")
    min_requests: int = Field(default=100, ge=1, description="the window is stretched to hold this many (at most "
                              "limits.max_expected_requests)")


class SearchSettings(_Strict):
    target_attainment: float = Field(default=0.99, gt=0, le=1)
    rate_step: float = Field(default=0.1, ge=0.001, le=1, description="relative spacing of the rate grid")
    min_rate_per_s: float | None = Field(default=None, ge=1e-6, le=MAX_RATE_PER_S,
                                         description="default: smallest planned rate / 4")
    max_rate_per_s: float | None = Field(default=None, ge=1e-6, le=MAX_RATE_PER_S,
                                         description="default: largest planned rate x 4")


class BurstSettings(_Strict):
    """The burst the chosen configuration is tested with: the planned peak rate, and on top of it a burst
    raising the rate to ``factor`` x peak for ``duration_s`` from ``start_s``."""

    start_s: float = Field(default=20.0, ge=0, le=MAX_TIME_S)
    duration_s: float = Field(default=20.0, gt=0, le=MAX_TIME_S)
    max_factor: float = Field(default=4.0, gt=1, le=1000)
    factor_step: float = Field(default=0.25, gt=0, le=1000)

    @model_validator(mode="after")
    def _steps(self) -> "BurstSettings":
        if (self.max_factor - 1) / self.factor_step > 1000:
            raise ValueError(f"(max_factor - 1) / factor_step must be <= 1000 burst factors, got "
                             f"{(self.max_factor - 1) / self.factor_step:,.0f}")
        return self


class CapacityPlan(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str = ""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    models: list[ModelCandidate] = Field(min_length=1, max_length=100)
    workload: PlanWorkload
    gpus: list[GPUCandidate] = Field(min_length=1, max_length=100)
    counts: list[Annotated[int, Field(ge=1, description="at most limits.max_gpus")]] = Field(min_length=1,
                                                                                            max_length=100)
    tensor_parallel: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [1], min_length=1, max_length=10, description="tensor-parallel degrees to search")
    pipeline_parallel: list[Annotated[int, Field(ge=1, le=256)]] = Field(
        default_factory=lambda: [1], min_length=1, max_length=10, description="pipeline-parallel degrees to search")
    host_memory_gib_per_gpu: list[Annotated[float, Field(gt=0, le=1e8)]] = Field(min_length=1, max_length=100)
    host_memory_usd_per_gib_hour: float = Field(default=0.0, ge=0, le=1e6)
    strategies: list[Strategy] = Field(min_length=1, max_length=100)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    burst: BurstSettings = Field(default_factory=BurstSettings)
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _lists(self) -> "CapacityPlan":
        longest = max(m.ttft_s for m in self.models)
        if self.workload.duration_s < 10 * longest:
            # a window hardly longer than the TTFT budget lets an overloaded deployment pass: its queue has
            # no time to grow past the budget
            raise ValueError(f"workload.duration_s ({self.workload.duration_s:g} s) must be at least 10x the "
                             f"largest ttft_s ({longest:g} s) to tell a sustainable rate from a backlog")
        for what, names in (("strategies", [s.name for s in self.strategies]),
                            ("models", [m.label for m in self.models]), ("gpus", [g.gpu for g in self.gpus])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} must be unique; repeated: {short(dup)}")
        if max(self.counts) > self.limits.max_gpus:
            raise ValueError(f"counts: {max(self.counts):,} GPUs, over limits.max_gpus = {self.limits.max_gpus:,} "
                             "(each GPU is simulated as its own engine); raise it if you mean it")
        # the most requests one evaluation simulates: the top of the rate grid (with its largest burst) over
        # the window, or min_requests
        top = self.search.max_rate_per_s or 4 * max(r for m in self.models for r in m.rates_per_s)
        top *= max(self.burst.max_factor, 1.0) if self.burst.start_s < self.workload.duration_s else 1.0
        n = max(top * max(self.workload.duration_s, self.burst.start_s + self.burst.duration_s),
                self.workload.min_requests)
        if n > self.limits.max_expected_requests:
            raise ValueError(f"an evaluation would simulate about {n:,.0f} requests (rate {top:g}/s at the top of "
                             f"the search over {self.workload.duration_s:g} s, or min_requests), over "
                             f"limits.max_expected_requests = {self.limits.max_expected_requests:,}; raise it if "
                             "you mean it")
        return self


class LoadedPlan:
    """A validated plan with models, hardware presets and length distributions resolved."""

    def __init__(self, path: Path, cfg: CapacityPlan) -> None:
        self.path, self.cfg = path, cfg
        self.name = cfg.name or path.stem
        self.models: dict[str, ModelSpec] = {}
        for k, m in enumerate(cfg.models):
            ref = str(self._resolve(m.model)) if m.model.endswith(".json") or "/" in m.model else m.model
            try:
                spec = get_model(ref)
            except ModelSpecError as e:
                raise self._err(f"models.{k}.model", str(e)) from None
            self.models[m.label] = spec.with_dtype_bytes(m.dtype_bytes) if m.dtype_bytes else spec
        for k, g in enumerate(cfg.gpus):
            try:
                get_hardware(g.gpu)
            except HardwareSpecError as e:
                raise self._err(f"gpus.{k}.gpu", str(e)) from None
        self.notes: list[str] = []  # warnings about the input, printed by the command
        self.prompt = self._length(cfg.workload.prompt, "prompt")
        self.output = self._length(cfg.workload.output, "output")
        self._context_notes()

    def _context_notes(self) -> None:
        """Say how much of the length mix exceeds each model's context: the planner simulates such requests
        as they are (as if the context allowed them) unless engine.max_model_len is set, which makes the
        engine reject them -- either way it is said, not silent."""
        rng = np.random.default_rng([self.cfg.seed, 98])
        n = 20_000
        total = self.prompt.sample(rng, n) + self.output.sample(rng, n)
        limit = self.cfg.engine.max_model_len
        for k, m in enumerate(self.cfg.models):
            ctx = limit or self.models[m.label].max_position
            share = float(np.mean(total > ctx))
            if share > 0:
                what = ("the engine rejects them (engine.max_model_len), and they count as misses" if limit else
                        "they are simulated as if the context allowed them (set engine.max_model_len to have "
                        "them rejected)")
                pct = f"{share:.2%}" if share < 0.01 else f"{share:.1%}"
                self.notes.append(f"models.{k} ({m.label}): {pct} of the length mix's requests exceed the "
                                  f"{ctx:,}-token context; {what}")

    def _err(self, where: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.path.name}: {where}: {msg}")

    def _resolve(self, p: str) -> Path:
        return resolve_beside(self.path, p)

    def _length(self, c: Any, which: str) -> LengthDist:
        return length_dist(c, which, self._resolve, lambda msg: self._err(f"workload.{which}.trace", msg),
                           self.notes)

    def model_config(self, label: str) -> ModelCandidate:
        return next(m for m in self.cfg.models if m.label == label)


def load_plan(path: str | Path) -> LoadedPlan:
    """Parse and validate a capacity-planning file; raise `ScenarioError` with a one-line message."""
    path = Path(path)
    data = read_yaml_mapping(path, "plan")
    try:
        cfg = CapacityPlan.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(format_validation_error(path, e, CapacityPlan)) from None
    return LoadedPlan(path, cfg)
