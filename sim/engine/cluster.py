"""A cluster: N data-parallel instances (one GPU each) behind a router, sharing PCIe buses and the host
memory of their nodes, fed by one arrival stream. Runs one policy over one list of requests.

The router sends each request to a serving unit: a GPU's own instance, or a unit an overload handler
formed over several GPUs (a KunServe pipelined group, `ServingUnit`). Round-robin picks a GPU and sends to
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
    """What the router needs of a serving unit: its lowest GPU, where requests go, its KV demand and
    capacity in blocks."""

    @property
    def gpu(self) -> int: ...

    def enqueue(self, req: Request) -> None: ...

    def demand_blocks(self) -> int: ...

    def capacity_blocks(self) -> int: ...


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
    """N data-parallel instances behind a router over serving units."""

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
        # one model (and cost model) for every GPU, or a list with one per GPU (e.g. two models on one bus)
        models = list(model) if isinstance(model, (list, tuple)) else [model] * num_gpus
        costs = list(cost) if isinstance(cost, (list, tuple)) else [cost] * num_gpus
        if len(models) != num_gpus or len(costs) != num_gpus:
            raise ValueError(f"one model and cost model per GPU: got {len(models)} models and {len(costs)} cost "
                             f"models for {num_gpus} GPUs")
        self.engine = engine or EngineConfig()
        self.env = simpy.Environment()
        self.fabric = Fabric.for_gpus(self.env, hw, num_gpus)
        self.timeline = timeline
        if timeline is not None:
            self.fabric.on_span = self._on_transfer
        n_nodes = -(-num_gpus // hw.gpus_per_node)
        self.hosts = [HostMemory(hw.host_memory_bytes) for _ in range(n_nodes)]
        self.router = router
        per_bus: dict[int, list[int]] = {}
        for g in range(num_gpus):
            per_bus.setdefault(g // hw.gpus_per_bus, []).append(g)
        self.buses = {b: Bus(b, hw.bus_bytes_per_s, tuple(gs)) for b, gs in per_bus.items()}
        self.instances: list[Instance] = []
        lengths = output_lengths or OutputLengths.unknown()
        for g in range(num_gpus):
            ctx = InstanceContext(models[g], hw, costs[g], self.engine, g, self.buses[g // hw.gpus_per_bus],
                                  lengths)
            self.instances.append(Instance(self.env, ctx, policy_factory(), self.fabric,
                                           self.hosts[g // hw.gpus_per_node], timeline, detail_iterations,
                                           sample_interval_s, scheduler_class, record_error))
        # A bus is private when at most one of its GPUs ever moves data over it; then iterations on it
        # are timed in closed form.
        for inst in self.instances:
            users = [o for o in self.instances if o.ctx.bus is inst.ctx.bus
                     and (o.policy.uses_host_link or self.engine.preemption == "swap")]
            inst.private = len(users) <= 1
        self._rr = 0
        self.unit_of: list[ServingUnit] = list(self.instances)  # GPU -> its serving unit
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
        """Distinct serving units in GPU order."""
        return self._units

    def set_unit(self, gpus: Iterable[int], unit: ServingUnit | None) -> None:
        """Route the requests of ``gpus`` to ``unit`` (a multi-GPU unit, or back to each GPU's own instance
        when ``unit`` is None)."""
        for g in gpus:
            self.unit_of[g] = unit if unit is not None else self.instances[g]
        seen: dict[int, ServingUnit] = {}
        for u in self.unit_of:
            seen.setdefault(id(u), u)
        self._units = list(seen.values())

    def route(self, req: Request) -> ServingUnit:
        n = len(self.instances)
        if self.router == "round-robin" or n == 1:
            inst = self.instances[self._rr % n]
            self._rr += 1
            return self.unit_of[inst.gpu]
        best, key = self._units[0], (float("inf"), 0)
        for u in self._units:
            k = (u.demand_blocks() / max(u.capacity_blocks(), 1), u.gpu)
            if k < key:
                best, key = u, k
        return best

    # --- what handlers report ---------------------------------------------------------------------------
    def mark(self, gpus: Iterable[int], name: str) -> None:
        """An instant event on each GPU's compute track of the timeline (drops, restores)."""
        if self.timeline is not None:
            for g in gpus:
                self.timeline.mark(f"gpu{g}/compute", name, self.env.now)

    def count(self, key: str, value: float = 1.0) -> None:
        self.stats[key] = self.stats.get(key, 0.0) + value

    # --- the run ----------------------------------------------------------------------------------------
    def _arrivals(self, requests: list[Request]) -> Generator[simpy.Event, object, None]:
        env = self.env
        for req in requests:
            if req.arrival_s > env.now:
                yield env.timeout(_delay_to(env.now, req.arrival_s))
            self.route(req).enqueue(req)
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
