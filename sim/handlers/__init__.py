"""Memory-overload handlers by name: what a deployment does when KV demand exceeds GPU memory.

``recompute`` and ``swap`` are vLLM's preemption modes (engine settings). Handlers that act across
instances attach a controller process to the deployment (a `sim.engine.cluster.Cluster`): ``migrate`` (Llumnix's
live migration), ``kunserve`` (parameter dropping); ``infercept`` chooses per preempted request.
"""

from __future__ import annotations

from typing import Any, Callable

from sim.engine.handler import OverloadHandler
from sim.handlers.infercept import Infercept
from sim.handlers.kunserve import KunServe
from sim.handlers.migrate import Migrate
from sim.handlers.preemption import Recompute, Swap

HandlerFactory = Callable[..., OverloadHandler]

REGISTRY: dict[str, HandlerFactory] = {"recompute": Recompute, "swap": Swap, "migrate": Migrate,
                                       "infercept": Infercept, "kunserve": KunServe}


def register(name: str, factory: HandlerFactory) -> None:
    REGISTRY[name] = factory


def make_handler(kind: str, **params: Any) -> OverloadHandler:
    if kind not in REGISTRY:
        raise KeyError(f"unknown overload handler {kind!r}: allowed are {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[kind](**params)
    except TypeError as e:
        raise ValueError(f"handler {kind!r}: bad parameters {params} ({e})") from None


__all__ = ["REGISTRY", "register", "make_handler", "OverloadHandler", "Recompute", "Swap", "Migrate",
           "Infercept", "KunServe"]
