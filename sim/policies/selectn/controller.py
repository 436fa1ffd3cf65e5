"""Select-N's online stage: pick the offloading interval before every iteration.

Each iteration the controller
1. bounds the live batch with the performance record (`performance_record`: prefill and decode parts rounded up to
   the grid) and gets the predicted iteration time at every candidate interval (the largest interval for
   each number of offloaded layers, plus "nothing offloaded") and every bandwidth share of the bus, plus the
   cost of switching from the current plan (layers that become resident are copied in first: promotion);
2. checks the requests' remaining SLO budgets:
   - prefilling requests: TTFT deadline minus now (time already spent waiting counts), split over the
     chunks still to go;
   - decoding requests: mean-TPOT pacing. A request with R tokens to go must finish by first token +
     (output-1) x TPOT, so interval i is fine for it if T_i x R + switch cost <= time left;
   - a prefill iteration that moves away from the decode plan also charges the way back to the requests
     that will decode next (amortised over their remaining tokens);
3. keeps the intervals whose pool holds the KV that the running requests will need by their end (so
   decode growth never preempts) and -- through the per-bus coordinator (`coordinator.py`) when GPUs share a
   bus -- picks the one that keeps the most weight bytes in host memory while meeting every budget;
4. applies hysteresis: moving to a smaller interval (more offload) waits until that choice repeats for
   ``hysteresis`` iterations; moving to a larger one when needed to meet the SLO happens at once. Prefill
   iterations and decode-only iterations keep separate intervals.

Staging: an offloaded layer lands in one whole-layer buffer (the paper's) or, with ``staging_chunks`` > 1, in
pieces through ``staging_slots`` one-piece slots (`OffloadPlan.select_n`); the record is built for that
staging, so its times, pools and i_max already include it.

Admission: a request is admitted only if the fastest plan that holds the KV of the batch it would join
meets its TTFT and TPOT; if it would meet them alone it waits (`DEFER`), otherwise it is rejected with the
SLO and the predicted time in the reason -- it is never admitted to be served late. Output lengths are
taken as known (a real engine would reserve ``max_tokens``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from sim.core.batch import BatchShape
from sim.core.offload_plan import OffloadPlan
from sim.engine.memory import MemoryLayout
from sim.engine.policy import InstanceContext, OffloadPolicy
from sim.engine.scheduler import DEFER
from sim.policies.selectn.coordinator import BusCoordinator, Candidate, bus_others, idle_candidate, solo_peer
from sim.policies.selectn.performance_record import PerformanceRecord, efficient_intervals, record_for

if TYPE_CHECKING:
    from sim.core.request import Request
    from sim.engine.instance import Instance

INF = float("inf")


class SelectN(OffloadPolicy):
    """Select-N (arXiv 2502.08182): interval per iteration from the record, coordinated per bus."""

    name = "selectn"

    def __init__(self, hysteresis: int = 3, min_interval: int = 1, record: str | None = None,
                 coordinate: bool = True, admission: bool = True, separate_phases: bool = True,
                 log_limit: int = 10_000, staging_chunks: int = 1, staging_slots: int = 2) -> None:
        """``staging_chunks`` > 1 streams each offloaded layer in that many pieces through ``staging_slots``
        slots of one piece (`OffloadPlan.select_n`): less staging memory (more KV), less copy hidden."""
        if hysteresis < 1:
            raise ValueError(f"hysteresis must be >= 1, got {hysteresis}")
        if staging_chunks < 1 or (staging_chunks > 1 and not 1 <= staging_slots <= staging_chunks):
            raise ValueError(f"staging_chunks must be >= 1 and staging_slots in [1, staging_chunks], got "
                             f"{staging_chunks} and {staging_slots}")
        self.staging_chunks, self.staging_slots = staging_chunks, staging_slots
        self.hysteresis = hysteresis
        self.min_interval = min_interval
        self.record_path = record
        self.coordinate = coordinate
        self.admission = admission
        self.separate_phases = separate_phases
        self.log_limit = log_limit

    # --- set-up -------------------------------------------------------------------------------------
    def setup(self, ctx: InstanceContext) -> None:
        super().setup(ctx)
        m, L = ctx.model, ctx.model.num_layers
        if self.record_path:
            rec = PerformanceRecord.load(self.record_path)
            if rec.num_layers != L or rec.meta["model"] != m.name:
                raise ValueError(f"selectn: record {self.record_path} is for {rec.meta['model']}, not {m.name}")
            if rec.chunks != self.staging_chunks or (rec.chunks > 1 and rec.slots != self.staging_slots):
                raise ValueError(f"selectn: record {self.record_path} stages layers in {rec.chunks} piece(s), "
                                 f"not staging_chunks={self.staging_chunks}, staging_slots={self.staging_slots}")
        else:
            rec = record_for(m, ctx.hw, ctx.cost, ctx.engine, staging_chunks=self.staging_chunks,
                             staging_slots=self.staging_slots)
        self.rec = rec
        self.L = L
        if not 1 <= self.min_interval <= L:
            raise ValueError(f"selectn: min_interval must be in [1, {L}], got {self.min_interval}")
        self.cands = efficient_intervals(L, self.min_interval)
        self.col = np.array([i - 1 for i in self.cands])
        self.plans = [rec.plans[i - 1] for i in self.cands]
        self.off = [p.offloaded_set for p in self.plans]
        self.blocks = np.array([MemoryLayout.build(m, ctx.hw, ctx.engine, p, check=False).kv_blocks
                                for p in self.plans])
        self.host = rec.host_bytes[self.col]
        self.pcie = rec.pcie_bytes[self.col]
        self.pos = {i: j for j, i in enumerate(self.cands)}
        self.shares = len(rec.rates)
        self.rates = np.array(rec.rates)
        self.bs = ctx.engine.block_size
        self.lb = rec.layer_bytes
        self.state: dict[str, int | None] = {"prefill": None, "decode": None}
        self.pending: dict[str, list] = {"prefill": [None, 0], "decode": [None, 0]}
        self.iterations: Counter = Counter()  # (kind, interval) -> iterations run with it
        self.log: list[tuple] = []  # (time, kind, interval, budget ok, predicted s)
        self.predicted_misses = 0
        self.uses_link_now = False  # whether the iteration in flight moves data over the host link
        # solo: the iteration in flight was planned with the bus to itself (no peer copying); bus peers with
        # nothing running then hold their queue back (`admit`) until this GPU plans with them again
        self.solo = False
        self.busy_until = 0.0  # predicted end of the iteration in flight
        self.wants_link = False  # held off the link by a solo peer although a copying plan was preferred
        self._wake_at: float | None = None
        self._promote: dict[tuple[int, int], int] = {}
        self.coord: BusCoordinator | None = None
        if self.coordinate and len(ctx.bus_gpus) > 1:
            reg = ctx.shared.setdefault("selectn_bus", {})
            bus = ctx.gpu // ctx.hw.gpus_per_bus
            self.coord = reg.setdefault(bus, BusCoordinator(ctx.hw.bus_bytes_per_s, self.shares))
            self.coord.join(ctx.gpu, self)

    def _interval_of(self, plan: OffloadPlan) -> int:
        return plan.interval or self.L + 1

    def initial_plan(self) -> OffloadPlan:
        """The fastest plan that leaves room for KV (demoting later is free; promoting costs copies)."""
        ok = np.nonzero(self.blocks >= 1)[0]
        return self.plans[ok[-1]] if len(ok) else self.plans[0]

    def max_kv_plan(self) -> OffloadPlan:
        return self.plans[0]

    def host_weight_bytes(self) -> float:
        """Host memory keeps a copy of every layer the controller may offload."""
        return float(self.host[0])

    def describe(self) -> str:
        staged = "" if self.staging_chunks == 1 else f", staging {self.staging_slots}/{self.staging_chunks} layer"
        return f"selectn(hysteresis={self.hysteresis}{staged})"

    # --- helpers ------------------------------------------------------------------------------------
    def _n_promote(self, cur: int, j: int) -> int:
        key = (cur, j)
        n = self._promote.get(key)
        if n is None:
            cur_off = self.rec.plans[cur - 1].offloaded_set
            n = self._promote[key] = len(cur_off - self.off[j])
        return n

    def _predict(self, shape: BatchShape) -> np.ndarray:
        """Conservative time (shares x candidates); beyond the record's grid, the cost model's time."""
        b = self.rec.bound(shape)
        if b is None:
            c = self.rec.cost or self.ctx.cost
            b = (c.layer_time(shape), c.fixed_time(shape))
        return np.array([self.rec.times(b[0], b[1], s) for s in range(self.shares)])[:, self.col]

    def holds_back(self, inst: "Instance") -> bool:
        return self.admission and solo_peer(self.ctx) is not None

    def _wake_later(self, inst: "Instance", t: float) -> None:
        """Wake ``inst`` at ``t`` (once), to try its held-back queue again."""
        env = self.ctx.shared.get("env")
        if env is None or (self._wake_at is not None and self._wake_at <= t):
            return
        self._wake_at = t

        def wake():
            yield env.timeout(max(t - env.now, 0.0))
            if self._wake_at == t:
                self._wake_at = None
            inst.wake()
        env.process(wake())

    def _reserved(self, sched, extra: "Request | None" = None) -> int:
        bs, tot = self.bs, 0
        for r in sched.decoding.values():
            tot += -(-(r.prompt_tokens + r.output_tokens) // bs)
        for r in sched.prefilling:
            tot += -(-(r.prompt_tokens + r.output_tokens) // bs)
        if extra is not None:
            tot += -(-(extra.prompt_tokens + extra.output_tokens) // bs)
        return tot

    def _mem_ok(self, inst: "Instance") -> np.ndarray:
        sched, used = inst.sched, inst.bm.used
        growth = len(getattr(sched, "_block_at", {}).get(sched.k + 1, ()))
        for need in (max(used + growth, self._reserved(sched)), used + growth, used):
            ok = self.blocks >= need
            if ok.any():
                return ok
        return self.blocks >= 0

    # --- the controller -----------------------------------------------------------------------------
    def plan_for(self, inst: "Instance", shape: BatchShape, now: float) -> OffloadPlan:
        kind = ("prefill" if shape.prefill_tokens else "decode") if self.separate_phases else "decode"
        cur = self._interval_of(inst.plan)
        mem_ok = self._mem_ok(inst)
        batch = inst.current_batch
        swap = (batch.swap_in_bytes + batch.swap_out_bytes) if batch is not None else 0.0
        T = self._predict(shape) + swap / self.rates[:, None]  # (shares, cands)
        n_prom = np.array([self._n_promote(cur, j) for j in range(len(self.cands))])
        per_copy = self.lb / self.rates + self.rec.latency_s  # (shares,)
        # a switch is a one-off burst of copies that a peer may start sharing at any moment: worst share
        S = np.repeat((n_prom * per_copy[-1])[None, :], self.shares, axis=0)
        V = self._violations(inst, shape, now, kind, T, S, per_copy, mem_ok)  # (shares, cands)
        idle, busy, queued = bus_others(self.ctx, self.shares)
        cands = [Candidate(self.cands[j], float(self.host[j]), bool(self.pcie[j] or n_prom[j] or swap),
                           tuple(bool(V[s, j] <= 0) for s in range(self.shares)),
                           # bytes/s over the time the iteration takes, its switch (the promotions) included
                           tuple(float((self.pcie[j] + n_prom[j] * self.lb + swap) / (T[s, j] + S[s, j]))
                                 for s in range(self.shares)))
                 for j in range(len(self.cands)) if mem_ok[j]] if self.coord is not None else []
        # peers with queued work start copying as soon as they are admitted: plan with them if possible;
        # if no plan then meets the budgets, keep them waiting (they hold back while this GPU runs solo)
        # (what a queued peer posted last was for work that has ended: it counts as a link user only)
        starting = {g: Candidate(0, 0.0, m, (True,) * self.shares, (0.0,) * self.shares) for g, m in queued.items()}
        j_star, s_loc = self._pick(V, mem_ok, cands, {**idle, **starting}, {**busy, **queued})
        if j_star is None and any(queued.values()):
            waiting = {g: idle_candidate(0, 0.0, self.shares) for g in queued}
            j2, s2 = self._pick(V, mem_ok, cands, {**idle, **waiting}, busy)
            if j2 is not None:
                j_star, s_loc = j2, s2
        # a peer's iteration in flight was planned with the bus to itself: stay off the link if we can
        link = (self.pcie > 0) | (n_prom > 0) | (swap > 0)
        self.wants_link = False
        if j_star is not None and link[j_star] and (mem_ok & ~link).any() and solo_peer(self.ctx) is not None:
            self.wants_link = True
            keep = mem_ok & ~link
            j_star, s_loc = self._pick(V, keep, [c for c, j in zip(cands, np.nonzero(mem_ok)[0]) if keep[j]],
                                       {**idle, **starting}, {**busy, **queued})
            if j_star is None:  # the least late of them
                vk = np.where(keep, V[s_loc], INF)
                j_star = int(len(vk) - 1 - np.argmin(vk[::-1]))
            mem_ok = keep
        v = np.where(mem_ok, V[s_loc], INF)
        if j_star is None:  # nothing meets every budget: the least late, faster on ties
            j_star = int(len(v) - 1 - np.argmin(v[::-1]))
            self.predicted_misses += 1
        new = self._hysteresis(kind, self.cands[j_star], v, mem_ok)
        jn = self.pos[new]
        self.uses_link_now = bool(self.pcie[jn] or n_prom[jn] or swap)
        self.solo = self.uses_link_now and s_loc == 0 and len(self.ctx.bus_gpus) > 1
        self.busy_until = now + float(T[s_loc, jn] + S[s_loc, jn])
        self.state[kind] = new
        self.iterations[(kind, new)] += 1
        if len(self.log) < self.log_limit:
            self.log.append((now, kind, new, bool(v[jn] <= 0), float(T[s_loc, jn] + S[s_loc, jn])))
        return self.rec.plans[new - 1]

    def _pick(self, V: np.ndarray, mem_ok: np.ndarray, cands: list[Candidate], idle: dict[int, Candidate],
              busy: dict[int, bool]) -> tuple[int | None, int]:
        """The candidate index meeting every budget with the bus shared as ``busy`` says (coordinated when
        GPUs share a bus; the most offloaded one), or None; and the share index this GPU plans with."""
        s_loc = min(1 + sum(busy.values()), self.shares) - 1
        if self.coord is not None:
            pick = self.coord.decide(self.ctx.gpu, cands, idle, busy)
            if pick is not None:
                return self.pos[pick.interval], s_loc
        # no coordinator, or no combination fits: what meets this GPU's budgets at its share
        feasible = np.nonzero(np.where(mem_ok, V[s_loc], INF) <= 0)[0]
        return (int(feasible[0]) if len(feasible) else None), s_loc

    def _hysteresis(self, kind: str, desired: int, v: np.ndarray, mem_ok: np.ndarray) -> int:
        st = self.state[kind]
        pend = self.pending[kind]
        if st is None or not mem_ok[self.pos[st]] or desired >= st:
            pend[0], pend[1] = None, 0
            return desired
        # desired < st: more offload is possible; wait for it to repeat, unless staying would be late
        if v[self.pos[st]] > 0 >= v[self.pos[desired]]:
            pend[0], pend[1] = None, 0
            return desired
        if pend[0] == desired:
            pend[1] += 1
        else:
            pend[0], pend[1] = desired, 1
        if pend[1] >= self.hysteresis:
            pend[0], pend[1] = None, 0
            return desired
        return st

    def _violations(self, inst: "Instance", shape: BatchShape, now: float, kind: str, T: np.ndarray,
                    S: np.ndarray, per_copy: np.ndarray, mem_ok: np.ndarray) -> np.ndarray:
        """Seconds by which each candidate would miss the tightest budget (<= 0: meets all)."""
        sched = inst.sched
        V = np.full(T.shape, -INF)
        k = sched.k
        # decoding requests: slack to their mean-TPOT deadline and tokens still to generate
        slack, rem = [], []
        for r in sched.decoding.values():
            if r.tpot_slo_s < INF and r.first_token_s is not None:
                g = r.dec_g0 + (k - r.dec_k0)
                slack.append(r.first_token_s + (r.output_tokens - 1) * r.tpot_slo_s - now)
                rem.append(max(r.output_tokens - g, 1))
        slack_a, rem_a = np.array(slack), np.array(rem, dtype=float)
        if not shape.prefill_tokens:
            if len(slack_a):
                # max over requests of T*R - slack, for each candidate, plus the switch cost
                worst = np.max(T[:, :, None] * rem_a[None, None, :] - slack_a[None, None, :], axis=2)
                V = np.maximum(V, worst + S)
            return V
        # a prefill iteration: TTFT budgets of the prefilling requests
        batch = inst.current_batch
        budget = INF
        tpot_next, rem_next = INF, INF
        for req, chunk in (batch.prefill if batch is not None else ()):
            left = req.num_tokens - req.computed
            if req.ttft_slo_s < INF and req.first_token_s is None:
                iters = max(1, math.ceil(left / max(chunk, 1))) if left > chunk else 1
                budget = min(budget, (req.arrival_s + req.ttft_slo_s - now) / iters)
            if left <= chunk and req.output_tokens - req.generated > 1 and req.tpot_slo_s < INF:
                tpot_next = min(tpot_next, req.tpot_slo_s)
                rem_next = min(rem_next, req.output_tokens - req.generated - 1)
        if budget < INF:
            V = np.maximum(V, T + S - budget)
        if len(slack_a) or tpot_next < INF:
            # requests that decode next return to the decode plan: a prefill plan that offloads a layer the
            # decode plan keeps would have to copy it back in, so such plans are ruled out (the memory they
            # free could not be kept anyway); the way back from a less offloaded plan is free
            home, t_home = self._home(inst, shape, mem_ok)
            back = np.array([len(self.off[j] - self.off[self.pos[home]]) for j in range(len(self.cands))])
            S_back = back[None, :] * per_copy[:, None]
            if len(slack_a):
                worst = np.max(t_home[:, None] * (rem_a[None, :] - 1) - slack_a[None, :], axis=1)  # (shares,)
                V = np.maximum(V, T + S + S_back + worst[:, None])
            if tpot_next < INF:
                V = np.maximum(V, S_back / max(rem_next, 1) + (t_home - tpot_next)[:, None])
            # ruled out whatever the other budgets' slack (a TTFT budget of an hour must not buy them back);
            # still ordered by lateness, for the least-late choice when nothing meets every budget
            V = np.where((back > 0)[None, :], np.maximum(V, 0.0) + 1e6, V)
        return V

    def _home(self, inst: "Instance", shape: BatchShape, mem_ok: np.ndarray) -> tuple[int, np.ndarray]:
        """The decode plan the batch returns to after this prefill iteration, and its decode time there."""
        batch = inst.current_batch
        fin = [(r, c) for r, c in (batch.prefill if batch is not None else ()) if r.num_tokens - r.computed <= c]
        post = BatchShape(0, 0, 0.0, 0, shape.decode_tokens + len(fin),
                          shape.decode_ctx_sum + shape.decode_tokens + sum(r.num_tokens + 1 for r, _ in fin))
        if post.decode_tokens == 0:
            cur = self.state["decode"] or self._interval_of(inst.plan)
            return cur, np.zeros(self.shares)
        Td = self._predict(post)
        home = self.state["decode"]
        if home is None or not mem_ok[self.pos[home]]:  # none yet, or it cannot hold the batch's KV
            tpot = min([r.tpot_slo_s for r, _ in fin] + [r.tpot_slo_s for r in inst.sched.decoding.values()] + [INF])
            ok = np.nonzero(mem_ok & (Td[0] <= tpot))[0]
            home = self.cands[ok[0]] if len(ok) else self.cands[int(np.nonzero(mem_ok)[0][-1])]
        return home, Td[:, self.pos[home]]

    # --- admission ----------------------------------------------------------------------------------
    def admit(self, inst: "Instance", req: "Request", now: float) -> str | None:
        if not self.admission:
            return None
        sched = inst.sched
        running = [*sched.decoding.values(), *sched.prefilling]
        fits = np.nonzero(self.blocks >= self._reserved(sched, req))[0]
        if not len(fits):
            return DEFER if running else None  # the engine itself rejects a request no pool can hold
        j = int(fits[-1])
        if not running and (self.pcie[j] or inst.ctx.engine.preemption == "swap"):
            peer = solo_peer(self.ctx)
            if peer is not None:  # a peer's iteration was planned with the bus to itself: wait for it
                self._wake_later(inst, max(peer.busy_until, now + 1e-6))
                return DEFER
        _, busy, queued = bus_others(self.ctx, self.shares)
        # plan admissions with every peer that has work (queued ones too: they start once we are not solo)
        s = min(1 + sum(busy.values()) + sum(queued.values()), self.shares) - 1
        # TTFT: this iteration's prefills plus this prompt, with the running decodes
        pre = [(r.num_tokens - r.computed, r.computed) for r in sched.prefilling if r.num_tokens > r.computed]
        pb = BatchShape.build(pre + [(req.num_tokens, 0)])
        shape = BatchShape(pb.prefill_tokens, pb.prefill_seqs, pb.prefill_attn_pairs, pb.prefill_kv_tokens,
                           len(sched.decoding), sched.decode_ctx_sum())
        t_pre = float(self._predict(shape)[s, j])
        left = min([req.arrival_s + req.ttft_slo_s - now]
                   + [r.arrival_s + r.ttft_slo_s - now for r in sched.prefilling if r.first_token_s is None])
        alone_j = int(np.nonzero(self.blocks >= self._reserved_one(req))[0][-1])
        if t_pre > left:
            t_alone = float(self._predict(BatchShape.prefill_batch(1, req.num_tokens))[0, alone_j])
            if t_alone > req.arrival_s + req.ttft_slo_s - now or not running:
                return (f"TTFT SLO {req.ttft_slo_s:.2f} s: first token predicted {now - req.arrival_s + t_alone:.2f} s "
                        f"after arrival even with the fastest plan ({self._label(self.cands[alone_j])})")
            return DEFER
        # the running decodes must still make their mean TPOT with this prefill in their way: it runs at
        # the decode plan or a less offloaded one (switching there first), then they go on at the decode plan
        if sched.decoding:
            k, slack, rem = sched.k, [], []
            for r in sched.decoding.values():
                if r.tpot_slo_s < INF and r.first_token_s is not None:
                    slack.append(r.first_token_s + (r.output_tokens - 1) * r.tpot_slo_s - now)
                    rem.append(max(r.output_tokens - (r.dec_g0 + k - r.dec_k0), 1))
            if slack:
                cur = self._interval_of(inst.plan)
                home = self.state["decode"] or cur
                # the decode plan after this admission: home, unless its pool cannot hold the new KV
                hj = min(self.pos.get(home, len(self.cands) - 1), j)
                per_copy = self.lb / self.rates[-1] + self.rec.latency_s
                T_mixed = self._predict(shape)[s]
                t_mixed = min(float(T_mixed[jj]) + self._n_promote(cur, jj) * per_copy
                              for jj in range(j + 1) if self.off[jj] <= self.off[hj])
                dec_now = BatchShape(0, 0, 0.0, 0, len(sched.decoding), sched.decode_ctx_sum())
                Td = self._predict(dec_now)[s]
                t_home, t_fast = float(Td[hj]), float(Td[j])  # stay at the decode plan, or speed up to j
                s_fast = self._n_promote(home, j) * per_copy
                if max(t_mixed + min(t_home * (n - 1), s_fast + t_fast * (n - 1)) - sl
                       for sl, n in zip(slack, rem)) > 0:
                    return DEFER
        # TPOT: the decode batch it joins, at each request's mean context over its life
        tpot = min([req.tpot_slo_s] + [r.tpot_slo_s for r in running])
        if tpot < INF:
            ctx_sum = sum(r.prompt_tokens + r.output_tokens // 2 for r in running)
            dec = BatchShape(0, 0, 0.0, 0, len(running) + 1, ctx_sum + req.prompt_tokens + req.output_tokens // 2)
            t_dec = float(self._predict(dec)[s, j])
            if t_dec > tpot:
                one = BatchShape.decode_batch(1, req.prompt_tokens + req.output_tokens // 2)
                t_alone = float(self._predict(one)[0, alone_j])
                if running and t_alone <= req.tpot_slo_s:
                    return DEFER
                return (f"TPOT SLO {req.tpot_slo_s * 1e3:.1f} ms: predicted {t_alone * 1e3:.1f} ms per token "
                        f"even alone with the fastest plan that holds its KV ({self._label(self.cands[alone_j])})")
        return None

    def _reserved_one(self, req: "Request") -> int:
        return -(-(req.prompt_tokens + req.output_tokens) // self.bs)

    def _label(self, interval: int) -> str:
        return "nothing offloaded" if interval > self.L else f"interval {interval}"

    # --- reporting ----------------------------------------------------------------------------------
    def mean_host_bytes(self) -> float:
        """Weight bytes living only in host memory, averaged over the iterations run."""
        n = sum(self.iterations.values())
        return sum(c * float(self.host[self.pos[i]]) for (_, i), c in self.iterations.items()) / n if n else 0.0

    def chosen(self, kind: str) -> int | None:
        """The interval this kind of iteration ran with most often (L+1: nothing offloaded)."""
        c = Counter({i: n for (k, i), n in self.iterations.items() if k == kind})
        return c.most_common(1)[0][0] if c else None
