"""Llumnix (OSDI'24): live migration of running requests from overloaded instances to the least-loaded one.

Every ``interval_s`` the handler looks for overloaded instances (KV demand >= ``high`` x capacity with
requests queued) and, while the least-loaded other instance stays under ``low`` x its capacity after the
move, migrates their running decode requests there -- the most recently arrived first (the ones vLLM
would preempt next), at most ``max_inflight`` at a time per source.

A migration copies the request's KV over the GPU link while it keeps decoding on the source: round 0
copies the blocks it has, each later round the blocks added during the previous one (the target reserves
blocks before each round; the migration is abandoned if it cannot, or if the request finishes or is
preempted meanwhile). When a round leaves at most ``stop_blocks`` new blocks (or after ``max_rounds``),
the request stops at the source's next iteration boundary, the last blocks are copied (stop-and-copy:
the request stalls for this transfer only), the source frees its KV and the request continues decoding
on the target. Copies share the GPU links with all other traffic on the fabric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

import simpy

from sim.engine.handler import OverloadHandler

if TYPE_CHECKING:
    from sim.core.request import Request
    from sim.engine.cluster import Cluster
    from sim.engine.instance import Instance


class Migrate(OverloadHandler):
    name = "migrate"

    def __init__(self, interval_s: float = 0.25, high: float = 0.95, low: float = 0.8, max_inflight: int = 2,
                 stop_blocks: int = 1, max_rounds: int = 8) -> None:
        if interval_s <= 0 or not 0 < low <= high or max_inflight < 1 or stop_blocks < 0 or max_rounds < 1:
            raise ValueError("migrate: need interval_s > 0, 0 < low <= high, max_inflight >= 1, stop_blocks >= 0, "
                             "max_rounds >= 1")
        self.interval_s, self.high, self.low = interval_s, high, low
        self.max_inflight, self.stop_blocks, self.max_rounds = max_inflight, stop_blocks, max_rounds

    def engine_overrides(self) -> dict[str, Any]:
        return {"preemption": "recompute"}

    def attach(self, cluster: "Cluster") -> None:
        super().attach(cluster)
        self.inflight: dict[int, int] = {i.index: 0 for i in cluster.instances}
        self.moving: set[int] = set()
        cluster.env.process(self._loop())

    # --- decisions ----------------------------------------------------------------------------------------
    @staticmethod
    def _load(inst: "Instance", extra: int = 0) -> float:
        return (inst.demand_blocks() + extra) / max(inst.capacity_blocks(), 1)

    def _loop(self) -> Generator[simpy.Event, object, None]:
        env = self.cluster.env
        while True:
            yield env.timeout(self.interval_s)
            self._balance()

    def _balance(self) -> None:
        insts = [i for i in self.cluster.instances if not i.close_requested and not i.ended and i.delegate is None]
        over = [i for i in insts if self._load(i) >= self.high and i.queued_blocks() > 0]
        for src in sorted(over, key=self._load, reverse=True):
            if self.inflight[src.index] >= self.max_inflight:
                continue
            cands = sorted((r for r in src.sched.decoding.values() if r.id not in self.moving),
                           key=lambda r: (r.arrival_s, r.id), reverse=True)
            for req in cands:
                if self.inflight[src.index] >= self.max_inflight:
                    break
                others = [i for i in insts if i is not src]
                if not others:
                    return
                dst = min(others, key=lambda i: (self._load(i), i.index))
                if self._load(dst, req.blocks + 1) > self.low:
                    break
                self.inflight[src.index] += 1
                self.moving.add(req.id)
                self.cluster.env.process(self._migrate(src, dst, req))

    # --- one live migration -------------------------------------------------------------------------------
    def _migrate(self, src: "Instance", dst: "Instance", req: "Request") -> Generator[simpy.Event, object, None]:
        c = self.cluster
        env = c.env
        bb = src.layout.block_bytes  # per GPU: with tensor parallelism each rank moves its slice to its counterpart
        epoch = req.epoch
        copied = reserved = 0
        src.hold()
        dst.hold()

        def alive() -> bool:
            return src.sched.decoding.get(req.id) is req and req.epoch == epoch

        try:
            for _ in range(self.max_rounds):
                if not alive():
                    break
                new = req.blocks - copied
                if copied and new <= self.stop_blocks:
                    break
                if not dst.bm.can_allocate(new):
                    break
                dst.reserve_blocks(new, allocate=True)
                reserved += new
                yield c.peer_transfer(src, dst, new * bb, "migrate")
                copied += new
            stopped = env.event()

            def stop(_m: Any) -> None:
                more = req.blocks - reserved
                if not alive() or not copied or not dst.bm.can_allocate(more):
                    stopped.succeed(False)
                    return
                src.take_running(req)  # stalls from here until the last blocks have moved
                src.reserve_blocks(req.blocks, allocate=False)
                dst.reserve_blocks(more, allocate=True)
                stopped.succeed(True)

            src.at_boundary(stop)
            ok = yield stopped
            if not ok:
                return
            reserved = req.blocks
            yield c.peer_transfer(src, dst, (req.blocks - copied) * bb, "migrate")
            src.unreserve_blocks(req.blocks, free=True)
            dst.unreserve_blocks(req.blocks, free=False)  # they are the request's now
            reserved = 0
            dst.put_running(req, "decode")
            c.count("migrations")
            c.count("migrated_bytes", req.blocks * bb * len(src.gpus))
            src.wake()
        finally:
            if reserved:  # abandoned: give the target's reservation back
                dst.unreserve_blocks(reserved, free=True)
            self.inflight[src.index] -= 1
            self.moving.discard(req.id)
            src.release()
            dst.release()
