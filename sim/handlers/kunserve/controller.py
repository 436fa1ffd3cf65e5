"""The KunServe controller: a SimPy process that samples the cluster every ``interval_s`` (0.5 s, the
authors' constant), drops parameters when instances vote for it, and restores groups after the burst."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

import simpy

from sim.handlers.kunserve.drop_plan import InstanceLoad, drop_plan
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
        if not votes:
            return
        for gids in drop_plan(loads, self.model.num_layers, self.model.weight_bytes_per_layer, self.block_bytes,
                              p.max_group, p.plan_headroom):
            begin(PipelineGroup(c, [c.instances[g] for g in gids], p))
