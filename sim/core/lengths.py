"""What a serving engine may know about output lengths: a distribution, never a request's own length.

No real engine knows how many tokens a request will generate. It knows the request's ``max_tokens`` when
the client sends one, and the distribution of output lengths of its traffic (from history: here the
scenario's or trace's output distribution). `OutputLengths` answers the questions policies ask with that
and nothing else:

- `total(req)`: a cap on the request's output (its ``max_tokens``, else a high quantile of the distribution);
- `remaining(req, generated, q)`: the q-quantile of the tokens still to come given that ``generated`` have
  been produced (the distribution conditioned on outputs longer than that), capped by ``max_tokens``;
- `expected_remaining(req, generated)`: the conditional mean of the same;
- `reserve_blocks(items, block_size)`: the KV blocks a set of requests will hold by their end, as a
  quantile of their *sum* (conditional means plus z standard deviations, z from the quantile): the sum of
  per-request quantiles would reserve far more than a batch ever needs.

Conditioning on ``generated`` uses suffix sums over the sorted lengths, so every question is O(log n).
A request's true ``output_tokens`` is never read here (tests check that no policy reads it).
"""

from __future__ import annotations

import bisect
import math
from functools import lru_cache
from statistics import NormalDist
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from sim.core.request import Request


class OutputLengths:
    """An output-length distribution (a sample of lengths, e.g. the workload's) and the quantile ``q``
    that caps use (reservations, deadlines that must hold for long requests)."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, q: float = 0.9, source: str = "") -> None:
        v = np.sort(np.maximum(np.asarray(lengths, dtype=np.int64), 1))
        if len(v) == 0:
            raise ValueError("an output-length distribution needs at least one length")
        if not 0 < q < 1:
            raise ValueError(f"the output-length quantile must be in (0, 1), got {q}")
        self.values = v
        self._list = v.tolist()  # bisect on a list: far faster than numpy for one value at a time
        self._cache: dict[tuple[int, float], int] = {}  # (generated, q) -> remaining, without max_tokens
        self.q = q
        self.source = source
        f = v.astype(float)
        # suffix sums: S1[i] = sum(v[i:]), S2[i] = sum(v[i:]**2)
        self._s1 = np.concatenate([np.cumsum(f[::-1])[::-1], [0.0]])
        self._s2 = np.concatenate([np.cumsum((f * f)[::-1])[::-1], [0.0]])
        self._z = NormalDist().inv_cdf(q)
        self.cap = int(self.quantile(q))

    @classmethod
    def unknown(cls) -> "OutputLengths":
        """A broad prior for deployments built without a workload: log-normal, median 256, sigma 1, capped at
        4,096 (evenly spaced quantiles, so it is deterministic)."""
        return _unknown()

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.values, q, method="higher"))

    def _tail(self, generated: int) -> int:
        """Index of the first length above ``generated``."""
        return bisect.bisect_right(self._list, generated)

    @staticmethod
    def _max_tokens(req: "Request") -> int | None:
        return req.max_tokens

    def total(self, req: "Request") -> int:
        """A cap on the request's output: its max_tokens, else the q-quantile of the distribution."""
        m = self._max_tokens(req)
        return m if m is not None else self.cap

    def typical(self, req: "Request") -> int:
        """A typical output for the request (the median, capped by its max_tokens)."""
        med = int(self.quantile(0.5))
        m = self._max_tokens(req)
        return med if m is None else min(med, m)

    def remaining(self, req: "Request", generated: int, q: float | None = None) -> int:
        """The q-quantile (default ``self.q``) of the tokens still to come after ``generated`` (>= 1)."""
        q = self.q if q is None else q
        rem = self._cache.get((generated, q))
        if rem is None:
            i = self._tail(generated)
            n = len(self._list) - i
            if n > 0:
                rem = self._list[i + min(n - 1, int(q * (n - 1) + 0.5))] - generated
            else:  # longer than anything seen: expect a little more (a tenth of what it has, at least one)
                rem = max(1, generated // 10)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[(generated, q)] = rem
        m = self._max_tokens(req)
        if m is not None:
            rem = min(rem, m - generated)
        return max(rem, 1)

    def _moments(self, generated: int) -> tuple[float, float]:
        """Conditional mean and variance of the remaining tokens after ``generated``."""
        i = self._tail(generated)
        n = len(self._list) - i
        if n == 0:
            r = max(1.0, generated / 10)
            return r, 0.0
        m1 = float(self._s1[i]) / n - generated
        var = max(float(self._s2[i]) / n - (float(self._s1[i]) / n) ** 2, 0.0)
        return max(m1, 1.0), var

    def expected_remaining(self, req: "Request", generated: int) -> float:
        m, _ = self._moments(generated)
        cap = self._max_tokens(req)
        return max(1.0, min(m, cap - generated)) if cap is not None else m

    def moments(self, req: "Request", generated: int) -> tuple[float, float]:
        """Mean and variance of the tokens still to come after ``generated`` (capped by max_tokens)."""
        m, v = self._moments(generated)
        cap = self._max_tokens(req)
        if cap is not None and m > cap - generated:
            return float(max(cap - generated, 0)), 0.0
        return m, v

    def may_continue(self, req: "Request", generated: int) -> bool:
        """Whether the request may produce more than ``generated`` tokens (its max_tokens allows it and some
        output of the distribution is longer)."""
        cap = self._max_tokens(req)
        return (cap is None or cap > generated) and self._tail(generated) < len(self._list)

    def reserve_blocks(self, items: Iterable[tuple["Request", int, int]], block_size: int,
                       q: float | None = None) -> int:
        """KV blocks that requests will hold by their end, as the q-quantile (default ``self.q``) of the
        sum: per request ``(req, tokens it holds KV for now, tokens generated)``, its tokens now plus its
        expected remaining tokens, rounded up to blocks, plus z x the root of the summed variances (z from
        q; 0 at the median). A fixed length (variance 0) reserves exactly that request's final KV."""
        z = self._z if q is None else NormalDist().inv_cdf(q)
        blocks, var = 0, 0.0
        for req, tokens_now, g in items:
            m, v = self.moments(req, g)
            blocks += -(-(tokens_now + int(math.ceil(m))) // block_size)
            var += v
        return blocks + int(math.ceil(max(z, 0.0) * math.sqrt(var) / block_size))

    def describe(self) -> str:
        src = f" from {self.source}" if self.source else ""
        return (f"output lengths{src}: median {self.quantile(0.5):.0f}, p{self.q * 100:.0f} {self.cap} "
                f"({len(self.values)} samples)")


@lru_cache(maxsize=1)
def _unknown() -> OutputLengths:
    p = (np.arange(1000) + 0.5) / 1000
    x = np.exp(np.log(256.0) + np.array([NormalDist().inv_cdf(a) for a in p]))
    return OutputLengths(np.clip(np.rint(x), 1, 4096).astype(np.int64), source="prior: lognormal(256, 1)")
