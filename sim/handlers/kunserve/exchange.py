"""KV exchange after a drop: the requests that were running on a member when the group formed still have
the KV of every layer there (or, when the group grew out of another, spread as that group kept it:
`placement`); member r now computes only its slice, so each such request's KV of slice r must move to
member r from wherever it is. A request stalls (out of the scheduler, keeping its blocks) until its KV has
moved.

At each of the leader's iteration boundaries up to ``exchange_per_step`` requests (default 8, the authors'
constant) start moving, origins interleaved so that what members receive and what they send balance. A
move reserves its incoming KV on the receivers first (``extra``: the group's pool shrinks so admissions
cannot take that room) and is skipped while a receiver lacks room; the next candidate's blocks are kept
from admission (``reserve``) so new requests cannot starve the exchange. Each (origin, receiver) pair is
one transfer over the GPU link (``peer_route``), sharing it with everything else on the fabric. When
every transfer of the round is done, the senders free the moved slices and the requests resume.

If no move fits and nothing runs that could free memory, the largest stalled request is preempted by
recompute (its KV discarded) so the others can move.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generator

import simpy

from sim.handlers.kunserve.placement import Placement, incoming, moves, origin

if TYPE_CHECKING:
    from sim.handlers.kunserve.group import PipelineGroup


def _candidates(grp: "PipelineGroup") -> list[int]:
    """Stalled request ids, origins interleaved (round-robin over members, each in stall order)."""
    by_origin: dict[int, deque[int]] = {}
    for rid, (_req, _kind, p) in grp.unexchanged.items():
        if rid not in grp.exchanging:
            by_origin.setdefault(origin(p), deque()).append(rid)
    out: list[int] = []
    queues = [by_origin[o] for o in sorted(by_origin)]
    while queues:
        for q in queues:
            out.append(q.popleft())
        queues = [q for q in queues if q]
    return out


def _incoming(grp: "PipelineGroup", blocks: int, p: Placement) -> list[float]:
    return [x * blocks for x in incoming(p, grp.slices, grp.L)]


def exchange(grp: "PipelineGroup") -> Generator[simpy.Event, object, None]:
    env = grp.env
    per_step = grp.params.exchange_per_step
    while grp.unexchanged:
        yield grp.boundary()
        picks: list[int] = []
        for rid in _candidates(grp):
            if len(picks) == per_step:
                break
            req, _kind, p = grp.unexchanged[rid]
            inc = _incoming(grp, req.blocks, p)
            if grp.fits_move(inc):
                grp.extra = [a + b for a, b in zip(grp.extra, inc)]
                grp.exchanging.add(rid)
                picks.append(rid)
        rest = [rid for rid in grp.unexchanged if rid not in grp.exchanging]
        grp.reserve = grp.unexchanged[rest[0]][0].blocks if rest else 0
        if not picks:
            if not grp.leader.in_flight:
                _discard_largest(grp)  # nothing runs that could free memory: make room
                grp.update_capacity()
                grp.leader.wake()
                yield env.timeout(0)  # let the leader schedule first
            else:
                grp.update_capacity()
            continue
        grp.update_capacity()
        flows: dict[tuple[int, int], float] = {}
        for rid in picks:
            req, _kind, p = grp.unexchanged[rid]
            for (o, r), n in moves(p, grp.slices).items():
                flows[(o, r)] = flows.get((o, r), 0.0) + n / grp.L * req.blocks * grp.bb
        events = [grp.cluster.peer_transfer(grp.members[o], grp.members[r], b, "kv_exchange")
                  for (o, r), b in flows.items()]
        grp.cluster.count("kunserve_exchange_bytes", sum(flows.values()) * len(grp.leader.gpus))
        yield simpy.AllOf(env, events)
        for rid in picks:
            req, kind, p = grp.unexchanged.pop(rid)
            grp.exchanging.discard(rid)
            grp.extra = [a - b for a, b in zip(grp.extra, _incoming(grp, req.blocks, p))]
            grp.place(req.blocks, p, -1)
            grp.leader.put_running(req, kind)
            grp.cluster.count("kunserve_exchanged_requests")
        grp.extra = [0.0 if abs(x) < 1e-6 else x for x in grp.extra]
        if not grp.unexchanged:
            grp.reserve = 0
        grp.update_capacity()
    grp.reserve = 0
    grp.update_capacity()
    grp.after_step()


def _discard_largest(grp: "PipelineGroup") -> None:
    cands = [rid for rid in grp.unexchanged if rid not in grp.exchanging]
    if not cands:
        return
    rid = max(cands, key=lambda i: (grp.unexchanged[i][0].blocks, i))
    req, _kind, p = grp.unexchanged.pop(rid)
    grp.place(req.blocks, p, -1)
    grp.leader.discard_kv(req)
    grp.leader.sched.requeue_front(req)
    grp.cluster.count("kunserve_exchange_discards")
