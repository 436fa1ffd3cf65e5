"""A cluster: data-parallel instances behind a router, sharing PCIe switches, root complexes and the host
memory of their nodes, fed by one arrival stream. Runs one policy over one list of requests. An instance
has one GPU, or ``tensor_parallel_size`` x ``pipeline_parallel_size`` consecutive GPUs (the engine
settings); instances are aligned to the PCIe switches (a tensor-parallel group fills whole switches, or
several groups share one) and a tensor-parallel group stays inside one node.

The router sends each request to a serving unit: an instance, or a unit an overload handler formed over
several instances (a KunServe pipelined group, `ServingUnit`). Round-robin picks an instance and sends to
its unit; least-loaded picks the unit with the least KV demand relative to its capacity, in O(units) per
request (demand is kept as counters). Overload handlers (`sim.engine.handler`) act on the cluster through
`set_unit`, `mark` and `count`, and on its instances through their engine hooks.

The GPU<->GPU links (``peer_route``) and each GPU's host link (``h2d_route``) are the cluster's `Fabric`,
sized from the hardware spec; each upstream bus is also a `Bus` through which the policies of its GPUs
see each other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Literal, Protocol, Sequence

import simpy

from sim.core.hardware import HardwareSpec
from sim.core.lengths import OutputLengths
from sim.core.model import ModelSpec
from sim.core.request import Request, State
from sim.core.timeline import Timeline
from sim.cost.base import CostModel
from sim.engine.bus import Bus
from sim.engine.instance import Instance
from sim.engine.link import Fabric, HostMemory
from sim.engine.memory import EngineConfig
from sim.engine.policy import InstanceContext, OffloadPolicy
from sim.engine.record_error import RecordError
from sim.engine.scheduler import Scheduler

Progress = Callable[[float, int, int], None]  # (simulated time, requests done, requests total)
# Asked every progress step with the requests and the simulated time; True stops the run (e.g. a capacity
# search that already knows the SLO target is missed). Unfinished requests are then rejected.
StopRule = Callable[[Sequence[Request], float], bool]


class ServingUnit(Protocol):
    """What the router needs of a serving unit: its lowest instance index, where requests go, its KV demand
    and capacity in blocks."""

    @property
    def index(self) -> int: ...

    def enqueue(self, req: Request) -> None: ...

    def demand_blocks(self) -> int: ...

    def capacity_blocks(self) -> int: ...


def check_layout(hw: HardwareSpec, num_gpus: int, tp: int, pp: int) -> None:
    """Raise `ValueError` unless ``num_gpus`` split into instances of ``tp`` x ``pp`` GPUs that align with the
    PCIe switches and keep each tensor-parallel group inside one node."""
    per = tp * pp
    if num_gpus % per:
        raise ValueError(f"num_gpus ({num_gpus}) must be a multiple of tensor_parallel_size x "
                         f"pipeline_parallel_size ({tp} x {pp} = {per})")
    if tp > hw.gpus_per_node or hw.gpus_per_node % tp:
        raise ValueError(f"tensor_parallel_size ({tp}) must divide the GPUs of a node ({hw.gpus_per_node}): a "
                         f"tensor-parallel group lives in one node")
    if tp % hw.gpus_per_bus and hw.gpus_per_bus % tp:
        raise ValueError(f"tensor_parallel_size ({tp}) must divide, or be a multiple of, the GPUs per PCIe switch "
                         f"({hw.gpus_per_bus}): instances align with switches")


def link_rates(hw: HardwareSpec, ranks: int) -> tuple[float, ...]:
    """Host->device bandwidth of one GPU when m = 1, 2, ... instances under its switch copy at once, each
    with ``ranks`` GPUs there (the GPUs of an instance share their switch's uplink, and their root complex
    where it is narrower)."""
    shares = max(1, hw.gpus_per_bus // ranks)
    out = []
    for m in range(1, shares + 1):
        r = min(hw.h2d_bytes_per_s, hw.bus_bytes_per_s / (m * ranks))
        if hw.root_is_narrower:
            r = min(r, hw.root_bytes_per_s / (m * ranks * (hw.root_gpus // hw.gpus_per_bus)))
        out.append(r)
    return tuple(out)


def _delay_to(now: float, t: float) -> float:
    """The smallest delay d with now + d >= t in floating point, so nothing happens before its time."""
    d = t - now
    while now + d < t:
        d = math.nextafter(d, math.inf)
    return d


@dataclass
class RunResult:
    """The outcome of one policy on one request list."""

    policy: str
    requests: list[Request]
    instances: list[Instance] = field(default_factory=list)
    hosts: list[HostMemory] = field(default_factory=list)
    fabric: Fabric | None = None
    timeline: Timeline | None = None
    simulated_s: float = 0.0
    wall_s: float = 0.0
    interrupted: bool = False
    error: str | None = None  # set when the policy could not run at all (e.g. the model does not fit)
    description: str = ""
    stats: dict[str, float] = field(default_factory=dict)  # what handlers counted (`Cluster.count`)


class Cluster:
    """Data-parallel instances behind a router over serving units. ``model`` and ``cost`` are what one GPU
    of an instance holds and costs (the whole model, or a tensor/pipeline-parallel slice and its
    `sim.cost.parallel.ParallelCost`); a list gives one per instance."""

    def __init__(self, model: ModelSpec | Sequence[ModelSpec], hw: HardwareSpec, cost: CostModel | Sequence[CostModel],
                 policy_factory: Callable[[], OffloadPolicy], engine: EngineConfig | None = None,
                 num_gpus: int = 1, router: Literal["round-robin", "least-loaded"] = "round-robin",
                 timeline: Timeline | None = None, detail_iterations: int = 0,
                 sample_interval_s: float = 0.25, scheduler_class: type[Scheduler] = Scheduler,
                 output_lengths: OutputLengths | None = None, record_error: RecordError | None = None) -> None:
        """``output_lengths``: the output-length distribution the policies may know (default: a broad
        prior, `OutputLengths.unknown`); ``record_error``: how executed kernel times stray from the cost
        model's (`sim.engine.record_error`)."""
        if num_gpus < 1:
            raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
        if router not in ("round-robin", "least-loaded"):
            raise ValueError(f"router must be 'round-robin' or 'least-loaded', got {router!r}")
        self.engine = engine or EngineConfig()
        tp, pp = self.engine.tensor_parallel_size, self.engine.pipeline_parallel_size
        per = tp * pp
        check_layout(hw, num_gpus, tp, pp)
        n = num_gpus // per
        # one model (and cost model) for every instance, or a list with one per instance (e.g. two models on
        # one bus)
        models = list(model) if isinstance(model, (list, tuple)) else [model] * n
        costs = list(cost) if isinstance(cost, (list, tuple)) else [cost] * n
        if len(models) != n or len(costs) != n:
            raise ValueError(f"one model and cost model per instance: got {len(models)} models and {len(costs)} "
                             f"cost models for {n} instances")
        self.env = simpy.Environment()
        self.fabric = Fabric.for_gpus(self.env, hw, num_gpus)
        self.timeline = timeline
        if timeline is not None:
            self.fabric.on_span = self._on_transfer
        n_nodes = -(-num_gpus // hw.gpus_per_node)
        self.hosts = [HostMemory(hw.host_memory_bytes) for _ in range(n_nodes)]
        self.router = router
        # instances under one switch share its Bus; an instance that fills whole switches has its own
        ranks = min(tp, hw.gpus_per_bus)  # GPUs of one stage under one switch
        per_bus: dict[int, list[int]] = {}
        for i in range(n):
            per_bus.setdefault(i * per // hw.gpus_per_bus, []).append(i)
        self.buses = {b: Bus(b, hw.bus_bytes_per_s, tuple(ids), ranks) for b, ids in per_bus.items()}
        rates = link_rates(hw, ranks) if per > 1 or hw.root_is_narrower else ()
        self.instances: list[Instance] = []
        lengths = output_lengths or OutputLengths.unknown()
        for i in range(n):
            gpus = tuple(range(i * per, (i + 1) * per))
            ctx = InstanceContext(models[i], hw, costs[i], self.engine, i, self.buses[gpus[0] // hw.gpus_per_bus],
                                  gpus, rates, output_lengths=lengths)
            self.instances.append(Instance(self.env, ctx, policy_factory(), self.fabric,
                                           self.hosts[gpus[0] // hw.gpus_per_node], timeline, detail_iterations,
                                           sample_interval_s, scheduler_class, record_error))
        # An instance is private when no other instance that ever moves data over the host link shares its
        # switches (or its root complexes, where those are modelled); then its iterations are timed in
        # closed form.
        def upstream(inst: Instance) -> set[str]:  # the switches (and root complexes) its copies climb through
            return {res.split("/")[0] for route in inst.routes for res in route if not res.startswith("gpu")}

        movers = [o for o in self.instances if o.policy.uses_host_link or self.engine.preemption == "swap"]
        for inst in self.instances:
            mine = upstream(inst)
            inst.private = len([o for o in movers if mine & upstream(o)]) <= 1
        self._rr = 0
        self.unit_of: list[ServingUnit] = list(self.instances)  # instance -> its serving unit
        self._units: list[ServingUnit] = list(self.instances)
        self.groups: list[ServingUnit] = []  # multi-GPU units in order of formation (handlers add them)
        self.stats: dict[str, float] = {}

    def _on_transfer(self, resource: str, tag: str, start: float, end: float, nbytes: float) -> None:
        assert self.timeline is not None
        gpu = resource.split("/", 1)[0]
        bus = f"bus{self.fabric.bus_of(int(gpu[3:]))}" if gpu.startswith("gpu") else gpu
        direction = resource.rsplit("/", 1)[-1]
        self.timeline.add(f"{bus}/{direction}", tag, start, end, -1, nbytes, f"{gpu} {tag}")
        if tag not in ("weights", "uva"):  # weight reads are on the GPU's track already (the instance records them)
            self.timeline.add(resource, tag, start, end, -1, nbytes)

    # --- serving units and routing ----------------------------------------------------------------------
    def units(self) -> list[ServingUnit]:
        """Distinct serving units in instance order."""
        return self._units

    def set_unit(self, instances: Iterable[int], unit: ServingUnit | None) -> None:
        """Route the requests of ``instances`` (indices) to ``unit`` (a multi-instance unit, or back to each
        instance itself when ``unit`` is None)."""
        for i in instances:
            self.unit_of[i] = unit if unit is not None else self.instances[i]
        seen: dict[int, ServingUnit] = {}
        for u in self.unit_of:
            seen.setdefault(id(u), u)
        self._units = list(seen.values())

    def route(self, req: Request) -> ServingUnit:
        n = len(self.instances)
        if self.router == "round-robin" or n == 1:
            inst = self.instances[self._rr % n]
            self._rr += 1
            return self.unit_of[inst.index]
        best, key = self._units[0], (float("inf"), 0)
        for u in self._units:
            k = (u.demand_blocks() / max(u.capacity_blocks(), 1), u.index)
            if k < key:
                best, key = u, k
        return best

    # --- transfers between instances and with the host (for handlers) ------------------------------------
    def peer_transfer(self, src: Instance, dst: Instance, nbytes: float, tag: str,
                      on_done: Callable[[object], None] | None = None) -> simpy.Event:
        """Move ``nbytes`` from every GPU of ``src`` to the GPU of the same rank in ``dst`` over the GPU links
        (a tensor-parallel slice goes to its counterpart); the event fires, and ``on_done`` runs, when all
        have arrived."""
        lat = src.ctx.hw.gpu_link_latency_s
        if len(src.gpus) == 1 and len(dst.gpus) == 1:
            return self.fabric.transfer(self.fabric.peer_route(src.gpu, dst.gpu), nbytes, lat, tag=tag,
                                        on_done=on_done)
        ev = simpy.AllOf(self.env, [self.fabric.transfer(self.fabric.peer_route(a, b), nbytes, lat, tag=tag)
                                    for a, b in zip(src.gpus, dst.gpus)])
        if on_done is not None:
            ev.callbacks.append(on_done)
        return ev

    def host_transfer(self, inst: Instance, nbytes: float, tag: str,
                      on_done: Callable[[object], None] | None = None) -> simpy.Event:
        """Move ``nbytes`` from host memory to every GPU of ``inst`` over its links (sharing switches);
        ``on_done`` runs once all have arrived."""
        lat = inst.ctx.hw.link_latency_s
        if len(inst.gpus) == 1:
            return self.fabric.transfer(self.fabric.h2d_route(inst.gpu), nbytes, lat, tag=tag, on_done=on_done)
        ev = simpy.AllOf(self.env, [self.fabric.transfer(self.fabric.h2d_route(g), nbytes, lat, tag=tag)
                                    for g in inst.gpus])
        if on_done is not None:
            ev.callbacks.append(on_done)
        return ev

    # --- what handlers report ---------------------------------------------------------------------------
    def mark(self, instances: Iterable[int], name: str) -> None:
        """An instant event on each instance's compute track of the timeline (drops, restores)."""
        if self.timeline is not None:
            for i in instances:
                self.timeline.mark(f"gpu{self.instances[i].gpu}/compute", name, self.env.now)

    def count(self, key: str, value: float = 1.0) -> None:
        self.stats[key] = self.stats.get(key, 0.0) + value

    # --- the run ----------------------------------------------------------------------------------------
    def _arrivals(self, requests: list[Request]) -> Generator[simpy.Event, object, None]:
        env = self.env
        limit = self.engine.max_model_len
        for req in requests:
            if req.arrival_s > env.now:
                yield env.timeout(_delay_to(env.now, req.arrival_s))
            unit = self.route(req)
            if limit is not None and req.prompt_tokens + req.output_tokens > limit:
                # the serving engine's front end refuses it (vLLM: "maximum context length is ... tokens"),
                # whatever the unit: it is never queued, so no path can serve it
                self.instances[unit.index].refuse(req, f"prompt + output ({req.prompt_tokens}+{req.output_tokens} "
                                                f"tokens) exceed the context of {limit} tokens (max_model_len)")
                continue
            unit.enqueue(req)
        for inst in self.instances:
            inst.close()

    def _monitor(self, requests: list[Request], progress: Progress | None, stop: StopRule | None,
                 stopped: simpy.Event, step_s: float) -> Generator[simpy.Event, object, None]:
        total = len(requests)
        while True:
            done = sum(len(i.done) for i in self.instances)
            if progress is not None:
                progress(self.env.now, done, total)
            if done >= total:
                return
            if stop is not None and stop(requests, self.env.now):
                stopped.succeed()
                return
            yield self.env.timeout(step_s)

    def run(self, requests: list[Request], until_s: float | None = None, progress: Progress | None = None,
            progress_step_s: float = 5.0, name: str = "", stop: StopRule | None = None) -> RunResult:
        """Serve ``requests`` (sorted by arrival). Stops at ``until_s`` if given, or when ``stop`` (asked
        every ``progress_step_s``) says so; requests unfinished then, or when interrupted (Ctrl-C), are
        rejected with that reason, so every request ends in one state."""
        wall0 = time.perf_counter()
        env = self.env
        env.process(self._arrivals(requests))
        procs = [env.process(inst.run()) for inst in self.instances]
        stopped = env.event()
        if progress is not None or stop is not None:
            env.process(self._monitor(requests, progress, stop, stopped, progress_step_s))
        interrupted = False
        try:
            if until_s is None:
                all_done = simpy.AllOf(env, procs)
                env.run(until=all_done if stop is None else simpy.AnyOf(env, [all_done, stopped]))
            elif stop is None:
                env.run(until=until_s)
            else:
                env.run(until=simpy.AnyOf(env, [env.timeout(_delay_to(env.now, until_s)), stopped]))
        except KeyboardInterrupt:
            interrupted = True
        now = env.now
        reason = ("interrupted" if interrupted else
                  f"stopped early at {now:.1f} s: the outcome was decided" if stopped.triggered else
                  f"unfinished at the end of the simulation ({now:.1f} s)")
        for req in requests:
            if not req.done:
                if req.state == State.PENDING:
                    req.reject("not arrived before the simulation ended" if not interrupted else reason, now)
                else:
                    req.reject(reason, now)
                    if 0 <= req.instance < len(self.instances):
                        self.instances[req.instance].done.append(req)
        end = max([now] + [r.finish_s for r in requests if r.finish_s is not None])
        return RunResult(name or self.instances[0].policy.name, requests, self.instances, self.hosts, self.fabric,
                         self.timeline, end, time.perf_counter() - wall0, interrupted,
                         description=self.instances[0].policy.describe(), stats=self.stats)
