"""The candidate space: every (model, GPU type, count, host memory, strategy), its price, the rate grid the
bisection walks, an analytic upper bound on the rate a candidate can sustain, and the static pruning rules.

Pruning here needs no simulation: a strategy that never touches host memory behaves the same with any host
memory size, so only the cheapest size is kept; a strategy is skipped below its ``min_gpus``. Whether the
model fits at all is asked of the simulator itself (`sim.planner.evaluate.probe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec, get_hardware
from sim.core.model import ModelSpec, ModelSpecError
from sim.core.units import GiB
from sim.cost.roofline import RooflineCostModel
from sim.engine.cluster import check_layout
from sim.engine.memory import EngineConfig, workspace_bytes
from sim.planner.config import LoadedPlan, Strategy


@dataclass(frozen=True)
class ConfigCandidate:
    """One deployment to evaluate. ``usd_per_hour`` = GPU price x count + host memory x its price."""

    model: str
    gpu: str
    count: int
    host_gib_per_gpu: float
    strategy: str
    usd_per_hour: float
    tp: int = 1  # tensor-parallel degree of each instance
    pp: int = 1  # pipeline-parallel degree of each instance

    @property
    def id(self) -> str:
        par = f"|tp{self.tp}" + (f"pp{self.pp}" if self.pp > 1 else "") if self.tp * self.pp > 1 else ""
        return f"{self.model}|{self.count}x{self.gpu}{par}|{self.host_gib_per_gpu:g}GiB|{self.strategy}"

    @property
    def instances(self) -> int:
        return self.count // (self.tp * self.pp)

    def row(self) -> dict[str, Any]:
        return {"config": self.id, "model": self.model, "gpu": self.gpu, "count": self.count,
                "tp": self.tp, "pp": self.pp, "host_memory_gib_per_gpu": self.host_gib_per_gpu,
                "strategy": self.strategy, "usd_per_hour": self.usd_per_hour}


def uses_host_memory(s: Strategy, plan_preemption: str = "recompute") -> bool:
    """Whether a strategy's behaviour can depend on host memory (offloaded weights, swapped KV, host copies
    of dropped parameters). `recompute` and `migrate` keep everything on GPUs; swap preemption (the
    strategy's own engine setting, else the plan's) keeps KV there."""
    swap = (s.engine.preemption or plan_preemption) == "swap"
    return s.policy != "none" or swap or s.handler not in (None, "recompute", "migrate")


def hardware(gpu: str, host_gib_per_gpu: float, count: int) -> HardwareSpec:
    """The GPU preset with the candidate's host memory: a node holds min(count, GPUs per node) of the
    deployment's GPUs and the host memory paid for them, no more (a 1-GPU deployment does not get the
    memory of a whole 8-GPU server)."""
    base = get_hardware(gpu)
    per_node = min(count, base.gpus_per_node)
    return get_hardware(gpu, host_memory_bytes=host_gib_per_gpu * GiB * per_node)


def layout_problem(model: ModelSpec, gpu: str, count: int, tp: int, pp: int) -> str | None:
    """Why ``count`` GPUs cannot run ``model`` as instances of ``tp`` x ``pp`` GPUs (None if they can)."""
    if tp * pp > count:
        return f"tp {tp} x pp {pp} needs more than {count} GPUs"
    try:
        model.check_parallel(tp, pp)
        check_layout(get_hardware(gpu), count, tp, pp)
    except (ModelSpecError, ValueError) as e:
        return str(e)
    return None


def enumerate_space(plan: LoadedPlan) -> tuple[list[ConfigCandidate], list[dict[str, Any]]]:
    """Every candidate in a stable order, and the statically pruned ones (``row`` plus ``status``,
    ``reason``). Kept candidates are sorted by (model, price, id) so cheap ones are searched first. Each
    GPU count is tried with every tensor/pipeline-parallel degree the model and the box allow."""
    c = plan.cfg
    kept: list[ConfigCandidate] = []
    pruned: list[dict[str, Any]] = []
    hosts = sorted(set(c.host_memory_gib_per_gpu))
    for m in c.models:
        tps = sorted(set(m.tensor_parallel or c.tensor_parallel))
        pps = sorted(set(c.pipeline_parallel))
        for g in c.gpus:
            for n in sorted(set(c.counts)):
                for tp in tps:
                    for pp in pps:
                        bad = layout_problem(plan.models[m.label], g.gpu, n, tp, pp)
                        if bad is not None and tp * pp > n:
                            continue  # not a layout of this count at all: nothing to report
                        for s in c.strategies:
                            for h in hosts:
                                cand = ConfigCandidate(m.label, g.gpu, n, h, s.name,
                                                       g.usd_per_hour * n + h * n * c.host_memory_usd_per_gib_hour,
                                                       tp, pp)
                                if bad is not None:
                                    pruned.append({**cand.row(), "status": "pruned", "reason": bad})
                                elif cand.instances < s.min_gpus:
                                    pruned.append({**cand.row(), "status": "pruned",
                                                   "reason": f"{s.name} needs at least {s.min_gpus} instances"})
                                elif h != hosts[0] and not uses_host_memory(s, c.engine.preemption):
                                    same = ConfigCandidate(m.label, g.gpu, n, hosts[0], s.name, 0.0, tp, pp).id
                                    pruned.append({**cand.row(), "status": "pruned",
                                                   "reason": f"{s.name} does not use host memory: same as {same}, "
                                                             "which costs no more"})
                                else:
                                    kept.append(cand)
    kept.sort(key=lambda x: (x.model, x.usd_per_hour, x.id))
    return kept, pruned


def rate_grid(plan: LoadedPlan, model: str) -> tuple[float, ...]:
    """Geometric grid of request rates for ``model``: from min_rate to max_rate by factors of (1 + rate_step),
    with every planned rate on it exactly (so "sustains the planned rate" is answered, not interpolated)."""
    s, rates = plan.cfg.search, plan.model_config(model).rates_per_s
    lo = s.min_rate_per_s or min(rates) / 4
    hi = s.max_rate_per_s or max(rates) * 4
    if hi <= lo:
        hi = lo * (1 + s.rate_step)
    n = math.ceil(math.log(hi / lo) / math.log1p(s.rate_step))
    # three significant digits: readable rates ("9.41 req/s"), still (1 + rate_step) apart for steps >= 1%
    grid = {float(f"{lo * (1 + s.rate_step) ** k:.3g}") for k in range(n + 1)}
    grid |= {float(r) for r in rates if lo <= r <= hi}
    return tuple(sorted(grid))


def roofline_rate(model: ModelSpec, hw: HardwareSpec, engine: EngineConfig, count: int, mean_prompt: float,
                  mean_output: float) -> float:
    """An optimistic estimate of the request rate ``count`` replicas can serve (requests/s), from the roofline
    cost model: as if every weight byte could leave the GPU for free (all memory after the workspace holds
    KV), decode ran at the largest batch that KV allows, and prompts ran in full token-budget batches. It
    is where the rate search starts, not a bound: a loose TTFT SLO over a short window can pass above it."""
    cost = RooflineCostModel(model, hw)
    L = model.num_layers
    kv_tokens = (hw.gpu_memory_bytes * engine.gpu_memory_utilization - workspace_bytes(model, engine)) \
        / model.kv_bytes_per_token
    ctx = mean_prompt + mean_output / 2
    batch = int(max(1, min(engine.max_num_seqs, kv_tokens / max(ctx, 1.0))))
    dec = BatchShape.decode_batch(batch, int(ctx))
    t_token = (L * cost.layer_time(dec) + cost.fixed_time(dec)) / batch
    chunk = engine.max_num_batched_tokens
    pre = BatchShape.prefill_batch(1, chunk)
    t_prompt = (L * cost.layer_time(pre) + cost.fixed_time(pre)) / chunk * mean_prompt
    return count / (t_prompt + mean_output * t_token)


def mean_lengths(plan: LoadedPlan, seed: int) -> tuple[float, float]:
    """Mean prompt and output lengths of the plan's length mix (from a large sample, same seed always)."""
    rng = np.random.default_rng([seed, 99])
    return float(plan.prompt.sample(rng, 20_000).mean()), float(plan.output.sample(rng, 20_000).mean())
