"""What an instance records and reports (a mixin of `Instance`): timeline spans, the sampled time series,
GPU memory in use and its invariants -- each handed to the `IterationDelegate` while the GPU serves in a
multi-GPU unit (a handler's), which accounts for every member GPU."""

from __future__ import annotations

from typing import Any, Generator, Protocol

import simpy

from sim.core.batch import BatchShape
from sim.core.offload_plan import OffloadPlan
from sim.core.request import State
from sim.core.timeline import Timeline
from sim.engine.iteration import IterationTiming
from sim.engine.kv import BlockManager
from sim.engine.link import Fabric, HostMemory
from sim.engine.memory import MemoryLayout
from sim.engine.policy import InstanceContext
from sim.engine.sample import Sample
from sim.engine.scheduler import ScheduledBatch, Scheduler


class IterationDelegate(Protocol):
    """A multi-GPU serving unit (a handler's) that times the iterations of the GPUs serving in it and
    accounts for their memory and samples."""

    def execute(self, inst: Any, batch: ScheduledBatch) -> Generator[simpy.Event, Any, IterationTiming]: ...

    def after_step(self) -> None: ...

    def sample_row(self, inst: Any, shape: BatchShape | None, iteration_s: float) -> Sample: ...

    def sample_followers(self, lead: Any, shape: BatchShape | None, iteration_s: float) -> None: ...

    def gpu_bytes(self, inst: Any) -> float: ...

    def check_invariants(self) -> None: ...


class InstanceObservation:
    """Mixed into `Instance` (which sets these attributes)."""

    gpu: int
    ctx: InstanceContext
    env: simpy.Environment
    plan: OffloadPlan
    layout: MemoryLayout
    bm: BlockManager
    sched: Scheduler
    host: HostMemory
    fabric: Fabric
    h2d_route: tuple[str, ...]
    d2h_route: tuple[str, ...]
    timeline: Timeline | None
    track: str
    detail_left: int
    sample_interval_s: float
    samples: list[Sample]
    reserved_blocks: int
    delegate: IterationDelegate | None
    peak_gpu_bytes: float
    _last_sample: float

    # --- what a delegate reports for the members it serves for ------------------------------------------
    def serve_in(self, delegate: IterationDelegate | None) -> None:
        """From now on ``delegate`` times this instance's iterations and accounts for its memory and samples
        (it serves in a multi-instance unit); None: it serves alone again."""
        self.delegate = delegate

    def note_gpu_bytes(self, used: float) -> None:
        """GPU memory in use now, per GPU: raises the run's peak (``gpu_memory_peak_bytes``) if above it."""
        if used > self.peak_gpu_bytes:
            self.peak_gpu_bytes = used

    def add_sample(self, row: Sample) -> None:
        """Append one row to this instance's time series (``samples.csv``)."""
        self.samples.append(row)

    def _record(self, batch: ScheduledBatch, tm: IterationTiming) -> None:
        tl = self.timeline
        if tl is not None:
            comp = f"{self.track}/compute"
            shape = batch.shape
            label = f"it {batch.k}: P{shape.prefill_tokens} D{shape.decode_tokens}"
            if self.detail_left > 0:
                self.detail_left -= 1
                tm.add_spans(tl, self.gpu)
            elif tm.copy_bytes:
                tl.add(f"{self.track}/h2d", "copies", tm.copy_first_s, tm.copy_last_s, -1, tm.copy_bytes)
            tl.add(comp, "iteration", tm.start_s, tm.end_s, -1, 0.0, label)
        now = self.env.now
        if now - self._last_sample >= self.sample_interval_s:
            self._last_sample = now
            iteration_s = tm.end_s - tm.start_s
            self.add_sample(self.sample(batch.shape, iteration_s))
            if self.delegate is not None:
                self.delegate.sample_followers(self, batch.shape, iteration_s)

    def sample(self, shape: BatchShape | None = None, iteration_s: float = 0.0) -> Sample:
        if self.delegate is not None:
            return self.delegate.sample_row(self, shape, iteration_s)
        return self.own_sample(shape, iteration_s)

    def own_sample(self, shape: BatchShape | None = None, iteration_s: float = 0.0) -> Sample:
        """This GPU's sample as if it served alone (a delegate adjusts it)."""
        s, lay, bm = self.sched, self.layout, self.bm
        n = len(self.gpus)
        if n > 1:  # host traffic and host memory of all the instance's GPUs; GPU memory is one GPU's
            fab = self.fabric
            return Sample(self.env.now, self.gpu, len(s.waiting), s.num_running, len(s.swapped), bm.used,
                          bm.num_blocks, lay.weights_bytes, lay.staging_bytes, lay.workspace_bytes, lay.kv_pool_bytes,
                          bm.used * lay.block_bytes, lay.usable_bytes, self.host.used_bytes,
                          sum(fab.bytes_moved[f"gpu{g}/h2d"] for g in self.gpus),
                          sum(fab.bytes_moved[f"gpu{g}/d2h"] for g in self.gpus),
                          fab.bytes_moved[self.h2d_route[1]], self.plan.num_offloaded, self.plan.interval or 0,
                          shape.tokens if shape else 0, shape.decode_tokens if shape else 0, iteration_s,
                          -1, 1, bm.num_blocks * bm.block_size, self.plan.host_bytes(self.ctx.model) * n,
                          s.swap_bytes_used * n)
        return Sample(self.env.now, self.gpu, len(s.waiting), s.num_running, len(s.swapped), bm.used,
                      bm.num_blocks, lay.weights_bytes, lay.staging_bytes, lay.workspace_bytes, lay.kv_pool_bytes,
                      bm.used * lay.block_bytes, lay.usable_bytes, self.host.used_bytes,
                      self.fabric.bytes_moved[self.h2d_route[0]], self.fabric.bytes_moved[self.d2h_route[0]],
                      self.fabric.bytes_moved[self.h2d_route[1]], self.plan.num_offloaded, self.plan.interval or 0,
                      shape.tokens if shape else 0, shape.decode_tokens if shape else 0, iteration_s,
                      -1, 1, bm.num_blocks * bm.block_size, self.plan.host_bytes(self.ctx.model), s.swap_bytes_used)

    def gpu_memory_used(self) -> float:
        if self.delegate is not None:
            return self.delegate.gpu_bytes(self)
        lay = self.layout
        return lay.weights_bytes + lay.staging_bytes + lay.workspace_bytes + self.bm.used * lay.block_bytes

    def check_invariants(self) -> None:
        """Memory within capacity and block counts consistent (tests call this between events)."""
        if self.delegate is not None:
            self.delegate.check_invariants()
            return
        s = self.sched
        assert self.bm.used <= self.bm.num_blocks, "KV blocks over capacity"
        assert self.gpu_memory_used() <= self.layout.usable_bytes + 1e-3, "GPU memory over capacity"
        held = sum(r.blocks for r in s.decoding.values()) + sum(r.blocks for r in s.prefilling)
        held += sum(r.blocks for r in s.waiting) + self.reserved_blocks + s.held_blocks()
        assert held == self.bm.used, f"gpu{self.gpu}: blocks held ({held}) != blocks in use ({self.bm.used})"
        for q in (s.waiting, s.swapped):
            assert q.blocks == sum(q.need(r) for r in q), "queued-demand counter drifted"
        for r in s.decoding.values():
            assert r.state == State.RUNNING
