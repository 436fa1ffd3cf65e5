"""The engine hooks an instance offers overload handlers (`sim.engine.handler`), as a mixin of `Instance`:
its KV demand and capacity as the router sees them, a callback at the next iteration boundary, taking a
running request out and putting one in with its KV blocks, discarding a request's KV, and holding the
engine open while a peer may still hand it requests."""

from __future__ import annotations

from typing import Callable, Self

import simpy

from sim.core.request import Request, State
from sim.engine.kv import BlockManager
from sim.engine.scheduler import Scheduler


class HandlerHooks:
    """Mixed into `Instance` (which sets these attributes)."""

    gpu: int
    index: int
    gpus: tuple[int, ...]
    bm: BlockManager
    sched: Scheduler
    reserved_blocks: int
    in_flight: bool
    ended: bool
    closed: bool
    close_requested: bool
    holds: int
    _wake: simpy.Event | None
    _boundary: list[Callable[[Self], None]]

    def wake(self) -> None: ...

    def _close(self) -> None: ...

    # --- the router's view of a GPU serving alone -----------------------------------------------------
    def demand_blocks(self) -> int:
        """KV blocks in use plus those the queued requests need (KunServe's memory demand), O(1)."""
        return self.bm.used + self.sched.queued_blocks()

    def queued_blocks(self) -> int:
        return self.sched.queued_blocks()

    def capacity_blocks(self) -> int:
        return self.bm.num_blocks

    def head_blocks(self) -> int:
        """Blocks the first queued request needs to be admitted, the admission watermark included."""
        s = self.sched
        q = s.swapped if s.swapped else s.waiting
        if not q:
            return 0
        return q.need(q[0]) + (0 if s.swapped else int(s.cfg.watermark * self.bm.num_blocks))

    # --- engine hooks for overload handlers -------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Waiting for work (no iteration in flight)."""
        return self._wake is not None

    def at_boundary(self, fn: Callable[[Self], None]) -> None:
        """Call ``fn(self)`` when no iteration is in flight: now if idle, else at the current one's end."""
        if not self.in_flight:
            fn(self)
        else:
            self._boundary.append(fn)

    def take_running(self, req: Request) -> str:
        """Take a running request out of this engine between iterations; it keeps its KV blocks (still
        counted here until the caller releases them). Returns ``"decode"`` or ``"prefill"``."""
        assert not self.in_flight, "requests move between iterations"
        return self.sched.detach_running(req)

    def put_running(self, req: Request, kind: str) -> None:
        """Resume a request here with its KV blocks (already counted in this engine's pool); it runs from
        the next iteration this engine schedules."""
        assert not self.ended, f"gpu{self.gpu} has stopped"
        req.instance = self.index
        s = self.sched
        s.attach_running(req, kind, s.k + 1 if self.in_flight else s.k)
        self.wake()

    def discard_kv(self, req: Request) -> None:
        """Drop the KV of a request taken out of this engine (`take_running`): it will be prefilled again
        (a preemption by recompute). The caller queues it."""
        self.bm.release(req.blocks)
        req.blocks = req.computed = 0
        req.preemptions += 1
        self.sched.preemptions += 1
        req.state = State.WAITING

    def reserve_blocks(self, n: int, *, allocate: bool) -> None:
        """Hold ``n`` KV blocks for a request moving between engines (owned by no queue here, but counted in
        the invariants): ``allocate`` takes them from the free pool (the target of a copy); otherwise they
        are a request's own, taken out with `take_running` (the source, until the copy ends)."""
        if allocate:
            self.bm.allocate(n)
        self.reserved_blocks += n

    def unreserve_blocks(self, n: int, *, free: bool) -> None:
        """Stop holding ``n`` blocks: ``free`` returns them to the pool (the move ended at the source, or
        was abandoned at the target); otherwise they pass to the request that now runs here
        (`put_running`)."""
        assert 0 <= n <= self.reserved_blocks, f"gpu{self.gpu}: unreserving {n} of {self.reserved_blocks} blocks"
        self.reserved_blocks -= n
        if free:
            self.bm.release(n)

    def hold(self) -> None:
        """Keep this engine open (a peer may still hand it requests) even after its arrivals end."""
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0 and self.close_requested and not self.closed:
            self._close()
