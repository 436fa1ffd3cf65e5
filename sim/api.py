"""The Python API: run several policies on the same requests and get records, metrics and timelines.

    from sim.api import simulate, SLO, PolicySpec
    from sim.core.workload import SyntheticWorkload, Poisson, LogNormal
    results = simulate("llama-2-7b", "h100-sxm", workload.generate(seed=1),
                       [PolicySpec("none"), PolicySpec("selectn-static", {"interval": 8})],
                       slo=SLO(ttft_s=2.0, tpot_s=0.1))
    results["none"].summary["slo_attainment"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from sim.core.hardware import HardwareSpec, HardwareSpecError, get_hardware
from sim.core.lengths import OutputLengths
from sim.core.model import ModelSpec, ModelSpecError, get_model
from sim.core.offload_plan import PlanError
from sim.core.timeline import Timeline
from sim.core.workload import RequestSet
from sim.cost.base import CostModel
from sim.cost.parallel import ParallelCost, collectives_for
from sim.cost.roofline import RooflineCostModel
from sim.engine.cluster import Cluster, Progress, RunResult, StopRule
from sim.engine.link import HostMemoryError
from sim.engine.memory import EngineConfig, ModelDoesNotFit
from sim.engine.metrics import requests_frame, series_frame, summarize
from sim.engine.record_error import RecordError
from sim.engine.scheduler import Scheduler
from sim.handlers import make_handler
from sim.policies import make_policy


@dataclass(frozen=True)
class SLO:
    """Latency targets in seconds: time to first token, and mean time per output token."""

    ttft_s: float = float("inf")
    tpot_s: float = float("inf")

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tpot_s <= 0:
            raise ValueError(f"SLOs must be > 0, got ttft_s={self.ttft_s}, tpot_s={self.tpot_s}")


@dataclass(frozen=True)
class PolicySpec:
    """A named configuration to compare: an offload policy (registry ``kind`` plus ``params``), an
    optional overload handler (`sim.handlers` registry name plus ``handler_params``) and optional
    per-policy engine settings (e.g. ``{"max_num_seqs": 64}``)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    handler: str | None = None
    handler_params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass
class PolicyRun:
    """What `simulate` returns per policy."""

    name: str
    result: RunResult
    summary: dict[str, Any]
    requests: pd.DataFrame
    series: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.result.error is None


# What building a deployment raises when a policy cannot run on it (reported per policy, not fatal).
DEPLOYMENT_ERRORS = (ModelDoesNotFit, PlanError, HostMemoryError, HardwareSpecError, ValueError, KeyError)


CostFactory = Callable[[ModelSpec, HardwareSpec], CostModel]


def parallel_slices(model: ModelSpec | list[ModelSpec], hw: HardwareSpec, engine: EngineConfig,
                    cost_factory: CostFactory | None) -> tuple[ModelSpec | list[ModelSpec], CostModel | list[CostModel]]:
    """What one GPU of a tensor/pipeline-parallel instance holds (`ModelSpec.shard`) and what its part of an
    iteration costs: ``cost_factory`` (default: the roofline) on the slice, plus the collectives of the
    hardware's GPU fabric (`sim.cost.parallel.ParallelCost`)."""
    tp, pp = engine.tensor_parallel_size, engine.pipeline_parallel_size
    make = cost_factory or RooflineCostModel
    coll = collectives_for(hw)

    def one(m: ModelSpec) -> tuple[ModelSpec, CostModel]:
        try:
            s = m.shard(tp, pp)
        except ModelSpecError as e:
            raise ValueError(str(e)) from None
        return s, ParallelCost(make(s, hw), coll, s, tp, pp, full_vocab=m.vocab_size)

    if isinstance(model, list):
        pairs = [one(m) for m in model]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return one(model)


def build_deployment(spec: PolicySpec, model: ModelSpec | list[ModelSpec], hw: HardwareSpec,
                     cost: CostModel | list[CostModel], engine: EngineConfig, num_gpus: int = 1,
                     router: str = "round-robin", timeline: Timeline | None = None, detail_iterations: int = 0,
                     sample_interval_s: float = 0.25, cost_factory: CostFactory | None = None,
                     output_lengths: OutputLengths | None = None, record_error: RecordError | None = None) -> Cluster:
    """The cluster one policy runs on: its handler's and its own engine settings over ``engine``, a fresh
    policy per instance, the handler attached. With tensor or pipeline parallelism in the engine settings
    every instance's GPUs hold slices of ``model`` costed by ``cost_factory`` (`parallel_slices`). Raises one
    of `DEPLOYMENT_ERRORS` if it cannot start. ``output_lengths``: what the policies may know of output
    lengths; ``record_error``: how executed kernel times stray from the cost model's
    (`sim.engine.cluster.Cluster`)."""
    handler = make_handler(spec.handler, **spec.handler_params) if spec.handler else None
    overrides = {**(handler.engine_overrides() if handler else {}), **spec.engine}
    eng = EngineConfig(**{**engine.__dict__, **overrides}) if overrides else engine
    if eng.tensor_parallel_size * eng.pipeline_parallel_size > 1:
        model, cost = parallel_slices(model, hw, eng, cost_factory)
    cluster = Cluster(model, hw, cost, lambda: make_policy(spec.kind, **spec.params), eng, num_gpus,
                      router, timeline, detail_iterations, sample_interval_s,  # type: ignore[arg-type]
                      handler.scheduler_class if handler else Scheduler, output_lengths, record_error)
    if handler is not None:
        handler.attach(cluster)
    return cluster


def simulate(model: ModelSpec | str | list[ModelSpec | str], hardware: HardwareSpec | str, requests: RequestSet,
             policies: list[PolicySpec], *, slo: SLO = SLO(), cost: CostModel | list[CostModel] | None = None,
             cost_factory: Callable[[ModelSpec, HardwareSpec], CostModel] | None = None,
             engine: EngineConfig | None = None, num_gpus: int = 1, router: str = "round-robin",
             until_s: float | None = None, timeline_max_spans: int | None = 200_000, detail_iterations: int = 20,
             sample_interval_s: float = 0.25, progress: Callable[[str], Progress] | None = None,
             stop: StopRule | None = None, progress_step_s: float = 5.0,
             output_lengths: OutputLengths | None = None,
             record_error: RecordError | None = None) -> dict[str, PolicyRun]:
    """Run each policy on the same requests. A policy that cannot run (model does not fit, bad parameter,
    host memory exhausted) gets a result with ``error`` set and the others still run. A Ctrl-C stops the
    policy in progress (its partial result is kept, marked interrupted) and skips the rest. ``model`` (and
    ``cost``) may be a list with one entry per instance (``num_gpus`` long without tensor or pipeline
    parallelism): different models sharing buses. Under tensor / pipeline parallelism (engine settings) the
    instances' slices are costed by ``cost_factory`` (default: the roofline).
    ``stop`` is asked every ``progress_step_s`` of simulated time whether to end a policy's run early.
    Policies know output lengths only as a distribution: ``output_lengths``, by default the distribution of
    the workload's output lengths (what an operator knows from the traffic's history; never a request's
    own length). ``record_error`` makes executed kernel times stray from the cost model's (and so from
    Select-N's record)."""
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    if isinstance(model, (list, tuple)):  # one model per GPU
        model = [get_model(m) if isinstance(m, str) else m for m in model]
        if cost is None:
            cost = [cost_factory(m, hw) if cost_factory else RooflineCostModel(m, hw) for m in model]  # type: ignore[assignment]
    else:
        model = get_model(model) if isinstance(model, str) else model
    if cost is None:
        cost = cost_factory(model, hw) if cost_factory else RooflineCostModel(model, hw)  # type: ignore[arg-type]
    base_engine = engine or EngineConfig()
    if output_lengths is None and len(requests):
        output_lengths = OutputLengths(requests.output_tokens, source="the workload's output distribution")
    names = [p.label for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    out: dict[str, PolicyRun] = {}
    for spec in policies:
        reqs = requests.to_requests(slo.ttft_s, slo.tpot_s)
        tl = Timeline(max_spans=timeline_max_spans)
        try:
            dep = build_deployment(spec, model, hw, cost, base_engine, num_gpus, router, tl,  # type: ignore[arg-type]
                                   detail_iterations, sample_interval_s, cost_factory, output_lengths, record_error)
        except DEPLOYMENT_ERRORS as e:
            msg = e.args[0] if e.args else str(e)
            res = RunResult(spec.label, reqs, error=str(msg))
            for r in reqs:
                r.reject(f"policy could not run: {msg}", 0.0)
            out[spec.label] = PolicyRun(spec.label, res, summarize(res), requests_frame(res), pd.DataFrame())
            continue
        res = dep.run(reqs, until_s, progress(spec.label) if progress else None, progress_step_s, spec.label,
                      stop)
        df = requests_frame(res)
        out[spec.label] = PolicyRun(spec.label, res, summarize(res, df), df, series_frame(res))
        if res.interrupted:
            break
    return out
