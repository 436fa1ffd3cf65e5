"""One serving instance: a GPU running continuous batching under an offload policy (a SimPy process).

Each iteration: the scheduler picks the batch, the policy picks the plan (changing it moves weights and
resizes the KV pool), the executor times the forward pass -- in closed form when the GPU's host link is
private for the iteration, with events on the shared fabric otherwise -- and the scheduler applies the
outcome at the iteration's end.

Policies see an instance through its `InstanceView` (`sim.engine.instance_view`, an
`sim.engine.view.EngineView`). Overload handlers use
its engine hooks (`sim.engine.hooks`) and may give it a delegate (`IterationDelegate`) that times its
iterations while the GPU serves in a multi-GPU unit.
"""

from __future__ import annotations

from typing import Callable, Generator

import simpy

from sim.core.offload_plan import OffloadPlan
from sim.core.request import Request
from sim.core.timeline import Timeline
from sim.engine.hooks import HandlerHooks
from sim.engine.instance_view import InstanceView
from sim.engine.iteration import IterationTiming, compile_copies, run_closed_form, run_events
from sim.engine.kv import BlockManager
from sim.engine.link import Fabric, HostMemory
from sim.engine.memory import MemoryLayout
from sim.engine.observation import InstanceObservation, IterationDelegate
from sim.engine.policy import InstanceContext, OffloadPolicy
from sim.engine.record_error import RecordError
from sim.engine.sample import Sample
from sim.engine.scheduler import ScheduledBatch, Scheduler


class Instance(HandlerHooks, InstanceObservation):
    """A serving engine on the GPUs ``ctx.gpu_ids`` (one, or ``tp`` x ``pp`` under tensor and pipeline
    parallelism: every GPU holds the slice ``ctx.model`` and runs the same plan on it; stages run one after
    another). ``index`` is the instance's id in its cluster; ``gpu`` its first GPU (its timeline tracks).
    Raises `ModelDoesNotFit` if the policy's plan cannot run."""

    def __init__(self, env: simpy.Environment, ctx: InstanceContext, policy: OffloadPolicy, fabric: Fabric,
                 host: HostMemory, timeline: Timeline | None = None, detail_iterations: int = 0,
                 sample_interval_s: float = 0.25, scheduler_class: type[Scheduler] = Scheduler,
                 record_error: RecordError | None = None) -> None:
        self.env, self.ctx, self.policy, self.fabric, self.host = env, ctx, policy, fabric, host
        self.index = ctx.index
        self.gpus = ctx.gpu_ids
        self.gpu = self.gpus[0]
        tp, pp = ctx.tp, ctx.pp
        if len(self.gpus) != tp * pp:
            raise ValueError(f"instance {self.index}: {len(self.gpus)} GPUs for tp={tp} x pp={pp}")
        self.stages = [self.gpus[s * tp:(s + 1) * tp] for s in range(pp)]  # each stage's GPUs (its TP group)
        self.delegate: IterationDelegate | None = None  # set while this instance serves in a multi-instance unit
        self.view = InstanceView(self)
        self.bus_member = ctx.bus.join(self.index, self.view)
        model, hw, cfg = ctx.model, ctx.hw, ctx.engine
        policy.setup(ctx)
        self.plan: OffloadPlan = policy.initial_plan()
        self.layout = MemoryLayout.build(model, hw, cfg, self.plan)
        best = MemoryLayout.build(model, hw, cfg, policy.max_kv_plan(), check=False)
        self.max_blocks = max(self.layout.kv_blocks, best.kv_blocks)
        self.host_weight_bytes = policy.host_weight_bytes()  # one GPU's; every GPU of the instance has its own
        host.allocate("weights", self.host_weight_bytes * len(self.gpus))
        self.bm = BlockManager(self.layout.kv_blocks, cfg.block_size)
        self.sched = scheduler_class(self.bm, cfg, self.layout.block_bytes, host, on_finish=self._on_done,
                                     on_reject=self._on_done, admit_hook=self._admit, gpus=len(self.gpus))
        self.layer_bytes = model.weight_bytes_per_layer
        self.h2d_route = fabric.h2d_route(self.gpu)
        self.d2h_route = fabric.d2h_route(self.gpu)
        self.routes = [r for g in self.gpus for r in (fabric.h2d_route(g), fabric.d2h_route(g))]
        if len(self.gpus) == 1:
            self.h2d_rate = fabric.private_rate(self.h2d_route)
            self.d2h_rate = fabric.private_rate(self.d2h_route)
        else:  # the instance's own GPUs of one stage share their switch (and root complex) when they copy
            self.h2d_rate = ctx.host_link_rates[0]
            self.d2h_rate = self.h2d_rate * hw.d2h_bytes_per_s / hw.h2d_bytes_per_s
        self.private = True  # set by the cluster: no other instance uses this instance's buses
        self.closed = False
        self._wake: simpy.Event | None = None
        self._wake_at: float | None = None
        self.timeline = timeline
        self.detail_left = detail_iterations
        self.sample_interval_s = sample_interval_s
        self._last_sample = -float("inf")
        self.samples: list[Sample] = []
        self.done: list[Request] = []
        self.iterations = 0
        self.busy_s = 0.0
        self.plan_changes = 0
        self.event_iterations = 0
        self.debug_checks = False  # tests: check memory and block invariants every iteration
        self.peak_gpu_bytes = self.gpu_memory_used()
        self.peak_host_bytes = 0.0  # weights in host memory under the plan + swapped KV, at its highest
        self.track = f"gpu{self.gpu}"
        self.current_batch: ScheduledBatch | None = None  # the iteration being planned/run (policies read it)
        # engine hooks for overload handlers
        self.reserved_blocks = 0  # KV blocks held for requests in flight (owned by no queue here)
        self.in_flight = False  # an iteration is scheduled and not yet complete
        self.holds = 0
        self.close_requested = False
        self.ended = False
        self._boundary: list[Callable[[Instance], None]] = []
        # executed kernel times stray from the cost model's by this (None: they match it exactly)
        self.time_error = record_error.stream(self.gpu) if record_error is not None and record_error.active else None

    # --- requests in ----------------------------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        req.instance = self.index
        need = self.bm.blocks_for(req.prompt_tokens + req.output_tokens)
        if need > self.max_blocks:
            req.reject(f"needs {need} KV blocks ({req.prompt_tokens}+{req.output_tokens} tokens); the pool "
                       f"holds at most {self.max_blocks}", self.env.now)
            self._on_done(req)
            return
        reason = self.policy.on_arrival(self.view, req, self.env.now)
        if reason:
            req.reject(reason, self.env.now)
            self._on_done(req)
            return
        self.sched.add(req)
        self.wake()

    def refuse(self, req: Request, reason: str) -> None:
        """Reject a request on arrival, before any queue (e.g. longer than the model's context)."""
        req.instance = self.index
        req.reject(reason, self.env.now)
        self._on_done(req)

    def wake(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def wake_at(self, t: float) -> None:
        """Wake this instance at ``t`` (once; an earlier pending wake-up wins)."""
        if self._wake_at is not None and self._wake_at <= t:
            return
        self._wake_at = t
        env = self.env

        def wake() -> Generator[simpy.Event, object, None]:
            yield env.timeout(max(t - env.now, 0.0))
            if self._wake_at == t:
                self._wake_at = None
            self.wake()
        env.process(wake())

    def close(self) -> None:
        """No more requests will arrive (the engine stays open while a handler holds it)."""
        self.close_requested = True
        if self.holds == 0:
            self._close()
        elif self.delegate is not None:
            self.delegate.after_step()

    def _close(self) -> None:
        self.closed = True
        self.wake()

    def _admit(self, req: Request, now: float) -> str | None:
        return self.policy.admit(self.view, req, now)

    def _on_done(self, req: Request) -> None:
        self.done.append(req)

    def _drop(self, req: Request, reason: str) -> None:
        """Reject a request wherever it is queued, releasing what it holds."""
        s = self.sched
        if req in s.prefilling:
            s.prefilling.remove(req)
        if req in s.swapped:
            s.swapped.remove(req)
            nbytes = req.host_blocks * self.layout.block_bytes
            self.host.free("kv_swap", nbytes * len(self.gpus))
            s.swap_bytes_used -= nbytes
            req.host_blocks = 0
        s.reject(req, reason, self.env.now)

    def unfinished(self) -> list[Request]:
        s = self.sched
        return [*s.waiting, *s.prefilling, *s.decoding.values(), *s.swapped]

    # --- plan changes ---------------------------------------------------------------------------------
    def apply_plan(self, plan: OffloadPlan) -> tuple[int, ...] | None:
        """Switch to ``plan`` if the KV pool can shrink to what it leaves; returns the layers to copy in
        (promoted), or None if the switch is not possible now."""
        if plan == self.plan:
            return ()
        ctx = self.ctx
        layout = MemoryLayout.build(ctx.model, ctx.hw, ctx.engine, plan, check=False)
        if layout.kv_blocks < 1 or not self.bm.can_resize(layout.kv_blocks):
            return None
        promote = ()
        if plan.fraction == self.plan.fraction and plan.mode == self.plan.mode:
            promote = tuple(sorted(self.plan.offloaded_set - plan.offloaded_set))
        self.bm.resize(layout.kv_blocks)
        self.layout = layout
        if self.timeline is not None:
            self.timeline.mark(f"{self.track}/compute", f"plan {plan.name}", self.env.now)
        self.plan = plan
        self.plan_changes += 1
        return promote

    def request_plan(self, plan: OffloadPlan) -> bool:
        """A policy's switch outside `plan_for` (see `EngineView.request_plan`): the host reservation for
        weights follows the policy's `host_weight_bytes` after the switch."""
        if plan == self.plan:
            return True
        if self.apply_plan(plan) is None:
            return False
        new = self.policy.host_weight_bytes()
        self.host.free("weights", self.host_weight_bytes * len(self.gpus))
        self.host.allocate("weights", new * len(self.gpus))
        self.host_weight_bytes = new
        return True

    # --- the process ----------------------------------------------------------------------------------
    def run(self) -> Generator[simpy.Event, object, None]:
        yield from self._serve()
        self.ended = True

    def _serve(self) -> Generator[simpy.Event, object, None]:
        env, sched = self.env, self.sched
        while True:
            if not sched.has_work():
                if self.closed:
                    return
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            batch = sched.schedule(env.now)
            best = self.policy.max_kv_plan()
            if batch is None and best != self.plan and self.apply_plan(best) is not None:
                batch = sched.schedule(env.now)  # a policy with a smaller KV pool now gave memory back
            if batch is None:
                # Work is queued but nothing fits, and nothing runs that could free memory (unless the
                # policy holds the queue back for now and will wake this instance).
                if self.closed and not self.policy.holds_back(self.view):
                    for req in [*sched.waiting, *sched.swapped, *sched.prefilling]:
                        self._drop(req, "could not be scheduled: the KV pool cannot hold it")
                    return
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            if self.debug_checks:
                self.check_invariants()
            self.note_gpu_bytes(self.gpu_memory_used())
            self.in_flight = True
            if self.delegate is not None:
                timing = yield from self.delegate.execute(self, batch)
            else:
                timing = yield from self._execute(batch)
            held = (self.plan.host_bytes(self.ctx.model) + sched.swap_bytes_used) * len(self.gpus)
            if held > self.peak_host_bytes:
                self.peak_host_bytes = held
            sched.complete(batch, env.now)
            self.iterations += 1
            self.busy_s += timing.end_s - timing.start_s
            self._end_iteration(batch, timing)

    def _execute(self, batch: ScheduledBatch) -> Generator[simpy.Event, object, IterationTiming]:
        env, ctx = self.env, self.ctx
        now = env.now
        shape = batch.shape
        self.current_batch = batch
        promote: tuple[int, ...] = ()
        if not shape.is_empty:
            plan = self.policy.plan_for(self.view, shape, now)
            if plan != self.plan:
                promote = self.apply_plan(plan) or ()
        # f: how far this iteration strays from the cost model (record error; 1: not at all). Kernels take
        # f x their time and copies f x theirs (in closed form the link's rate is divided by f; on the shared
        # fabric a copy's bytes are multiplied by f, so the bus counters include the error there)
        f = self.time_error.next() if self.time_error is not None and not shape.is_empty else 1.0
        if shape.is_empty:
            compute_s = fixed_s = 0.0
        else:
            compute_s = ctx.cost.layer_time(shape) * f
            fixed_s = ctx.cost.fixed_time(shape) * f
        plan = self.plan
        tasks = compile_copies(plan, self.layer_bytes, promote) if (promote or plan.offloaded) else ()
        swaps = batch.swap_in_bytes > 0 or batch.swap_out_bytes > 0
        link_work = bool(tasks) or (plan.mode == "uva" and bool(plan.offloaded))
        record = self.detail_left > 0 and self.timeline is not None
        lat = ctx.hw.link_latency_s
        # Closed form when this iteration moves nothing over the host link, or when the links are private
        # and idle and only one kind of traffic (weights or swaps) uses them. Pipeline stages run one after
        # another (each on its own GPUs' links); every GPU of a stage copies its slice of each layer.
        fab = self.fabric
        if not (link_work or swaps) or (self.private and not (link_work and swaps)
                                        and all(fab.idle(r) for r in self.routes)):
            h2d, d2h = (self.h2d_rate, self.d2h_rate) if f == 1.0 else (self.h2d_rate / f, self.d2h_rate / f)
            swap_ready = None
            if swaps:
                swap_ready = now
                if batch.swap_in_bytes:
                    swap_ready = max(swap_ready, (now + lat) + batch.swap_in_bytes / h2d)
                if batch.swap_out_bytes:
                    swap_ready = max(swap_ready, (now + lat) + batch.swap_out_bytes / d2h)
            passes = []
            t = now
            for s_, stage in enumerate(self.stages):
                last = s_ == len(self.stages) - 1
                tm = run_closed_form(t, plan, compute_s, tasks, h2d, lat, fixed_s if last else 0.0,
                                     self.layer_bytes, swap_ready if s_ == 0 else None, record)
                if tm.copy_bytes:
                    for g in stage:
                        fab.account(fab.h2d_route(g), tm.copy_bytes, tm.copy_first_s, tm.copy_last_s, tag="weights")
                passes.append(tm)
                t = tm.end_s
            for g in self.gpus:
                if batch.swap_in_bytes:
                    fab.account(fab.h2d_route(g), batch.swap_in_bytes, now,
                                (now + lat) + batch.swap_in_bytes / h2d, tag="swap_h2d")
                if batch.swap_out_bytes:
                    fab.account(fab.d2h_route(g), batch.swap_out_bytes, now,
                                (now + lat) + batch.swap_out_bytes / d2h, tag="swap_d2h")
            timing = passes[0] if len(passes) == 1 else IterationTiming.chain(passes)
            yield env.timeout(timing.end_s - now)
        else:
            self.event_iterations += 1
            lb = self.layer_bytes
            if f != 1.0:
                lb = lb * f
                tasks = compile_copies(plan, lb, promote) if tasks else ()
            swap_list = [("h2d", batch.swap_in_bytes * f), ("d2h", batch.swap_out_bytes * f)]
            passes = []
            for s_, stage in enumerate(self.stages):
                last = s_ == len(self.stages) - 1
                tm = yield from run_events(env, fab, stage, plan, compute_s, tasks, lat, fixed_s if last else 0.0,
                                           lb, swap_list if s_ == 0 else (), record, self.gpus)
                passes.append(tm)
            timing = passes[0] if len(passes) == 1 else IterationTiming.chain(passes)
        return timing

    def _end_iteration(self, batch: ScheduledBatch, tm: IterationTiming) -> None:
        """Record the iteration, then run what waits for this boundary."""
        self.in_flight = False
        if self.delegate is None and not batch.shape.is_empty:
            self.policy.observe(self.view, batch.k, tm.end_s - tm.start_s)
        self._record(batch, tm)
        if self._boundary:
            hooks, self._boundary = self._boundary, []
            for fn in hooks:
                fn(self)
        if self.delegate is not None:
            self.delegate.after_step()
