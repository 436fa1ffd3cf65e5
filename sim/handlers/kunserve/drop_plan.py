"""KunServe's drop plan: which instances (and groups that must grow) pool their memory into pipelined
groups, and in which stage order a regrouped set keeps its layers. Pure functions.

A group of g instances keeps one copy of the L decoder layers between them (member r keeps the slice
[r*L//g, (r+1)*L//g)), so each member frees the other slices' weights and its KV pool grows by them. Member
r then holds n_r/L of every request's KV (the KV of its layers), so the group's capacity, in KV blocks of
all layers, is ``min_r (pool_r + (L - n_r) * layer_bytes) / (block_bytes * n_r / L)``; with equal pools M
and L divisible by g this is (g*M + (g-1)*P) / block_bytes (P = L * layer_bytes): a gain of (g-1)*P/k
tokens over g separate instances (k = KV bytes per token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from sim.handlers.kunserve.pipeline import stage_slices


def group_capacity_blocks(pool_bytes: Sequence[float], num_layers: int, layer_bytes: float,
                          block_bytes: float) -> int:
    """KV blocks (of all layers) a group holds after its members drop to their slices. ``pool_bytes[r]``
    is member r's KV pool with every layer resident."""
    g = len(pool_bytes)
    caps = []
    for r, (a, b) in enumerate(stage_slices(num_layers, g)):
        n = b - a
        caps.append((pool_bytes[r] + (num_layers - n) * layer_bytes) * num_layers / (block_bytes * n))
    return math.floor(min(caps) + 1e-9)


def capacity_gain_tokens(g: int, num_layers: int, layer_bytes: float, kv_bytes_per_token: float) -> float:
    """Extra KV tokens a group of g gains by dropping replicas: (g-1) * P / k."""
    return (g - 1) * num_layers * layer_bytes / kv_bytes_per_token


@dataclass(frozen=True)
class InstanceLoad:
    """One serving unit as the planner sees it: KV demand and capacity in blocks, its KV pool with all
    layers resident, whether it votes to drop, and its NVLink domain (node): groups never span domains.
    A solo instance has ``id`` = its instance index; a pipelined group that may grow has ``id`` = its
    leader's index, its member instances in ``members`` and their solo KV pools in ``member_pools``
    (``pool_bytes`` then unused). An instance is one pipeline stage whatever its tensor-parallel degree."""

    id: int
    demand: int
    capacity: int
    pool_bytes: float
    vote: bool
    domain: int = 0
    members: tuple[int, ...] = ()
    member_pools: tuple[float, ...] = ()

    @property
    def deficit(self) -> int:
        return self.demand - self.capacity

    @property
    def instances(self) -> tuple[int, ...]:
        return self.members or (self.id,)

    @property
    def pools(self) -> tuple[float, ...]:
        return self.member_pools or (self.pool_bytes,)


def assign_slices(held: Sequence[frozenset[int]], num_layers: int) -> list[int] | None:
    """A stage order for a group whose members hold ``held[i]`` layers now: ``order[r]`` is the member
    that keeps slice r of `stage_slices` (L, g) -- one that holds all of it already, so forming the group
    copies no weights. Members holding fewer layers are tried first (they have less choice). None if no
    such order exists."""
    g = len(held)
    slices = stage_slices(num_layers, g)
    need = [frozenset(range(a, b)) for a, b in slices]
    cands = [[i for i in sorted(range(g), key=lambda i: (len(held[i]), i)) if need[r] <= held[i]] for r in range(g)]
    order: list[int] = []
    used: set[int] = set()

    def place(r: int) -> bool:
        if r == g:
            return True
        for i in cands[r]:
            if i not in used:
                used.add(i)
                order.append(i)
                if place(r + 1):
                    return True
                order.pop()
                used.discard(i)
        return False

    return list(order) if place(0) else None


def drop_plan(loads: Sequence[InstanceLoad], num_layers: int, layer_bytes: float, block_bytes: float,
              max_group: int | None = None, headroom: float = 1.0) -> list[tuple[int, ...]]:
    """Greedy over serving units (solo instances, and pipelined groups that may grow) sorted by deficit
    (demand - capacity, largest first).

    The most overloaded voter seeds a group and takes partners from the other end of the order (the most
    spare first) until the group's post-drop capacity covers ``headroom`` x the group's summed demand --
    so each group is the smallest that covers its seed, and a group that is still overloaded grows (takes
    solo instances or merges with another group) to the size its demand needs, up to ``max_group``
    instances. A group acts only when at least half of its instances vote; a seed whose group would not (too few voters)
    leaves its partners free for the next seed, and afterwards joins the accepted group (same domain) with
    the most slack. Returns the groups as sorted tuples of unit ids (a solo instance: its index; a group:
    its leader's index)."""
    max_group = max_group or sum(len(x.instances) for x in loads)
    free = sorted(loads, key=lambda x: (-x.deficit, x.id))
    groups: list[list[InstanceLoad]] = []
    leftover: list[InstanceLoad] = []

    def cap(members: list[InstanceLoad]) -> int:
        ms = sorted(members, key=lambda x: x.id)
        return group_capacity_blocks([p for x in ms for p in x.pools], num_layers, layer_bytes, block_bytes)

    def slack(members: list[InstanceLoad]) -> float:
        return cap(members) - headroom * sum(x.demand for x in members)

    def size(members: list[InstanceLoad]) -> int:
        return sum(len(x.instances) for x in members)

    while True:
        seed = next((x for x in free if x.vote), None)
        if seed is None:
            break
        free.remove(seed)
        members = [seed]
        spare = [x for x in free if x.domain == seed.domain]
        while spare and size(members) < max_group:
            nxt = spare.pop()  # the most spare unit left
            if size(members) + len(nxt.instances) > max_group:
                continue
            members.append(nxt)
            if slack(members) >= 0:
                break
        # a group acts when at least half its instances vote (a pipelined group votes with all of them)
        if len(members) > 1 and 2 * sum(len(x.instances) for x in members if x.vote) >= size(members):
            groups.append(members)
            for x in members[1:]:
                free.remove(x)
        else:
            leftover.append(seed)
    for x in leftover:
        cands = [grp for grp in groups if grp[0].domain == x.domain and size(grp) + len(x.instances) <= max_group]
        if cands:
            max(cands, key=lambda grp: slack(grp + [x])).append(x)
    return [tuple(sorted(x.id for x in grp)) for grp in groups]
