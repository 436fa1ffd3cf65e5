"""The offload-policy contract: what the engine asks a policy, and what the policy may know.

A policy decides, for one instance, where layer weights live. The engine asks it for an initial plan
(which sizes GPU memory), before each iteration for the plan to run that iteration with, and whether to
admit a request at all (a policy that can prove a request's SLO infeasible rejects it with the reason).
It sees its instance only through an `EngineView` and its bus peers through the `Bus` in its context.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.lengths import OutputLengths
from sim.core.model import ModelSpec
from sim.core.offload_plan import OffloadPlan
from sim.cost.base import CostModel
from sim.engine.bus import Bus
from sim.engine.memory import EngineConfig
from sim.engine.view import EngineView

if TYPE_CHECKING:
    from sim.core.request import Request


@dataclass(frozen=True)
class InstanceContext:
    """What a policy may know about the instance it serves: the model one of its GPUs holds (the whole
    model, or one rank's slice under tensor / pipeline parallelism: `ModelSpec.shard`), the hardware, the
    cost model of that GPU's part of an iteration (collectives included), the engine settings, the
    instance's index and GPUs, the upstream bus it shares with other instances, the copy bandwidth one of
    its GPUs gets from the host when 1, 2, ... of the bus's instances copy at once, and the distribution of
    output lengths (`OutputLengths`: a request's own length is the simulated truth, which no policy may
    read)."""

    model: ModelSpec
    hw: HardwareSpec
    cost: CostModel
    engine: EngineConfig
    index: int
    bus: Bus
    gpus: tuple[int, ...] = ()  # its GPUs, stage by stage (default: GPU ``index`` alone)
    link_rates: tuple[float, ...] = ()  # bytes/s per GPU at share m = 1, 2, ... (default: from hw)
    output_lengths: OutputLengths = field(default_factory=OutputLengths.unknown)

    @property
    def gpu_ids(self) -> tuple[int, ...]:
        return self.gpus or (self.index,)

    @property
    def tp(self) -> int:
        return self.engine.tensor_parallel_size

    @property
    def pp(self) -> int:
        return self.engine.pipeline_parallel_size

    @property
    def host_link_rates(self) -> tuple[float, ...]:
        """Per-GPU host->device bandwidth when m = 1, 2, ... instances of the bus copy at once."""
        if self.link_rates:
            return self.link_rates
        hw = self.hw
        return tuple(min(hw.h2d_bytes_per_s, hw.bus_bytes_per_s / m) for m in range(1, hw.gpus_per_bus + 1))


class OffloadPolicy(ABC):
    """Where layer weights live, iteration by iteration.

    Subclasses set ``name`` and override `initial_plan`; dynamic policies also override `plan_for`
    (called before every iteration with the batch about to run) and may override `admit`.
    """

    name: str = "policy"

    def setup(self, ctx: InstanceContext) -> None:
        self.ctx = ctx

    def initial_plan(self) -> OffloadPlan:
        raise NotImplementedError

    def host_weight_bytes(self) -> float:
        """Pinned host memory this policy needs for weights (allocated once at start-up)."""
        return self.initial_plan().host_bytes(self.ctx.model)

    def max_kv_plan(self) -> OffloadPlan:
        """The plan with the most KV capacity this policy may ever use (for admission checks)."""
        return self.initial_plan()

    def plan_for(self, view: EngineView, shape: BatchShape, now: float) -> OffloadPlan:
        """The plan for the next iteration; static policies keep the current one."""
        return view.plan

    def admit(self, view: EngineView, req: "Request", now: float) -> str | None:
        """None to admit; a reason string to reject the request for good; `sim.engine.scheduler.DEFER` to
        leave it (and the queue behind it) waiting for now."""
        return None

    def on_arrival(self, view: EngineView, req: "Request", now: float) -> str | None:
        """Called when a request reaches this instance's queue: a reason to reject it at once (it cannot be
        served in time), or None to queue it."""
        return None

    def observe(self, view: EngineView, step: int, duration_s: float) -> None:
        """Called after every iteration this instance ran itself (``step``: its index) with how long it
        took, so a policy may correct its predictions from what it observes."""
        return None

    def holds_back(self, view: EngineView) -> bool:
        """True while `admit` defers this GPU's queue for a reason outside it (a bus peer needs the bus to
        itself for a while) and will wake the instance when that ends: the queue is kept, not dropped,
        even after the last arrival."""
        return False

    @property
    def uses_host_link(self) -> bool:
        return self.host_weight_bytes() > 0

    def describe(self) -> str:
        return self.name
