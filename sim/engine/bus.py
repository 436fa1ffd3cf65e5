"""The GPUs behind one upstream PCIe bus, as their policies see each other.

A `Bus` is owned by the cluster: one per upstream bus, with a `BusMember` per GPU under it. A member is the
GPU's `EngineView` plus its `LinkStatus`, which the GPU's own policy writes and its peers read (whether the
iteration in flight copies over the host link, whether it was planned with the bus to itself, when it is
predicted to end). Policies that coordinate across a bus keep one shared object per bus with `service`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from sim.engine.view import EngineView

T = TypeVar("T")


@dataclass
class LinkStatus:
    """What a GPU's policy tells its bus peers about its use of the host link (written only by that policy)."""

    uses_link_now: bool = False  # the iteration in flight moves data over the host link
    wants_link: bool = False  # held off the link by a peer's solo iteration although it would copy
    solo: bool = False  # the iteration in flight was planned with the bus to itself
    busy_until: float = 0.0  # predicted end of the iteration in flight


@dataclass
class BusMember:
    gpu: int
    view: EngineView
    link: LinkStatus


class Bus:
    """One upstream bus: its bandwidth, its GPUs (in order) and the members that have joined."""

    def __init__(self, index: int, bytes_per_s: float, gpus: tuple[int, ...]) -> None:
        self.index, self.bytes_per_s, self.gpus = index, bytes_per_s, gpus
        self.members: dict[int, BusMember] = {}
        self._links = {g: LinkStatus() for g in gpus}
        self._services: dict[type, Any] = {}

    def join(self, gpu: int, view: EngineView) -> BusMember:
        """An instance joins with its view (its link status exists from the start)."""
        if gpu not in self.gpus:
            raise ValueError(f"gpu{gpu} is not on bus {self.index} (gpus {self.gpus})")
        m = self.members[gpu] = BusMember(gpu, view, self._links[gpu])
        return m

    def link(self, gpu: int) -> LinkStatus:
        """The link status ``gpu``'s policy writes."""
        return self._links[gpu]

    def member(self, gpu: int) -> BusMember:
        return self.members[gpu]

    def peers(self, gpu: int) -> list[BusMember]:
        """The other members, in GPU order."""
        return [self.members[g] for g in self.gpus if g != gpu and g in self.members]

    @property
    def shared(self) -> bool:
        return len(self.gpus) > 1

    def service(self, cls: type[T], make: Callable[[], T]) -> T:
        """The bus's one object of type ``cls`` (e.g. a coordinator), made by ``make`` on first use."""
        obj = self._services.get(cls)
        if obj is None:
            obj = self._services[cls] = make()
        return obj
