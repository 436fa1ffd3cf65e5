"""Shared pieces of the backend tests: a small model shape, a prefill-then-decode driver and the
dependency checks every recorded iteration must pass."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from backend.executor import IterationRecord, OffloadExecutor
from backend.kv import PaddedKVCache, StepInputs
from backend.streams import Streams
from backend.weights import ModelWeights
from sim.core.model import ModelSpec
from sim.core.offload_plan import OffloadPlan

L = 5
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "backend_smoke.yaml"


def small_spec(arch: str = "llama", layers: int = L) -> ModelSpec:
    """GQA (4 query heads, 2 KV heads), odd vocabulary; OPT variant with biases and LayerNorm."""
    if arch == "opt":
        return ModelSpec(name="tiny-opt", num_layers=layers, hidden_size=64, num_heads=4, num_kv_heads=4,
                         head_dim=16, intermediate_size=128, vocab_size=97, gated_mlp=False, arch="opt",
                         tie_embeddings=True, max_position=130)
    return ModelSpec(name="tiny-llama", num_layers=layers, hidden_size=64, num_heads=4, num_kv_heads=2,
                     head_dim=16, intermediate_size=96, vocab_size=101, max_position=128, qkv_bias=True)


FP32_UNIT_ROUNDOFF = 2.0 ** -24


def summation_order_tolerance(reduction: int, chained: int, scale: float) -> float:
    """How far an fp32 result may move when its dot products are summed in another order: a split weight
    (a layer-wise fraction multiplied as two row blocks) that the BLAS library blocks differently. One
    reordered sum of K products moves by at most about K·u relative to its magnitude (Higham's gamma_K,
    u = 2^-24), and ``chained`` such sums in a row (one per decoder layer, on the residual stream) add up;
    ``scale`` is the magnitude of the result (e.g. max |logit|). A wrong weight or layer moves logits by
    O(1), far beyond this."""
    return chained * reduction * FP32_UNIT_ROUNDOFF * scale


def assert_equal_up_to_summation_order(got: torch.Tensor, want: torch.Tensor, exact: bool, what: str,
                                       reduction: int, chained: int) -> None:
    """Bit-identical where the same kernel runs on bit-identical tensors (``exact``), else within
    `summation_order_tolerance`."""
    diff = float((got - want).abs().max())
    if exact:
        assert torch.equal(got, want), f"{what}: differs by {diff} where it must be bit-identical"
        return
    tol = summation_order_tolerance(reduction, chained, float(want.abs().max()))
    assert diff <= tol, f"{what}: differs by {diff}, more than a reordered fp32 sum explains ({tol:.3g})"


def assert_logits_agree(got: torch.Tensor, want: torch.Tensor, spec: ModelSpec, exact: bool, what: str) -> None:
    """Logits of a model: the longest reduction of a layer is max(hidden, intermediate), one per layer."""
    assert_equal_up_to_summation_order(got, want, exact, what, max(spec.hidden_size, spec.intermediate_size),
                                       spec.num_layers)


PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]  # different lengths: padding and masks


def prefill_then_decode(weights: ModelWeights, plans: Sequence[OffloadPlan], streams: Streams | None = None,
                        uva_impl: str = "auto") -> tuple[list[torch.Tensor], list[IterationRecord]]:
    """Iteration 0 prefills PROMPTS under plans[0]; iteration k >= 1 switches to plans[k] and decodes the
    greedy next token of every request (so the requests keep different context lengths)."""
    dev = weights.device
    ex = OffloadExecutor(weights, plans[0], streams=streams, uva_impl=uva_impl)  # type: ignore[arg-type]
    kv = PaddedKVCache(weights.spec, len(PROMPTS), 32, dev, weights.dtype)
    logits, rec = ex.step(kv, StepInputs.build(PROMPTS, [0] * len(PROMPTS), dev))
    outs, recs = [logits], [rec]
    pos = [len(p) for p in PROMPTS]
    for plan in plans[1:]:
        ex.set_plan(plan)
        nxt = logits.argmax(-1).tolist()
        logits, rec = ex.step(kv, StepInputs.build([[t] for t in nxt], pos, dev))
        outs.append(logits)
        recs.append(rec)
        pos = [p + 1 for p in pos]
    return outs, [r for r in recs if r is not None]


def check_dependencies(rec: IterationRecord, eps: float = 0.0) -> None:
    """The plan's rules, read off the recorded spans: layers in order; copies in task order, one at a time;
    a copy starts after compute reached its trigger layer and after its buffer's previous user finished;
    no layer starts before its copy ended."""
    lay = rec.layers
    for l in range(1, len(lay)):
        assert lay[l][0] >= lay[l - 1][1] - eps, f"layer {l} starts before layer {l - 1} ends"
    copies = [c for c in rec.copies if c.kind in ("copy", "promote")]
    assert [c.layer for c in copies] == [t.layer for t in rec.tasks]
    for a, b in zip(copies, copies[1:]):
        assert b.start_s >= a.end_s - eps, f"copies of layers {a.layer} and {b.layer} overlap"
    for t, c in zip(rec.tasks, copies):
        assert c.end_s >= c.start_s
        trigger_t = 0.0 if t.trigger == 0 else lay[t.trigger - 1][1]
        assert c.start_s >= trigger_t - eps, f"copy of layer {t.layer} starts before layer {t.trigger} is reached"
        if t.buffer_dep >= 0:
            assert c.start_s >= lay[t.buffer_dep][1] - eps, \
                f"copy of layer {t.layer} overwrites the buffer of layer {t.buffer_dep} while it computes"
        assert lay[t.layer][0] >= c.end_s - eps, f"layer {t.layer} starts before its copy ends"


def plan_sequences(layers: int = L) -> dict[str, list[OffloadPlan]]:
    """Named plan sequences (one plan per iteration: prefill then decodes) that the equality tests run."""
    P = OffloadPlan
    seqs: dict[str, list[OffloadPlan]] = {}
    for i in range(1, layers + 1):
        seqs[f"select-n-{i}"] = [P.select_n(layers, i)] * 3
    seqs["deepspeed"] = [P.deepspeed(layers)] * 3
    seqs["flexgen-0.5"] = [P.layerwise(layers, 0.5)] * 3
    seqs["flexgen-0.3"] = [P.layerwise(layers, 0.3)] * 3
    seqs["prefetch-3-2-2"] = [P.prefetch_groups(layers, 3, 2, 2)] * 3
    seqs["prefetch-2-1-0"] = [P.prefetch_groups(layers, 2, 1, 0)] * 3
    seqs["uva-3"] = [P.uva(layers, range(3))] * 3
    seqs["uva-all-half"] = [P.uva(layers, range(layers), 0.5)] * 3
    seqs["promote-demote"] = [P.select_n(layers, 1), P.resident(layers), P.select_n(layers, 2),
                              P.select_n(layers, 3), P.deepspeed(layers), P.layerwise(layers, 0.5),
                              P.select_n(layers, 2), P.uva(layers, range(2)), P.resident(layers)]
    return seqs
