"""Scenario files: YAML -> validated config -> the objects `sim.api.simulate` needs.

Validation (`sim.config.schema`) is pydantic with unknown keys rejected; errors come out as one line
naming the file, the field path and what is allowed
(``burst.yaml: workload.arrivals.rate_per_s: must be > 0, got -2``). Units at this edge carry suffixes
(``_s``, ``_gib``, ``_gb_per_s``); inside everything is SI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from pydantic import ValidationError

from sim.api import SLO, PolicyRun, PolicySpec, simulate
from sim.config.fixed_batch import FixedBatchExperiment
from sim.config.schema import (  # noqa: F401 -- re-exported: the schema's public names live here too
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
    _format,
)
from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec, HardwareSpecError
from sim.core.model import ModelSpec, ModelSpecError, get_model
from sim.core.workload import (Batch, Burst, Constant, Empirical, Fixed, Gamma, LengthDist, LogNormal, Poisson,
                               RequestSet, SyntheticWorkload, TraceBurst, TraceWorkload, Uniform, WorkloadError,
                               read_trace)
from sim.cost.base import CostModel
from sim.cost.roofline import RooflineCostModel
from sim.engine.record_error import RecordError


def read_yaml_mapping(path: Path, kind: str = "scenario") -> dict[str, Any]:
    """A YAML file's top-level mapping, safe-loaded; a missing file, broken YAML or another top level raises
    `ScenarioError` with one line (``kind`` names the file in the message: scenario, plan)."""
    if not path.exists():
        raise ScenarioError(f"{path}: {kind} file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path.name}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path.name}: (top level): must be a mapping of keys, got {type(data).__name__}")
    return data


def load_scenario(path: str | Path, seed: int | None = None, trace: str | Path | None = None) -> "LoadedScenario":
    """Parse and validate a scenario file; resolve the model, hardware, cost model and requests.
    ``seed`` replaces the scenario's seed; ``trace`` replaces ``workload.trace.path`` (a path relative to the
    working directory, as given on a command line)."""
    path = Path(path)
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
        raise ScenarioError(_format(path, e)) from None
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
                error: Callable[[str], ScenarioError]) -> LengthDist:
    """The length distribution a ``Length`` config names (``which``: prompt or output, the trace column an
    empirical one resamples); a trace that cannot be read raises ``error(message)``."""
    if isinstance(cfg, FixedLength):
        return Fixed(cfg.value)
    if isinstance(cfg, UniformLength):
        return Uniform(cfg.low, cfg.high)
    if isinstance(cfg, LogNormalLength):
        return LogNormal(cfg.median, cfg.sigma, cfg.min, cfg.max)
    try:
        df = read_trace(resolve(cfg.trace))
    except WorkloadError as e:
        raise error(str(e)) from None
    col = "prompt_tokens" if which == "prompt" else "output_tokens"
    return Empirical(tuple(int(x) for x in df[col]))


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
        prof = self.sc.hardware.profile
        if prof is None:
            return RooflineCostModel(self.model, self.hardware)
        p = self.resolve_path(prof)
        if not p.exists():
            raise self._err("hardware.profile", f"profile file not found: {prof}")
        try:
            from sim.cost.calibrated import make_cost_model
        except ImportError:
            raise self._err("hardware.profile", "calibrated profiles are not available in this build") from None
        try:
            return make_cost_model(self.model, self.hardware, p)
        except (ValueError, KeyError, OSError) as e:
            raise self._err("hardware.profile", str(e)) from None

    def _length(self, cfg: Any, which: str, where: str):
        return length_dist(cfg, which, self.resolve_path, lambda msg: self._err(f"{where}.trace", msg))

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
