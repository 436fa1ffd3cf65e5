"""Restoring a group after the burst, in three simulated phases, then the split.

1. Reclaim: every member needs its dropped layers' memory back, so the group's pool must shrink to what
   the members hold with all layers resident. Admission is held below that size (``reserve``) until the
   KV in use fits; if the group becomes overloaded again meanwhile, the restore is called off.
2. Weights: each member copies the layers it dropped, either from the host copy over its PCIe link (GPUs
   behind one bus share it) or from the members that kept them over the GPU link, whichever
   `restore_copy_time` predicts faster for this hardware; the transfers run on the fabric.
3. Convert: the still-pipelined requests are gathered, a few per leader iteration (default 8), each to the
   member with the most room (its *home*): the home receives the other members' slices of its KV over the
   GPU link while the request stalls. New arrivals wait meanwhile. When none runs pipelined any more, the
   group splits: each member serves its gathered requests alone and the queue is routed again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator, Literal, Sequence

import simpy

from sim.core.hardware import HardwareSpec
from sim.handlers.kunserve.placement import whole

if TYPE_CHECKING:
    from sim.handlers.kunserve.group import PipelineGroup


def restore_copy_time(source: Literal["host", "peer"], slices: Sequence[tuple[int, int]], layer_bytes: float,
                      gpus: Sequence[int | Sequence[int]], hw: HardwareSpec) -> float:
    """Time to copy every member's dropped layers back when nothing else uses the links. ``gpus``: each
    member's GPU (or, for tensor-parallel members, its GPUs; ``layer_bytes`` is then one GPU's slice).

    host: every GPU of member r reads (L - n_r) layers over its own host link; GPUs behind one upstream bus
    share it. peer: member s sends its n_s layers to each of the g-1 others over the GPU link
    (per-direction links, rank to rank)."""
    L = slices[-1][1]
    n = [b - a for a, b in slices]
    if source == "host":
        need = [(L - k) * layer_bytes for k in n]
        per_bus: dict[int, float] = {}
        for member, b in zip(gpus, need):
            for gpu in ([member] if isinstance(member, int) else member):
                per_bus[gpu // hw.gpus_per_bus] = per_bus.get(gpu // hw.gpus_per_bus, 0.0) + b
        t = max(max(b / hw.h2d_bytes_per_s for b in need), max(b / hw.bus_bytes_per_s for b in per_bus.values()))
        return hw.link_latency_s + t
    g = len(n)
    tx = max((g - 1) * k * layer_bytes for k in n)
    rx = max((L - k) * layer_bytes for k in n)
    return hw.gpu_link_latency_s + max(tx, rx) / hw.gpu_link_bytes_per_s


def restore(grp: "PipelineGroup") -> Generator[simpy.Event, object, None]:
    env, c, lead = grp.env, grp.cluster, grp.leader
    t0 = env.now
    grp.state = "reclaiming"
    c.mark(grp.indices, f"restore-start g={grp.g}")
    # 1. reclaim the blocks the dropped layers will need
    while True:
        cap_solo = grp.capacity(grp.solo_pool)
        if lead.bm.used <= cap_solo:
            break
        if grp.overloaded():
            grp.reserve = 0
            grp.update_capacity()
            grp.state = "pipelined"
            grp.window.clear()
            c.mark(grp.indices, "cancel restore")
            return
        grp.reserve = max(0, grp.capacity() - cap_solo)
        grp.update_capacity()
        yield grp.boundary() if lead.in_flight else env.timeout(grp.params.interval_s)
    grp.reserve = 0
    grp.state = "restoring"
    for r, m in enumerate(grp.members):
        grp.weights[r] = m.layout.weights_bytes
        grp.pool[r] = grp.solo_pool[r]
    grp.update_capacity()
    # 2. copy the dropped layers back
    hw, lb = grp.hw, grp.lb
    src = grp.params.restore_from
    if src == "auto":
        ok_host = grp.params.host_copy
        member_gpus = [m.gpus for m in grp.members]
        t_host = restore_copy_time("host", grp.slices, lb, member_gpus, hw) if ok_host else float("inf")
        t_peer = restore_copy_time("peer", grp.slices, lb, member_gpus, hw)
        src = "host" if t_host < t_peer else "peer"
    t1 = env.now
    events = []
    for r, m in enumerate(grp.members):
        if src == "host":
            events.append(c.host_transfer(m, (grp.L - grp.n[r]) * lb, "weights_restore",
                                          on_done=lambda _f, r=r: grp.held[r].update(range(grp.L))))
        else:
            for s, (a, b) in enumerate(grp.slices):
                if s != r:
                    events.append(c.peer_transfer(grp.members[s], m, (b - a) * lb, "weights_restore",
                                                  on_done=lambda _f, r=r, a=a, b=b: grp.held[r].update(range(a, b))))
    yield simpy.AllOf(env, events)
    c.count(f"kunserve_restore_from_{src}")
    c.count("kunserve_restore_copy_s", env.now - t1)
    # 3. gather the pipelined requests to their homes, then split
    grp.state = "converting"
    per_step = grp.params.exchange_per_step
    while True:
        ev = env.event()
        lead.at_boundary(lambda _m: ev.succeed(_pick(grp, per_step)))
        picks = yield ev
        if picks is None:
            break
        if not picks:
            if not lead.in_flight:
                yield env.timeout(grp.params.interval_s)
            continue
        flows: dict[tuple[int, int], float] = {}
        for rid in picks:
            req, _kind, h = grp.inflight[rid]
            for s in range(grp.g):
                if s != h:
                    flows[(s, h)] = flows.get((s, h), 0.0) + grp.f[s] * req.blocks * grp.bb
        events = [c.peer_transfer(grp.members[s], grp.members[h], b, "kv_gather") for (s, h), b in flows.items()]
        c.count("kunserve_gather_bytes", sum(flows.values()) * len(lead.gpus))
        yield simpy.AllOf(env, events)
        for rid in picks:
            req, kind, h = grp.inflight.pop(rid)
            grp.extra[h] -= (1 - grp.f[h]) * req.blocks
            if abs(grp.extra[h]) < 1e-6:
                grp.extra[h] = 0.0
            grp.place(req.blocks, whole(grp.L, h))
            grp.converted[rid] = (req, kind, h)
        grp.update_capacity()
    c.count("kunserve_restore_s", env.now - t0)
    grp.split()


def _pick(grp: "PipelineGroup", per_step: int) -> list[int] | None:
    """At a leader boundary: hold new arrivals back and take up to ``per_step`` running requests out to be
    gathered at the member with the most room. None once nothing runs pipelined."""
    lead = grp.leader
    s = lead.sched
    grp.holding.extend(s.take_waiting())
    running = [*s.decoding.values(), *s.prefilling]
    if not running:
        return None
    picks: list[int] = []
    for req in running:
        if len(picks) == per_step:
            break
        best = None
        for h in sorted(range(grp.g), key=lambda r: grp.kv_blocks_on(r) - grp.pool[r] / grp.bb):
            inc = [(1 - grp.f[h]) * req.blocks if r == h else 0.0 for r in range(grp.g)]
            if grp.fits_move(inc):
                best = (h, inc)
                break
        if best is None:
            continue
        h, inc = best
        grp.extra = [a + b for a, b in zip(grp.extra, inc)]
        kind = lead.take_running(req)
        grp.inflight[req.id] = (req, kind, h)
        picks.append(req.id)
    if not picks and not grp.inflight:
        # nothing fits anywhere: discard the largest running request's KV (recompute) to make room
        req = max(running, key=lambda q: (q.blocks, q.id))
        lead.take_running(req)
        lead.discard_kv(req)
        grp.holding.appendleft(req)
        grp.update_capacity()
        grp.cluster.count("kunserve_gather_discards")
    return picks
