"""The overload-handler interface and vLLM's two preemption modes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.engine.deployment import Deployment


class OverloadHandler:
    """What a deployment does under KV-memory overload.

    `engine_overrides` adjusts each instance's engine settings (e.g. the preemption mode); `attach` is
    called once the deployment is built and may start SimPy processes that watch and change it.
    """

    name = "handler"

    def engine_overrides(self) -> dict[str, Any]:
        return {}

    def attach(self, deployment: "Deployment") -> None:
        self.deployment = deployment

    def describe(self) -> str:
        return self.name
