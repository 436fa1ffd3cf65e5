"""KunServe (arXiv 2412.18169): under a burst, drop replicated parameters so the freed weight memory becomes
KV cache at once; the instances of a group serve as one pipeline; restore after the burst.

Modules: `trigger` (votes, restore window), `drop_plan` (which instances group; capacity formulas),
`pipeline` (stage timing and micro-batch formation), `group` (the pipelined serving unit and its per-GPU
memory), `exchange` (KV exchange after a drop), `restore` (reclaim, weight copy-back, gather, split),
`controller` (the process that decides).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from sim.engine.handler import OverloadHandler
from sim.handlers.kunserve.controller import Controller
from sim.handlers.kunserve.drop_plan import capacity_gain_tokens, drop_plan, group_capacity_blocks
from sim.handlers.kunserve.pipeline import plan_step, stage_slices
from sim.handlers.kunserve.restore import restore_copy_time

if TYPE_CHECKING:
    from sim.engine.cluster import Cluster


@dataclass(frozen=True)
class KunServeParams:
    interval_s: float = 0.5  # controller sampling period
    drop_threshold: float = 0.95  # vote when demand >= this share of the KV blocks (and the queue is stuck)
    restore_below: float = 0.5  # restore when demand <= this share of the members' solo capacity ...
    restore_window_samples: int = 30  # ... and has fallen over this many samples, with nothing queued
    restore: bool = True
    exchange_per_step: int = 8  # requests whose KV starts moving per leader iteration (exchange, gather)
    micro_batching: Literal["lookahead", "fcfs"] = "lookahead"
    max_micro_batches: int | None = None  # lookahead tries 1..this many (default: group size; 2x if no overlap)
    overlap_steps: bool = True  # asynchronous pipeline (steps overlap); False: every step fills and drains
    token_budget: int | None = None  # group iteration token budget (default: engine budget x group size)
    max_group: int | None = None  # most instances in one group (default: all of them)
    plan_headroom: float = 1.0  # groups cover this multiple of their demand (> 1: room for a growing burst)
    grow: bool = True  # an overloaded group grows or merges while the overload lasts (False: pairs stay pairs)
    host_copy: bool = True  # keep one copy of the layer weights in each node's host memory
    restore_from: Literal["auto", "host", "peer"] = "auto"  # auto: the faster for the hardware
    detail_steps: int = 20  # pipelined steps recorded stage by stage on the timeline

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or not 0 < self.drop_threshold <= 1.5 or not 0 <= self.restore_below <= 1:
            raise ValueError("interval_s must be > 0, drop_threshold in (0, 1.5], restore_below in [0, 1]")
        if self.exchange_per_step < 1 or self.restore_window_samples < 2:
            raise ValueError("exchange_per_step must be >= 1 and restore_window_samples >= 2")
        if self.micro_batching not in ("lookahead", "fcfs"):
            raise ValueError(f"micro_batching must be 'lookahead' or 'fcfs', got {self.micro_batching!r}")
        if self.restore_from not in ("auto", "host", "peer"):
            raise ValueError(f"restore_from must be 'auto', 'host' or 'peer', got {self.restore_from!r}")
        if self.restore_from == "host" and not self.host_copy:
            raise ValueError("restore_from 'host' needs host_copy")


class KunServe(OverloadHandler):
    """Parameter dropping with pipelined groups (engine preemption: recompute)."""

    name = "kunserve"
    params_class = KunServeParams  # what **params takes (scenarios check handler_params against it)

    def __init__(self, **params: Any) -> None:
        allowed = {f.name for f in fields(KunServeParams)}
        bad = sorted(set(params) - allowed)
        if bad:
            raise TypeError(f"unknown parameter(s) {bad}; allowed: {sorted(allowed)}")
        self.params = KunServeParams(**params)

    def engine_overrides(self) -> dict[str, Any]:
        return {"preemption": "recompute"}

    def attach(self, cluster: "Cluster") -> None:
        super().attach(cluster)
        if cluster.engine.pipeline_parallel_size > 1:
            raise ValueError("kunserve: pipeline-parallel instances are not supported (it pipelines instances "
                             "itself); use tensor parallelism")
        for inst in cluster.instances:
            if inst.plan.offloaded:
                raise ValueError("kunserve drops resident replicas: use it with the 'none' offload policy")
        if self.params.host_copy:
            inst = cluster.instances[0]  # every GPU keeps a copy of its slice's layers
            model = inst.ctx.model
            for host in cluster.hosts:
                host.allocate("weights_copy", model.num_layers * model.weight_bytes_per_layer * len(inst.gpus))
        self.controller = Controller(cluster, self.params)
        cluster.env.process(self.controller.run())

    def describe(self) -> str:
        return f"kunserve({self.params.micro_batching})"


__all__ = ["KunServe", "KunServeParams", "drop_plan", "group_capacity_blocks", "capacity_gain_tokens",
           "plan_step", "stage_slices", "restore_copy_time"]
