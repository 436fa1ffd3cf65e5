"""The KunServe controller: a SimPy process that samples the cluster every ``interval_s`` (0.5 s, the
authors' constant), drops parameters when instances vote for it, grows a pipelined group that is still
overloaded (it takes solo instances or merges with another group, sized to the demand it sees:
`drop_plan`; ``grow``), and restores groups after the burst (a grown group splits back into solo
instances)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

import simpy

from sim.handlers.kunserve.drop_plan import InstanceLoad, assign_slices, drop_plan
from sim.handlers.kunserve.forming import begin
from sim.handlers.kunserve.group import PipelineGroup
from sim.handlers.kunserve.restore import restore
from sim.handlers.kunserve.trigger import votes_to_drop

if TYPE_CHECKING:
    from sim.engine.cluster import Cluster


class Controller:
    def __init__(self, cluster: "Cluster", params: Any) -> None:
        self.cluster, self.params = cluster, params
        inst = cluster.instances[0]
        self.model, self.hw = inst.ctx.model, inst.ctx.hw
        self.block_bytes = inst.layout.block_bytes

    def run(self) -> Generator[simpy.Event, object, None]:
        env = self.cluster.env
        while True:
            yield env.timeout(self.params.interval_s)
            self.tick()

    def tick(self) -> None:
        c, p = self.cluster, self.params
        closing = any(i.close_requested for i in c.instances)
        for grp in c.groups:
            if grp.state != "pipelined":
                continue
            grp.after_step()  # releases a finished group at the end of the run
            if grp.state != "pipelined":
                continue
            grp.window.add(grp.demand_blocks() / max(grp.solo_capacity_blocks(), 1))
            if p.restore and not closing and not grp.unexchanged and grp.window.should_restore(grp.queued_blocks()):
                self.cluster.env.process(restore(grp))
        if closing:
            return  # no more arrivals: nothing to drop for
        loads, votes = [], 0
        for inst in c.instances:
            if c.unit_of[inst.index] is not inst:
                continue
            d, cap, q = inst.demand_blocks(), inst.capacity_blocks(), inst.queued_blocks()
            v = votes_to_drop(d, cap, q, inst.head_blocks(), p.drop_threshold)
            votes += v
            loads.append(InstanceLoad(inst.index, d, cap, inst.layout.kv_pool_bytes, v,
                                      inst.gpu // self.hw.gpus_per_node))
        if p.grow:  # a pipelined group still overloaded may grow (or merge with another) while it lasts
            for grp in c.groups:
                if grp.state == "pipelined" and not grp.unexchanged and grp.reserve == 0:
                    v = grp.overloaded()
                    votes += v
                    loads.append(InstanceLoad(grp.leader.index, grp.demand_blocks(), grp.capacity_blocks(), 0.0, v,
                                              grp.leader.gpu // self.hw.gpus_per_node, tuple(grp.indices),
                                              tuple(grp.solo_pool)))
        if not votes:
            return
        for ids in drop_plan(loads, self.model.num_layers, self.model.weight_bytes_per_layer, self.block_bytes,
                             p.max_group, p.plan_headroom):
            grp = self._group(ids)
            if grp is not None:
                begin(grp)

    def _group(self, ids: tuple[int, ...]) -> PipelineGroup | None:
        """The group the drop plan's units form: solo instances by index; units that include pipelined
        groups in a stage order that gives each member a slice it holds (None if there is none)."""
        c, L = self.cluster, self.model.num_layers
        units = [c.unit_of[i] for i in ids]
        if not any(isinstance(u, PipelineGroup) for u in units):
            return PipelineGroup(c, [c.instances[i] for i in ids], self.params)
        members, held = [], []
        for u in units:
            if isinstance(u, PipelineGroup):
                members += u.members
                held += [frozenset(h) for h in u.held]
            else:
                members.append(u)
                held.append(frozenset(range(L)))
        order = assign_slices(held, L)
        if order is None:
            return None
        return PipelineGroup(c, [members[i] for i in order], self.params, ordered=True)
