"""Scenario files: YAML -> validated config -> the objects `sim.api.simulate` needs.

Validation is pydantic with unknown keys rejected; errors come out as one line naming the file, the field
path and what is allowed (``burst.yaml: workload.arrivals.rate_per_s: must be > 0, got -2``).
Units at this edge carry suffixes (``_s``, ``_gib``, ``_gb_per_s``); inside everything is SI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .api import SLO, PolicyRun, PolicySpec, simulate
from .cost import BatchShape, CostModel, RooflineCostModel
from .experiments import FixedBatchExperiment
from .handlers import REGISTRY as HANDLERS
from .hardware import HardwareSpec, HardwareSpecError, get_hardware
from .memory import EngineConfig
from .model import ModelSpec, ModelSpecError, get_model
from .policies import REGISTRY as POLICIES
from .workload import (Batch, Burst, Constant, Empirical, Fixed, Gamma, LogNormal, Poisson, RequestSet,
                       SyntheticWorkload, TraceBurst, TraceWorkload, Uniform, WorkloadError, read_trace)


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
        conv = {"gpu_memory_gib": ("gpu_memory_bytes", 2**30), "hbm_tb_per_s": ("hbm_bytes_per_s", 1e12),
                "peak_tflops": ("peak_flops", 1e12), "h2d_gb_per_s": ("h2d_bytes_per_s", 1e9),
                "d2h_gb_per_s": ("d2h_bytes_per_s", 1e9), "bus_gb_per_s": ("bus_bytes_per_s", 1e9),
                "gpus_per_bus": ("gpus_per_bus", 1), "link_latency_us": ("link_latency_s", 1e-6),
                "gpu_link_gb_per_s": ("gpu_link_bytes_per_s", 1e9), "host_memory_gib": ("host_memory_bytes", 2**30)}
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


def _allowed_keys(model: type[BaseModel], loc: tuple) -> str:
    """The keys allowed where an unknown key was found (walks the model along the error location)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", {})
        if part not in fields:
            return ""
        ann = fields[part].annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (args[0] if args else None)
        if cur is None:
            return ""
    fields = getattr(cur, "model_fields", {})
    return f" (allowed: {', '.join(fields)})" if fields else ""


def _format(path: Path, e: ValidationError) -> str:
    err = e.errors()[0]
    # drop union/discriminator tags (e.g. 'poisson', 'function-after[...]') from the path
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x in _TAGS)))
    where = ".".join(str(x) for x in loc) or "(top level)"
    msg = _describe(err)
    if err["type"] == "extra_forbidden":
        msg += _allowed_keys(Scenario, loc)
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{path.name}: {where}: {msg}{more}"


_TAGS = {"poisson", "gamma", "constant", "batch", "fixed", "uniform", "lognormal", "empirical"}


def load_scenario(path: str | Path, seed: int | None = None, trace: str | Path | None = None) -> "LoadedScenario":
    """Parse and validate a scenario file; resolve the model, hardware, cost model and requests.
    ``seed`` replaces the scenario's seed; ``trace`` replaces ``workload.trace.path`` (a path relative to the
    working directory, as given on a command line)."""
    path = Path(path)
    if not path.exists():
        raise ScenarioError(f"{path}: scenario file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path.name}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path.name}: (top level): must be a mapping of keys, got {type(data).__name__}")
    if trace is not None:
        w = data.get("workload")
        if not isinstance(w, dict) or not isinstance(w.get("trace"), dict):
            raise ScenarioError(f"{path.name}: workload.trace: a trace path was given ({trace}) but this scenario "
                                "replays no trace")
        w["trace"]["path"] = str(Path(trace).expanduser().resolve())
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(_format(path, e)) from None
    if seed is not None:
        sc = sc.model_copy(update={"seed": seed})
    return LoadedScenario(path, sc)


class LoadedScenario:
    """A validated scenario with everything resolved: model, hardware, cost model, requests, SLO."""

    def __init__(self, path: Path, sc: Scenario) -> None:
        self.path, self.sc = path, sc
        self.name = sc.name or path.stem
        self.model = self._model()
        self.gpu_models = [self._model(m, f"gpu_models.{k}") for k, m in enumerate(sc.gpu_models or [])]
        self.hardware = self._hardware()
        self.cost = self._cost()
        self.requests = self._requests() if sc.workload is not None else None
        self.slo = self._slo()
        self.engine = sc.engine.config()

    def _err(self, where: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.path.name}: {where}: {msg}")

    def resolve_path(self, p: str) -> Path:
        """Relative paths are relative to the scenario file, then to the working directory."""
        q = Path(p).expanduser()
        if q.is_absolute():
            return q
        beside = self.path.parent / q
        return beside if beside.exists() or not q.exists() else q

    def _model(self, ref: str | None = None, where: str = "model") -> ModelSpec:
        ref = self.sc.model if ref is None else ref
        if ref.endswith(".json") or "/" in ref:
            ref = str(self.resolve_path(ref))
        try:
            return get_model(ref)
        except ModelSpecError as e:
            raise self._err(where, str(e)) from None

    def _hardware(self) -> HardwareSpec:
        try:
            return self.sc.hardware.spec()
        except HardwareSpecError as e:
            raise self._err("hardware.gpu", str(e)) from None

    def _cost(self) -> CostModel:
        prof = self.sc.hardware.profile
        if prof is None:
            return RooflineCostModel(self.model, self.hardware)
        p = self.resolve_path(prof)
        if not p.exists():
            raise self._err("hardware.profile", f"profile file not found: {prof}")
        try:
            from .cost_calibrated import make_cost_model
        except ImportError:
            raise self._err("hardware.profile", "calibrated profiles are not available in this build") from None
        try:
            return make_cost_model(self.model, self.hardware, p)
        except (ValueError, KeyError, OSError) as e:
            raise self._err("hardware.profile", str(e)) from None

    def _length(self, cfg: Any, which: str, where: str):
        if isinstance(cfg, FixedLength):
            return Fixed(cfg.value)
        if isinstance(cfg, UniformLength):
            return Uniform(cfg.low, cfg.high)
        if isinstance(cfg, LogNormalLength):
            return LogNormal(cfg.median, cfg.sigma, cfg.min, cfg.max)
        try:
            df = read_trace(self.resolve_path(cfg.trace))
        except WorkloadError as e:
            raise self._err(f"{where}.trace", str(e)) from None
        col = "prompt_tokens" if which == "prompt" else "output_tokens"
        return Empirical(tuple(int(x) for x in df[col]))

    def _requests(self) -> RequestSet:
        w = self.sc.workload
        assert w is not None
        try:
            if w.trace is not None:
                t = w.trace
                return TraceWorkload(self.resolve_path(t.path), t.window_start_s, t.window_s, t.time_scale,
                                     t.rate_scale, w.max_requests,
                                     tuple(TraceBurst(b.start_s, b.duration_s, b.rate_scale) for b in t.bursts)
                                     ).generate(self.sc.seed)
        except WorkloadError as e:
            hint = ("; relative paths are resolved beside the scenario file (or pass --trace PATH)"
                    if "not found" in str(e) else "")
            raise self._err("workload.trace.path", f"{e}{hint}") from None
        a = w.arrivals
        arr = (Poisson(a.rate_per_s) if isinstance(a, PoissonArrivals) else
               Gamma(a.rate_per_s, a.cv) if isinstance(a, GammaArrivals) else
               Constant(a.rate_per_s) if isinstance(a, ConstantArrivals) else Batch(a.count, a.at_s))  # type: ignore[union-attr]
        return SyntheticWorkload(arr, self._length(w.prompt, "prompt", "workload.prompt"),
                                 self._length(w.output, "output", "workload.output"), w.duration_s,
                                 [Burst(b.start_s, b.duration_s, b.rate_per_s) for b in w.bursts],
                                 w.max_requests).generate(self.sc.seed)

    def reference_latency(self) -> tuple[float, float]:
        """No-offload (all layers resident) TTFT and TPOT of the SLO reference shape, in seconds."""
        ref = self.sc.slo.reference
        rs = self.requests
        med_p = int(np.median(rs.prompt_tokens)) if rs is not None and len(rs) else 512
        med_o = int(np.median(rs.output_tokens)) if rs is not None and len(rs) else 128
        prompt = ref.prompt_tokens or med_p
        ctx = ref.context_tokens or (prompt + med_o // 2)
        L, cost = self.model.num_layers, self.cost
        pshape = BatchShape.prefill_batch(ref.batch_size, prompt)
        dshape = BatchShape.decode_batch(ref.batch_size, ctx)
        return (L * cost.layer_time(pshape) + cost.fixed_time(pshape),
                L * cost.layer_time(dshape) + cost.fixed_time(dshape))

    def _slo(self) -> SLO:
        s = self.sc.slo
        ttft_ref, tpot_ref = self.reference_latency()
        ttft = s.ttft_s if s.ttft_s is not None else (s.ttft_x * ttft_ref if s.ttft_x is not None else float("inf"))
        tpot = s.tpot_s if s.tpot_s is not None else (s.tpot_x * tpot_ref if s.tpot_x is not None else float("inf"))
        return SLO(ttft, tpot)

    def policies(self) -> list[PolicySpec]:
        return [c.spec() for c in self.sc.compare]

    def simulate(self, policies: list[PolicySpec] | None = None, **kw: Any) -> dict[str, PolicyRun]:
        """Run every compared policy (or the given ones) on the scenario's requests (keyword arguments go to
        `simulate`)."""
        if self.requests is None:
            raise self._err("workload", "this scenario has no workload (only fixed-batch experiments)")
        o = self.sc.output
        args: dict[str, Any] = dict(slo=self.slo, cost=self.cost, engine=self.engine,
                                    num_gpus=self.sc.hardware.num_gpus, router=self.sc.cluster.router,
                                    until_s=self.sc.until_s, timeline_max_spans=o.timeline_max_spans,
                                    detail_iterations=o.detail_iterations, sample_interval_s=o.sample_interval_s)
        model: Any = self.model
        if self.gpu_models:  # one model per GPU, each with its own cost model
            if self.sc.hardware.profile is not None:
                raise self._err("gpu_models", "a calibrated profile covers one model; drop hardware.profile")
            model = self.gpu_models
            args["cost"] = [RooflineCostModel(m, self.hardware) for m in self.gpu_models]
        args.update(kw)
        return simulate(model, self.hardware, self.requests, policies if policies is not None else self.policies(),
                        **args)

    def resolved(self) -> dict[str, Any]:
        """The scenario as run: the validated config plus what was derived from it."""
        d = self.sc.model_dump(mode="json")
        d["name"] = self.name
        d["resolved"] = {
            "model": {"name": self.model.name, "num_layers": self.model.num_layers,
                      "weight_bytes_per_layer": self.model.weight_bytes_per_layer,
                      "kv_bytes_per_token": self.model.kv_bytes_per_token},
            "hardware": {k: v for k, v in self.hardware.__dict__.items()},
            "slo": {"ttft_s": self.slo.ttft_s, "tpot_s": self.slo.tpot_s},
            "requests": len(self.requests) if self.requests is not None else 0,
            "cost_model": type(self.cost).__name__,
        }
        return d
