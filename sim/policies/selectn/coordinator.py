"""Select-N's per-bus coordinator: the GPUs behind one upstream PCIe bus pick their intervals together.

Members are instances, by index (`sim.engine.bus`): below, "GPU" is one member. A tensor-parallel
instance copies on all its ranks under the switch at once, so its demand is the sum over its ranks
(`SelectN` multiplies by ``bus.ranks``).

Each GPU posts its candidate intervals for its next iteration. A candidate says how much weight it keeps in
host memory, whether it uses the host link at all, and -- for every number m of GPUs copying over the bus
at once -- whether it meets the GPU's SLO constraints and how many bytes/s it asks of the bus (its copy and
swap bytes over its predicted iteration time). `choose` enumerates the combinations (one candidate per
GPU), keeps those in which every GPU meets its SLO at the bandwidth share it gets there (m = number of
GPUs in the combination that copy, plus any that are copying right now) and whose summed demand fits the
bus, and returns the one that keeps the most weight bytes in host memory (ties: less bus demand, then
larger intervals, i.e. more slack). `BusCoordinator` is the small stateful object one deployment keeps per
bus (`sim.engine.bus.Bus.service`): it remembers what the other GPUs posted last and answers each GPU when it plans.
`bus_others` and `solo_peer` read what the GPU's bus peers are doing now (idle, running, waiting).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Sequence

from sim.engine.bus import BusMember
from sim.engine.policy import InstanceContext


@dataclass(frozen=True)
class IntervalCandidate:
    interval: int
    host_bytes: float
    uses_link: bool
    ok: tuple[bool, ...]  # ok[m-1]: meets the SLO constraints when m GPUs of the bus copy at once
    demand: tuple[float, ...]  # demand[m-1]: bytes/s this GPU asks of the bus at that share

    def ok_at(self, m: int) -> bool:
        return self.ok[min(max(m, 1), len(self.ok)) - 1]

    def demand_at(self, m: int) -> float:
        return self.demand[min(max(m, 1), len(self.demand)) - 1]


def idle_candidate(interval: int, host_bytes: float, shares: int) -> IntervalCandidate:
    """What an idle GPU (nothing to run) contributes: its current plan, no link use, no demand."""
    return IntervalCandidate(interval, host_bytes, False, (True,) * shares, (0.0,) * shares)


def choose(cands: Sequence[Sequence[IntervalCandidate]], bus_bytes_per_s: float,
           busy: Sequence[bool] | None = None) -> tuple[int, ...] | None:
    """Indices (one per GPU) of the best feasible combination, or None if no combination is feasible.

    ``busy[g]``: GPU g is copying right now (its iteration in flight), so it shares the bus whatever it
    picks next. A GPU that does not use the link meets its constraints at any share."""
    n = len(cands)
    busy = list(busy) if busy is not None else [False] * n
    best: tuple | None = None
    best_idx: tuple[int, ...] | None = None
    for idx in product(*(range(len(c)) for c in cands)):
        combo = [cands[g][j] for g, j in enumerate(idx)]
        users = sum(1 for g, c in enumerate(combo) if c.uses_link or busy[g])
        m = max(users, 1)
        if not all(c.ok_at(m) if c.uses_link else c.ok_at(1) for c in combo):
            continue
        demand = sum(c.demand_at(m) for c in combo)
        if demand > bus_bytes_per_s * (1 + 1e-9):
            continue
        key = (sum(c.host_bytes for c in combo), -demand, sum(c.interval for c in combo))
        if best is None or key > best:
            best, best_idx = key, idx
    return best_idx


class BusCoordinator:
    """Per-bus state shared by the Select-N policies of the GPUs on that bus."""

    def __init__(self, bus_bytes_per_s: float, shares: int) -> None:
        self.bus_bytes_per_s = bus_bytes_per_s
        self.shares = shares
        self.members: set[int] = set()  # instances whose policies plan through this coordinator
        self.posted: dict[int, list[IntervalCandidate]] = {}
        self.last_choice: dict[int, int] = {}
        self.decisions = 0
        self.infeasible = 0

    def join(self, member: int) -> None:
        self.members.add(member)

    def decide(self, gpu: int, cands: list[IntervalCandidate], others_idle: dict[int, IntervalCandidate],
               others_busy: dict[int, bool]) -> IntervalCandidate | None:
        """Post ``gpu``'s candidates and pick every member's interval; returns ``gpu``'s pick (None: no
        feasible combination). ``others_idle`` replaces the posted candidates of GPUs with nothing to run."""
        self.posted[gpu] = cands
        order = sorted(self.members)
        lists: list[Sequence[IntervalCandidate]] = []
        busy: list[bool] = []
        for g in order:
            if g == gpu:
                lists.append(cands)
            elif g in others_idle:
                lists.append([others_idle[g]])
            elif g in self.posted:
                lists.append(self.posted[g])
            else:  # has not planned yet: nothing known, assume it does not copy
                lists.append([idle_candidate(0, 0.0, self.shares)])
            busy.append(g != gpu and others_busy.get(g, False))
        self.decisions += 1
        idx = choose(lists, self.bus_bytes_per_s, busy)
        if idx is None:
            self.infeasible += 1
            return None
        for g, j in zip(order, idx):
            self.last_choice[g] = lists[order.index(g)][j].interval
        return lists[order.index(gpu)][idx[order.index(gpu)]]


def bus_others(ctx: InstanceContext, shares: int) -> tuple[dict[int, IntervalCandidate], dict[int, bool], dict[int, bool]]:
    """Other GPUs on this bus, in three groups:
    - idle: nothing to run (no iteration in flight, so no copy), as candidates that do not use the link;
    - busy: running requests; True if they may copy during this iteration (copying now, holding an
      offloaded plan, or swapping KV);
    - queued: peers that copy only once this GPU lets them -- requests waiting for admission and
      nothing running (True if they would copy once they start: `admit` holds them back while this GPU
      runs `solo`), or running without the link and held off it by this GPU's solo iteration
      (`wants_link`). So a peer that gets work, or wants to offload, mid-iteration never steals the
      bandwidth an iteration was planned with."""
    idle: dict[int, IntervalCandidate] = {}
    busy: dict[int, bool] = {}
    queued: dict[int, bool] = {}
    for o in ctx.bus.peers(ctx.index):
        g, v = o.index, o.view
        moving = bool(v.plan.offloaded) or v.config.preemption == "swap"
        if v.in_flight():
            busy[g] = moving or o.link.uses_link_now
            if not busy[g] and o.link.wants_link:
                del busy[g]
                queued[g] = True
        elif v.waiting:
            queued[g] = moving
        else:
            idle[g] = idle_candidate(v.plan.interval or 0, v.plan.host_bytes(v.model), shares)
    return idle, busy, queued


def solo_peer(ctx: InstanceContext) -> BusMember | None:
    """A bus peer whose running requests were last planned with the bus to themselves."""
    for o in ctx.bus.peers(ctx.index):
        if o.link.solo and o.view.in_flight():
            return o
    return None
