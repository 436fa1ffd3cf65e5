"""The iteration executor: when each decoder layer computes and each weight copy moves in one forward pass.

Rules (DESIGN.md, "The iteration model"): layer l computes from max(end of layer l-1, arrival of its
weights) for its compute time. Copies run one at a time on the GPU's copy stream in the order of the
compiled copy list: first promotions (layers becoming resident this iteration), then the plan's copies in
layer order. A plan copy starts at max(copy stream free, compute stream reaching its issue layer, its
staging buffer freed by the layer that used it last). KV swap transfers (if any) run on their own stream
from the iteration start, and layer 0 waits for them. The iteration ends ``fixed_s`` after the last layer.

Two implementations that agree exactly, float for float:
- `run_closed_form`: a single pass over the layers, for a host link that nothing else uses during the
  iteration (copy time = latency + bytes / bandwidth).
- `run_events`: SimPy processes over a shared `Fabric` (bus contention, swap traffic, other GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, Sequence

import simpy

from .link import Fabric
from .plan import OffloadPlan


@dataclass(frozen=True, slots=True)
class CopyTask:
    layer: int  # the layer whose weights this copy brings
    trigger: int  # issued when compute reaches this layer (0: iteration start)
    buffer_dep: int  # must wait for this layer's compute to end (staging buffer reuse); -1: none
    nbytes: float
    promote: bool = False


def compile_copies(plan: OffloadPlan, layer_bytes: float,
                   promote: Sequence[int] = ()) -> tuple[CopyTask, ...]:
    """The copy stream's work for one iteration, in issue order."""
    tasks = [CopyTask(l, 0, -1, layer_bytes, True) for l in sorted(promote)]
    if plan.mode == "prefetch" and plan.offloaded:
        nb, off = plan.num_buffers, plan.offloaded
        b = plan.fraction * layer_bytes
        for k, (l, s) in enumerate(zip(off, plan.issue_at)):
            tasks.append(CopyTask(l, s, off[k - nb] if k >= nb else -1, b))
    seen = set()
    for t in tasks:
        if t.layer in seen:
            raise ValueError(f"layer {t.layer} is both promoted and offloaded in one iteration")
        seen.add(t.layer)
    return tuple(tasks)


@dataclass
class IterationTiming:
    """Outcome of one iteration. Per-layer lists are filled only when ``record`` was asked for."""

    start_s: float
    end_s: float
    layers_end_s: float
    copy_bytes: float = 0.0
    copy_first_s: float = -1.0  # start of the first host-link transfer (-1: none)
    copy_last_s: float = -1.0  # end of the last one
    layer_start_s: list[float] = field(default_factory=list)
    layer_end_s: list[float] = field(default_factory=list)
    copies: list[tuple[int, float, float, float]] = field(default_factory=list)  # (layer, start, end, bytes)
    uva: list[tuple[int, float, float, float]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _uva_bytes(plan: OffloadPlan, layer_bytes: float) -> dict[int, float]:
    if plan.mode != "uva":
        return {}
    return {l: plan.fraction * layer_bytes for l in plan.offloaded}


def run_closed_form(t0: float, plan: OffloadPlan, compute_s: float, tasks: tuple[CopyTask, ...],
                    h2d_rate: float, latency_s: float, fixed_s: float, layer_bytes: float = 0.0,
                    swap_ready_s: float | None = None, record: bool = False) -> IterationTiming:
    """Single-pass timing for a private host link. ``swap_ready_s``: when this iteration's KV swaps end."""
    L = plan.num_layers
    ends: list[float] = []
    arrive: dict[int, int] = {t.layer: i for i, t in enumerate(tasks)}
    copy_end = [0.0] * len(tasks)
    copy_start = [0.0] * len(tasks) if record else None
    nxt = 0
    copy_free = t0
    uva = _uva_bytes(plan, layer_bytes)
    t = t0 if swap_ready_s is None else max(t0, swap_ready_s)
    starts: list[float] = []
    uva_rec: list[tuple[int, float, float, float]] = []
    moved = 0.0
    for l in range(L):
        j = arrive.get(l)
        if j is not None:
            while nxt <= j:  # run the copy stream up to this layer's copy, in issue order
                task = tasks[nxt]
                s = copy_free
                trig = t0 if task.trigger == 0 else ends[task.trigger - 1]
                if trig > s:
                    s = trig
                if task.buffer_dep >= 0 and ends[task.buffer_dep] > s:
                    s = ends[task.buffer_dep]
                copy_free = (s + latency_s) + task.nbytes / h2d_rate
                copy_end[nxt] = copy_free
                if copy_start is not None:
                    copy_start[nxt] = s
                moved += task.nbytes
                nxt += 1
            if copy_end[j] > t:
                t = copy_end[j]
        if record:
            starts.append(t)
        b = uva.get(l)
        if b is not None:
            end = t + compute_s
            read_end = (t + latency_s) + b / h2d_rate
            if record:
                uva_rec.append((l, t, read_end, b))
            moved += b
            t = read_end if read_end > end else end
        else:
            t = t + compute_s
        ends.append(t)
    timing = IterationTiming(t0, t + fixed_s, t, moved)
    if nxt:
        timing.copy_last_s = copy_end[nxt - 1]
        first = tasks[0]
        timing.copy_first_s = t0 if first.trigger == 0 else ends[first.trigger - 1]
        if first.buffer_dep >= 0:
            timing.copy_first_s = max(timing.copy_first_s, ends[first.buffer_dep])
    elif uva:
        timing.copy_first_s, timing.copy_last_s = t0, t
    if record:
        timing.layer_start_s = starts
        timing.layer_end_s = ends
        timing.copies = [(tasks[i].layer, copy_start[i], copy_end[i], tasks[i].nbytes)  # type: ignore[index]
                         for i in range(nxt)]
        timing.uva = uva_rec
    return timing


def run_events(env: simpy.Environment, fabric: Fabric, gpu: int, plan: OffloadPlan, compute_s: float,
               tasks: tuple[CopyTask, ...], latency_s: float, fixed_s: float, layer_bytes: float = 0.0,
               swaps: Sequence[tuple[str, float]] = (), record: bool = False
               ) -> Generator[simpy.Event, object, IterationTiming]:
    """SimPy process body (use ``yield from``): the same schedule with transfers on a shared fabric.
    ``swaps`` are (direction ``"h2d"``/``"d2h"``, bytes) KV transfers issued at the iteration start."""
    t0 = env.now
    L = plan.num_layers
    done = [env.event() for _ in range(L)]
    arrival: dict[int, simpy.Event] = {t.layer: env.event() for t in tasks}
    timing = IterationTiming(t0, t0, t0)
    h2d = fabric.h2d_route(gpu)
    uva = _uva_bytes(plan, layer_bytes)

    def copy_stream() -> Generator[simpy.Event, object, None]:
        for task in tasks:
            if task.trigger > 0 and not done[task.trigger - 1].triggered:
                yield done[task.trigger - 1]
            if task.buffer_dep >= 0 and not done[task.buffer_dep].triggered:
                yield done[task.buffer_dep]
            s = env.now
            if timing.copy_first_s < 0:
                timing.copy_first_s = s
            yield fabric.transfer(h2d, task.nbytes, latency_s, tag="weights")
            timing.copy_last_s = env.now
            timing.copy_bytes += task.nbytes
            if record:
                timing.copies.append((task.layer, s, env.now, task.nbytes))
            arrival[task.layer].succeed()

    if tasks:
        env.process(copy_stream())
    swap_events = [fabric.transfer(h2d if d == "h2d" else fabric.d2h_route(gpu), b, latency_s, tag=f"swap_{d}")
                   for d, b in swaps if b > 0]
    if swap_events:
        yield simpy.AllOf(env, swap_events)
    for l in range(L):
        ev = arrival.get(l)
        if ev is not None and not ev.processed:
            yield ev
        if record:
            timing.layer_start_s.append(env.now)
        b = uva.get(l)
        if b is not None:
            s = env.now
            read = fabric.transfer(h2d, b, latency_s, tag="uva")
            yield simpy.AllOf(env, [env.timeout(compute_s), read])
            timing.copy_bytes += b
            if timing.copy_first_s < 0:
                timing.copy_first_s = s
            timing.copy_last_s = env.now
            if record:
                timing.uva.append((l, s, read.value, b))  # type: ignore[arg-type]
        else:
            yield env.timeout(compute_s)
        if record:
            timing.layer_end_s.append(env.now)
        done[l].succeed()
    timing.layers_end_s = env.now
    yield env.timeout(fixed_s)
    timing.end_s = env.now
    return timing
