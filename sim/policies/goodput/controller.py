"""memslo's goodput controller (`policy: goodput`): offload weights only when memory is what stops requests
from being served in time, and turn away at once the requests that cannot be.

Select-N (the paper's controller, `sim.policies.selectn`) offloads as much as the running batch's latency
budget allows, whether or not anybody needs the memory, and rejects a request when its wait has used up its
TTFT budget. Under continuous batching that spends the decodes' slack on KV nobody uses, then finds no
slack left to admit the queue. This controller asks the opposite question each iteration:

1. **Memory first.** The base is the largest interval (least offload) whose KV pool holds the running
   requests' blocks plus next step's growth (so decode growth does not preempt), among those that meet
   every running request's budget (mean-TPOT pacing at the two ends of the likely remaining length, and
   the TTFT budgets of the prefills: `SelectNState._tpot_slack`). With nothing queued, nothing is
   offloaded that the pool does not need.
2. **The queue's deadlines in the objective.** When the head of the queue is blocked by memory (not by the
   token budget), each number m of queued heads is weighed: admitting them now needs the largest interval
   whose pool holds the running requests plus those m (and still meets every budget, the larger decode
   batch included); waiting means starting when the running requests free their KV, forecast from the
   output-length distribution (`forecast`). The chosen m saves the most heads that would miss their TTFT
   deadline by waiting and meet it if admitted now, and does not lower the decode throughput (tokens per
   second of the batch with them in it, at that plan, against the batch without them at the base plan:
   offloading slows every step, so it pays only while the memory it buys raises the throughput); none
   saved, no extra offload.
3. **Reject at arrival, not at the deadline.** A request whose first token cannot come in time even
   optimistically (the running requests finishing early, the queue ahead prefilled at full speed, the
   forecast's own observed error at its most favourable) is rejected when it arrives, with the forecast in
   the reason; at the head of the queue, one whose prefill would end after its deadline is rejected rather
   than served late.
4. **Hysteresis the other way round.** More offload happens at once (it is needed now); less offload
   (copying layers back in) waits until that choice repeats ``hysteresis`` iterations, unless the current
   plan misses a budget.

Kernel times are self-corrected from what the iterations take (``correct``, on by default:
`SelectNState.observe`). It plans with the bandwidth share its bus peers leave it and does not coordinate
with them (no per-bus combination search). One plan serves prefill and decode iterations alike: the plan is
about memory, which both phases hold. KV swap is not combined with it (the engine's swap preemption still
works beside it).
"""

from __future__ import annotations

import math
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from sim.core.batch import BatchShape
from sim.core.offload_plan import OffloadPlan
from sim.engine.view import EngineView
from sim.policies.goodput.forecast import release_schedule, start_times
from sim.policies.selectn.controller import SelectN
from sim.policies.selectn.coordinator import bus_others
from sim.policies.selectn.state import INF, ttft_budget_s

if TYPE_CHECKING:
    from sim.core.request import Request


class Goodput(SelectN):
    """Offload only for memory that admission or growth needs; weigh queued deadlines; reject early."""

    name = "goodput"

    def __init__(self, min_interval: int = 1, hysteresis: int = 3, correct: bool = True,
                 reject_at_arrival: bool = True, max_heads: int = 8, staging_chunks: int = 1,
                 staging_slots: int = 2, log_limit: int = 10_000, min_evidence: int = 20) -> None:
        # corrects both ways: a faster execution than the record's does not make it offload more (it offloads
        # only for memory), it only stops it rejecting requests the record would wrongly call late
        super().__init__(hysteresis=hysteresis, min_interval=min_interval, coordinate=False, admission=True,
                         separate_phases=False, log_limit=log_limit, staging_chunks=staging_chunks,
                         staging_slots=staging_slots, correct=correct, correct_down=True)
        if max_heads < 1:
            raise ValueError(f"max_heads must be >= 1, got {max_heads}")
        self.reject_at_arrival = reject_at_arrival
        self.max_heads = max_heads
        self.min_evidence = max(1, min_evidence)  # served requests the arrival forecast is checked on first
        self.rejected_at_arrival = 0
        self.rejected_at_head = 0
        self.offloaded_for_queue = 0  # iterations whose plan offloads more to admit queued requests
        self._back: list = [None, 0]  # a pending move to less offload and how often it repeated
        self._step_s = 0.0  # predicted time of the last planned iteration
        self._decode_s = 0.0  # predicted decode step of the running batch at the last plan (arrival forecast)
        self._best_pool = 0  # the largest KV pool of a plan that met every budget at the last plan
        # the arrival forecast checks itself: first-token delay observed / forecast, for served requests
        self._forecast: dict[int, float] = {}
        self._errors: deque[float] = deque(maxlen=200)

    def describe(self) -> str:
        return f"goodput(hysteresis={self.hysteresis}{', self-correcting' if self.correct else ''})"

    def holds_back(self, view: EngineView) -> bool:
        return False

    # --- helpers --------------------------------------------------------------------------------------
    def _share(self) -> int:
        """Bandwidth share index: this GPU plus the bus peers that may copy now or once they start."""
        if not self.ctx.bus.shared:
            return 0
        _, busy, queued = bus_others(self.ctx, self.shares)
        return min(1 + sum(busy.values()) + sum(queued.values()), self.shares) - 1

    def _late(self, view: EngineView, shape: BatchShape, now: float, T: np.ndarray, S: np.ndarray,
              s: int) -> np.ndarray:
        """Seconds by which each candidate misses the tightest budget of the running requests (<= 0: meets
        all), at share ``s``. Decodes: this iteration's time plus R-1 decode steps at the candidate's decode
        time must fit the slack (`_tpot_slack`); prefills: TTFT deadline over the chunks still to go."""
        V = np.full(T.shape[1], -INF)
        slack, rem = self._tpot_slack(view, now)
        if slack:
            sl, R = np.array(slack), np.array(rem, dtype=float)
            if shape.prefill_tokens and shape.decode_tokens:
                Td = self._predict(shape.decode_part())[s]
            else:
                Td = T[s]
            worst = np.max(T[s][:, None] + Td[:, None] * (R[None, :] - 1) - sl[None, :], axis=1)
            V = np.maximum(V, worst + S[s])
        budget = ttft_budget_s(view.current_batch, now)
        if budget < INF:
            V = np.maximum(V, T[s] + S[s] - budget)
        return V

    def _block_need(self, req: "Request") -> int:
        """Blocks a queued request needs to be admitted (its KV plus the next token)."""
        return -(-(req.prompt_tokens + req.generated + 1) // self.bs)

    def _prefill_s(self, req: "Request", s: int, j: int) -> float:
        return float(self._predict(BatchShape.prefill_batch(1, req.num_tokens))[s, j])

    def _release(self, view: EngineView, now: float, step_s: float, q: float | None) -> tuple[list[float], list[int]]:
        """When the running requests free their blocks: after their expected remaining tokens (``q``
        None) or the q-quantile of them, at ``step_s`` per token (a prefilling request after its first
        token, one step later than if it were decoding)."""
        fin, blocks = [], []
        for r in view.decoding.values():
            g = view.generated_now(r)
            fin.append(self.lengths.expected_remaining(r, g) if q is None else self.lengths.remaining(r, g, q))
            blocks.append(r.blocks)
        for r in view.prefilling:
            g = r.generated + 1
            fin.append(1 + (self.lengths.expected_remaining(r, g) if q is None else self.lengths.remaining(r, g, q)))
            blocks.append(r.blocks)
        return release_schedule(fin, blocks, step_s, now)

    def _hold_s(self, reqs: list["Request"], step_s: float, q: float | None = None) -> list[float]:
        """How long queued requests hold their KV once admitted: their expected output (or its
        q-quantile) at ``step_s`` per token."""
        L = self.lengths
        return [step_s * (L.expected_remaining(r, r.generated) if q is None else L.remaining(r, r.generated, q))
                for r in reqs]

    # --- the plan -------------------------------------------------------------------------------------
    def plan_for(self, view: EngineView, shape: BatchShape, now: float) -> OffloadPlan:
        cur = self._interval_of(view.plan)
        nc = len(self.cands)
        s = self._share()
        batch = view.current_batch
        swap = (batch.swap_in_bytes + batch.swap_out_bytes) if batch is not None else 0.0
        T = self._predict(shape) + swap / self.rates[:, None]
        n_prom = np.array([self._n_promote(cur, j) for j in range(nc)])
        per_copy = self.lb / self.rates + self.rec.latency_s
        S = np.repeat((n_prom * per_copy[-1])[None, :], self.shares, axis=0)
        V = self._late(view, shape, now, T, S, s)
        ok = V <= 0
        base = view.kv_used_blocks + view.decodes_needing_block(view.step + 1)
        hold = self.blocks >= base
        j_base = self._largest(ok & hold)
        if j_base is None:  # no plan holds the next step's KV within every budget: keep the budgets (a
            j_base = self._largest(ok)  # preemption), or, if none meets them, the least late
            if j_base is None:
                j_base = int(nc - 1 - np.argmin(V[::-1]))
                self.predicted_misses += 1
        j = j_base
        j_q = self._for_queue(view, shape, now, s, base, V, j_base)
        if j_q is not None and j_q < j:
            j = j_q
            self.offloaded_for_queue += 1
        j = self._damp(j, cur, V)
        new = self.cands[j]
        self._step_s = float(T[s, j] + S[s, j])
        # for the arrival forecast: the largest pool a plan meeting every budget gives, and a decode step
        self._best_pool = int(self.blocks[ok].max()) if ok.any() else int(self.blocks[j])
        if shape.prefill_tokens and shape.decode_tokens:
            self._decode_s = float(self._predict(shape.decode_part())[s, j])
        elif shape.decode_tokens:
            self._decode_s = float(T[s, j])
        self._expect_iteration(view.step, new, s, shape, bool(n_prom[j] or swap))
        self.state["decode"] = new
        self.iterations[("prefill" if shape.prefill_tokens else "decode", new)] += 1
        if len(self.log) < self.log_limit:
            self.log.append((now, "plan", new, bool(V[j] <= 0), self._step_s))
        return self.rec.plans[new - 1]

    @staticmethod
    def _largest(mask: np.ndarray) -> int | None:
        """Index of the largest interval (least offload) in ``mask``."""
        idx = np.nonzero(mask)[0]
        return int(idx[-1]) if len(idx) else None

    def _damp(self, j: int, cur: int, V: np.ndarray) -> int:
        """More offload at once; less offload once it repeated ``hysteresis`` times (or the current plan
        misses a budget)."""
        jc = self.pos.get(cur)
        back = self._back
        if jc is None or j <= jc or V[jc] > 0:
            back[0], back[1] = None, 0
            return j
        back[1] = back[1] + 1 if back[0] == j else 1
        back[0] = j
        if back[1] >= self.hysteresis:
            back[0], back[1] = None, 0
            return j
        return jc

    def _for_queue(self, view: EngineView, shape: BatchShape, now: float, s: int, base: int, V: np.ndarray,
                   j_base: int) -> int | None:
        """The plan that admits the queued heads worth admitting now (None: none is)."""
        waiting = view.waiting
        cfg = self.ctx.engine
        if not waiting or shape.tokens >= cfg.max_num_batched_tokens or shape.num_seqs >= cfg.max_num_seqs:
            return None
        heads = list(islice(waiting, self.max_heads))
        wm = int(cfg.watermark * view.kv_total_blocks)
        needs = [self._block_need(h) for h in heads]
        if base + needs[0] + wm <= self.blocks[j_base]:
            return None  # the base plan admits the head: memory is not what blocks it
        # waiting: start when the running requests free their KV (expected lengths), at the base plan
        step_s = float(self._predict(shape.decode_part())[s, j_base]) if shape.decode_tokens else 0.0
        times, cum = self._release(view, now, step_s, None)
        free = int(self.blocks[j_base]) - base - wm
        wait = start_times(needs, self._hold_s(heads, step_s), free, times, cum, now)
        slack, rem = self._tpot_slack(view, now)
        sl, R = np.array(slack), np.array(rem, dtype=float)
        # decode throughput at the base plan: admitting more by offloading must not lower it (offloading
        # slows every step; it pays only while the memory it buys raises the tokens per second)
        n = shape.decode_tokens
        tput0 = n / step_s if n and step_s > 0 else 0.0
        best = (0, 0.0)
        best_j = None
        need = base + wm
        ctx_add = 0
        for m, h in enumerate(heads, start=1):
            need += needs[m - 1]
            ctx_add += h.prompt_tokens + self.lengths.typical(h) // 2
            fits = self.blocks >= need
            if not fits.any():
                break
            # the decode batch with these m requests in it must still meet every running budget
            big = self._predict(BatchShape(0, 0, 0.0, 0, shape.decode_tokens + m, shape.decode_ctx_sum + ctx_add))[s]
            ok = (V <= 0) & fits & (big <= min(x.tpot_slo_s for x in heads[:m]))
            if len(sl):
                ok &= np.max(big[:, None] * R[None, :] - sl[None, :], axis=1) <= 0
            jm = self._largest(ok)
            if jm is None:
                break
            tput = (n + m) / float(big[jm])
            if tput < tput0:
                continue
            w = 0
            for k in range(m):
                x = heads[k]
                deadline = x.arrival_s + x.ttft_slo_s
                t_pre = self._prefill_s(x, s, jm)
                w += wait[k] + t_pre > deadline and now + t_pre <= deadline
            if w > 0 and (w, tput) > best:
                best, best_j = (w, tput), jm
        return best_j

    # --- admission --------------------------------------------------------------------------------------
    def admit(self, view: EngineView, req: "Request", now: float) -> str | None:
        """At the head of the queue: reject a request whose first token would come too late even if it
        were prefilled now, or whose TPOT no plan that holds its KV meets alone; otherwise admit (the
        engine admits it if the blocks are there)."""
        s = self._share()
        j = self.pos.get(self._interval_of(view.plan), len(self.cands) - 1)
        if req.ttft_slo_s < INF and req.first_token_s is None:
            pre = [(r.num_tokens - r.computed, r.computed) for r in view.prefilling if r.num_tokens > r.computed]
            pb = BatchShape.build(pre + [(req.num_tokens - req.computed, req.computed)])
            shape = BatchShape(pb.prefill_tokens, pb.prefill_seqs, pb.prefill_attn_pairs, pb.prefill_kv_tokens,
                               len(view.decoding), view.decode_ctx_sum())
            # the exact prediction, not the record's rounded-up bound: rejecting is the decision to be sure of
            chunks = max(1, math.ceil((req.num_tokens - req.computed) / self.ctx.engine.max_num_batched_tokens))
            t_first = self._exact(shape, self.cands[j], s) * chunks
            if now + t_first > req.arrival_s + req.ttft_slo_s:
                self.rejected_at_head += 1
                return (f"TTFT SLO {req.ttft_slo_s:.2f} s: first token predicted {now - req.arrival_s + t_first:.2f} s "
                        f"after arrival if prefilled now ({self._label(self.cands[j])}); rejected, not served late")
        if req.tpot_slo_s < INF:
            fits = np.nonzero(self.blocks >= self._reserved_one(req))[0]
            if len(fits):
                alone = int(fits[-1])
                one = BatchShape.decode_batch(1, req.prompt_tokens + self.lengths.typical(req) // 2)
                t = float(self._predict(one)[0, alone])
                if t > req.tpot_slo_s:
                    return (f"TPOT SLO {req.tpot_slo_s * 1e3:.1f} ms: predicted {t * 1e3:.1f} ms per token even "
                            f"alone with the fastest plan that holds its KV ({self._label(self.cands[alone])})")
        return None

    def on_arrival(self, view: EngineView, req: "Request", now: float) -> str | None:
        """Reject at arrival a request whose first token cannot come in time even optimistically: the
        running requests finish early (the low quantile of their remaining lengths) and free their KV into
        the largest pool a plan meeting every budget gives, the queued ones ahead hold theirs as long, and
        the queue ahead and this prompt are prefilled at the cost model's exact speed (not the record's
        rounded-up bound). The forecast is checked against the first tokens served (observed / forecast
        delay): a request is rejected only if the forecast, scaled by the low (10 %) quantile of that
        ratio, still misses -- so a forecast that has erred on the pessimistic side rejects less."""
        if not self.reject_at_arrival or req.ttft_slo_s == INF:
            return None
        j = self.pos.get(self._interval_of(view.plan), len(self.cands) - 1)
        ahead = list(view.waiting)
        queue = [*ahead, req]
        t_all = self._exact(BatchShape.build([(r.num_tokens, 0) for r in queue]), self.cands[j])
        t_own = self._exact(BatchShape.prefill_batch(1, req.num_tokens), self.cands[j])
        if not view.in_flight():
            start = now
        else:
            wm = int(self.ctx.engine.watermark * view.kv_total_blocks)
            free = max(view.kv_total_blocks, self._best_pool) - view.kv_used_blocks - wm
            times, cum = self._release(view, now, self._decode_s, self.q_lo)
            start = start_times([self._block_need(r) for r in queue], self._hold_s(queue, self._decode_s, self.q_lo),
                                free, times, cum, now)[-1]
        delay = max(start + t_own, now + t_all) - req.arrival_s
        # reject only if the forecast misses even when it errs as favourably as it has for the requests
        # served so far (the low quantile of observed / forecast; no rejection before there is evidence)
        k = float(np.quantile(self._errors, 0.1)) if len(self._errors) >= self.min_evidence else None
        if k is not None and delay * k > req.ttft_slo_s:
            self.rejected_at_arrival += 1
            what = "never (the pool cannot free enough)" if delay == INF else f"{delay:.2f} s"
            return (f"TTFT SLO {req.ttft_slo_s:.2f} s: at arrival, the first token is forecast at best after "
                    f"{what} ({len(ahead)} queued ahead; forecasts have erred by x{k:.2f} at the least); "
                    f"rejected at arrival")
        if delay > 0 and delay < INF:
            self._forecast[req.id] = delay
        return None

    def observe(self, view: EngineView, step: int, duration_s: float) -> None:
        """Correct the record (`SelectNState.observe`) and check the arrival forecast against the first
        tokens this iteration produced."""
        super().observe(view, step, duration_s)
        batch = view.current_batch
        for req, _chunk in (batch.prefill if batch is not None else ()):
            if req.first_token_s is not None:
                f = self._forecast.pop(req.id, None)
                if f is not None:
                    self._errors.append((req.first_token_s - req.arrival_s) / f)

    def _exact(self, shape: BatchShape, interval: int, share: int = 0) -> float:
        """The record's executor at ``interval`` for the shape itself (no rounding up), at bandwidth share
        ``share`` (0: alone on the bus)."""
        c = self.rec.cost or self.ctx.cost
        return self.rec.time_at(interval, c.layer_time(shape), c.fixed_time(shape), share) * self._scale()
