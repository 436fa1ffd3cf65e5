"""Links between host memory and GPUs, and host memory itself.

`Fabric` is a set of capacity resources (each GPU's host link per direction, each upstream bus per
direction, GPU<->GPU links). A transfer follows a route of resources; all active transfers share bandwidth
max-min fairly (processor sharing by water-filling), and rates and completion times are recomputed
whenever a transfer starts or ends -- but only for the transfers connected to it through shared resources,
so a transfer alone on its link finishes at exactly ``start + latency + bytes / bandwidth`` (the closed-form
executor relies on that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import simpy

from sim.core.hardware import HardwareSpec
from sim.core.units import GiB


class HostMemoryError(RuntimeError):
    """Host memory (or the pinned part of it) is exhausted."""


class _Flow:
    __slots__ = ("route", "remaining", "nbytes", "done", "start_s", "rate", "last_s", "gen", "on_done", "tag")

    def __init__(self, route: tuple[str, ...], nbytes: float, done: simpy.Event, tag: str,
                 on_done: Callable[["_Flow"], None] | None) -> None:
        self.route, self.remaining, self.nbytes, self.done = route, nbytes, nbytes, done
        self.start_s = self.last_s = 0.0
        self.rate = 0.0
        self.gen = 0
        self.on_done, self.tag = on_done, tag


class Fabric:
    """Processor-sharing network of links.

    Resource names: ``gpu{g}/h2d``, ``gpu{g}/d2h`` (each GPU's host link, per direction), ``bus{b}/h2d``,
    ``bus{b}/d2h`` (the upstream bus of a PCIe switch that ``gpus_per_bus`` GPUs share), ``root{r}/h2d``,
    ``root{r}/d2h`` (a host root complex's path to host memory, shared by the switches under it; only where
    it is narrower than their uplinks), ``gpu{g}/peer_tx`` and ``gpu{g}/peer_rx`` (GPU<->GPU link). A host
    copy's route climbs the tree: GPU link, switch uplink, then the root complex where one is modelled. Each flow has its own completion timer, re-armed only when its
    rate changes, so flows in unconnected parts of the fabric never perturb each other's arithmetic.
    """

    def __init__(self, env: simpy.Environment, capacity: dict[str, float], gpus_per_bus: int = 1,
                 gpus_per_root: int = 0) -> None:
        for r, c in capacity.items():
            if c <= 0:
                raise ValueError(f"link {r}: capacity must be > 0, got {c}")
        self.env = env
        self.capacity = dict(capacity)
        self.gpus_per_bus = gpus_per_bus
        self.gpus_per_root = gpus_per_root  # 0: no root complex resources (not narrower than the switches)
        self.bytes_moved = {r: 0.0 for r in capacity}
        self.busy_s = {r: 0.0 for r in capacity}
        # optional observer of finished transfers: (resource, tag, start_s, end_s, bytes)
        self.on_span: Callable[[str, str, float, float, float], None] | None = None
        self._flows: list[_Flow] = []
        self._active_on: dict[str, int] = {r: 0 for r in capacity}
        self._busy_since: dict[str, float] = {}

    @classmethod
    def for_gpus(cls, env: simpy.Environment, hw: HardwareSpec, num_gpus: int) -> "Fabric":
        cap: dict[str, float] = {}
        roots = hw.root_is_narrower
        for g in range(num_gpus):
            b = g // hw.gpus_per_bus
            cap[f"gpu{g}/h2d"] = hw.h2d_bytes_per_s
            cap[f"gpu{g}/d2h"] = hw.d2h_bytes_per_s
            cap[f"bus{b}/h2d"] = hw.bus_bytes_per_s
            cap[f"bus{b}/d2h"] = hw.bus_bytes_per_s
            if roots:
                r = g // hw.root_gpus
                cap[f"root{r}/h2d"] = hw.root_bytes_per_s
                cap[f"root{r}/d2h"] = hw.root_bytes_per_s
            cap[f"gpu{g}/peer_tx"] = hw.gpu_link_bytes_per_s
            cap[f"gpu{g}/peer_rx"] = hw.gpu_link_bytes_per_s
        return cls(env, cap, hw.gpus_per_bus, hw.root_gpus if roots else 0)

    # --- routes ---------------------------------------------------------------------------------------
    def bus_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_bus

    def h2d_route(self, gpu: int) -> tuple[str, ...]:
        if self.gpus_per_root:
            return (f"gpu{gpu}/h2d", f"bus{self.bus_of(gpu)}/h2d", f"root{gpu // self.gpus_per_root}/h2d")
        return (f"gpu{gpu}/h2d", f"bus{self.bus_of(gpu)}/h2d")

    def d2h_route(self, gpu: int) -> tuple[str, ...]:
        if self.gpus_per_root:
            return (f"gpu{gpu}/d2h", f"bus{self.bus_of(gpu)}/d2h", f"root{gpu // self.gpus_per_root}/d2h")
        return (f"gpu{gpu}/d2h", f"bus{self.bus_of(gpu)}/d2h")

    def peer_route(self, src: int, dst: int) -> tuple[str, ...]:
        return (f"gpu{src}/peer_tx", f"gpu{dst}/peer_rx")

    def private_rate(self, route: tuple[str, ...]) -> float:
        """Bandwidth of a transfer alone on its route."""
        return min(self.capacity[r] for r in route)

    def idle(self, route: tuple[str, ...]) -> bool:
        """True when no active transfer uses any resource of the route."""
        return all(self._active_on[r] == 0 for r in route)

    @property
    def active(self) -> int:
        return len(self._flows)

    # --- transfers ------------------------------------------------------------------------------------
    def transfer(self, route: tuple[str, ...], nbytes: float, latency_s: float = 0.0, tag: str = "copy",
                 on_done: Callable[[_Flow], None] | None = None) -> simpy.Event:
        """Start moving ``nbytes`` along ``route`` after ``latency_s``; the returned event fires at the end
        (its value is the end time)."""
        for r in route:
            if r not in self.capacity:
                raise KeyError(f"unknown link resource {r!r}")
        if nbytes < 0:
            raise ValueError(f"transfer of negative size {nbytes}")
        flow = _Flow(route, float(nbytes), self.env.event(), tag, on_done)
        flow.start_s = self.env.now
        if latency_s > 0:
            self.env.timeout(latency_s).callbacks.append(lambda _e: self._join(flow))
        else:
            self._join(flow)
        return flow.done

    def account(self, route: tuple[str, ...], nbytes: float, start_s: float, end_s: float,
                tag: str = "copy") -> None:
        """Record a transfer that a closed-form executor timed on an idle route (no events needed)."""
        for r in route:
            self.bytes_moved[r] += nbytes
            self.busy_s[r] += end_s - start_s
        if self.on_span is not None:
            self.on_span(route[0], tag, start_s, end_s, nbytes)

    def _join(self, flow: _Flow) -> None:
        now = self.env.now
        flow.last_s = now
        if flow.remaining <= 0:
            self._finish(flow)
            return
        self._flows.append(flow)
        for r in flow.route:
            if self._active_on[r] == 0:
                self._busy_since[r] = now
            self._active_on[r] += 1
        self._reshare(self._connected(flow.route))

    def _connected(self, route: tuple[str, ...]) -> list[_Flow]:
        """Active flows connected to ``route`` through shared resources, transitively."""
        res = set(route)
        comp: list[_Flow] = []
        grew = True
        while grew:
            grew = False
            for f in self._flows:
                if f not in comp and not res.isdisjoint(f.route):
                    comp.append(f)
                    res.update(f.route)
                    grew = True
        return comp

    def _reshare(self, comp: list[_Flow]) -> None:
        """Advance the flows of one component to now, water-fill their rates, re-arm their timers."""
        if not comp:
            return
        now = self.env.now
        for f in comp:
            if f.last_s != now:
                f.remaining = max(f.remaining - f.rate * (now - f.last_s), 0.0)
                f.last_s = now
        unfrozen = list(comp)
        cap = {r: self.capacity[r] for f in comp for r in f.route}
        while unfrozen:
            users = {r: sum(1 for f in unfrozen if r in f.route) for r in cap}
            share, bottleneck = min((cap[r] / n, r) for r, n in users.items() if n)
            for f in [f for f in unfrozen if bottleneck in f.route]:
                f.rate = share
                unfrozen.remove(f)
                for r in f.route:
                    cap[r] -= share
        for f in comp:
            f.gen += 1
            self.env.timeout(f.remaining / f.rate).callbacks.append(
                lambda _e, fl=f, g=f.gen: self._on_timer(fl, g))

    def _on_timer(self, flow: _Flow, gen: int) -> None:
        if gen != flow.gen:
            return  # stale: the flow's rate changed after this timer was armed
        self._flows.remove(flow)
        now = self.env.now
        for r in flow.route:
            self._active_on[r] -= 1
            if self._active_on[r] == 0:
                self.busy_s[r] += now - self._busy_since.pop(r)
        flow.remaining = 0.0
        self._finish(flow)
        self._reshare(self._connected(flow.route))

    def _finish(self, flow: _Flow) -> None:
        now = self.env.now
        for r in flow.route:
            self.bytes_moved[r] += flow.nbytes
        if self.on_span is not None:
            self.on_span(flow.route[0], flow.tag, flow.start_s, now, flow.nbytes)
        if flow.on_done is not None:
            flow.on_done(flow)
        flow.done.succeed(now)


@dataclass
class HostMemory:
    """Host DRAM of one node, with pinned (page-locked) allocations accounted separately."""

    capacity_bytes: float
    used_bytes: float = 0.0
    pinned_bytes: float = 0.0
    peak_bytes: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)

    def can_allocate(self, nbytes: float) -> bool:
        return self.used_bytes + nbytes <= self.capacity_bytes

    def allocate(self, kind: str, nbytes: float, pinned: bool = True) -> None:
        if nbytes < 0:
            raise ValueError("cannot allocate a negative size")
        if not self.can_allocate(nbytes):
            raise HostMemoryError(
                f"host memory exhausted: {kind} needs {nbytes / GiB:.2f} GiB, "
                f"{(self.capacity_bytes - self.used_bytes) / GiB:.2f} GiB free of {self.capacity_bytes / GiB:.1f}")
        self.used_bytes += nbytes
        if pinned:
            self.pinned_bytes += nbytes
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + nbytes
        self.peak_bytes = max(self.peak_bytes, self.used_bytes)

    def free(self, kind: str, nbytes: float, pinned: bool = True) -> None:
        have = self.by_kind.get(kind, 0.0)
        if nbytes > have + 1e-6:
            raise ValueError(f"freeing {nbytes} bytes of {kind} but only {have} allocated")
        self.by_kind[kind] = have - nbytes
        self.used_bytes -= nbytes
        if pinned:
            self.pinned_bytes -= nbytes
