"""KV cache and per-iteration batch inputs.

Layout choice: a **padded** cache, one tensor per layer of shape [2, B, Hkv, T_max, D] (K and V), where
row b holds request b's tokens at positions 0..len_b-1 and the rest is masked out. Why not paged:

- ``scaled_dot_product_attention`` takes dense K/V; a paged cache would need a gather into a dense tensor
  every layer (extra HBM traffic that inflates exactly the per-layer times we are here to measure) or a
  paged-attention kernel outside plain torch.
- The backend's job is timing fixed batch shapes and checking schedules; the memory a padded cache wastes
  is irrelevant there, and the simulator models paged KV capacity on its own.
- Different context lengths per request are still supported: `StepInputs` builds a boolean mask from each
  request's context length (and causality for multi-token steps). Uniform batches get no mask, so SDPA may
  pick its fastest (flash) kernel.

New tokens are right-padded: a step feeds [B, S] tokens of which the first ``new_lens[b]`` are real. Padded
positions are written to the cache too (they lie beyond the request's length, are masked, and are
overwritten by the request's next step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sim.core.model import ModelSpec


@dataclass
class StepInputs:
    """One iteration's new tokens for a batch of requests. Build with `StepInputs.build`."""

    tokens: torch.Tensor  # [B, S] int64, right-padded
    positions: torch.Tensor  # [B, S] int64: start_pos[b] + s
    start_pos: list[int]  # tokens already in the cache, per request
    new_lens: list[int]  # real new tokens per request (1..S)
    kv_len: int  # keys attended this step: max(start_pos[b] + S)
    mask: torch.Tensor | None  # [B, 1, S, kv_len] bool (True = attend), None when not needed
    is_causal: bool  # uniform fresh prefill: SDPA's own causal mask, no explicit mask
    uniform: bool  # every request has the same start_pos and S real tokens (slice writes, no scatter)
    last_idx: torch.Tensor  # [B] index of each request's last real token (whose logits we return)

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    @classmethod
    def build(cls, tokens: Sequence[Sequence[int]] | torch.Tensor, start_pos: Sequence[int],
              device: torch.device | str, pad_id: int = 0) -> "StepInputs":
        """``tokens``: per request its new token ids (lists of different lengths are right-padded), or a
        [B, S] tensor of equal-length rows. ``start_pos``: tokens each request already has in the cache."""
        device = torch.device(device)
        if isinstance(tokens, torch.Tensor):
            B, S = tokens.shape
            new_lens = [S] * B
            tok = tokens.to(device=device, dtype=torch.long)
        else:
            new_lens = [len(t) for t in tokens]
            B, S = len(tokens), max(new_lens)
            tok = torch.full((B, S), pad_id, dtype=torch.long)
            for b, t in enumerate(tokens):
                tok[b, :len(t)] = torch.as_tensor(list(t), dtype=torch.long)
            tok = tok.to(device)
        start = [int(p) for p in start_pos]
        if len(start) != B or min(new_lens) < 1 or min(start) < 0:
            raise ValueError("need one start position (>= 0) and at least one new token per request")
        kv_len = max(start) + S
        uniform = len(set(start)) == 1 and min(new_lens) == S
        is_causal = uniform and start[0] == 0 and S > 1
        st = torch.tensor(start, dtype=torch.long, device=device)  # [B]
        positions = st[:, None] + torch.arange(S, device=device)[None, :]  # [B, S]
        mask = None
        if not uniform or (S > 1 and start[0] > 0):
            nl = torch.tensor(new_lens, dtype=torch.long, device=device)  # [B]
            key = torch.arange(kv_len, device=device)  # [T]
            valid = key[None, :] < (st + nl)[:, None]  # [B, T]: key holds a real token of request b
            causal = key[None, None, :] <= positions[:, :, None]  # [B, S, T]
            mask = (valid[:, None, :] & causal)[:, None]  # [B, 1, S, T]; key 0 is always allowed: no empty row
        last_idx = torch.tensor([n - 1 for n in new_lens], dtype=torch.long, device=device)
        return cls(tok, positions, start, new_lens, kv_len, mask, is_causal, uniform, last_idx)


class PaddedKVCache:
    """K and V of every layer for ``batch`` requests of up to ``max_tokens`` tokens each, on ``device``.

    Allocated with zeros, not ``empty``: masked-out slots still enter SDPA's P @ V product with weight 0,
    and uninitialised memory may hold NaN or inf (0 * NaN = NaN)."""

    def __init__(self, spec: ModelSpec, batch: int, max_tokens: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        self.spec, self.batch, self.max_tokens = spec, batch, max_tokens
        shape = (2, batch, spec.num_kv_heads, max_tokens, spec.head_dim)
        self.layers: list[torch.Tensor] = [torch.zeros(shape, dtype=dtype, device=device)
                                           for _ in range(spec.num_layers)]

    def fill_random_(self, generator: torch.Generator | None = None, std: float = 1.0) -> None:
        """Random K/V everywhere (stands in for a context that was prefilled earlier; never zeros)."""
        for t in self.layers:
            t.normal_(std=std, generator=generator)

    def check_fits(self, inputs: StepInputs) -> None:
        if inputs.batch_size != self.batch or inputs.kv_len > self.max_tokens:
            raise ValueError(f"step needs batch {inputs.batch_size} x {inputs.kv_len} tokens, cache holds "
                             f"{self.batch} x {self.max_tokens}")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.layers)
