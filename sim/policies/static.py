"""The static offload policies: every layer resident, DeepSpeed-style streaming, vLLM's UVA offload and
Select-N with a fixed interval. Their plan never changes at run time."""

from __future__ import annotations

from sim.core.offload_plan import OffloadPlan, PlanError
from sim.core.units import GiB
from sim.engine.policy import InstanceContext, OffloadPolicy


class NoOffload(OffloadPolicy):
    """All weights on the GPU."""

    name = "none"

    def initial_plan(self) -> OffloadPlan:
        return OffloadPlan.resident(self.ctx.model.num_layers)


class DeepSpeed(OffloadPolicy):
    """ZeRO-Inference style: every layer streamed from host memory each iteration, one layer ahead."""

    name = "deepspeed"

    def initial_plan(self) -> OffloadPlan:
        return OffloadPlan.deepspeed(self.ctx.model.num_layers)


class Uva(OffloadPolicy):
    """vLLM ``--cpu-offload-gb``: ``offload_gib`` of weights (whole layers from the first) read over the host
    link by the kernels themselves; no prefetch, so each such layer takes max(compute, bytes / link)."""

    name = "uva"

    def __init__(self, offload_gib: float) -> None:
        if offload_gib < 0:
            raise ValueError(f"offload_gib must be >= 0, got {offload_gib}")
        self.offload_gib = offload_gib

    def setup(self, ctx: InstanceContext) -> None:
        super().setup(ctx)
        total = ctx.model.num_layers * ctx.model.weight_bytes_per_layer
        if self.offload_gib * GiB > total:  # not capped silently: the user asked for more than there is
            raise PlanError(f"uva: offload_gib {self.offload_gib:g} is more than the {total / GiB:.2f} GiB of "
                            f"layer weights of {ctx.model.name} ({ctx.model.num_layers} layers)")

    def initial_plan(self) -> OffloadPlan:
        return OffloadPlan.uva_bytes(self.ctx.model, self.offload_gib * GiB)

    def describe(self) -> str:
        return f"uva({self.offload_gib:g} GiB)"


class SelectNStatic(OffloadPolicy):
    """Select-N's plan with a fixed interval (no online control)."""

    name = "selectn-static"

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def setup(self, ctx: InstanceContext) -> None:
        super().setup(ctx)
        if not 1 <= self.interval <= ctx.model.num_layers:
            raise PlanError(f"selectn-static: interval must be in [1, {ctx.model.num_layers}] for "
                            f"{ctx.model.name}, got {self.interval}")

    def initial_plan(self) -> OffloadPlan:
        return OffloadPlan.select_n(self.ctx.model.num_layers, self.interval)

    def describe(self) -> str:
        return f"selectn-static(i={self.interval})"
