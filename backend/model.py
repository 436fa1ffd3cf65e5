"""A decoder-only transformer in plain torch with explicit weight tensors (gpt-fast style, no nn.Module).

Two layer variants, chosen by ``ModelSpec.arch``:
- ``llama``: RMSNorm, fused QKV with grouped-query heads (optional QKV and O biases: Qwen, InternLM), rotary
  embeddings (rotate-half convention), attention over the KV cache, gated SiLU MLP. Phi-3 and Gemma run as
  this layer (Gemma's gated GELU as SiLU: the same shapes and kernels); layouts it does not implement
  (Phi-2's ``phi`` arch, Gemma-2's four norms) are refused by `backend.weights.check_supported`.
- ``opt``: LayerNorm with bias, learned positions (offset 2, as in OPT), biases everywhere, ReLU MLP.

A layer is split into three functions so the profiler can time attention separately from the rest:
`pre_attention` (norm, QKV, RoPE), `attention` (KV-cache write and SDPA) and `post_attention` (O projection,
norm, MLP, residuals). Weights come as a dict of views (`backend.weights.LayerLayout.views`), so the same
code runs on resident, staged or host-mapped weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sim.core.model import ModelSpec

from .kv import StepInputs
from .weights import ModelWeights, SplitRows, Weight

NORM_EPS = 1e-5


def linear(x: torch.Tensor, w: Weight, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T + b for a [out, in] weight, or for a `SplitRows` weight (two GEMMs, outputs concatenated)."""
    if isinstance(w, SplitRows):
        r = w.top.shape[0]
        bt, bb = (None, None) if b is None else (b[:r], b[r:])
        return torch.cat([F.linear(x, w.top, bt), F.linear(x, w.bottom, bb)], dim=-1)
    return F.linear(x, w, b)


def norm(spec: ModelSpec, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """RMSNorm (llama) or LayerNorm (opt), computed in fp32."""
    xf = x.float()
    if spec.arch == "opt":
        return F.layer_norm(xf, (x.shape[-1],), w.float(), None if b is None else b.float(),
                            NORM_EPS).to(x.dtype)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + NORM_EPS)
    return y.to(x.dtype) * w


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half convention. x: [B, H, S, D]; cos, sin: [B, 1, S, D/2] fp32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)  # [B, H, S, D/2] each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def embed(w: ModelWeights, inp: StepInputs) -> torch.Tensor:
    x = w.embed[inp.tokens]  # [B, S, h]
    if w.pos_embed is not None:  # OPT: learned positions, offset 2
        x = x + w.pos_embed[inp.positions + 2]
    return x


def head(w: ModelWeights, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
    """Logits of each request's last real token: [B, V] in fp32."""
    B = x.shape[0]
    last = x[torch.arange(B, device=x.device), inp.last_idx]  # [B, h]
    last = norm(w.spec, last, w.final_norm_w, w.final_norm_b)
    return F.linear(last, w.lm_head).float()  # [B, V]


def pre_attention(spec: ModelSpec, lw: dict[str, Weight], x: torch.Tensor, inp: StepInputs,
                  rope: tuple[torch.Tensor | None, torch.Tensor | None]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, QKV projection, RoPE. Returns q [B, H, S, D], k and v [B, Hkv, S, D]."""
    B, S, _ = x.shape
    H, Hkv, D = spec.num_heads, spec.num_kv_heads, spec.head_dim
    hn = norm(spec, x, lw["attn_norm_w"], lw.get("attn_norm_b"))  # type: ignore[arg-type]
    qkv = linear(hn, lw["wqkv"], lw.get("qkv_b"))  # type: ignore[arg-type]  # [B, S, (H + 2 Hkv) D]
    q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    q = q.view(B, S, H, D).transpose(1, 2)  # [B, H, S, D]
    k = k.view(B, S, Hkv, D).transpose(1, 2)  # [B, Hkv, S, D]
    v = v.view(B, S, Hkv, D).transpose(1, 2)
    cos_t, sin_t = rope
    if cos_t is not None and sin_t is not None:
        cos = cos_t[inp.positions][:, None]  # [B, 1, S, D/2]
        sin = sin_t[inp.positions][:, None]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k, v


def attention(spec: ModelSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_layer: torch.Tensor,
              inp: StepInputs) -> torch.Tensor:
    """Append k, v to this layer's cache [2, B, Hkv, T_max, D] and attend over it. Returns [B, S, H*D]."""
    B, H, S, D = q.shape
    if inp.uniform:
        s0 = inp.start_pos[0]
        kv_layer[0, :, :, s0:s0 + S] = k
        kv_layer[1, :, :, s0:s0 + S] = v
    else:  # per-request positions: scatter through advanced indexing
        bi = torch.arange(B, device=q.device)[:, None]  # [B, 1]
        kv_layer[0][bi, :, inp.positions] = k.transpose(1, 2)  # target view [B, S, Hkv, D]
        kv_layer[1][bi, :, inp.positions] = v.transpose(1, 2)
    T = inp.kv_len
    keys, values = kv_layer[0, :, :, :T], kv_layer[1, :, :, :T]  # [B, Hkv, T, D]
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=inp.mask, is_causal=inp.is_causal,
                                       enable_gqa=spec.num_kv_heads != spec.num_heads)  # [B, H, S, D]
    return o.transpose(1, 2).reshape(B, S, H * D)


def post_attention(spec: ModelSpec, lw: dict[str, Weight], x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """O projection and residual, norm, MLP and residual. x, o: [B, S, h] / [B, S, H*D] -> [B, S, h]."""
    x = x + linear(o, lw["wo"], lw.get("o_b"))  # type: ignore[arg-type]
    hn = norm(spec, x, lw["mlp_norm_w"], lw.get("mlp_norm_b"))  # type: ignore[arg-type]
    if spec.gated_mlp:
        gate, up = linear(hn, lw["w_up"]).chunk(2, dim=-1)  # [B, S, I] each
        act = F.silu(gate) * up
    else:
        act = F.relu(linear(hn, lw["w_up"], lw.get("up_b")))  # type: ignore[arg-type]
    return x + linear(act, lw["w_down"], lw.get("down_b"))  # type: ignore[arg-type]


def layer_forward(w: ModelWeights, lw: dict[str, Weight], x: torch.Tensor, kv_layer: torch.Tensor,
                  inp: StepInputs) -> torch.Tensor:
    """One decoder layer: [B, S, h] -> [B, S, h], appending this step's K/V to ``kv_layer``."""
    rope = (w.rope_cos, w.rope_sin)
    q, k, v = pre_attention(w.spec, lw, x, inp, rope)
    o = attention(w.spec, q, k, v, kv_layer, inp)
    return post_attention(w.spec, lw, x, o)
