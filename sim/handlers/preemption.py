"""vLLM's two preemption modes as overload handlers: recompute and swap."""

from __future__ import annotations

from typing import Any

from sim.engine.handler import OverloadHandler


class Recompute(OverloadHandler):
    """vLLM default: a preempted request drops its KV and is prefilled again later."""

    name = "recompute"

    def engine_overrides(self) -> dict[str, Any]:
        return {"preemption": "recompute"}


class Swap(OverloadHandler):
    """vLLM swap: a preempted request's KV goes to host memory over the GPU's link and comes back."""

    name = "swap"

    def engine_overrides(self) -> dict[str, Any]:
        return {"preemption": "swap"}
