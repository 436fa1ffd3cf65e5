"""Forming a KunServe group: every member parks at an iteration boundary, then the group starts.

Parking takes a member's running requests out of its scheduler (they keep their KV where it is -- local to
that member, or spread as the group it led kept it when this group grows out of others -- until the
exchange moves it) and its queue into the group's pending list. When the last member has parked, each
keeps only its layer slice (a member of a group this one grows from already holds its new slice: the
stage order is chosen so, `drop_plan.assign_slices`), the leader's pool becomes the group's, the old
groups end (state ``merged``), the pending requests queue at the leader and the KV exchange
(`exchange`) starts.
"""

from __future__ import annotations

from sim.engine.instance import Instance
from sim.handlers.kunserve.exchange import exchange
from sim.handlers.kunserve.group import PipelineGroup
from sim.handlers.kunserve.placement import spread, whole


def begin(grp: PipelineGroup) -> None:
    """Route the members' requests to the group and park each member at its next boundary."""
    if any(m.closed for m in grp.members):
        raise RuntimeError("a group forms only while requests still arrive")
    grp.cluster.set_unit(grp.indices, grp)
    for m in grp.members:
        m.hold()
    for m in grp.members:
        m.at_boundary(lambda m, grp=grp: _park(grp, m))


def _park(grp: PipelineGroup, m: Instance) -> None:
    r = grp.members.index(m)
    s = m.sched
    src = grp.sources.get(m.index)
    if src is not None and src.state == "pipelined":
        src.state = "merged"  # the group this one grows from stops serving at this boundary
    # a request ran on this member alone, or (this member leads a group this one grows from) spread as
    # that group kept it
    p = whole(grp.L, r) if src is None else spread(src.slices, [grp.members.index(x) for x in src.members])
    taken = 0
    for req in [*s.decoding.values(), *s.prefilling]:
        kind = m.take_running(req)
        grp.unexchanged[req.id] = (req, kind, p)
        grp.place(req.blocks, p)
        taken += req.blocks
    grp.pending.extend(s.take_waiting())
    assert not s.swapped, "kunserve runs with recompute preemption"
    assert taken == m.bm.used, "parked blocks are those of the running requests"
    m.bm.release(taken)
    if src is not None and m is not grp.leader:
        s.restore_limits()  # its scheduler led the old group; the new leader's serves this one
    grp.parked.add(m.index)
    if len(grp.parked) == grp.g:
        _form(grp)


def _form(grp: PipelineGroup) -> None:
    env, lead = grp.env, grp.leader
    for r, m in enumerate(grp.members):
        a, b = grp.slices[r]
        grp.held[r] = set(range(a, b))
        lay = m.layout
        grp.weights[r] = lay.non_layer_bytes + grp.n[r] * grp.lb
        grp.pool[r] = lay.usable_bytes - grp.weights[r] - lay.staging_bytes - lay.workspace_bytes
        m.serve_in(grp)
        if m is not lead:
            m.bm.resize(0)  # its pool is part of the group's now
    for src in {id(x): x for x in grp.sources.values()}.values():
        for m in src.members:
            m.release()  # the old group's hold (this group holds them now)
        src.split_s = env.now
    lead.bm.resize(grp.capacity())
    lead.bm.allocate(grp.local_total)
    p = grp.params
    cfg = lead.sched.cfg
    lead.sched.use_limits(cfg.max_num_seqs * grp.g, p.token_budget or cfg.max_num_batched_tokens * grp.g)
    grp.state = "pipelined"
    grp.formed_s = env.now
    grp.update_capacity()
    for req in sorted(grp.pending, key=lambda q: (q.arrival_s, q.id)):
        lead.enqueue(req)
    grp.pending.clear()
    grp.after_step()
    grown = " (grown)" if grp.sources else ""
    grp.cluster.mark(grp.indices, f"drop g={grp.g} gpus {','.join(map(str, grp.gpus))}{grown}")
    grp.cluster.count("drops")
    if grp.sources:
        grp.cluster.count("kunserve_regroups")
        grp.cluster.count("kunserve_max_group", max(0, grp.g - grp.cluster.stats.get("kunserve_max_group", 0)))
    env.process(exchange(grp))
    lead.wake()
