"""The plain-torch model: weight layout, masking over requests of different lengths, the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from backend.executor import OffloadExecutor
from backend.kv import PaddedKVCache, StepInputs
from backend.model import attention, linear
from backend.weights import LayerLayout, ModelWeights, SplitRows
from sim.core.model import PRESETS
from sim.core.offload_plan import OffloadPlan

from .backend_cases import PROMPTS, assert_equal_up_to_summation_order, small_spec


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-3-8b", "qwen2.5-7b", "opt-6.7b", "opt-13b"])
def test_layout_has_the_specs_parameter_count(name):
    spec = PRESETS[name]
    assert LayerLayout(spec).numel == spec.params_per_layer


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.77, 0.999, 1.0])
def test_split_is_the_fraction_to_within_a_row(fraction):
    spec = PRESETS["llama-2-7b"]
    lay = LayerLayout(spec)
    host = lay.numel - lay.split_for(fraction)
    assert abs(host - fraction * lay.numel) <= max(spec.hidden_size, spec.intermediate_size)


def test_split_views_reassemble_the_layer():
    lay = LayerLayout(small_spec())
    flat = torch.randn(lay.numel)
    whole = lay.views(flat, None, lay.numel)
    for f in (0.3, 0.5, 0.9, 1.0):
        split = lay.split_for(f)
        parts = lay.views(flat[:split].clone() if split else None, flat[split:].clone(), split)
        for name, t in parts.items():
            full = torch.cat([t.top, t.bottom]) if isinstance(t, SplitRows) else t
            assert torch.equal(full, whole[name]), name
    half = lay.split_for(0.5)
    assert any(isinstance(t, SplitRows) for t in lay.views(flat[:half], flat[half:], half).values())


def test_split_linear_agrees_up_to_summation_order():
    """Two row blocks compute the same dot products as the whole matrix; the BLAS library may block them
    differently (summed in another order), but a wrong block order would move the result by O(1)."""
    x, w, b = torch.randn(3, 7, 64), torch.randn(96, 64), torch.randn(96)
    want = linear(x, w, b)
    assert_equal_up_to_summation_order(linear(x, SplitRows(w[:40], w[40:]), b), want, False, "split", 64, 1)
    with pytest.raises(AssertionError):
        assert_equal_up_to_summation_order(linear(x, SplitRows(w[40:], w[:40]), b), want, False, "swapped", 64, 1)


def _reference_attention(q, k, v, lengths):
    """Per request, naive softmax attention over its first lengths[b] keys (GQA by repeating KV heads)."""
    B, H, S, D = q.shape
    rep = H // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        kk = k[b, :, :lengths[b]].repeat_interleave(rep, 0)  # [H, T, D]
        vv = v[b, :, :lengths[b]].repeat_interleave(rep, 0)
        p = torch.softmax(q[b] @ kk.transpose(-1, -2) / math.sqrt(D), dim=-1)  # [H, S, T]
        out[b] = p @ vv
    return out.transpose(1, 2).reshape(B, S, H * D)


def test_decode_attention_masks_each_requests_context():
    spec = small_spec()
    B, H, Hkv, D = 3, spec.num_heads, spec.num_kv_heads, spec.head_dim
    ctx = [4, 9, 1]  # tokens already cached per request
    cache = torch.randn(2, B, Hkv, 16, D)  # garbage beyond each request's length must not matter
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, Hkv, 1, D), torch.randn(B, Hkv, 1, D)
    inp = StepInputs.build([[1]] * B, ctx, "cpu")
    assert inp.mask is not None and not inp.uniform
    got = attention(spec, q, k, v, cache, inp)
    for b in range(B):
        assert torch.equal(cache[0, b, :, ctx[b]], k[b, :, 0]) and torch.equal(cache[1, b, :, ctx[b]], v[b, :, 0])
    want = _reference_attention(q, cache[0], cache[1], [c + 1 for c in ctx])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_uniform_steps_need_no_mask():
    assert StepInputs.build(torch.ones(2, 5, dtype=torch.long), [0, 0], "cpu").is_causal
    d = StepInputs.build(torch.ones(2, 1, dtype=torch.long), [7, 7], "cpu")
    assert d.mask is None and d.uniform and not d.is_causal
    assert StepInputs.build(torch.ones(2, 3, dtype=torch.long), [4, 4], "cpu").mask is not None  # chunk after context


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_batched_requests_of_different_lengths_match_each_alone(arch):
    """Padding and masks are right: the batched run gives each request the logits it gets alone, through a
    prefill and two decode steps."""
    w = ModelWeights(small_spec(arch), "cpu", seed=5)
    ex = OffloadExecutor(w, OffloadPlan.resident(w.spec.num_layers))
    kv = PaddedKVCache(w.spec, len(PROMPTS), 16, "cpu", w.dtype)
    batched = [ex.step(kv, StepInputs.build(PROMPTS, [0] * 3, "cpu"))[0]]
    pos = [len(p) for p in PROMPTS]
    for step in range(2):
        batched.append(ex.step(kv, StepInputs.build([[20 + step]] * 3, pos, "cpu"))[0])
        pos = [p + 1 for p in pos]
    for b, prompt in enumerate(PROMPTS):
        kv1 = PaddedKVCache(w.spec, 1, 16, "cpu", w.dtype)
        alone = [ex.step(kv1, StepInputs.build([prompt], [0], "cpu"))[0]]
        for step in range(2):
            alone.append(ex.step(kv1, StepInputs.build([[20 + step]], [len(prompt) + step], "cpu"))[0])
        for k in range(3):
            torch.testing.assert_close(batched[k][b], alone[k][0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_prefill_equals_token_by_token_decode(arch):
    """RoPE / learned positions, the causal mask and the KV cache agree: feeding a prompt at once or one
    token at a time gives the same last-token logits."""
    w = ModelWeights(small_spec(arch), "cpu", seed=6)
    ex = OffloadExecutor(w, OffloadPlan.resident(w.spec.num_layers))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    kv = PaddedKVCache(w.spec, 1, 16, "cpu", w.dtype)
    at_once = ex.step(kv, StepInputs.build([prompt], [0], "cpu"))[0]
    kv2 = PaddedKVCache(w.spec, 1, 16, "cpu", w.dtype)
    for i, t in enumerate(prompt):
        one = ex.step(kv2, StepInputs.build([[t]], [i], "cpu"))[0]
    torch.testing.assert_close(at_once, one, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kv.layers[-1][:, :, :, :8], kv2.layers[-1][:, :, :, :8], rtol=1e-4, atol=1e-5)


def test_weights_are_random_reproducible_and_never_zero():
    a = ModelWeights(small_spec(), "cpu", seed=1)
    b = ModelWeights(small_spec(), "cpu", seed=1)
    c = ModelWeights(small_spec(), "cpu", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.host_layers, b.host_layers))
    assert not torch.equal(a.host_layers[0], c.host_layers[0])
    assert not torch.equal(a.host_layers[0], a.host_layers[1])
    assert all((t != 0).all() for t in a.host_layers)
    assert a.layer_bytes == a.spec.weight_bytes_per_layer == 4 * small_spec().params_per_layer
