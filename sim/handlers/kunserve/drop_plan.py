"""KunServe's drop plan: which instances pool their memory into pipelined groups. Pure functions.

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
    """One solo instance as the planner sees it: KV demand and capacity in blocks, its KV pool with all
    layers resident, whether it votes to drop, and its NVLink domain (node): groups never span domains."""

    id: int
    demand: int
    capacity: int
    pool_bytes: float
    vote: bool
    domain: int = 0

    @property
    def deficit(self) -> int:
        return self.demand - self.capacity


def drop_plan(loads: Sequence[InstanceLoad], num_layers: int, layer_bytes: float, block_bytes: float,
              max_group: int | None = None, headroom: float = 1.0) -> list[tuple[int, ...]]:
    """Greedy over instances sorted by deficit (demand - capacity, largest first).

    The most overloaded voter seeds a group and takes partners from the other end of the order (the most
    spare first) until the group's post-drop capacity covers ``headroom`` x the group's summed demand --
    so each group is the smallest that covers its seed. A group acts only when at least half of its
    members vote; a seed whose group would not (too few voters) leaves its partners free for the next
    seed, and afterwards joins the accepted group (same domain) with the most slack. Returns the groups as
    sorted tuples of instance ids."""
    max_group = max_group or len(loads)
    free = sorted(loads, key=lambda x: (-x.deficit, x.id))
    groups: list[list[InstanceLoad]] = []
    leftover: list[InstanceLoad] = []

    def cap(members: list[InstanceLoad]) -> int:
        ms = sorted(members, key=lambda x: x.id)
        return group_capacity_blocks([x.pool_bytes for x in ms], num_layers, layer_bytes, block_bytes)

    def slack(members: list[InstanceLoad]) -> float:
        return cap(members) - headroom * sum(x.demand for x in members)

    while True:
        seed = next((x for x in free if x.vote), None)
        if seed is None:
            break
        free.remove(seed)
        members = [seed]
        spare = [x for x in free if x.domain == seed.domain]
        while spare and len(members) < max_group:
            members.append(spare.pop())  # the most spare instance left
            if slack(members) >= 0:
                break
        if len(members) > 1 and 2 * sum(x.vote for x in members) >= len(members):
            groups.append(members)
            for x in members[1:]:
                free.remove(x)
        else:
            leftover.append(seed)
    for x in leftover:
        cands = [grp for grp in groups if grp[0].domain == x.domain and len(grp) < max_group]
        if cands:
            max(cands, key=lambda grp: slack(grp + [x])).append(x)
    return [tuple(sorted(x.id for x in grp)) for grp in groups]
