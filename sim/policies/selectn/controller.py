"""Select-N's online stage: pick the offloading interval before every iteration.

Each iteration the controller
1. bounds the live batch with the performance record (`performance_record`: prefill and decode parts rounded up to
   the grid) and gets the predicted iteration time at every candidate interval (the largest interval for
   each number of offloaded layers, plus "nothing offloaded") and every bandwidth share of the bus, plus the
   cost of switching from the current plan (layers that become resident are copied in first: promotion);
2. checks the requests' remaining SLO budgets:
   - prefilling requests: TTFT deadline minus now (time already spent waiting counts), split over the
     chunks still to go;
   - decoding requests: mean-TPOT pacing. A request with g tokens and R to go must finish by first token +
     (g + R - 1) x TPOT, so interval i is fine for it if T_i x R + switch cost <= time left. R is not
     known (no engine knows output lengths): it is checked at the (1-q)- and q-quantiles of the remaining
     tokens given g, from the output-length distribution (`state.SelectNState._tpot_slack`);
   - a prefill iteration that moves away from the decode plan also charges the way back to the requests
     that will decode next (amortised over their remaining tokens);
3. keeps the intervals whose pool holds the KV that the running requests will likely need by their end
   (a quantile of the sum of their remaining lengths: `sim.core.lengths.OutputLengths.reserve_blocks`;
   KV grows on demand, and if a request outlives the estimate the engine preempts as vLLM does) and -- through the per-bus coordinator (`coordinator.py`) when GPUs share a
   bus -- picks the one that keeps the most weight bytes in host memory while meeting every budget;
4. applies hysteresis: moving to a smaller interval (more offload) waits until that choice repeats for
   ``hysteresis`` iterations; moving to a larger one when needed to meet the SLO happens at once. Prefill
   iterations and decode-only iterations keep separate intervals.

Staging: an offloaded layer lands in one whole-layer buffer (the paper's) or, with ``staging_chunks`` > 1, in
pieces through ``staging_slots`` one-piece slots (`OffloadPlan.select_n`); the record is built for that
staging, so its times, pools and i_max already include it.

With ``correct`` (not the paper's; off by default) the record's predictions are scaled by a running
geometric mean of executed / predicted iteration time (`state.SelectNState.observe`), for a record that
is wrong by a bias the profile did not see (`sim.engine.record_error`) -- upward only unless
``correct_down``: with a record that is too slow, Select-N's objective would spend the margin on offloading.

Admission: `admission.SelectNAdmission`; state, predictions and memory checks: `state.SelectNState`.
"""


from __future__ import annotations

import numpy as np

from sim.core.batch import BatchShape
from sim.core.offload_plan import OffloadPlan
from sim.engine.view import EngineView
from sim.policies.selectn.admission import SelectNAdmission
from sim.policies.selectn.coordinator import IntervalCandidate, bus_others, idle_candidate, solo_peer
from sim.policies.selectn.state import INF, ttft_budget_s


class SelectN(SelectNAdmission):
    """Select-N (arXiv 2502.08182): interval per iteration from the record, coordinated per bus."""

    def plan_for(self, view: EngineView, shape: BatchShape, now: float) -> OffloadPlan:
        kind = ("prefill" if shape.prefill_tokens else "decode") if self.separate_phases else "decode"
        cur = self._interval_of(view.plan)
        mem_ok = self._mem_ok(view)
        batch = view.current_batch
        swap = (batch.swap_in_bytes + batch.swap_out_bytes) if batch is not None else 0.0
        T = self._predict(shape) + swap / self.rates[:, None]  # (shares, cands)
        n_prom = np.array([self._n_promote(cur, j) for j in range(len(self.cands))])
        per_copy = self.lb / self.rates + self.rec.latency_s  # (shares,)
        # a switch is a one-off burst of copies that a peer may start sharing at any moment: worst share
        S = np.repeat((n_prom * per_copy[-1])[None, :], self.shares, axis=0)
        V = self._violations(view, shape, now, kind, T, S, per_copy, mem_ok)  # (shares, cands)
        idle, busy, queued = bus_others(self.ctx, self.shares)
        ranks = self.ctx.bus.ranks  # a tensor-parallel instance puts this many GPUs under the switch
        cands = [IntervalCandidate(self.cands[j], float(self.host[j]), bool(self.pcie[j] or n_prom[j] or swap),
                                   tuple(bool(V[s, j] <= 0) for s in range(self.shares)),
                                   # bytes/s over the time the iteration takes, its switch (the promotions) included,
                                   # from each of the instance's GPUs under the switch
                                   tuple(float((self.pcie[j] + n_prom[j] * self.lb + swap) / (T[s, j] + S[s, j]))
                                         * ranks for s in range(self.shares)))
                 for j in range(len(self.cands)) if mem_ok[j]] if self.coord is not None else []
        # peers with queued work start copying as soon as they are admitted: plan with them if possible;
        # if no plan then meets the budgets, keep them waiting (they hold back while this GPU runs solo)
        # (what a queued peer posted last was for work that has ended: it counts as a link user only)
        starting = {g: IntervalCandidate(0, 0.0, m, (True,) * self.shares, (0.0,) * self.shares)
                    for g, m in queued.items()}
        j_star, s_loc = self._pick(V, mem_ok, cands, {**idle, **starting}, {**busy, **queued})
        if j_star is None and any(queued.values()):
            waiting = {g: idle_candidate(0, 0.0, self.shares) for g in queued}
            j2, s2 = self._pick(V, mem_ok, cands, {**idle, **waiting}, busy)
            if j2 is not None:
                j_star, s_loc = j2, s2
        # a peer's iteration in flight was planned with the bus to itself: stay off the link if we can
        link = (self.pcie > 0) | (n_prom > 0) | (swap > 0)
        status = self.link
        status.wants_link = False
        if j_star is not None and link[j_star] and (mem_ok & ~link).any() and solo_peer(self.ctx) is not None:
            status.wants_link = True
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
        status.uses_link_now = bool(self.pcie[jn] or n_prom[jn] or swap)
        status.solo = status.uses_link_now and s_loc == 0 and self.ctx.bus.shared
        status.busy_until = now + float(T[s_loc, jn] + S[s_loc, jn])
        self._expect_iteration(view.step, new, s_loc, shape, bool(n_prom[jn] or swap))
        self.state[kind] = new
        self.iterations[(kind, new)] += 1
        if len(self.log) < self.log_limit:
            self.log.append((now, kind, new, bool(v[jn] <= 0), float(T[s_loc, jn] + S[s_loc, jn])))
        return self.rec.plans[new - 1]

    def _pick(self, V: np.ndarray, mem_ok: np.ndarray, cands: list[IntervalCandidate], idle: dict[int, IntervalCandidate],
              busy: dict[int, bool]) -> tuple[int | None, int]:
        """The candidate index meeting every budget with the bus shared as ``busy`` says (coordinated when
        GPUs share a bus; the most offloaded one), or None; and the share index this GPU plans with."""
        s_loc = min(1 + sum(busy.values()), self.shares) - 1
        if self.coord is not None:
            pick = self.coord.decide(self.ctx.index, cands, idle, busy)
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

    def _violations(self, view: EngineView, shape: BatchShape, now: float, kind: str, T: np.ndarray,
                    S: np.ndarray, per_copy: np.ndarray, mem_ok: np.ndarray) -> np.ndarray:
        """Seconds by which each candidate would miss the tightest budget (<= 0: meets all)."""
        V = np.full(T.shape, -INF)
        # decoding requests: slack to their mean-TPOT deadline and tokens still to generate
        slack, rem = self._tpot_slack(view, now)
        slack_a, rem_a = np.array(slack), np.array(rem, dtype=float)
        if not shape.prefill_tokens:
            if len(slack_a):
                # max over requests of T*R - slack, for each candidate, plus the switch cost
                worst = np.max(T[:, :, None] * rem_a[None, None, :] - slack_a[None, None, :], axis=2)
                V = np.maximum(V, worst + S)
            return V
        # a prefill iteration: TTFT budgets of the prefilling requests
        batch = view.current_batch
        budget = ttft_budget_s(batch, now)
        tpot_next, rem_next = INF, INF
        for req, chunk in (batch.prefill if batch is not None else ()):
            left = req.num_tokens - req.computed
            # it decodes next unless it may end with this token (its own length is not known: the
            # distribution's low quantile of what remains amortises the way back)
            if left <= chunk and req.tpot_slo_s < INF and self.lengths.may_continue(req, req.generated + 1):
                tpot_next = min(tpot_next, req.tpot_slo_s)
                rem_next = min(rem_next, self.lengths.remaining(req, req.generated + 1, self.q_lo))
        if budget < INF:
            V = np.maximum(V, T + S - budget)
        if len(slack_a) or tpot_next < INF:
            # requests that decode next return to the decode plan: a prefill plan that offloads a layer the
            # decode plan keeps would have to copy it back in, so such plans are ruled out (the memory they
            # free could not be kept anyway); the way back from a less offloaded plan is free
            home, t_home = self._home(view, shape, mem_ok)
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

    def _home(self, view: EngineView, shape: BatchShape, mem_ok: np.ndarray) -> tuple[int, np.ndarray]:
        """The decode plan the batch returns to after this prefill iteration, and its decode time there."""
        batch = view.current_batch
        fin = [(r, c) for r, c in (batch.prefill if batch is not None else ()) if r.num_tokens - r.computed <= c]
        post = BatchShape(0, 0, 0.0, 0, shape.decode_tokens + len(fin),
                          shape.decode_ctx_sum + shape.decode_tokens + sum(r.num_tokens + 1 for r, _ in fin))
        if post.decode_tokens == 0:
            cur = self.state["decode"] or self._interval_of(view.plan)
            return cur, np.zeros(self.shares)
        Td = self._predict(post)
        home = self.state["decode"]
        if home is None or not mem_ok[self.pos[home]]:  # none yet, or it cannot hold the batch's KV
            tpot = min([r.tpot_slo_s for r, _ in fin] + [r.tpot_slo_s for r in view.decoding.values()] + [INF])
            ok = np.nonzero(mem_ok & (Td[0] <= tpot))[0]
            home = self.cands[ok[0]] if len(ok) else self.cands[int(np.nonzero(mem_ok)[0][-1])]
        return home, Td[:, self.pos[home]]
