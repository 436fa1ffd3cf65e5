"""The scenario schema: pydantic models for every key of a scenario YAML (unknown keys rejected), and the
translation of validation errors into one line: ``file: field.path: problem`` (`sim.config.errors`).

Every number is finite (NaN and infinities are errors) and within a stated range: the bounds below are
far beyond any real deployment, so they only stop input that would overflow, hang or exhaust memory.
What they cannot see alone -- the total work (requests x GPUs) -- `sim.config.checks` guards, with
``limits:`` as the override. `sim.config.scenario` loads files against this schema and resolves them into
simulator objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.api import PolicySpec
from sim.config.errors import ScenarioError, format_error, short
from sim.config.fixed_batch import FixedBatchExperiment
from sim.config.params import check_params
from sim.core.hardware import HardwareSpec, get_hardware
from sim.core.units import GiB
from sim.engine.memory import EngineConfig
from sim.handlers import REGISTRY as HANDLERS
from sim.policies import REGISTRY as POLICIES

__all__ = ["ScenarioError"]  # re-exported: it lives in sim.config.errors

# Ranges of the schema's numbers (documented in the README's scenario tour).
MAX_TOKENS = 1 << 24  # lengths, budgets: 16.7 M tokens, beyond any model's context
MAX_RATE_PER_S = 1e6
MAX_TIME_S = 1e9  # durations and times: 30 years
MAX_SEED = 2**64 - 1
MAX_PATH = 4096  # characters of a file path or model reference


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- hardware and engine --------------------------------------------------------------------------------
class HardwareConfig(_Strict):
    gpu: str = Field(max_length=100)
    num_gpus: int = Field(default=1, ge=1, description="at most limits.max_gpus (default 1024)")
    profile: str | None = Field(default=None, max_length=MAX_PATH, description="calibrated cost-model profile (YAML)")
    gpu_memory_gib: float | None = Field(default=None, gt=0, le=1e5)
    hbm_tb_per_s: float | None = Field(default=None, gt=0, le=1e4)
    peak_tflops: float | None = Field(default=None, gt=0, le=1e7)
    h2d_gb_per_s: float | None = Field(default=None, gt=0, le=1e5)
    d2h_gb_per_s: float | None = Field(default=None, gt=0, le=1e5)
    bus_gb_per_s: float | None = Field(default=None, gt=0, le=1e5)
    # a PCIe switch puts a few GPUs behind one uplink; Select-N's record is timed for each share of the bus
    gpus_per_bus: int | None = Field(default=None, ge=1, le=16)
    link_latency_us: float | None = Field(default=None, ge=0, le=1e6)
    gpu_link_gb_per_s: float | None = Field(default=None, gt=0, le=1e5)
    host_memory_gib: float | None = Field(default=None, gt=0, le=1e8)
    gpus_per_root: int | None = Field(default=None, ge=1, le=1024, description="GPUs under one root complex / socket")
    root_gb_per_s: float | None = Field(default=None, gt=0, le=1e5, description="a root complex's path to host memory")

    def spec(self) -> HardwareSpec:
        conv = {"gpu_memory_gib": ("gpu_memory_bytes", GiB), "hbm_tb_per_s": ("hbm_bytes_per_s", 1e12),
                "peak_tflops": ("peak_flops", 1e12), "h2d_gb_per_s": ("h2d_bytes_per_s", 1e9),
                "d2h_gb_per_s": ("d2h_bytes_per_s", 1e9), "bus_gb_per_s": ("bus_bytes_per_s", 1e9),
                "gpus_per_bus": ("gpus_per_bus", 1), "link_latency_us": ("link_latency_s", 1e-6),
                "gpu_link_gb_per_s": ("gpu_link_bytes_per_s", 1e9), "host_memory_gib": ("host_memory_bytes", GiB),
                "gpus_per_root": ("gpus_per_root", 1), "root_gb_per_s": ("root_bytes_per_s", 1e9)}
        over = {field: getattr(self, k) * f for k, (field, f) in conv.items() if getattr(self, k) is not None}
        for k in ("gpus_per_bus", "gpus_per_root"):
            if k in over:
                over[k] = int(over[k])
        return get_hardware(self.gpu, **over)


class EngineSettings(_Strict):
    block_size: int = Field(default=16, ge=1, le=1 << 16)
    max_num_batched_tokens: int = Field(default=8192, ge=1, le=MAX_TOKENS)
    max_num_seqs: int = Field(default=256, ge=1, le=1 << 20)
    chunked_prefill: bool = True
    preemption: Literal["recompute", "swap"] = "recompute"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    swap_space_gib: float = Field(default=4.0, ge=0, le=1e8)
    watermark: float = Field(default=0.01, ge=0, lt=1)
    admit_after_preemption: bool = True
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs per pipeline stage of an instance")
    pipeline_parallel_size: int = Field(default=1, ge=1, le=256, description="pipeline stages of an instance")
    max_model_len: int | None = Field(default=None, ge=2, le=MAX_TOKENS, description=(
        "the longest prompt + output the engine accepts (vLLM's max_model_len); default the model's context "
        "(max_position). Above it only for a variant with a longer context (e.g. RoPE-scaled), same layers"))

    def config(self) -> EngineConfig:
        return EngineConfig(**self.model_dump())


class EngineOverride(_Strict):
    """Per-policy engine settings: only the ones given replace the scenario's."""

    block_size: int | None = Field(default=None, ge=1, le=1 << 16)
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_num_seqs: int | None = Field(default=None, ge=1, le=1 << 20)
    chunked_prefill: bool | None = None
    preemption: Literal["recompute", "swap"] | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    swap_space_gib: float | None = Field(default=None, ge=0, le=1e8)
    watermark: float | None = Field(default=None, ge=0, lt=1)
    admit_after_preemption: bool | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=64)
    pipeline_parallel_size: int | None = Field(default=None, ge=1, le=256)


# --- SLOs -----------------------------------------------------------------------------------------------
class SLOReference(_Strict):
    """The shape whose no-offload latency relative SLOs multiply. Defaults: one request with the workload's
    median prompt; decode context = median prompt + half the median output."""

    batch_size: int = Field(default=1, ge=1, le=1 << 20)
    prompt_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    context_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)


class SLOConfig(_Strict):
    ttft_s: float | None = Field(default=None, gt=0, le=MAX_TIME_S)
    tpot_s: float | None = Field(default=None, gt=0, le=MAX_TIME_S)
    ttft_x: float | None = Field(default=None, gt=0, le=1e6, description="x no-offload TTFT of the reference shape")
    tpot_x: float | None = Field(default=None, gt=0, le=1e6, description="x no-offload TPOT of the reference shape")
    reference: SLOReference = Field(default_factory=SLOReference)

    @model_validator(mode="after")
    def _one_of_each(self) -> "SLOConfig":
        if self.ttft_s is not None and self.ttft_x is not None:
            raise ValueError("give ttft_s or ttft_x, not both")
        if self.tpot_s is not None and self.tpot_x is not None:
            raise ValueError("give tpot_s or tpot_x, not both")
        return self


# --- workload -------------------------------------------------------------------------------------------
class PoissonArrivals(_Strict):
    kind: Literal["poisson"]
    rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S)


class GammaArrivals(_Strict):
    kind: Literal["gamma"]
    rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S)
    cv: float = Field(gt=0, le=100)


class ConstantArrivals(_Strict):
    kind: Literal["constant"]
    rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S)


class BatchArrivals(_Strict):
    kind: Literal["batch"]
    count: int = Field(ge=1, description="at most limits.max_expected_requests")
    at_s: float = Field(default=0.0, ge=0, le=MAX_TIME_S)


Arrivals = Annotated[Union[PoissonArrivals, GammaArrivals, ConstantArrivals, BatchArrivals],
                     Field(discriminator="kind")]


class FixedLength(_Strict):
    kind: Literal["fixed"]
    value: int = Field(ge=1, le=MAX_TOKENS)


class UniformLength(_Strict):
    kind: Literal["uniform"]
    low: int = Field(ge=1, le=MAX_TOKENS)
    high: int = Field(ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _order(self) -> "UniformLength":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class LogNormalLength(_Strict):
    kind: Literal["lognormal"]
    median: float = Field(gt=0, le=MAX_TOKENS)
    sigma: float = Field(ge=0, le=10)
    min: int = Field(default=1, ge=1, le=MAX_TOKENS)
    max: int = Field(default=32768, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _order(self) -> "LogNormalLength":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class EmpiricalLength(_Strict):
    kind: Literal["empirical"]
    trace: str = Field(max_length=MAX_PATH,
                       description="trace CSV whose lengths are resampled (relative to the scenario file)")
    on_bad_rows: Literal["error", "drop"] = Field(default="error", description="a trace row that is not a request: "
                                                  "an error naming the row and column, or dropped with a count")


Length = Annotated[Union[FixedLength, UniformLength, LogNormalLength, EmpiricalLength], Field(discriminator="kind")]


class BurstConfig(_Strict):
    start_s: float = Field(ge=0, le=MAX_TIME_S)
    duration_s: float = Field(gt=0, le=MAX_TIME_S)
    rate_per_s: float = Field(gt=0, le=MAX_RATE_PER_S)


class TraceBurstConfig(_Strict):
    start_s: float = Field(ge=0, le=MAX_TIME_S, description="on the replayed (windowed, time-scaled) timeline")
    duration_s: float = Field(gt=0, le=MAX_TIME_S)
    rate_scale: float = Field(gt=0, le=1000, description="x request count inside the burst")


class TraceConfig(_Strict):
    path: str = Field(max_length=MAX_PATH)
    window_start_s: float = Field(default=0.0, ge=0, le=MAX_TIME_S)
    window_s: float | None = Field(default=None, gt=0, le=MAX_TIME_S)
    time_scale: float = Field(default=1.0, gt=0, le=1e6, description="x timestamps (0.1 compresses time 10x)")
    rate_scale: float = Field(default=1.0, gt=0, le=1000, description="x request count at unchanged timing")
    bursts: list[TraceBurstConfig] = Field(default_factory=list, max_length=1000)
    on_bad_rows: Literal["error", "drop"] = Field(default="error", description="a row that is not a request "
                                                  "(a missing, non-numeric or non-finite cell, a token count < 1): "
                                                  "an error naming the row and column, or dropped with a count")


class WorkloadConfig(_Strict):
    duration_s: float = Field(default=60.0, gt=0, le=MAX_TIME_S)
    arrivals: Arrivals | None = None
    bursts: list[BurstConfig] = Field(default_factory=list, max_length=1000)
    prompt: Length | None = None
    output: Length | None = None
    trace: TraceConfig | None = None
    max_requests: int | None = Field(default=None, ge=1)
    context_overflow: Literal["reject", "truncate"] = Field(default="reject", description=(
        "a request whose prompt + output exceeds the context (engine.max_model_len, default the model's): "
        "rejected on arrival with the reason, as a server does, or truncated (the prompt cut to its last "
        "context - output tokens; an output that alone fills the context cut to context - 1)"))

    @model_validator(mode="after")
    def _source(self) -> "WorkloadConfig":
        if self.trace is None and (self.arrivals is None or self.prompt is None or self.output is None):
            raise ValueError("needs either a trace, or arrivals, prompt and output")
        if self.trace is not None and (self.arrivals is not None or self.bursts):
            raise ValueError("a trace replaces arrivals and bursts; give one or the other")
        return self


# --- policies and the scenario --------------------------------------------------------------------------
class CompareEntry(_Strict):
    name: str = Field(min_length=1, max_length=100)
    policy: str = Field(default="none", max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)
    engine: EngineOverride = Field(default_factory=EngineOverride)
    handler: str | None = Field(default=None, max_length=100)
    handler_params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "CompareEntry":
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(sorted(POLICIES))}, got {short(self.policy)}")
        if self.handler is not None and self.handler not in HANDLERS:
            raise ValueError(f"handler must be one of {', '.join(sorted(HANDLERS))}, got {short(self.handler)}")
        # the parameters as the factories take them: a wrong name, type or a NaN is an input error here
        self.params = check_params(POLICIES[self.policy], self.params, "params")
        if self.handler is not None:
            self.handler_params = check_params(HANDLERS[self.handler], self.handler_params, "handler_params")
        elif self.handler_params:
            raise ValueError("handler_params given without a handler")
        return self

    def spec(self) -> PolicySpec:
        return PolicySpec(self.policy, dict(self.params), self.name, self.engine.model_dump(exclude_none=True),
                          self.handler, dict(self.handler_params))


class ClusterConfig(_Strict):
    router: Literal["round-robin", "least-loaded"] = "round-robin"


class RecordErrorConfig(_Strict):
    """Executed kernel times stray from the cost model's (and so from Select-N's record): x (1 + bias) and
    a per-iteration log-normal noise of mean 1 (`sim.engine.record_error`), seeded by the scenario's seed."""

    bias: float = Field(default=0.0, ge=-0.5, le=1.0, description="systematic error, e.g. 0.1 = 10 % slower")
    noise: float = Field(default=0.0, ge=0.0, le=1.0, description="log-sd of the per-iteration factor")


class OutputConfig(_Strict):
    timeline_max_spans: int = Field(default=200_000, ge=0, le=10**9)
    detail_iterations: int = Field(default=20, ge=0, le=10**9, description="iterations per GPU recorded layer "
                                   "by layer")
    sample_interval_s: float = Field(default=0.25, gt=0, le=MAX_TIME_S)


class Limits(_Strict):
    """Guards against a scenario that would not finish or not fit in memory (`sim.config.checks`); raise
    them if you mean it."""

    max_expected_requests: int = Field(default=1_000_000, ge=1, description="arrivals drawn or replayed: "
                                       "rate x duration plus bursts, a batch's count, a trace window x its scales")
    max_gpus: int = Field(default=1024, ge=1, description="hardware.num_gpus")


class Scenario(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str = ""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    model: str = Field(max_length=MAX_PATH)
    gpu_models: list[Annotated[str, Field(max_length=MAX_PATH)]] | None = Field(
        default=None, description="one model per GPU (hardware.num_gpus long); `model` is then the SLO reference")
    hardware: HardwareConfig
    engine: EngineSettings = Field(default_factory=EngineSettings)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    workload: WorkloadConfig | None = None
    compare: list[CompareEntry] = Field(default_factory=list)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    until_s: float | None = Field(default=None, gt=0, le=MAX_TIME_S, description="stop the simulation at this time")
    record_error: RecordErrorConfig | None = Field(default=None, description="executed iteration times "
                                                   "differ from the record's by this")
    experiments: list[FixedBatchExperiment] = Field(default_factory=list)
    output: OutputConfig = Field(default_factory=OutputConfig)
    limits: Limits = Field(default_factory=Limits)
    search: dict[str, Any] | None = Field(default=None, description="sweep settings (python -m sim.search)")

    @model_validator(mode="after")
    def _names(self) -> "Scenario":
        if self.gpu_models is not None and len(self.gpu_models) != self.hardware.num_gpus:
            raise ValueError(f"gpu_models needs one model per GPU: {len(self.gpu_models)} given for "
                             f"hardware.num_gpus = {self.hardware.num_gpus}")
        names = [c.name for c in self.compare]
        seen: set[str] = set()
        dup = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value] -- O(n)
        if dup:
            raise ValueError(f"compare names must be unique; repeated: {short(dup)}")
        if self.workload is not None and not self.compare:
            raise ValueError("a workload needs at least one entry in compare")
        if self.workload is None and not self.experiments:
            raise ValueError("needs a workload (with compare) or experiments")
        return self


def format_validation_error(path: Path, e: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line for the first validation error: ``file: field.path: problem`` (``root``: the schema the
    file was validated against, for the allowed keys; default `Scenario`)."""
    return format_error(path, e, root or Scenario)
