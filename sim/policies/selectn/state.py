"""Select-N's online state: the record and the candidate intervals, predictions, memory checks and the
statistics of what ran. `admission.SelectNAdmission` adds the admission check on top, and
`controller.SelectN` the per-iteration choice of interval (see there)."""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from sim.core.batch import BatchShape
from sim.core.offload_plan import OffloadPlan
from sim.engine.memory import MemoryLayout
from sim.engine.policy import InstanceContext, OffloadPolicy
from sim.engine.view import EngineView
from sim.policies.selectn.coordinator import BusCoordinator
from sim.policies.selectn.performance_record import PerformanceRecord, efficient_intervals, record_for

if TYPE_CHECKING:
    from sim.core.request import Request
    from sim.engine.scheduler import ScheduledBatch

INF = float("inf")


def ttft_budget_s(batch: "ScheduledBatch | None", now: float) -> float:
    """Seconds per iteration that the tightest first-token deadline among ``batch``'s prefilling requests
    leaves: time to its deadline over the iterations its prompt still needs at its chunk (INF: no such
    request has a TTFT SLO)."""
    budget = INF
    for req, chunk in (batch.prefill if batch is not None else ()):
        left = req.num_tokens - req.computed
        if req.ttft_slo_s < INF and req.first_token_s is None:
            iters = max(1, math.ceil(left / max(chunk, 1))) if left > chunk else 1
            budget = min(budget, (req.arrival_s + req.ttft_slo_s - now) / iters)
    return budget


class SelectNState(OffloadPolicy):
    """Select-N's parameters, record and helpers (no decisions here)."""

    name = "selectn"

    def __init__(self, hysteresis: int = 3, min_interval: int = 1, record: str | None = None,
                 coordinate: bool = True, admission: bool = True, separate_phases: bool = True,
                 log_limit: int = 10_000, staging_chunks: int = 1, staging_slots: int = 2,
                 correct: bool = False, correct_rate: float = 0.05, reserve_quantile: float = 0.5,
                 correct_down: bool = False) -> None:
        """``staging_chunks`` > 1 streams each offloaded layer in that many pieces through ``staging_slots``
        slots of one piece (`OffloadPlan.select_n`): less staging memory (more KV), less copy hidden.
        ``correct``: scale the record's kernel times by what the executed iterations show (the paper's
        controller trusts its record: off by default); ``correct_rate``: how fast the scale follows;
        ``correct_down``: also scale below 1 when execution is faster than the record (off: Select-N would
        spend the margin on offloading more, its objective, which costs attainment -- README, record error).
        ``reserve_quantile``: the quantile of the running requests' summed remaining output that the KV
        reservation covers (0.5: their expected end; output lengths are not known, see `_reserved`)."""
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
        if not 0 < correct_rate <= 1:
            raise ValueError(f"correct_rate must be in (0, 1], got {correct_rate}")
        self.correct, self.correct_rate, self.correct_down = correct, correct_rate, correct_down
        if not 0 < reserve_quantile < 1:
            raise ValueError(f"reserve_quantile must be in (0, 1), got {reserve_quantile}")
        self.reserve_quantile = reserve_quantile

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
            # without the coordinator it plans as if its GPUs had their switch to themselves
            rates = ctx.link_rates if self.coordinate else ()
            rec = record_for(m, ctx.hw, ctx.cost, ctx.engine, link_rates=rates or None,
                             staging_chunks=self.staging_chunks,
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
        self.lengths = ctx.output_lengths  # output lengths as a distribution (no request's own length)
        self.q_lo = 1.0 - self.lengths.q
        # self-correction (`observe`): executed / predicted kernel time, kept as a running (geometric) mean
        self.time_scale = 1.0
        self._expect: tuple[int, int, int, BatchShape] | None = None  # (step, interval, share, shape)
        self.state: dict[str, int | None] = {"prefill": None, "decode": None}
        self.pending: dict[str, list] = {"prefill": [None, 0], "decode": [None, 0]}
        self.iterations: Counter = Counter()  # (kind, interval) -> iterations run with it
        self.log: list[tuple] = []  # (time, kind, interval, budget ok, predicted s)
        self.predicted_misses = 0
        # what this GPU tells its bus peers (solo: the iteration in flight was planned with the bus to itself;
        # peers with nothing running then hold their queue back, `admit`, until this GPU plans with them again)
        self.link = ctx.bus.link(ctx.index)
        self._promote: dict[tuple[int, int], int] = {}
        self.coord: BusCoordinator | None = None
        if self.coordinate and ctx.bus.shared:
            shares = self.shares
            self.coord = ctx.bus.service(BusCoordinator, lambda: BusCoordinator(ctx.hw.bus_bytes_per_s, shares))
            self.coord.join(ctx.index)

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

    def _learned(self) -> float:
        """The learned executed / predicted ratio, on a 1 % grid (so the record's time cache keeps hitting)."""
        return round(self.time_scale, 2) if self.correct else 1.0

    def _scale(self) -> float:
        """The correction the predictions use: the learned ratio, or at least 1 unless ``correct_down``."""
        k = self._learned()
        return k if self.correct_down else max(k, 1.0)

    def _predict(self, shape: BatchShape) -> np.ndarray:
        """Conservative time (shares x candidates); beyond the record's grid, the cost model's time. With
        ``correct``, scaled by what execution has shown (`observe`)."""
        b = self.rec.bound(shape)
        if b is None:
            c = self.rec.cost or self.ctx.cost
            b = (c.layer_time(shape), c.fixed_time(shape))
        T = np.array([self.rec.times(b[0], b[1], s) for s in range(self.shares)])[:, self.col]
        k = self._scale()
        return T * k if k != 1.0 else T

    def _expect_iteration(self, step: int, interval: int, share: int, shape: BatchShape, moves: bool) -> None:
        """Remember what the iteration about to run is (for `observe` to compare with what it took); one
        that also promotes layers or swaps KV is not compared (the record does not time those)."""
        if self.correct:
            self._expect = None if moves else (step, interval, share, shape)

    def observe(self, view: EngineView, step: int, duration_s: float) -> None:
        """Self-correction: compare the iteration's time with the record's prediction for its exact shape
        (the executor on the shape itself, not the rounded-up bound) times the current scale, and move the
        scale by ``correct_rate`` of the log-ratio: a running geometric mean of observed / predicted, which
        settles where the scaled record matches execution."""
        e, self._expect = self._expect, None
        if e is None or e[0] != step or duration_s <= 0:
            return
        _, interval, share, shape = e
        c = self.rec.cost or self.ctx.cost
        pred = self.rec.time_at(interval, c.layer_time(shape), c.fixed_time(shape), share) * self._learned()
        if pred > 0:
            ratio = min(max(duration_s / pred, 0.5), 2.0)
            self.time_scale = min(max(self.time_scale * ratio ** self.correct_rate, 0.5), 3.0)

    def _tokens_now(self, view: EngineView, r: "Request") -> tuple[int, int]:
        """(tokens whose KV the request holds or is about to, tokens generated) for a running request."""
        g = view.generated_now(r) if r.id in view.decoding else r.generated
        return r.prompt_tokens + g, g

    def _reserved(self, view: EngineView, extra: "Request | None" = None) -> int:
        """KV blocks the running requests (and ``extra``) will hold by their end, from the output-length
        distribution (a quantile of the sum; `OutputLengths.reserve_blocks`)."""
        items = [(r, *self._tokens_now(view, r)) for r in (*view.decoding.values(), *view.prefilling)]
        if extra is not None:
            items.append((extra, extra.prompt_tokens + extra.generated, extra.generated))
        return self.lengths.reserve_blocks(items, self.bs, self.reserve_quantile)

    def _mem_ok(self, view: EngineView) -> np.ndarray:
        """Candidates whose pool holds the running requests' KV to their end (else: the next step's)."""
        used = view.kv_used_blocks
        growth = view.decodes_needing_block(view.step + 1)
        for need in (max(used + growth, self._reserved(view)), used + growth, used):
            ok = self.blocks >= need
            if ok.any():
                return ok
        return self.blocks >= 0

    def _reserved_one(self, req: "Request") -> int:
        return self.lengths.reserve_blocks([(req, req.prompt_tokens + req.generated, req.generated)], self.bs,
                                           self.reserve_quantile)

    def _label(self, interval: int) -> str:
        return "nothing offloaded" if interval > self.L else f"interval {interval}"

    def _tpot_slack(self, view: EngineView, now: float) -> tuple[list[float], list[int]]:
        """Mean-TPOT pacing without knowing output lengths. A decoding request with g tokens and R still to
        come must end by first token + (g + R - 1) x TPOT; interval i is fine for it if T_i x R fits the
        slack to that deadline. R is unknown, and the constraint is linear in R, so it is checked at both
        ends of the likely range: the (1-q)- and q-quantiles of the remaining tokens given g (`OutputLengths`).
        Returns the constraints as (slack, R) pairs, two per request with a TPOT SLO."""
        slack, rem = [], []
        lengths, q_lo = self.lengths, self.q_lo
        for r in view.decoding.values():
            if r.tpot_slo_s < INF and r.first_token_s is not None:
                g = view.generated_now(r)
                for R in sorted({lengths.remaining(r, g, q_lo), lengths.remaining(r, g)}):
                    slack.append(r.first_token_s + (g + R - 1) * r.tpot_slo_s - now)
                    rem.append(R)
        return slack, rem

    # --- reporting ----------------------------------------------------------------------------------
    def mean_host_bytes(self) -> float:
        """Weight bytes living only in host memory, averaged over the iterations run."""
        n = sum(self.iterations.values())
        return sum(c * float(self.host[self.pos[i]]) for (_, i), c in self.iterations.items()) / n if n else 0.0

    def chosen(self, kind: str) -> int | None:
        """The interval this kind of iteration ran with most often (L+1: nothing offloaded)."""
        c = Counter({i: n for (k, i), n in self.iterations.items() if k == kind})
        return c.most_common(1)[0][0] if c else None
