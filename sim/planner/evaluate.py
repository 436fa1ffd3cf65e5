"""One evaluation of the capacity search: simulate a candidate deployment at one request rate (optionally
with a burst on top) and say whether it meets the SLO target.

`EvalTask` carries everything a worker needs (plain picklable data: it travels to processes and to Ray
workers), and `evaluate` is a top-level function of it, so any `sim.pools` pool can run it. Runs stop early
once the target is out of reach (enough requests have already missed their SLO), which makes the failing
half of a bisection cheap. Exceptions become a recorded ``error`` instead of stopping the sweep.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sim.api import SLO, PolicySpec, build_deployment, simulate
from sim.core.model import ModelSpec
from sim.core.request import Request, State
from sim.core.workload import Burst, LengthDist, Poisson, SyntheticWorkload
from sim.cost.roofline import RooflineCostModel
from sim.engine.memory import EngineConfig
from sim.planner.space import hardware


@dataclass(frozen=True)
class EvalTask:
    """One simulation: ``config`` (a candidate id) at ``rate_per_s``; with ``burst_factor`` > 0 a burst
    raising the rate to ``burst_factor`` x ``rate_per_s`` for ``burst_duration_s`` from ``burst_start_s``."""

    config: str
    model: ModelSpec
    gpu: str
    count: int
    host_gib_per_gpu: float
    strategy: PolicySpec
    engine: EngineConfig
    ttft_slo_s: float
    tpot_slo_s: float
    target: float
    rate_per_s: float
    duration_s: float
    min_requests: int
    prompt: LengthDist
    output: LengthDist
    seed: int
    burst_factor: float = 0.0
    burst_start_s: float = 0.0
    burst_duration_s: float = 0.0

    @property
    def key(self) -> str:
        """What identifies the result (the cache key of a resumed sweep)."""
        kind = f"burst{self.burst_factor:g}" if self.burst_factor else "steady"
        return f"{self.config}|{kind}|{self.rate_per_s:g}"


def _workload(t: EvalTask) -> SyntheticWorkload:
    # every candidate sees the same requests at a given rate (common random numbers): differences between
    # candidates are the deployments', not the draws'
    duration = max(t.duration_s, t.min_requests / t.rate_per_s)
    bursts = []
    if t.burst_factor > 1:
        duration = max(duration, t.burst_start_s + t.burst_duration_s)
        bursts = [Burst(t.burst_start_s, t.burst_duration_s, (t.burst_factor - 1) * t.rate_per_s)]
    return SyntheticWorkload(Poisson(t.rate_per_s), t.prompt, t.output, duration, bursts)


def _definite_misses(requests: Sequence[Request], now: float) -> int:
    """Requests that have certainly missed their SLO by ``now``: ended without meeting it, or still without
    a first token past their TTFT budget."""
    n = 0
    for r in requests:
        if r.state >= State.FINISHED:
            n += not r.meets_slo()
        elif r.state != State.PENDING and r.first_token_s is None and now - r.arrival_s > r.ttft_slo_s:
            n += 1
    return n


def evaluate(t: EvalTask) -> dict[str, Any]:
    """Simulate ``t``; return a flat record (``passed``, ``slo_attainment``, ``misses``, offered output
    tokens/s, p99 latencies, ``stopped_early``, ``error``). ``wall_s`` is the only field that differs between
    identical runs.

    Scored are all requests of a steady run, and the requests arriving from the burst's start on in a burst
    run (so the calm before it does not dilute the burst). The run stops as soon as more scored requests have
    certainly missed their SLO than the target allows: it could no longer pass."""
    wall0 = time.perf_counter()
    rec: dict[str, Any] = {"key": t.key, "config": t.config, "rate_per_s": t.rate_per_s,
                           "burst_factor": t.burst_factor}
    try:
        rs = _workload(t).generate(t.seed)
        first = int(np.searchsorted(rs.arrival_s, t.burst_start_s)) if t.burst_factor else 0
        n = len(rs) - first
        allowed = math.floor((1 - t.target) * n + 1e-9)  # misses the target tolerates

        def stop(reqs: Sequence[Request], now: float) -> bool:
            return _definite_misses(reqs[first:], now) > allowed

        hw = hardware(t.gpu, t.host_gib_per_gpu, t.count)
        # a generous end: the last arrival, ten TTFT budgets, and twice the longest answer at the TPOT budget;
        # the stop rule ends hopeless runs long before
        until = float(rs.arrival_s[-1]) + 10 * t.ttft_slo_s + 2 * int(rs.output_tokens.max()) * t.tpot_slo_s
        run = simulate(t.model, hw, rs, [t.strategy], slo=SLO(t.ttft_slo_s, t.tpot_slo_s), engine=t.engine,
                       num_gpus=t.count, until_s=until, timeline_max_spans=0, detail_iterations=0,
                       sample_interval_s=max(until, 1.0), stop=stop, progress_step_s=1.0)[t.strategy.label]
        if run.result.interrupted:  # Ctrl-C in this process: not a result, and the sweep must stop
            raise KeyboardInterrupt
        if run.result.error is not None:
            raise RuntimeError(run.result.error)
        s = run.summary
        scored = run.result.requests[first:]
        stopped = any(r.reject_reason.startswith("stopped early") for r in run.result.requests)
        misses = _definite_misses(scored, math.inf)
        rec.update(
            # a run stopped early counts its unfinished requests as misses: its attainment is not comparable
            requests=n, finished=s["finished"], slo_attainment=None if stopped else 1 - misses / max(n, 1),
            misses=None if stopped else misses, passed=not stopped and misses <= allowed, stopped_early=stopped,
            output_tokens_per_s=float(rs.output_tokens.sum() / max(float(rs.arrival_s[-1]), 1e-9)),
            p99_ttft_s=s["ttft_s"]["p99"], p99_tpot_s=s["tpot_s"]["p99"], error="")
    except Exception as e:  # noqa: BLE001 -- one configuration's failure must not stop the sweep
        rec.update(requests=0, finished=0, slo_attainment=None, misses=None, passed=False, stopped_early=False,
                   output_tokens_per_s=0.0, p99_ttft_s=None, p99_tpot_s=None, error=f"{type(e).__name__}: {e}")
    rec["wall_s"] = time.perf_counter() - wall0
    return rec


def probe(model: ModelSpec, gpu: str, count: int, host_gib_per_gpu: float, strategy: PolicySpec,
          engine: EngineConfig) -> str | None:
    """Build the deployment without running it: None if it can start, else why not (model does not fit,
    host memory too small, ...). The simulator's own checks, not a second copy of them."""
    hw = hardware(gpu, host_gib_per_gpu, count)
    try:
        build_deployment(strategy, model, hw, RooflineCostModel(model, hw), engine, count)
    except Exception as e:  # noqa: BLE001 -- any reason it cannot start is an answer
        return e.args[0] if e.args else type(e).__name__
    return None
