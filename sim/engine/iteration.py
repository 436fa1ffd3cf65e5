"""The iteration executor: when each decoder layer computes and each weight copy moves in one forward pass.

Rules (docs/architecture.md, "An iteration's path"): layer l computes from max(end of layer l-1, arrival of its
weights) for its compute time. Copies run one at a time on the GPU's copy stream in the order of the
compiled copy list: first promotions (layers becoming resident this iteration), then the plan's copies in
layer order. A plan copy starts at max(copy stream free, compute stream reaching its issue layer, its
staging buffer freed by the layer that used it last). A plan with ``chunks`` > 1 streams each offloaded layer in
pieces: piece q of layer l computes (compute / chunks) once it has landed and piece q-1 has computed, and a
piece's slot is freed by the piece that used it last. KV swap transfers (if any) run on their own stream
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

from sim.core.offload_plan import OffloadPlan
from sim.core.timeline import Timeline
from sim.engine.link import Fabric


@dataclass(frozen=True, slots=True)
class CopyTask:
    layer: int  # the layer whose weights this copy brings
    trigger: int  # issued when compute reaches this layer (0: iteration start)
    buffer_dep: int  # must wait for this layer's compute to end (staging buffer reuse); -1: none
    nbytes: float
    promote: bool = False
    part: int = 0  # which piece of the layer (plans with chunks > 1)
    dep_part: int = 0  # with chunks > 1: the piece of ``buffer_dep`` whose compute frees the slot


def compile_copies(plan: OffloadPlan, layer_bytes: float,
                   promote: Sequence[int] = ()) -> tuple[CopyTask, ...]:
    """The copy stream's work for one iteration, in issue order."""
    tasks = [CopyTask(l, 0, -1, layer_bytes, True) for l in sorted(promote)]
    if plan.mode == "prefetch" and plan.offloaded:
        nb, off, c = plan.num_buffers, plan.offloaded, plan.chunks
        b = plan.fraction * layer_bytes / c
        # piece k (over all offloaded layers' pieces, in order) reuses the slot of piece k - nb
        pieces = [(l, q, s) for l, s in zip(off, plan.issue_at) for q in range(c)]
        for k, (l, q, s) in enumerate(pieces):
            dl, dq = pieces[k - nb][:2] if k >= nb else (-1, 0)
            tasks.append(CopyTask(l, s, dl, b, part=q, dep_part=dq))
    seen = set()
    for t in tasks:
        if (t.layer, t.part) in seen:
            raise ValueError(f"layer {t.layer} is both promoted and offloaded in one iteration")
        seen.add((t.layer, t.part))
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

    @classmethod
    def chain(cls, passes: Sequence["IterationTiming"]) -> "IterationTiming":
        """Pipeline stages run one after another: one iteration from the first pass's start to the last's end
        (copy bytes are per GPU of a stage, summed over the stages)."""
        first, last = passes[0], passes[-1]
        out = cls(first.start_s, last.end_s, last.layers_end_s, sum(p.copy_bytes for p in passes))
        with_copies = [p for p in passes if p.copy_first_s >= 0]
        if with_copies:
            out.copy_first_s, out.copy_last_s = with_copies[0].copy_first_s, with_copies[-1].copy_last_s
        for p in passes:
            out.layer_start_s += p.layer_start_s
            out.layer_end_s += p.layer_end_s
            out.copies += p.copies
            out.uva += p.uva
        return out

    def add_spans(self, tl: Timeline, gpu: int, label: str = "", fixed: bool = False) -> None:
        """Its recorded layer and copy spans on ``tl`` (and the fixed work after the layers if ``fixed``)."""
        copies = [("copy", *c) for c in self.copies] + [("uva", *c) for c in self.uva]
        tl.add_iteration(gpu, zip(self.layer_start_s, self.layer_end_s), copies,
                         [(self.layers_end_s, self.end_s)] if fixed else (), label)


def _uva_bytes(plan: OffloadPlan, layer_bytes: float) -> dict[int, float]:
    if plan.mode != "uva":
        return {}
    return {l: plan.fraction * layer_bytes for l in plan.offloaded}


def run_closed_form(t0: float, plan: OffloadPlan, compute_s: float, tasks: tuple[CopyTask, ...],
                    h2d_rate: float, latency_s: float, fixed_s: float, layer_bytes: float = 0.0,
                    swap_ready_s: float | None = None, record: bool = False) -> IterationTiming:
    """Single-pass timing for a private host link. ``swap_ready_s``: when this iteration's KV swaps end."""
    L = plan.num_layers
    # pieces: id l*C + q; C = 1 (every plan but a chunked one) makes a piece a layer
    C = plan.chunks
    chunked = plan.offloaded_set if C > 1 else frozenset()
    ends: list[float] = []
    piece_end: dict[int, float] = {}  # compute end of each piece of a chunked layer
    arrive: dict[int, int] = {t.layer * C + t.part: i for i, t in enumerate(tasks)}
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
        n = C if l in chunked else 1
        step = compute_s if n == 1 else compute_s / n
        for q in range(n):
            j = arrive.get(l * C + q)
            if j is not None:
                while nxt <= j:  # run the copy stream up to this piece's copy, in issue order
                    task = tasks[nxt]
                    s = copy_free
                    trig = t0 if task.trigger == 0 else ends[task.trigger - 1]
                    if trig > s:
                        s = trig
                    if task.buffer_dep >= 0:
                        free = piece_end[task.buffer_dep * C + task.dep_part] if chunked else ends[task.buffer_dep]
                        if free > s:
                            s = free
                    copy_free = (s + latency_s) + task.nbytes / h2d_rate
                    copy_end[nxt] = copy_free
                    if copy_start is not None:
                        copy_start[nxt] = s
                    moved += task.nbytes
                    nxt += 1
                if copy_end[j] > t:
                    t = copy_end[j]
            if record and q == 0:
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
                t = t + step
            if n > 1:
                piece_end[l * C + q] = t
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


def run_events(env: simpy.Environment, fabric: Fabric, gpu: int | Sequence[int], plan: OffloadPlan,
               compute_s: float, tasks: tuple[CopyTask, ...], latency_s: float, fixed_s: float,
               layer_bytes: float = 0.0, swaps: Sequence[tuple[str, float]] = (), record: bool = False,
               swap_gpus: Sequence[int] | None = None) -> Generator[simpy.Event, object, IterationTiming]:
    """SimPy process body (use ``yield from``): the same schedule with transfers on a shared fabric.
    ``gpu``: the GPU, or the GPUs of a tensor-parallel stage, each of which moves ``nbytes`` of every copy
    over its own link (a copy ends when all have). ``swaps`` are (direction ``"h2d"``/``"d2h"``, bytes per
    GPU) KV transfers issued at the iteration start on each of ``swap_gpus`` (default: ``gpu``)."""
    t0 = env.now
    gpus = [gpu] if isinstance(gpu, int) else list(gpu)
    routes = [fabric.h2d_route(g) for g in gpus]
    L = plan.num_layers
    C = plan.chunks
    chunked = plan.offloaded_set if C > 1 else frozenset()
    done = [env.event() for _ in range(L)]
    piece_done = {l * C + q: env.event() for l in chunked for q in range(C)}
    arrival: dict[int, simpy.Event] = {t.layer * C + t.part: env.event() for t in tasks}
    timing = IterationTiming(t0, t0, t0)
    h2d = routes[0]
    uva = _uva_bytes(plan, layer_bytes)

    def transfer(nbytes: float, tag: str) -> simpy.Event:
        """The same transfer on every GPU's route; one event for all."""
        if len(routes) == 1:
            return fabric.transfer(h2d, nbytes, latency_s, tag=tag)
        return simpy.AllOf(env, [fabric.transfer(r, nbytes, latency_s, tag=tag) for r in routes])

    def copy_stream() -> Generator[simpy.Event, object, None]:
        for task in tasks:
            if task.trigger > 0 and not done[task.trigger - 1].triggered:
                yield done[task.trigger - 1]
            if task.buffer_dep >= 0:
                free = piece_done[task.buffer_dep * C + task.dep_part] if chunked else done[task.buffer_dep]
                if not free.triggered:
                    yield free
            s = env.now
            if timing.copy_first_s < 0:
                timing.copy_first_s = s
            yield transfer(task.nbytes, "weights")
            timing.copy_last_s = env.now
            timing.copy_bytes += task.nbytes
            if record:
                timing.copies.append((task.layer, s, env.now, task.nbytes))
            arrival[task.layer * C + task.part].succeed()

    if tasks:
        env.process(copy_stream())
    swap_events = [fabric.transfer(fabric.h2d_route(g) if d == "h2d" else fabric.d2h_route(g), b, latency_s,
                                   tag=f"swap_{d}")
                   for d, b in swaps if b > 0 for g in (swap_gpus if swap_gpus is not None else gpus)]
    if swap_events:
        yield simpy.AllOf(env, swap_events)
    for l in range(L):
        n = C if l in chunked else 1
        for q in range(n):
            ev = arrival.get(l * C + q)
            if ev is not None and not ev.processed:
                yield ev
            if record and q == 0:
                timing.layer_start_s.append(env.now)
            b = uva.get(l)
            if b is not None:
                s = env.now
                read = transfer(b, "uva")
                yield simpy.AllOf(env, [env.timeout(compute_s), read])
                timing.copy_bytes += b
                if timing.copy_first_s < 0:
                    timing.copy_first_s = s
                timing.copy_last_s = env.now
                if record:
                    read_end = read.value if len(routes) == 1 else env.now  # type: ignore[assignment]
                    timing.uva.append((l, s, read_end, b))  # type: ignore[arg-type]
            else:
                yield env.timeout(compute_s if n == 1 else compute_s / n)
            if n > 1:
                piece_done[l * C + q].succeed()
        if record:
            timing.layer_end_s.append(env.now)
        done[l].succeed()
    timing.layers_end_s = env.now
    yield env.timeout(fixed_s)
    timing.end_s = env.now
    return timing
