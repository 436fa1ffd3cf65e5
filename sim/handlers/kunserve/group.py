"""A KunServe group: g member instances that dropped their replicated layers and serve as one pipelined
unit (a tensor-parallel member is one stage over its ranks).

How it sits in the engine (the least disruptive choice): the group's lowest instance (the *leader*) keeps its
`Instance` run loop and its scheduler, which becomes the group's one scheduler (the members' queues are
merged into it; its token budget and sequence limit scale by g); its block pool becomes the group's pool.
the leader's instance hands its iterations to `PipelineGroup.execute` (its `IterationDelegate`), which times them as
micro-batches through g stages (`pipeline.plan_step`). The other members idle (the router sends their
requests to the group) and the group reports their memory and samples.

Memory is accounted per GPU. Member r holds its layer slice (n_r layers), the embedding/LM head, the
workspace, and KV: the share f_r = n_r/L of every *spread* request (one whose KV is partitioned by layer),
all of a *local* request's KV (not yet exchanged after the drop, or gathered back to its home before a
restore), and what moves in flight reserve on it (``extra``). The pool counts blocks of all layers; its
size is the largest ``used`` that keeps every GPU within its KV pool:
``min_r  sum(local) + (pool_r/block - local_r - extra_r) / f_r``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Generator

import simpy

from sim.core.request import Request, State
from sim.engine.instance import Instance
from sim.engine.iteration import IterationTiming
from sim.engine.queues import DemandQueue
from sim.engine.sample import Sample
from sim.handlers.kunserve.pipeline import StepWork, plan_step, stage_slices
from sim.handlers.kunserve.placement import Placement, shares
from sim.handlers.kunserve.trigger import DemandWindow, votes_to_drop

if TYPE_CHECKING:
    from sim.engine.cluster import Cluster
    from sim.engine.scheduler import ScheduledBatch

class PipelineGroup:
    """``members`` in stage order (member r keeps slice r of `stage_slices`); default: by index. Members that
    serve in another group now (a group that grows or merges: `sources`) keep only that group's slice, so
    the order must give each a slice it holds (`drop_plan.assign_slices`)."""

    def __init__(self, cluster: "Cluster", members: list["Instance"], params: Any,
                 ordered: bool = False) -> None:
        self.cluster, self.env, self.params = cluster, cluster.env, params
        self.members = list(members) if ordered else sorted(members, key=lambda m: m.index)
        self.leader = min(self.members, key=lambda m: m.index)
        self.indices = [m.index for m in self.members]  # the member instances
        self.gpus = [g for m in self.members for g in m.gpus]  # all their GPUs
        # members serving in another (pipelined) group now: this group grows out of it
        self.sources: dict[int, PipelineGroup] = {m.index: u for m in self.members
                                                  if isinstance(u := cluster.unit_of[m.index], PipelineGroup)}
        self.id = len(cluster.groups)
        cluster.groups.append(self)
        ctx = self.leader.ctx
        self.model, self.hw, self.cost = ctx.model, ctx.hw, ctx.cost
        g, L = len(self.members), ctx.model.num_layers
        self.g, self.L = g, L
        self.lb = ctx.model.weight_bytes_per_layer
        self.bb = self.leader.layout.block_bytes
        self.slices = stage_slices(L, g)
        self.n = [b - a for a, b in self.slices]
        self.f = [n / L for n in self.n]
        self.solo_pool = [m.layout.kv_pool_bytes for m in self.members]
        self.pool = list(self.solo_pool)
        self.weights = [m.layout.weights_bytes for m in self.members]
        self.held: list[set[int]] = [set(range(L)) for _ in self.members]
        for r, m in enumerate(self.members):
            src = self.sources.get(m.index)
            if src is not None:
                self.held[r] = set(src.held[src.members.index(m)])
            if not set(range(*self.slices[r])) <= self.held[r]:
                raise ValueError(f"gpu{m.gpu} does not hold layers {self.slices[r]} it would keep")
        self.local = [0.0] * g  # blocks (of all layers) of the not-spread requests' KV on member r
        self.local_total = 0  # blocks of the requests whose KV is not spread as this group keeps it
        self.extra = [0.0] * g  # blocks reserved on member r by moves in flight
        self.reserve = 0  # blocks kept from admission for the next move
        self.state = "forming"  # -> pipelined -> (reclaiming -> restoring -> converting) -> split | ended
        #                                      -> merged (into a larger group)
        # requests out of the scheduler while their KV moves: not yet exchanged after the drop (placed as
        # they ran before it -- on one member, or spread as the group this one grew from kept it -- until
        # their exchange completes; ``exchanging`` are the ones moving now), being gathered to their home
        # before a restore (``inflight``: still spread), gathered (local to home)
        self.unexchanged: dict[int, tuple[Request, str, Placement]] = {}  # id -> (request, kind, placement)
        self.exchanging: set[int] = set()
        self.inflight: dict[int, tuple[Request, str, int]] = {}  # id -> (request, kind, home)
        self.converted: dict[int, tuple[Request, str, int]] = {}  # id -> (request, kind, home)
        self.pending: list[Request] = []  # arrivals while forming
        self.holding = DemandQueue(self.leader.bm.block_size)  # arrivals held back while converting
        self.window = DemandWindow(params.restore_window_samples, params.restore_below)
        self.parked: set[int] = set()  # members that reached a boundary while forming (`forming`)
        self.detail_left = params.detail_steps
        self.formed_s = self.split_s = math.nan

    # --- the serving-unit protocol ----------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self.leader.index

    def enqueue(self, req: Request) -> None:
        if self.state == "forming" or self.state == "converting":
            req.instance = self.leader.index
            req.state = State.WAITING
            (self.pending.append if self.state == "forming" else self.holding.append)(req)
        else:
            self.leader.enqueue(req)

    def demand_blocks(self) -> int:
        if self.state == "forming":
            return sum(m.demand_blocks() for m in self.members) + sum(self.holding.need(r) for r in self.pending)
        return self.leader.demand_blocks() + self.holding.blocks

    def queued_blocks(self) -> int:
        return self.leader.queued_blocks() + self.holding.blocks

    def capacity_blocks(self) -> int:
        if self.state == "forming":
            return sum(m.bm.num_blocks for m in self.members)
        return self.leader.bm.num_blocks

    def solo_capacity_blocks(self) -> int:
        return sum(m.layout.kv_blocks for m in self.members)

    def overloaded(self) -> bool:
        return votes_to_drop(self.demand_blocks(), self.capacity_blocks(), self.queued_blocks(),
                             self.leader.head_blocks(), self.params.drop_threshold)

    # --- per-GPU memory ---------------------------------------------------------------------------------
    def kv_blocks_on(self, r: int) -> float:
        """KV on member r, in blocks of all layers."""
        spread = self.leader.bm.used - self.local_total
        return self.f[r] * spread + self.local[r] + self.extra[r]

    def capacity(self, pool: list[float] | None = None) -> int:
        pool = pool or self.pool
        loc = self.local_total
        return min(math.floor(loc + (pool[r] / self.bb - self.local[r] - self.extra[r]) / self.f[r] + 1e-9)
                   for r in range(self.g))

    def place(self, blocks: int, p: Placement, sign: int = 1) -> None:
        """Count (sign 1) or stop counting (-1) a not-spread request's KV, placed as ``p``."""
        for r, x in enumerate(shares(p, self.g, self.L)):
            self.local[r] += sign * x * blocks
            if abs(self.local[r]) < 1e-6:
                self.local[r] = 0.0
        self.local_total += sign * blocks

    def update_capacity(self) -> None:
        bm = self.leader.bm
        cap = self.capacity()
        assert cap >= bm.used, f"group {self.id}: KV in use ({bm.used}) above what the GPUs hold ({cap})"
        bm.resize(max(bm.used, cap - self.reserve))

    def fits_move(self, extra: list[float]) -> bool:
        """Whether reserving ``extra`` blocks on the members keeps every GPU within its pool."""
        saved = self.extra
        self.extra = [a + b for a, b in zip(saved, extra)]
        ok = self.capacity() >= self.leader.bm.used
        self.extra = saved
        return ok

    def gpu_bytes(self, m: "Instance") -> float:
        r = self.members.index(m)
        lay = m.layout
        return self.weights[r] + lay.staging_bytes + lay.workspace_bytes + self.kv_blocks_on(r) * self.bb

    # --- execution --------------------------------------------------------------------------------------
    def execute(self, inst: "Instance", batch: "ScheduledBatch") -> Generator[simpy.Event, object, IterationTiming]:
        env = self.env
        now = env.now
        shape = batch.shape
        if shape.is_empty:
            return IterationTiming(now, now, now)
        work = StepWork(tuple((c, req.computed) for req, c in batch.prefill), shape.decode_tokens,
                        shape.decode_ctx_sum)
        p = self.params
        plan = plan_step(work, self.cost, self.n, self.model.hidden_size * self.model.dtype_bytes,
                         self.hw.gpu_link_bytes_per_s, self.hw.gpu_link_latency_s, p.micro_batching,
                         p.max_micro_batches, p.overlap_steps)
        tm = plan.timing
        c = self.cluster
        c.count("kunserve_steps")
        c.count("kunserve_step_s", tm.step_s)
        c.count("kunserve_busy_gpu_s", sum(tm.busy_s))
        c.count("kunserve_bubble_gpu_s", tm.bubble_s)
        c.count("kunserve_micro_batches", len(plan.micro_batches))
        tl = c.timeline
        if tl is not None:
            for r, m in enumerate(self.members):
                if self.detail_left > 0:
                    for j in range(len(plan.micro_batches)):
                        tl.add(f"gpu{m.gpu}/compute", "stage", now + tm.start[r][j], now + tm.end[r][j], -1, 0.0,
                               f"stage {r} mb {j}")
                elif m is not inst:
                    tl.add(f"gpu{m.gpu}/compute", "iteration", now, now + tm.step_s, -1, 0.0, f"pipelined g{self.id}")
            self.detail_left -= 1
        yield env.timeout(tm.step_s)
        for m in self.members:
            m.note_gpu_bytes(self.gpu_bytes(m))
        return IterationTiming(now, now + tm.step_s, now + tm.step_s)

    def boundary(self) -> simpy.Event:
        """Fires at the leader's next iteration boundary (at once if none is in flight)."""
        ev = self.env.event()
        self.leader.at_boundary(lambda _m: ev.succeed())
        return ev

    def after_step(self) -> None:
        """Called at each of the leader's boundaries: release the members at the end of the run."""
        if self.state == "pipelined" and all(m.close_requested for m in self.members) \
                and not self.leader.sched.has_work() and not self.unexchanged and not self.inflight \
                and not self.leader.in_flight:
            self.state = "ended"  # nothing more will arrive: no need to copy weights back
            for m in self.members:
                m.release()

    # --- splitting --------------------------------------------------------------------------------------
    def split(self) -> None:
        lead, s = self.leader, self.leader.sched
        assert not s.decoding and not s.prefilling and not self.unexchanged and not self.inflight
        assert not lead.in_flight
        waiting = [*self.holding, *s.take_waiting()]
        self.holding.clear()
        lead.bm.release(lead.bm.used)
        s.restore_limits()
        for m in self.members:
            m.serve_in(None)
            m.bm.resize(m.layout.kv_blocks)
        for req, kind, home in self.converted.values():
            m = self.members[home]
            m.bm.allocate(req.blocks)
            m.put_running(req, kind)
        self.converted.clear()
        self.local = [0.0] * self.g
        self.local_total = 0
        self.cluster.set_unit(self.indices, None)
        for req in sorted(waiting, key=lambda q: (q.arrival_s, q.id)):
            self.cluster.route(req).enqueue(req)
        self.state = "split"
        self.split_s = self.env.now
        self.cluster.mark(self.indices, f"restore g={self.g} gpus {','.join(map(str, self.gpus))}")
        self.cluster.count("restores")
        for m in self.members:
            m.release()
            m.wake()

    # --- observation ------------------------------------------------------------------------------------
    def sample_row(self, m: "Instance", shape: Any, iteration_s: float) -> Sample:
        r = self.members.index(m)
        lead = self.leader
        used, total = lead.bm.used, lead.bm.num_blocks
        is_lead = m is lead
        return m.own_sample(shape, iteration_s)._replace(
            waiting=(len(lead.sched.waiting) + len(self.holding)) if is_lead else 0,
            running=(lead.sched.num_running + len(self.unexchanged) + len(self.inflight)
                     + len(self.converted)) if is_lead else 0,
            kv_used_blocks=round(self.f[r] * used), kv_total_blocks=round(self.f[r] * total),
            weights_bytes=self.weights[r], kv_pool_bytes=self.pool[r], kv_used_bytes=self.kv_blocks_on(r) * self.bb,
            group=self.id, stages=self.g, kv_capacity_tokens=self.f[r] * total * lead.bm.block_size)

    def sample_followers(self, lead: "Instance", shape: Any, iteration_s: float) -> None:
        for m in self.members:
            if m is not lead:
                m.add_sample(self.sample_row(m, shape, iteration_s))

    def layers_covered(self) -> bool:
        return set().union(*self.held) == set(range(self.L))

    def check_invariants(self) -> None:
        lead, s = self.leader, self.leader.sched
        bm = lead.bm
        assert bm.used <= bm.num_blocks, "group KV blocks over capacity"
        assert self.layers_covered(), f"group {self.id}: a layer is held by no member"
        for r, m in enumerate(self.members):
            kv = self.kv_blocks_on(r) * self.bb
            assert kv <= self.pool[r] + 1e-3, f"gpu{m.gpu}: KV {kv:.0f} B over its pool {self.pool[r]:.0f} B"
            assert self.gpu_bytes(m) <= m.layout.usable_bytes + 1e-3, f"gpu{m.gpu}: memory over capacity"
        held = sum(r.blocks for r in s.decoding.values()) + sum(r.blocks for r in s.prefilling)
        held += sum(r.blocks for r in s.waiting)
        moved = [*self.unexchanged.values(), *self.inflight.values(), *self.converted.values()]
        held += sum(req.blocks for req, _k, _o in moved)
        assert held == bm.used, f"group {self.id}: blocks held ({held}) != in use ({bm.used})"
        loc = [0.0] * self.g
        total = 0
        for req, _k, p in self.unexchanged.values():
            for r, x in enumerate(shares(p, self.g, self.L)):
                loc[r] += x * req.blocks
            total += req.blocks
        for req, _k, h in self.converted.values():
            loc[h] += req.blocks
            total += req.blocks
        assert total == self.local_total, f"group {self.id}: local blocks {total} != {self.local_total}"
        assert all(abs(a - b) < 1e-6 for a, b in zip(loc, self.local)), f"group {self.id}: {loc} != {self.local}"
        assert self.exchanging <= set(self.unexchanged)
