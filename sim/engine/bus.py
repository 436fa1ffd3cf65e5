"""The instances behind one upstream PCIe bus (a switch's uplink), as their policies see each other.

A `Bus` is owned by the cluster: one per upstream bus, with a `BusMember` per instance whose GPUs hang under
it. With tensor parallelism an instance puts ``ranks`` GPUs under the switch (all its ranks when the switch
holds the whole instance); instances are aligned to switches, so an instance is under one bus, or owns all
the switches it spans. A member is the instance's `EngineView` plus its `LinkStatus`, which the instance's
own policy writes and its peers read (whether the iteration in flight copies over the host link, whether it
was planned with the bus to itself, when it is predicted to end). Policies that coordinate across a bus
keep one shared object per bus with `service`.
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
    index: int  # the instance
    view: EngineView
    link: LinkStatus


class Bus:
    """One upstream bus: its bandwidth, the instances under it (in order), the GPUs each puts under it
    (``ranks``), and the members that have joined."""

    def __init__(self, index: int, bytes_per_s: float, instances: tuple[int, ...], ranks: int = 1) -> None:
        self.index, self.bytes_per_s, self.instances, self.ranks = index, bytes_per_s, instances, ranks
        self.members: dict[int, BusMember] = {}
        self._links = {i: LinkStatus() for i in instances}
        self._services: dict[type, Any] = {}

    def join(self, index: int, view: EngineView) -> BusMember:
        """An instance joins with its view (its link status exists from the start)."""
        if index not in self.instances:
            raise ValueError(f"instance {index} is not on bus {self.index} (instances {self.instances})")
        m = self.members[index] = BusMember(index, view, self._links[index])
        return m

    def link(self, index: int) -> LinkStatus:
        """The link status instance ``index``'s policy writes."""
        return self._links[index]

    def member(self, index: int) -> BusMember:
        return self.members[index]

    def peers(self, index: int) -> list[BusMember]:
        """The other members, in instance order."""
        return [self.members[i] for i in self.instances if i != index and i in self.members]

    @property
    def shared(self) -> bool:
        """More than one instance copies over this bus."""
        return len(self.instances) > 1

    def service(self, cls: type[T], make: Callable[[], T]) -> T:
        """The bus's one object of type ``cls`` (e.g. a coordinator), made by ``make`` on first use."""
        obj = self._services.get(cls)
        if obj is None:
            obj = self._services[cls] = make()
        return obj
