"""The overload-handler contract: what a cluster does when KV demand exceeds GPU memory.

A handler may change each instance's engine settings (`engine_overrides`, e.g. the preemption mode), give
the instances a scheduler subclass (`scheduler_class`, e.g. one that chooses per preempted request), and,
once the cluster is built, `attach` SimPy processes that watch it and act through the cluster's and the
instances' public methods (`sim.engine.cluster.Cluster`, `sim.engine.instance.Instance`: moving requests
between engines at iteration boundaries, holding engines open, pooling GPUs into serving units).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim.engine.scheduler import Scheduler

if TYPE_CHECKING:
    from sim.engine.cluster import Cluster


class OverloadHandler:
    """What a cluster does under KV-memory overload (the base class does nothing)."""

    name = "handler"
    scheduler_class: type[Scheduler] = Scheduler

    def engine_overrides(self) -> dict[str, Any]:
        return {}

    def attach(self, cluster: "Cluster") -> None:
        self.cluster = cluster

    def describe(self) -> str:
        return self.name
