"""The scenario schema: pydantic models for every key of a scenario YAML (unknown keys rejected), and the
translation of validation errors into one line: ``file: field.path: problem``.

`sim.config.scenario` loads files against this schema and resolves them into simulator objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.api import PolicySpec
from sim.config.fixed_batch import FixedBatchExperiment
from sim.core.hardware import HardwareSpec, get_hardware
from sim.core.units import GiB
from sim.engine.memory import EngineConfig
from sim.handlers import REGISTRY as HANDLERS
from sim.policies import REGISTRY as POLICIES


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message is one line: ``file: field.path: problem``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- hardware and engine --------------------------------------------------------------------------------
class HardwareConfig(_Strict):
    gpu: str
    num_gpus: int = Field(default=1, ge=1)
    profile: str | None = Field(default=None, description="calibrated cost-model profile (YAML)")
    gpu_memory_gib: float | None = Field(default=None, gt=0)
    hbm_tb_per_s: float | None = Field(default=None, gt=0)
    peak_tflops: float | None = Field(default=None, gt=0)
    h2d_gb_per_s: float | None = Field(default=None, gt=0)
    d2h_gb_per_s: float | None = Field(default=None, gt=0)
    bus_gb_per_s: float | None = Field(default=None, gt=0)
    gpus_per_bus: int | None = Field(default=None, ge=1)
    link_latency_us: float | None = Field(default=None, ge=0)
    gpu_link_gb_per_s: float | None = Field(default=None, gt=0)
    host_memory_gib: float | None = Field(default=None, gt=0)

    def spec(self) -> HardwareSpec:
        conv = {"gpu_memory_gib": ("gpu_memory_bytes", GiB), "hbm_tb_per_s": ("hbm_bytes_per_s", 1e12),
                "peak_tflops": ("peak_flops", 1e12), "h2d_gb_per_s": ("h2d_bytes_per_s", 1e9),
                "d2h_gb_per_s": ("d2h_bytes_per_s", 1e9), "bus_gb_per_s": ("bus_bytes_per_s", 1e9),
                "gpus_per_bus": ("gpus_per_bus", 1), "link_latency_us": ("link_latency_s", 1e-6),
                "gpu_link_gb_per_s": ("gpu_link_bytes_per_s", 1e9), "host_memory_gib": ("host_memory_bytes", GiB)}
        over = {field: getattr(self, k) * f for k, (field, f) in conv.items() if getattr(self, k) is not None}
        if "gpus_per_bus" in over:
            over["gpus_per_bus"] = int(over["gpus_per_bus"])
        return get_hardware(self.gpu, **over)


class EngineSettings(_Strict):
    block_size: int = Field(default=16, ge=1)
    max_num_batched_tokens: int = Field(default=8192, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    chunked_prefill: bool = True
    preemption: Literal["recompute", "swap"] = "recompute"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    swap_space_gib: float = Field(default=4.0, ge=0)
    watermark: float = Field(default=0.01, ge=0, lt=1)
    admit_after_preemption: bool = True

    def config(self) -> EngineConfig:
        return EngineConfig(**self.model_dump())


class EngineOverride(_Strict):
    """Per-policy engine settings: only the ones given replace the scenario's."""

    block_size: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    chunked_prefill: bool | None = None
    preemption: Literal["recompute", "swap"] | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    swap_space_gib: float | None = Field(default=None, ge=0)
    watermark: float | None = Field(default=None, ge=0, lt=1)
    admit_after_preemption: bool | None = None


# --- SLOs -----------------------------------------------------------------------------------------------
class SLOReference(_Strict):
    """The shape whose no-offload latency relative SLOs multiply. Defaults: one request with the workload's
    median prompt; decode context = median prompt + half the median output."""

    batch_size: int = Field(default=1, ge=1)
    prompt_tokens: int | None = Field(default=None, ge=1)
    context_tokens: int | None = Field(default=None, ge=1)


class SLOConfig(_Strict):
    ttft_s: float | None = Field(default=None, gt=0)
    tpot_s: float | None = Field(default=None, gt=0)
    ttft_x: float | None = Field(default=None, gt=0, description="x no-offload TTFT of the reference shape")
    tpot_x: float | None = Field(default=None, gt=0, description="x no-offload TPOT of the reference shape")
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
    rate_per_s: float = Field(gt=0)


class GammaArrivals(_Strict):
    kind: Literal["gamma"]
    rate_per_s: float = Field(gt=0)
    cv: float = Field(gt=0)


class ConstantArrivals(_Strict):
    kind: Literal["constant"]
    rate_per_s: float = Field(gt=0)


class BatchArrivals(_Strict):
    kind: Literal["batch"]
    count: int = Field(ge=1)
    at_s: float = Field(default=0.0, ge=0)


Arrivals = Annotated[Union[PoissonArrivals, GammaArrivals, ConstantArrivals, BatchArrivals],
                     Field(discriminator="kind")]


class FixedLength(_Strict):
    kind: Literal["fixed"]
    value: int = Field(ge=1)


class UniformLength(_Strict):
    kind: Literal["uniform"]
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> "UniformLength":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class LogNormalLength(_Strict):
    kind: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=32768, ge=1)


class EmpiricalLength(_Strict):
    kind: Literal["empirical"]
    trace: str = Field(description="trace CSV whose lengths are resampled (relative to the scenario file)")


Length = Annotated[Union[FixedLength, UniformLength, LogNormalLength, EmpiricalLength], Field(discriminator="kind")]


class BurstConfig(_Strict):
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    rate_per_s: float = Field(gt=0)


class TraceBurstConfig(_Strict):
    start_s: float = Field(ge=0, description="on the replayed (windowed, time-scaled) timeline")
    duration_s: float = Field(gt=0)
    rate_scale: float = Field(gt=0, description="x request count inside the burst")


class TraceConfig(_Strict):
    path: str
    window_start_s: float = Field(default=0.0, ge=0)
    window_s: float | None = Field(default=None, gt=0)
    time_scale: float = Field(default=1.0, gt=0, description="x timestamps (0.1 compresses time 10x)")
    rate_scale: float = Field(default=1.0, gt=0, description="x request count at unchanged timing")
    bursts: list[TraceBurstConfig] = Field(default_factory=list)


class WorkloadConfig(_Strict):
    duration_s: float = Field(default=60.0, gt=0)
    arrivals: Arrivals | None = None
    bursts: list[BurstConfig] = Field(default_factory=list)
    prompt: Length | None = None
    output: Length | None = None
    trace: TraceConfig | None = None
    max_requests: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _source(self) -> "WorkloadConfig":
        if self.trace is None and (self.arrivals is None or self.prompt is None or self.output is None):
            raise ValueError("needs either a trace, or arrivals, prompt and output")
        if self.trace is not None and (self.arrivals is not None or self.bursts):
            raise ValueError("a trace replaces arrivals and bursts; give one or the other")
        return self


# --- policies and the scenario --------------------------------------------------------------------------
class CompareEntry(_Strict):
    name: str = Field(min_length=1)
    policy: str = "none"
    params: dict[str, Any] = Field(default_factory=dict)
    engine: EngineOverride = Field(default_factory=EngineOverride)
    handler: str | None = None
    handler_params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "CompareEntry":
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(sorted(POLICIES))}, got {self.policy!r}")
        if self.handler is not None and self.handler not in HANDLERS:
            raise ValueError(f"handler must be one of {', '.join(sorted(HANDLERS))}, got {self.handler!r}")
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
    timeline_max_spans: int = Field(default=200_000, ge=0)
    detail_iterations: int = Field(default=20, ge=0, description="iterations per GPU recorded layer by layer")
    sample_interval_s: float = Field(default=0.25, gt=0)


class Scenario(_Strict):
    name: str | None = None
    description: str = ""
    seed: int = 0
    model: str
    gpu_models: list[str] | None = Field(default=None, description="one model per GPU (hardware.num_gpus "
                                         "long); `model` is then the SLO reference")
    hardware: HardwareConfig
    engine: EngineSettings = Field(default_factory=EngineSettings)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    workload: WorkloadConfig | None = None
    compare: list[CompareEntry] = Field(default_factory=list)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    until_s: float | None = Field(default=None, gt=0, description="stop the simulation at this time")
    record_error: RecordErrorConfig | None = Field(default=None, description="executed iteration times "
                                                   "differ from the record's by this")
    experiments: list[FixedBatchExperiment] = Field(default_factory=list)
    output: OutputConfig = Field(default_factory=OutputConfig)
    search: dict[str, Any] | None = Field(default=None, description="sweep settings (python -m sim.search)")

    @model_validator(mode="after")
    def _names(self) -> "Scenario":
        if self.gpu_models is not None and len(self.gpu_models) != self.hardware.num_gpus:
            raise ValueError(f"gpu_models needs one model per GPU: {len(self.gpu_models)} given for "
                             f"hardware.num_gpus = {self.hardware.num_gpus}")
        names = [c.name for c in self.compare]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"compare names must be unique; repeated: {dup}")
        if self.workload is not None and not self.compare:
            raise ValueError("a workload needs at least one entry in compare")
        if self.workload is None and not self.experiments:
            raise ValueError("needs a workload (with compare) or experiments")
        return self


# --- loading --------------------------------------------------------------------------------------------
def _describe(err: dict) -> str:
    """One readable phrase for a pydantic error."""
    t, ctx, inp = err["type"], err.get("ctx", {}), err.get("input")

    def num(x: Any) -> str:
        return str(int(x)) if isinstance(x, float) and x.is_integer() else repr(x)

    if t == "greater_than":
        return f"must be > {num(ctx['gt'])}, got {num(inp)}"
    if t == "greater_than_equal":
        return f"must be >= {num(ctx['ge'])}, got {num(inp)}"
    if t == "less_than_equal":
        return f"must be <= {num(ctx['le'])}, got {num(inp)}"
    if t == "less_than":
        return f"must be < {num(ctx['lt'])}, got {num(inp)}"
    if t == "missing":
        return "required"
    if t == "extra_forbidden":
        return "unknown key"
    if t == "literal_error":
        return f"must be {ctx.get('expected')}, got {inp!r}"
    if t == "union_tag_invalid":
        return f"kind must be {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if t == "union_tag_not_found":
        return f"needs a 'kind' ({ctx.get('discriminator', 'kind')})"
    if t in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer, got {inp!r}"
    if t in ("float_parsing", "float_type"):
        return f"must be a number, got {inp!r}"
    if t in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {inp!r}"
    if t in ("string_type",):
        return f"must be a string, got {inp!r}"
    if t in ("list_type",):
        return f"must be a list, got {inp!r}"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {inp!r}"
    if t == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"]


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, Union and Annotated)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for a in getattr(ann, "__args__", ()) or ():
        out += _models_in(a)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple) -> str:
    """The keys allowed where an unknown key was found (walks the model along the error location)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", {})
        if part not in fields:
            return ""
        found = _models_in(fields[part].annotation)
        cur = found[0] if found else None
        if cur is None:
            return ""
    fields = getattr(cur, "model_fields", {})
    return f" (allowed: {', '.join(fields)})" if fields else ""


def _format(path: Path, e: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line for the first validation error: ``file: field.path: problem`` (``root``: the schema the
    file was validated against, for the allowed keys; default `Scenario`)."""
    err = e.errors()[0]
    # drop union/discriminator tags (e.g. 'poisson', 'function-after[...]') from the path
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x in _TAGS)))
    where = ".".join(str(x) for x in loc) or "(top level)"
    msg = _describe(err)
    if err["type"] == "extra_forbidden":
        msg += _allowed_keys(root or Scenario, loc)
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{path.name}: {where}: {msg}{more}"


_TAGS = {"poisson", "gamma", "constant", "batch", "fixed", "uniform", "lognormal", "empirical"}
