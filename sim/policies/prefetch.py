"""vLLM/SGLang-style group offloader: a static plan with group size N, k offloaded layers per group and
prefetch step s (`OffloadPlan.prefetch_groups`)."""

from __future__ import annotations

from sim.core.offload_plan import OffloadPlan, PlanError
from sim.engine.policy import InstanceContext, OffloadPolicy


class GroupPrefetch(OffloadPolicy):
    """In each group of ``group_size`` layers the last ``offload_per_group`` live in host memory; each is
    prefetched ``prefetch_step`` layers ahead (with that many staging buffers). Nothing changes at run time."""

    name = "prefetch"

    def __init__(self, group_size: int, offload_per_group: int = 1, prefetch_step: int = 1) -> None:
        self.group_size, self.offload_per_group, self.prefetch_step = group_size, offload_per_group, prefetch_step

    def setup(self, ctx: InstanceContext) -> None:
        super().setup(ctx)
        try:
            self._plan = OffloadPlan.prefetch_groups(ctx.model.num_layers, self.group_size, self.offload_per_group,
                                                     self.prefetch_step)
        except PlanError as e:
            raise PlanError(f"prefetch: {e}") from None

    def initial_plan(self) -> OffloadPlan:
        return self._plan

    def describe(self) -> str:
        return f"prefetch(N={self.group_size}, k={self.offload_per_group}, s={self.prefetch_step})"
