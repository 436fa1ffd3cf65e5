"""FlexGen made SLO-aware: one offload fraction for the whole run, chosen once at start.

FlexGen (Sheng et al., ICML'23) searches its placement with a cost model built from hardware peaks. Made
SLO-aware as in the Select-N paper's baseline, it picks the largest fraction f of every layer's weights to
keep in host memory (grid 0, ``step``, ..., 1) whose *predicted* iteration time for the target batch meets
the SLO -- predicted with
- the spec-sheet cost model: peak FLOP/s and HBM bandwidth, efficiency 1, no kernel or iteration overhead
  (optimistic about compute), and
- the worst-case host-link bandwidth: the bus bandwidth divided by the GPUs that share it (pessimistic
  about PCIe when the GPU is alone on its bus). ``link_bandwidth="alone"`` plans instead with the link as
  FlexGen's profiler measures it, one GPU at a time: blind to bus contention, so on a shared, busy bus it
  offloads more than the SLO allows (the Select-N paper's contended FlexGen, which misses at small batches).
The plan is FlexGen's layer-wise split (`OffloadPlan.layerwise`): f of each layer streamed one layer ahead
into two staging buffers. When the PCIe side dominates, the pessimism makes it offload less than it could
(less host memory used, fewer KV blocks, smaller batches); when compute dominates, the optimism can make
it offload more than the SLO allows. If no fraction meets the SLO, it takes the smallest that fits. The
fraction never changes afterwards. Like FlexGen's fixed batch, it admits a request only when the KV pool
holds it to the end alongside the running ones (it never preempts; the end is estimated, see below).

SLO and target batch: from the parameters, else from the first request it sees (its TTFT and TPOT SLOs,
its prompt, prompt + half the typical output of the workload as the decode context) and the engine's
``max_num_seqs`` as batch. Output lengths come from the distribution the deployment knows
(`sim.core.lengths.OutputLengths`), never from a request's own length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.core.batch import BatchShape
from sim.core.offload_plan import OffloadPlan
from sim.cost.roofline import RooflineCostModel
from sim.engine.iteration import compile_copies, run_closed_form
from sim.engine.memory import MemoryLayout
from sim.engine.policy import InstanceContext, OffloadPolicy
from sim.engine.scheduler import DEFER
from sim.engine.view import EngineView

if TYPE_CHECKING:
    from sim.core.request import Request

INF = float("inf")


def peak_spec_cost(model, hw) -> RooflineCostModel:
    """The spec-sheet cost model: every efficiency 1, no overheads, textbook roofline."""
    return RooflineCostModel(model, hw, compute_efficiency=1.0, memory_efficiency=1.0, elementwise_efficiency=1.0,
                             attention_efficiency=1.0, kernel_overhead_s=0.0, iteration_overhead_s=0.0,
                             overlap_loss=0.0)


class FlexGenSLO(OffloadPolicy):
    name = "flexgen"

    def __init__(self, batch_size: int | None = None, prompt_tokens: int | None = None,
                 context_tokens: int | None = None, ttft_slo_s: float | None = None,
                 tpot_slo_s: float | None = None, step: float = 0.05, fraction: float | None = None,
                 link_bandwidth: str = "worst-case") -> None:
        if link_bandwidth not in ("worst-case", "alone"):
            raise ValueError(f"link_bandwidth must be 'worst-case' or 'alone', got {link_bandwidth!r}")
        if not 0 < step <= 1:
            raise ValueError(f"step must be in (0, 1], got {step}")
        if fraction is not None and not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.batch_size, self.prompt_tokens, self.context_tokens = batch_size, prompt_tokens, context_tokens
        self.ttft_slo_s, self.tpot_slo_s, self.step = ttft_slo_s, tpot_slo_s, step
        self.fraction = fraction
        self.link_bandwidth = link_bandwidth
        self.slo_feasible: bool | None = None  # whether its own model found a fraction meeting the SLO
        self.predicted: dict[str, float] = {}

    def setup(self, ctx: InstanceContext) -> None:
        super().setup(ctx)
        m, hw = ctx.model, ctx.hw
        self.peak = peak_spec_cost(m, hw)
        alone = min(hw.h2d_bytes_per_s, hw.bus_bytes_per_s)
        self.worst_bw = alone if self.link_bandwidth == "alone" else min(alone, hw.bus_bytes_per_s / hw.gpus_per_bus)
        n = int(round(1 / self.step))
        self.grid = [min(1.0, k * self.step) for k in range(n + 1)]
        self.fits = [f for f in self.grid
                     if MemoryLayout.build(m, hw, ctx.engine, self.plan_of(f), check=False).kv_blocks >= 1]
        if self.fraction is None and self.batch_size and self.prompt_tokens and (self.ttft_slo_s or self.tpot_slo_s):
            self._decide(self.batch_size, self.prompt_tokens, self.context_tokens or self.prompt_tokens,
                         self.ttft_slo_s or INF, self.tpot_slo_s or INF)

    def plan_of(self, f: float) -> OffloadPlan:
        L = self.ctx.model.num_layers
        return OffloadPlan.resident(L) if f <= 0 else OffloadPlan.layerwise(L, f)

    def predict(self, f: float, shape: BatchShape) -> float:
        """FlexGen's own estimate: peak-spec compute, worst-case bandwidth, the same executor."""
        plan, lb = self.plan_of(f), self.ctx.model.weight_bytes_per_layer
        return run_closed_form(0.0, plan, self.peak.layer_time(shape), compile_copies(plan, lb), self.worst_bw,
                               self.ctx.hw.link_latency_s, self.peak.fixed_time(shape), lb).end_s

    def _decide(self, batch: int, prompt: int, context: int, ttft: float, tpot: float) -> None:
        pre, dec = BatchShape.prefill_batch(batch, prompt), BatchShape.decode_batch(batch, context)
        best = None
        for f in self.fits:
            tp, td = self.predict(f, pre), self.predict(f, dec)
            if tp <= ttft and td <= tpot:
                best = f
                self.predicted = {"ttft_s": tp, "tpot_s": td}
        self.slo_feasible = best is not None
        if best is None:
            best = self.fits[0] if self.fits else 1.0
            self.predicted = {"ttft_s": self.predict(best, pre), "tpot_s": self.predict(best, dec)}
        self.fraction = best
        self.target = {"batch_size": batch, "prompt_tokens": prompt, "context_tokens": context,
                       "ttft_slo_s": ttft, "tpot_slo_s": tpot}

    def initial_plan(self) -> OffloadPlan:
        if self.fraction is not None:
            return self.plan_of(self.fraction)
        return self.plan_of(self.fits[0] if self.fits else 1.0)  # until the first request says the SLO

    def host_weight_bytes(self) -> float:
        return self.initial_plan().host_bytes(self.ctx.model)

    def admit(self, view: EngineView, req: "Request", now: float) -> str | None:
        if self.fraction is None:  # first request: choose once, before anything is allocated
            self._decide(self.batch_size or self.ctx.engine.max_num_seqs, self.prompt_tokens or req.prompt_tokens,
                         self.context_tokens or req.prompt_tokens + self.ctx.output_lengths.typical(req) // 2,
                         self.ttft_slo_s or req.ttft_slo_s, self.tpot_slo_s or req.tpot_slo_s)
            view.request_plan(self.plan_of(self.fraction))  # type: ignore[arg-type]
        # a static batch: admit only what the pool will hold to the end (FlexGen never preempts); the end
        # is estimated from the output-length distribution (a quantile of the batch's sum), not known
        running = [*view.decoding.values(), *view.prefilling]
        if running:
            items = [(r, r.prompt_tokens + g, g) for r in running
                     for g in (view.generated_now(r) if r.id in view.decoding else r.generated,)]
            items.append((req, req.prompt_tokens + req.generated, req.generated))
            if self.ctx.output_lengths.reserve_blocks(items, self.ctx.engine.block_size) > view.kv_total_blocks:
                return DEFER
        return None

    @property
    def uses_host_link(self) -> bool:
        return self.fraction is None or self.fraction > 0

    def describe(self) -> str:
        f = "undecided" if self.fraction is None else f"{self.fraction:.2f}"
        return f"flexgen-slo(f={f})"
