"""Offload policies by name. Later modules register more with `register`."""

from __future__ import annotations

from typing import Any, Callable

from sim.engine.policy import InstanceContext, OffloadPolicy
from sim.policies.flexgen import FlexGenSLO
from sim.policies.goodput import Goodput
from sim.policies.prefetch import GroupPrefetch
from sim.policies.selectn.controller import SelectN
from sim.policies.static import DeepSpeed, NoOffload, SelectNStatic, Uva

PolicyFactory = Callable[..., OffloadPolicy]

REGISTRY: dict[str, PolicyFactory] = {
    "none": NoOffload,
    "deepspeed": DeepSpeed,
    "uva": Uva,
    "selectn-static": SelectNStatic,
    "selectn": SelectN,
    "flexgen": FlexGenSLO,
    "prefetch": GroupPrefetch,
    "goodput": Goodput,
}


def register(name: str, factory: PolicyFactory) -> None:
    REGISTRY[name] = factory


def make_policy(kind: str, **params: Any) -> OffloadPolicy:
    """Build a policy by registry name with its parameters; errors name what is allowed."""
    if kind not in REGISTRY:
        raise KeyError(f"unknown policy {kind!r}: allowed are {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[kind](**params)
    except TypeError as e:
        raise ValueError(f"policy {kind!r}: bad parameters {params} ({e})") from None


__all__ = ["REGISTRY", "register", "make_policy", "OffloadPolicy", "InstanceContext", "NoOffload", "DeepSpeed",
           "Uva", "SelectNStatic", "SelectN", "FlexGenSLO", "GroupPrefetch", "Goodput"]
