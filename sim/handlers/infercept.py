"""InferCept (ICML'24) applied to memory pressure: per paused request, discard, swap or keep its KV,
whichever wastes the least GPU memory x time.

When a running request needs a KV block and none is free, some request must pause. vLLM always preempts
the most recently arrived one (the *victim*) by one fixed mode. Here the engine compares, with the cost
model and the link, the memory x time each option wastes:

- discard (the victim's KV is dropped and recomputed later): recomputing its c tokens costs
  t_rc = L x layer_time(prefill of c) + fixed_time, during which every running request's KV idles:
  waste = t_rc x M, with M the KV bytes in use;
- swap (the victim's KV goes to host memory and comes back): this engine's iteration waits for its swaps,
  out now and in later: t_sw = 2 x latency + m_v / d2h + m_v / h2d, waste = t_sw x M; only when the swap
  space and host memory can take it;
- keep (the requester pauses with its KV preserved until memory frees): waste = m_r x T_wait, with T_wait
  the expected time until a block frees -- the mean time between request completions on this engine
  (EWMA), at least one iteration; only when other requests keep decoding (something will free memory).

A kept request holds its blocks; it resumes, before any new admission, as soon as its next block fits.
If nothing runs and no kept request fits, the latest kept one is discarded so the engine cannot stall.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from sim.core.batch import BatchShape
from sim.core.request import Request, State
from sim.engine.handler import OverloadHandler
from sim.engine.queues import DemandQueue
from sim.engine.scheduler import ScheduledBatch, Scheduler

if TYPE_CHECKING:
    from sim.cost.base import CostModel
    from sim.engine.cluster import Cluster
    from sim.engine.instance import Instance


class WasteEstimator:
    """Memory x time (byte-seconds) each option wastes, for one engine."""

    def __init__(self, cost: "CostModel", num_layers: int, block_bytes: float, h2d_bytes_per_s: float,
                 d2h_bytes_per_s: float, latency_s: float, alpha: float = 0.2) -> None:
        self.cost, self.L, self.bb = cost, num_layers, block_bytes
        self.h2d, self.d2h, self.lat, self.alpha = h2d_bytes_per_s, d2h_bytes_per_s, latency_s, alpha
        self.finish_gap_s: float | None = None
        self._last_finish: float | None = None

    def on_finish(self, t: float) -> None:
        if self._last_finish is not None:
            gap = t - self._last_finish
            self.finish_gap_s = gap if self.finish_gap_s is None else (1 - self.alpha) * self.finish_gap_s + self.alpha * gap
        self._last_finish = t

    def discard(self, victim: Request, kv_bytes: float) -> float:
        c = max(victim.prompt_tokens + victim.generated, 1)
        shape = BatchShape.prefill_batch(1, c)
        return (self.L * self.cost.layer_time(shape) + self.cost.fixed_time(shape)) * kv_bytes

    def swap(self, victim: Request, kv_bytes: float) -> float:
        m = victim.blocks * self.bb
        return (2 * self.lat + m / self.d2h + m / self.h2d) * kv_bytes

    def keep(self, req: Request, iteration_s: float) -> float:
        if self.finish_gap_s is None:
            return float("inf")
        return req.blocks * self.bb * max(self.finish_gap_s, iteration_s)


class InferceptScheduler(Scheduler):
    """A `Scheduler` whose preemptions choose discard / swap / keep per request (see the module doc). Its
    handler gives it the waste estimator (`use_estimator`) before the run starts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.est: WasteEstimator | None = None
        self.paused: deque[Request] = deque()  # kept requests waiting for their next block
        self.paused_blocks = 0
        self.decisions: Counter = Counter()

    def use_estimator(self, est: WasteEstimator) -> None:
        self.est = est

    def has_work(self) -> bool:
        return super().has_work() or bool(self.paused)

    def held_blocks(self) -> int:
        return self.paused_blocks

    def _finish(self, req: Request, t: float) -> None:
        super()._finish(req, t)
        assert self.est is not None
        self.est.on_finish(t)

    def _choose(self, victim: Request, req: Request) -> str:
        assert self.est is not None, "InferceptScheduler needs use_estimator before it runs"
        kv = self.bm.used * self.block_bytes
        options = {"discard": self.est.discard(victim, kv)}
        if self.can_swap_out(victim):
            options["swap"] = self.est.swap(victim, kv)
        if len(self.decoding) > 1:
            options["keep"] = self.est.keep(req, self.gaps[-1] if self.gaps else 0.0)
        return min(options, key=lambda k: (options[k], k))

    def make_room(self, req: Request, k: int, batch: ScheduledBatch) -> bool:
        victim = self._victim()
        choice = self._choose(victim, req)
        self.decisions[choice] += 1
        if choice == "keep":
            self._leave_decode(req, k)
            self.paused.append(req)
            self.paused_blocks += req.blocks
            return False
        self.preempt(victim, batch, "swap" if choice == "swap" else "recompute")
        return victim is not req

    def schedule(self, now: float):  # type: ignore[override]
        k = self.k
        while self.paused:
            req = self.paused[0]
            need = self.bm.blocks_for(req.prompt_tokens + req.generated) - req.blocks
            if need > self.bm.free:
                if self.decoding or self.prefilling:
                    break
                # nothing runs that could free memory: discard the latest kept request
                last = self.paused.pop()
                self.paused_blocks -= last.blocks
                self.bm.release(last.blocks)
                last.blocks = last.computed = 0
                last.preemptions += 1
                self.preemptions += 1
                last.state = State.WAITING
                self.waiting.appendleft(last)
                continue
            self.paused.popleft()
            self.paused_blocks -= req.blocks
            self._enter_decode(req, k)
        if not self.paused:
            return super().schedule(now)
        # no admission while a kept request waits for memory: the queue is set aside for this iteration
        # (requests it preempts collect in a fresh queue and go to the front of the real one afterwards)
        held, self.waiting = self.waiting, DemandQueue(self.bm.block_size)
        try:
            return super().schedule(now)
        finally:
            preempted, self.waiting = self.waiting, held
            for r in reversed(preempted):
                held.appendleft(r)


class Infercept(OverloadHandler):
    name = "infercept"
    scheduler_class = InferceptScheduler

    def engine_overrides(self) -> dict[str, Any]:
        # swap space is set up and the buses are treated as shared; the choice is made per request
        return {"preemption": "swap"}

    def attach(self, cluster: "Cluster") -> None:
        super().attach(cluster)
        for inst in cluster.instances:
            sched = inst.sched
            if not isinstance(sched, InferceptScheduler):
                raise ValueError("infercept: the cluster must be built with its scheduler_class")
            hw, model = inst.ctx.hw, inst.ctx.model
            sched.use_estimator(WasteEstimator(inst.ctx.cost, model.num_layers, inst.layout.block_bytes,
                                               inst.h2d_rate, inst.d2h_rate, hw.link_latency_s))

    @staticmethod
    def decisions(instances: list["Instance"]) -> Counter:
        out: Counter = Counter()
        for i in instances:
            if isinstance(i.sched, InferceptScheduler):
                out.update(i.sched.decisions)
        return out
