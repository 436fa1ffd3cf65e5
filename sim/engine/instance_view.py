"""`InstanceView`: the `sim.engine.view.EngineView` an instance gives its policy and its bus peers, a thin
read-only adapter over the instance's state plus its three requests (wake, wake at, switch plan).

It reads the instance through `ViewedInstance`, the part of `sim.engine.instance.Instance` it needs, so
this module does not import the instance (and a test may view a stub).
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import simpy

from sim.core.model import ModelSpec
from sim.core.offload_plan import OffloadPlan
from sim.core.request import Request
from sim.engine.kv import BlockManager
from sim.engine.memory import EngineConfig
from sim.engine.policy import InstanceContext
from sim.engine.scheduler import ScheduledBatch, Scheduler


class ViewedInstance(Protocol):
    """What `InstanceView` reads of an instance, and the requests it forwards."""

    gpu: int
    index: int
    ctx: InstanceContext
    env: simpy.Environment
    plan: OffloadPlan
    sched: Scheduler
    bm: BlockManager
    current_batch: ScheduledBatch | None

    def wake(self) -> None: ...

    def wake_at(self, t: float) -> None: ...

    def request_plan(self, plan: OffloadPlan) -> bool: ...


class InstanceView:
    """The `sim.engine.view.EngineView` of an instance: what its policy and its bus peers may see."""

    __slots__ = ("_inst",)

    def __init__(self, inst: ViewedInstance) -> None:
        self._inst = inst

    @property
    def gpu(self) -> int:
        return self._inst.gpu

    @property
    def index(self) -> int:
        return self._inst.index

    @property
    def model(self) -> ModelSpec:
        return self._inst.ctx.model

    @property
    def config(self) -> EngineConfig:
        return self._inst.ctx.engine

    @property
    def plan(self) -> OffloadPlan:
        return self._inst.plan

    @property
    def step(self) -> int:
        return self._inst.sched.k

    @property
    def now(self) -> float:
        return self._inst.env.now

    @property
    def current_batch(self) -> ScheduledBatch | None:
        return self._inst.current_batch

    @property
    def waiting(self) -> Sequence[Request]:
        return self._inst.sched.waiting

    @property
    def prefilling(self) -> Sequence[Request]:
        return self._inst.sched.prefilling

    @property
    def decoding(self) -> Mapping[int, Request]:
        return self._inst.sched.decoding

    @property
    def kv_used_blocks(self) -> int:
        return self._inst.bm.used

    @property
    def kv_total_blocks(self) -> int:
        return self._inst.bm.num_blocks

    def in_flight(self) -> bool:
        return self._inst.sched.in_flight()

    def decode_ctx_sum(self) -> int:
        return self._inst.sched.decode_ctx_sum()

    def generated_now(self, req: Request) -> int:
        return self._inst.sched.generated_now(req)

    def decodes_needing_block(self, step: int) -> int:
        return self._inst.sched.decodes_needing_block(step)

    def wake(self) -> None:
        self._inst.wake()

    def wake_at(self, time_s: float) -> None:
        self._inst.wake_at(time_s)

    def request_plan(self, plan: OffloadPlan) -> bool:
        return self._inst.request_plan(plan)
