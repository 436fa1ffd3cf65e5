"""A cluster: N data-parallel serving units behind a router (DESIGN.md, "KunServe in memslo").

`Cluster` is a `Deployment` whose instances are `ClusterInstance`s (each one GPU holding a full weight
replica). It adds what cluster-level overload handlers (`sim.handlers`) need:

- KV demand per instance in O(1): the waiting and swapped queues are `DemandQueue`s that keep the blocks
  their requests need as a counter, so demand = blocks in use + queued blocks without scanning queues
  (the least-loaded router asks for it on every arrival);
- serving units: a GPU serves alone or as a member of a pipelined group (`sim.handlers.kunserve`); the
  router sends a request to the unit of the GPU it picks (round-robin), or to the unit with the least
  demand relative to its capacity (least-loaded, ties to the lowest GPU);
- engine hooks: a callback at the engine's next iteration boundary, taking a running request out of a
  scheduler and putting one in with its KV blocks (keeping the implicit decode bookkeeping right), blocks
  held for requests in flight, and a deferred close (an engine that a peer may still hand requests to
  stays open until released).

The GPU<->GPU links (``peer_route``) and each GPU's host link (``h2d_route``) are the deployment's `Fabric`,
sized from the hardware spec (``gpu_link_bytes_per_s``, ``h2d_bytes_per_s``, shared buses).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Generator, Iterable

import simpy

from sim.core.request import Request, State
from sim.engine.deployment import Deployment
from sim.engine.instance import Instance
from sim.engine.iteration import IterationTiming
from sim.engine.scheduler import ScheduledBatch


class DemandQueue(deque):
    """A request queue that keeps, as ``blocks``, the KV blocks its requests need to run again
    (``ceil((tokens + 1) / block_size)`` each: their KV plus the next token), updated on every change."""

    def __init__(self, block_size: int, items: Iterable[Request] = ()) -> None:
        super().__init__()
        self.block_size = block_size
        self.blocks = 0
        for r in items:
            self.append(r)

    def need(self, r: Request) -> int:
        return -(-(r.prompt_tokens + r.generated + 1) // self.block_size)

    def append(self, r: Request) -> None:
        super().append(r)
        self.blocks += self.need(r)

    def appendleft(self, r: Request) -> None:
        super().appendleft(r)
        self.blocks += self.need(r)

    def insert(self, i: int, r: Request) -> None:
        super().insert(i, r)
        self.blocks += self.need(r)

    def extend(self, rs: Iterable[Request]) -> None:
        for r in rs:
            self.append(r)

    def extendleft(self, rs: Iterable[Request]) -> None:
        for r in rs:
            self.appendleft(r)

    def pop(self) -> Request:
        r = super().pop()
        self.blocks -= self.need(r)
        return r

    def popleft(self) -> Request:
        r = super().popleft()
        self.blocks -= self.need(r)
        return r

    def remove(self, r: Request) -> None:
        super().remove(r)
        self.blocks -= self.need(r)

    def __delitem__(self, i: int) -> None:  # type: ignore[override]
        r = self[i]
        super().__delitem__(i)
        self.blocks -= self.need(r)

    def clear(self) -> None:
        super().clear()
        self.blocks = 0


class ClusterInstance(Instance):
    """An `Instance` a cluster can coordinate. While ``group`` is set, the GPU serves in a pipelined group
    (the group's lowest GPU runs the group's scheduler; the group times its iterations and reports the
    memory of every member GPU)."""

    group: Any = None  # a handlers.kunserve group while this GPU serves in one (class default: the base
    # constructor already asks for the memory in use)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        bs = self.bm.block_size
        self.sched.waiting = DemandQueue(bs, self.sched.waiting)
        self.sched.swapped = DemandQueue(bs, self.sched.swapped)
        self.cluster: Cluster | None = None
        self.reserved_blocks = 0  # KV blocks held for requests in flight (owned by no queue here)
        self.in_flight = False  # an iteration is scheduled and not yet complete
        self.holds = 0
        self.close_requested = False
        self.ended = False
        self._boundary: list[Callable[[ClusterInstance], None]] = []

    # --- the serving-unit protocol (the router's view) -------------------------------------------------
    def demand_blocks(self) -> int:
        """KV blocks in use plus those the queued requests need (KunServe's memory demand), O(1)."""
        return self.bm.used + self.queued_blocks()

    def queued_blocks(self) -> int:
        return self.sched.waiting.blocks + self.sched.swapped.blocks  # type: ignore[attr-defined]

    def capacity_blocks(self) -> int:
        return self.bm.num_blocks

    def head_blocks(self) -> int:
        """Blocks the first queued request needs to be admitted, the admission watermark included."""
        s = self.sched
        q = s.swapped if s.swapped else s.waiting
        if not q:
            return 0
        return q.need(q[0]) + (0 if s.swapped else int(s.cfg.watermark * self.bm.num_blocks))  # type: ignore[attr-defined]

    # --- boundaries, moves, holds ----------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Waiting for work (no iteration in flight)."""
        return self._wake is not None

    def at_boundary(self, fn: Callable[["ClusterInstance"], None]) -> None:
        """Call ``fn(self)`` when no iteration is in flight: now if idle, else at the current one's end."""
        if not self.in_flight:
            fn(self)
        else:
            self._boundary.append(fn)

    def take_running(self, req: Request) -> str:
        """Take a running request out of this engine between iterations; it keeps its KV blocks (still
        counted here until the caller releases them). Returns ``"decode"`` or ``"prefill"``."""
        assert not self.in_flight, "requests move between iterations"
        s = self.sched
        if s.decoding.get(req.id) is req:
            s._leave_decode(req, s.k)
            return "decode"
        s.prefilling.remove(req)
        return "prefill"

    def put_running(self, req: Request, kind: str) -> None:
        """Resume a request here with its KV blocks (already counted in this engine's pool); it runs from
        the next iteration this engine schedules."""
        assert not self.ended, f"gpu{self.gpu} has stopped"
        s = self.sched
        req.instance = self.gpu
        req.state = State.RUNNING
        if kind == "decode":
            s._enter_decode(req, s.k + 1 if self.in_flight else s.k)
        else:
            s.prefilling.append(req)
        self.wake()

    def hold(self) -> None:
        """Keep this engine open (a peer may still hand it requests) even after its arrivals end."""
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0 and self.close_requested and not self.closed:
            Instance.close(self)

    def close(self) -> None:
        self.close_requested = True
        if self.holds == 0:
            super().close()
        elif self.group is not None:
            self.group.after_step()

    # --- engine overrides -------------------------------------------------------------------------------
    def run(self) -> Generator[simpy.Event, object, None]:
        yield from super().run()
        self.ended = True

    def _execute(self, batch: ScheduledBatch) -> Generator[simpy.Event, object, IterationTiming]:
        self.in_flight = True
        if self.group is not None:
            timing = yield from self.group.execute(self, batch)
        else:
            timing = yield from super()._execute(batch)
        return timing

    def _record(self, batch: ScheduledBatch, tm: IterationTiming) -> None:
        self.in_flight = False
        n = len(self.samples)
        super()._record(batch, tm)
        if self.group is not None and len(self.samples) > n:
            self.group.sample_followers(self, batch.shape, tm.end_s - tm.start_s)
        if self._boundary:
            hooks, self._boundary = self._boundary, []
            for fn in hooks:
                fn(self)
        if self.group is not None:
            self.group.after_step()

    def sample(self, shape: Any = None, iteration_s: float = 0.0) -> tuple:
        if self.group is not None:
            return self.group.sample_row(self, shape, iteration_s)
        return super().sample(shape, iteration_s)

    def gpu_memory_used(self) -> float:
        if self.group is not None:
            return self.group.gpu_bytes(self)
        return super().gpu_memory_used()

    def check_invariants(self) -> None:
        if self.group is not None:
            self.group.check_invariants()
            return
        s = self.sched
        assert self.bm.used <= self.bm.num_blocks, "KV blocks over capacity"
        assert self.gpu_memory_used() <= self.layout.usable_bytes + 1e-3, "GPU memory over capacity"
        held = sum(r.blocks for r in s.decoding.values()) + sum(r.blocks for r in s.prefilling)
        held += sum(r.blocks for r in s.waiting) + self.reserved_blocks + getattr(s, "paused_blocks", 0)
        assert held == self.bm.used, f"gpu{self.gpu}: blocks held ({held}) != blocks in use ({self.bm.used})"
        for q in (s.waiting, s.swapped):
            assert q.blocks == sum(q.need(r) for r in q), "queued-demand counter drifted"  # type: ignore[attr-defined]
        for r in s.decoding.values():
            assert r.state == State.RUNNING


class Cluster(Deployment):
    """N data-parallel `ClusterInstance`s behind a router over serving units (GPUs or groups)."""

    instance_cls = ClusterInstance
    instances: list[ClusterInstance]  # type: ignore[assignment]

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        for inst in self.instances:
            inst.cluster = self
        self.unit_of: list[Any] = list(self.instances)  # GPU -> its serving unit
        self._units: list[Any] = list(self.instances)
        self.groups: list[Any] = []  # pipelined groups, in order of formation (handlers/kunserve)
        self.stats: dict[str, float] = {}

    def units(self) -> list[Any]:
        """Distinct serving units in GPU order."""
        return self._units

    def set_unit(self, gpus: Iterable[int], unit: Any) -> None:
        """Route the requests of ``gpus`` to ``unit`` (a group, or back to each GPU's own instance when
        ``unit`` is None)."""
        for g in gpus:
            self.unit_of[g] = unit if unit is not None else self.instances[g]
        seen: dict[int, Any] = {}
        for u in self.unit_of:
            seen.setdefault(id(u), u)
        self._units = list(seen.values())

    def route(self, req: Request) -> Any:
        n = len(self.instances)
        if self.router == "round-robin" or n == 1:
            inst = self.instances[self._rr % n]
            self._rr += 1
            return self.unit_of[inst.gpu]
        best, key = None, (float("inf"), 0)
        for u in self._units:
            k = (u.demand_blocks() / max(u.capacity_blocks(), 1), u.gpu)
            if k < key:
                best, key = u, k
        return best

    def mark(self, gpus: Iterable[int], name: str) -> None:
        """An instant event on each GPU's compute track of the timeline (drops, restores)."""
        if self.timeline is not None:
            for g in gpus:
                self.timeline.mark(f"gpu{g}/compute", name, self.env.now)

    def count(self, key: str, value: float = 1.0) -> None:
        self.stats[key] = self.stats.get(key, 0.0) + value
