"""The shape of one iteration's work, as a cost model sees it.

`BatchShape` summarises a continuous-batching iteration by the sums a cost model needs (token counts and
attention work), so the engine can update it incrementally instead of rebuilding per-request lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, slots=True)
class BatchShape:
    """One iteration's work: prefill chunks and decode tokens with their context lengths.

    ``prefill_attn_pairs`` counts (query, key) pairs of causal attention over the chunks, and
    ``prefill_kv_tokens`` the KV tokens the chunks' attention reads (earlier context plus the chunk).
    ``decode_ctx_sum`` is the summed context length (KV tokens read) of the decode tokens.
    """

    prefill_tokens: int = 0
    prefill_seqs: int = 0
    prefill_attn_pairs: float = 0.0
    prefill_kv_tokens: int = 0
    decode_tokens: int = 0
    decode_ctx_sum: int = 0

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens

    @property
    def num_seqs(self) -> int:
        return self.prefill_seqs + self.decode_tokens

    @property
    def is_empty(self) -> bool:
        return self.prefill_tokens == 0 and self.decode_tokens == 0

    @staticmethod
    def chunk_pairs(chunk: int, context_before: int) -> float:
        """Causal (query, key) pairs of a prefill chunk of ``chunk`` tokens after ``context_before`` tokens."""
        return chunk * context_before + chunk * (chunk + 1) / 2

    @classmethod
    def build(cls, prefill: Iterable[tuple[int, int]] = (), decode: Iterable[int] = ()) -> "BatchShape":
        """From prefill chunks ``(chunk_tokens, context_before)`` and decode context lengths.

        A decode token's context length counts the token itself (it attends to all earlier tokens and itself).
        """
        pt = ps = kv = 0
        pairs = 0.0
        for chunk, before in prefill:
            if chunk <= 0 or before < 0:
                raise ValueError(f"bad prefill chunk ({chunk}, {before})")
            pt += chunk
            ps += 1
            pairs += cls.chunk_pairs(chunk, before)
            kv += before + chunk
        dt = dc = 0
        for ctx in decode:
            if ctx <= 0:
                raise ValueError(f"bad decode context length {ctx}")
            dt += 1
            dc += ctx
        return cls(pt, ps, pairs, kv, dt, dc)

    def decode_part(self) -> "BatchShape":
        """This batch without its prefill chunks: the decode tokens alone (what the next iteration runs
        when no new prompt arrives)."""
        return BatchShape(0, 0, 0.0, 0, self.decode_tokens, self.decode_ctx_sum)

    @classmethod
    def prefill_batch(cls, batch: int, seq_len: int) -> "BatchShape":
        """``batch`` fresh prompts of ``seq_len`` tokens each."""
        return cls(batch * seq_len, batch, batch * cls.chunk_pairs(seq_len, 0), batch * seq_len, 0, 0)

    @classmethod
    def decode_batch(cls, batch: int, context: int) -> "BatchShape":
        """``batch`` decode tokens, each attending to ``context`` tokens."""
        return cls(0, 0, 0.0, 0, batch, batch * context)
