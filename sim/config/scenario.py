"""Scenario files: YAML -> validated config -> the objects `sim.api.simulate` needs.

Validation (`sim.config.schema`) is pydantic with unknown keys rejected; errors come out as one line
naming the file, the field path and what is allowed
(``burst.yaml: workload.arrivals.rate_per_s: must be > 0, got -2``). Units at this edge carry suffixes
(``_s``, ``_gib``, ``_gb_per_s``); inside everything is SI.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError

from sim.api import SLO, PolicyRun, PolicySpec, simulate
from sim.config.checks import (
    ContextOverflow,
    check_gpus,
    check_requests,
    expected_synthetic,
    overflow_count,
    read_yaml_mapping,
    too_many_requests,
    truncate_to_context,
)
from sim.config.fixed_batch import FixedBatchExperiment
from sim.config.schema import (  # noqa: F401 -- re-exported: the schema's public names live here too
    MAX_SEED,
    Arrivals,
    ClusterConfig,
    CompareEntry,
    ConstantArrivals,
    EngineOverride,
    EngineSettings,
    FixedLength,
    GammaArrivals,
    HardwareConfig,
    Length,
    LogNormalLength,
    OutputConfig,
    PoissonArrivals,
    Scenario,
    ScenarioError,
    SLOConfig,
    SLOReference,
    TraceConfig,
    UniformLength,
    WorkloadConfig,
    format_validation_error,
)
from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec, HardwareSpecError
from sim.core.model import ModelSpec, ModelSpecError, get_model
from sim.core.workload import (
    Batch,
    Burst,
    Constant,
    Empirical,
    Fixed,
    Gamma,
    LengthDist,
    LogNormal,
    Poisson,
    RequestSet,
    SyntheticWorkload,
    TraceBurst,
    TraceWorkload,
    Uniform,
    WorkloadError,
    WorkloadLimitError,
    read_trace,
)
from sim.cost.base import CostModel
from sim.cost.roofline import RooflineCostModel
from sim.engine.record_error import RecordError


def load_scenario(path: str | Path, seed: int | None = None, trace: str | Path | None = None) -> "LoadedScenario":
    """Parse and validate a scenario file; resolve the model, hardware, cost model and requests.
    ``seed`` replaces the scenario's seed (>= 0); ``trace`` replaces ``workload.trace.path`` (a path relative
    to the working directory, as given on a command line)."""
    path = Path(path)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ScenarioError(f"--seed: must be in [0, 2**64 - 1], got {seed}")
    data = read_yaml_mapping(path)
    if trace is not None:
        w = data.get("workload")
        if not isinstance(w, dict) or not isinstance(w.get("trace"), dict):
            raise ScenarioError(f"{path.name}: workload.trace: a trace path was given ({trace}) but this scenario "
                                "replays no trace")
        w["trace"]["path"] = str(Path(trace).expanduser().resolve())
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(format_validation_error(path, e)) from None
    if seed is not None:
        sc = sc.model_copy(update={"seed": seed})
    return LoadedScenario(path, sc)


def resolve_beside(file: Path, p: str) -> Path:
    """A path from a file the user wrote: relative to that file's folder, else to the working directory."""
    q = Path(p).expanduser()
    if q.is_absolute():
        return q
    beside = file.parent / q
    return beside if beside.exists() or not q.exists() else q


def length_dist(cfg: Any, which: str, resolve: Callable[[str], Path],
                error: Callable[[str], ScenarioError], notes: list[str] | None = None) -> LengthDist:
    """The length distribution a ``Length`` config names (``which``: prompt or output, the trace column an
    empirical one resamples); a trace that cannot be read raises ``error(message)``. Rows an empirical
    trace dropped (``on_bad_rows: drop``) are described in ``notes``."""
    if isinstance(cfg, FixedLength):
        return Fixed(cfg.value)
    if isinstance(cfg, UniformLength):
        return Uniform(cfg.low, cfg.high)
    if isinstance(cfg, LogNormalLength):
        return LogNormal(cfg.median, cfg.sigma, cfg.min, cfg.max)
    try:
        df = read_trace(resolve(cfg.trace), cfg.on_bad_rows)
    except WorkloadError as e:
        raise error(f"{e}" + ("; on_bad_rows: drop skips such rows" if "row " in str(e) else "")) from None
    if df.attrs.get("dropped_rows") and notes is not None:
        notes.append(dropped_note(df.attrs, f"{which}.trace"))
    col = "prompt_tokens" if which == "prompt" else "output_tokens"
    return Empirical(tuple(int(x) for x in df[col]))


def dropped_note(info: dict[str, Any], where: str) -> str:
    """The warning for rows a trace dropped (``read_trace``'s attrs)."""
    return (f"{where}: dropped {info['dropped_rows']:,} of {info['rows']:,} trace rows that are not requests "
            f"(on_bad_rows: drop; first: {info['first_bad']})")


class LoadedScenario:
    """A validated scenario with everything resolved: model, hardware, cost model, requests, SLO."""

    def __init__(self, path: Path, sc: Scenario) -> None:
        self.path, self.sc = path, sc
        self.name = sc.name or path.stem
        self.notes: list[str] = []  # warnings about the input (rows dropped), printed by the commands
        self.input: dict[str, Any] = {}  # what was done to the input, for summary.json (empty: nothing)
        check_gpus(path.name, sc.hardware.num_gpus, sc.limits.max_gpus)
        self.model = self._model()
        self.gpu_models = [self._model(m, f"gpu_models.{k}") for k, m in enumerate(sc.gpu_models or [])]
        self.hardware = self._hardware()
        self.cost = self._cost()
        # the longest prompt + output the engine takes: engine.max_model_len, else the (smallest) model's context
        self.context_tokens = sc.engine.max_model_len or min(m.max_position for m in self.gpu_models or [self.model])
        self.overflow: ContextOverflow | None = None
        self.requests = self._context(self._requests()) if sc.workload is not None else None
        self.slo = self._slo()
        self.engine = sc.engine.config()
        if sc.workload is not None:  # the engine rejects what is still too long (nothing, after truncating)
            self.engine = dataclasses.replace(self.engine, max_model_len=self.context_tokens)

    def _err(self, where: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.path.name}: {where}: {msg}")

    def resolve_path(self, p: str) -> Path:
        """Relative paths are relative to the scenario file, then to the working directory."""
        return resolve_beside(self.path, p)

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
        return self.cost_factory(self.model, self.hardware)

    def cost_factory(self, model: ModelSpec, hw: HardwareSpec) -> CostModel:
        """The scenario's cost model (roofline, or the calibrated profile) for ``model`` (e.g. one GPU's
        slice under tensor parallelism)."""
        prof = self.sc.hardware.profile
        if prof is None:
            return RooflineCostModel(model, hw)
        p = self.resolve_path(prof)
        if not p.exists():
            raise self._err("hardware.profile", f"profile file not found: {prof}")
        try:
            from sim.cost.calibrated import make_cost_model
        except ImportError:
            raise self._err("hardware.profile", "calibrated profiles are not available in this build") from None
        try:
            return make_cost_model(model, hw, p)
        except Exception as e:  # noqa: BLE001 -- a profile the user named that cannot be used is bad input
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise self._err("hardware.profile", msg if len(msg) <= 300 else msg[:300] + "...") from None

    def length_dist(self, cfg: Any, which: str, where: str):
        """The length distribution a workload's ``prompt``/``output`` block describes, resolved against this
        scenario's folder; errors name ``where`` (e.g. ``workload.prompt``)."""
        return length_dist(cfg, which, self.resolve_path, lambda msg: self._err(f"{where}.trace", msg), self.notes)

    def _requests(self) -> RequestSet:
        w = self.sc.workload
        assert w is not None
        limit = self.sc.limits.max_expected_requests
        try:
            if w.trace is not None:
                t = w.trace
                tw = TraceWorkload(self.resolve_path(t.path), t.window_start_s, t.window_s, t.time_scale,
                                   t.rate_scale, w.max_requests,
                                   tuple(TraceBurst(b.start_s, b.duration_s, b.rate_scale) for b in t.bursts),
                                   t.on_bad_rows, limit)
                rs = tw.generate(self.sc.seed)
                if tw.trace_info.get("dropped_rows"):
                    self.notes.append(dropped_note(tw.trace_info, "workload.trace"))
                    self.input["trace_rows_dropped"] = tw.trace_info["dropped_rows"]
                return rs
        except WorkloadLimitError as e:
            raise too_many_requests(self.path.name, "workload.trace", e.expected, e.how, limit) from None
        except WorkloadError as e:
            hint = ("; relative paths are resolved beside the scenario file (or pass --trace PATH)"
                    if "not found" in str(e) else "; on_bad_rows: drop skips such rows" if "row " in str(e) else "")
            raise self._err("workload.trace.path", f"{e}{hint}") from None
        check_requests(self.path.name, "workload", *expected_synthetic(w), limit)
        a = w.arrivals
        arr = (Poisson(a.rate_per_s) if isinstance(a, PoissonArrivals) else
               Gamma(a.rate_per_s, a.cv) if isinstance(a, GammaArrivals) else
               Constant(a.rate_per_s) if isinstance(a, ConstantArrivals) else Batch(a.count, a.at_s))  # type: ignore[union-attr]
        return SyntheticWorkload(arr, self.length_dist(w.prompt, "prompt", "workload.prompt"),
                                 self.length_dist(w.output, "output", "workload.output"), w.duration_s,
                                 [Burst(b.start_s, b.duration_s, b.rate_per_s) for b in w.bursts],
                                 w.max_requests).generate(self.sc.seed)

    def _context(self, rs: RequestSet) -> RequestSet:
        """``workload.context_overflow``: count the requests longer than the context; truncate them, or leave
        them for the engine to reject on arrival."""
        w = self.sc.workload
        assert w is not None
        n = overflow_count(rs, self.context_tokens)
        if n:
            self.overflow = ContextOverflow(w.context_overflow, self.context_tokens, n)
            self.input["context_overflow"] = self.overflow.summary()
            if w.context_overflow == "truncate":
                rs = truncate_to_context(rs, self.context_tokens)
        return rs

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
        args: dict[str, Any] = dict(slo=self.slo, cost=self.cost, cost_factory=self.cost_factory, engine=self.engine,
                                    num_gpus=self.sc.hardware.num_gpus, router=self.sc.cluster.router,
                                    until_s=self.sc.until_s, timeline_max_spans=o.timeline_max_spans,
                                    detail_iterations=o.detail_iterations, sample_interval_s=o.sample_interval_s)
        if self.sc.record_error is not None:
            e = self.sc.record_error
            args["record_error"] = RecordError(e.bias, e.noise, self.sc.seed)
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


def load_experiment_file(path: str | Path) -> tuple[ModelSpec, list[FixedBatchExperiment]]:
    """The model and the ``experiments:`` list of a scenario file (the fixed-batch contract with the torch
    backend, `sim.config.fixed_batch`), validated like any scenario; errors are `ScenarioError` with a
    one-line message."""
    loaded = load_scenario(path)
    if not loaded.sc.experiments:
        raise ScenarioError(f"{Path(path).name}: experiments: needs at least one fixed-batch experiment")
    return loaded.model, list(loaded.sc.experiments)
