"""Select-N's admission check: a request is admitted only if the fastest plan that holds the KV of the
batch it would join meets its TTFT and TPOT; if it would meet them alone it waits (`DEFER`), otherwise it
is rejected with the SLO and the predicted time in the reason -- it is never admitted to be served late.
Output lengths are not known: the KV a request will hold by its end and the decode context it runs at
come from the output-length distribution (`sim.core.lengths.OutputLengths`), or its ``max_tokens``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sim.core.batch import BatchShape
from sim.engine.scheduler import DEFER
from sim.engine.view import EngineView
from sim.policies.selectn.coordinator import bus_others, solo_peer
from sim.policies.selectn.state import INF, SelectNState

if TYPE_CHECKING:
    from sim.core.request import Request


class SelectNAdmission(SelectNState):
    """`SelectNState` with Select-N's admission check."""

    def holds_back(self, view: EngineView) -> bool:
        return self.admission and solo_peer(self.ctx) is not None

    def admit(self, view: EngineView, req: "Request", now: float) -> str | None:
        if not self.admission:
            return None
        running = [*view.decoding.values(), *view.prefilling]
        fits = np.nonzero(self.blocks >= self._reserved(view, req))[0]
        if not len(fits):
            return DEFER if running else None  # the engine itself rejects a request no pool can hold
        j = int(fits[-1])
        if not running and (self.pcie[j] or self.ctx.engine.preemption == "swap"):
            peer = solo_peer(self.ctx)
            if peer is not None:  # a peer's iteration was planned with the bus to itself: wait for it
                view.wake_at(max(peer.link.busy_until, now + 1e-6))
                return DEFER
        _, busy, queued = bus_others(self.ctx, self.shares)
        # plan admissions with every peer that has work (queued ones too: they start once we are not solo)
        s = min(1 + sum(busy.values()) + sum(queued.values()), self.shares) - 1
        # TTFT: this iteration's prefills plus this prompt, with the running decodes
        pre = [(r.num_tokens - r.computed, r.computed) for r in view.prefilling if r.num_tokens > r.computed]
        pb = BatchShape.build(pre + [(req.num_tokens, 0)])
        shape = BatchShape(pb.prefill_tokens, pb.prefill_seqs, pb.prefill_attn_pairs, pb.prefill_kv_tokens,
                           len(view.decoding), view.decode_ctx_sum())
        t_pre = float(self._predict(shape)[s, j])
        left = min([req.arrival_s + req.ttft_slo_s - now]
                   + [r.arrival_s + r.ttft_slo_s - now for r in view.prefilling if r.first_token_s is None])
        alone_j = int(np.nonzero(self.blocks >= self._reserved_one(req))[0][-1])
        if t_pre > left:
            t_alone = float(self._predict(BatchShape.prefill_batch(1, req.num_tokens))[0, alone_j])
            if t_alone > req.arrival_s + req.ttft_slo_s - now or not running:
                return (f"TTFT SLO {req.ttft_slo_s:.2f} s: first token predicted {now - req.arrival_s + t_alone:.2f} s "
                        f"after arrival even with the fastest plan ({self._label(self.cands[alone_j])})")
            return DEFER
        # the running decodes must still make their mean TPOT with this prefill in their way: it runs at
        # the decode plan or a less offloaded one (switching there first), then they go on at the decode plan
        if view.decoding:
            slack, rem = self._tpot_slack(view, now)
            if slack:
                cur = self._interval_of(view.plan)
                home = self.state["decode"] or cur
                # the decode plan after this admission: home, unless its pool cannot hold the new KV
                hj = min(self.pos.get(home, len(self.cands) - 1), j)
                per_copy = self.lb / self.rates[-1] + self.rec.latency_s
                T_mixed = self._predict(shape)[s]
                t_mixed = min(float(T_mixed[jj]) + self._n_promote(cur, jj) * per_copy
                              for jj in range(j + 1) if self.off[jj] <= self.off[hj])
                dec_now = BatchShape(0, 0, 0.0, 0, len(view.decoding), view.decode_ctx_sum())
                Td = self._predict(dec_now)[s]
                t_home, t_fast = float(Td[hj]), float(Td[j])  # stay at the decode plan, or speed up to j
                s_fast = self._n_promote(home, j) * per_copy
                if max(t_mixed + min(t_home * (n - 1), s_fast + t_fast * (n - 1)) - sl
                       for sl, n in zip(slack, rem)) > 0:
                    return DEFER
        # TPOT: the decode batch it joins, at each request's mean context over its life
        tpot = min([req.tpot_slo_s] + [r.tpot_slo_s for r in running])
        if tpot < INF:
            # (each request's typical output from the distribution: its own length is not known)
            half = {r.id: self.lengths.typical(r) // 2 for r in (*running, req)}
            ctx_sum = sum(r.prompt_tokens + half[r.id] for r in running)
            dec = BatchShape(0, 0, 0.0, 0, len(running) + 1, ctx_sum + req.prompt_tokens + half[req.id])
            t_dec = float(self._predict(dec)[s, j])
            if t_dec > tpot:
                one = BatchShape.decode_batch(1, req.prompt_tokens + half[req.id])
                t_alone = float(self._predict(one)[0, alone_j])
                if running and t_alone <= req.tpot_slo_s:
                    return DEFER
                return (f"TPOT SLO {req.tpot_slo_s * 1e3:.1f} ms: predicted {t_alone * 1e3:.1f} ms per token "
                        f"even alone with the fastest plan that holds its KV ({self._label(self.cands[alone_j])})")
        return None
