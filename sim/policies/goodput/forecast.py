"""When queued requests could start without offloading more: a forecast from what an engine knows.

KV memory comes free when running requests finish. Their output lengths are not known, only the
distribution (`sim.core.lengths.OutputLengths`): a decoding request with g tokens is expected to finish
after E[R | g] more decode steps. `release_schedule` turns that into (time, blocks freed) events for the
current decode step time; `start_times` walks the queue first come, first served against those events (the
queued requests ahead, once admitted, free theirs in turn) to say when each queued request would find room. Pure functions (no engine state), tested by hand.
"""

from __future__ import annotations

import heapq
from typing import Sequence


def release_schedule(finish_in_steps: Sequence[float], blocks: Sequence[int], step_s: float,
                     now: float) -> tuple[list[float], list[int]]:
    """Running requests' expected release of KV blocks: times (ascending) and the cumulative blocks freed
    by then. ``finish_in_steps[i]``: decode steps request i is expected to still take; ``blocks[i]``: its
    blocks now (it frees them when it finishes)."""
    ev = sorted(zip(finish_in_steps, blocks))
    times, cum = [], []
    total = 0
    for steps, b in ev:
        total += b
        times.append(now + steps * step_s)
        cum.append(total)
    return times, cum


def start_times(needs: Sequence[int], hold_s: Sequence[float], free_blocks: int, times: Sequence[float],
                cum: Sequence[int], now: float) -> list[float]:
    """When each queued request (in order, needing ``needs[k]`` blocks, holding them ``hold_s[k]`` seconds
    once admitted) could be admitted first come, first served, as the running requests free their blocks
    (``times``/``cum``: `release_schedule`) and the queued ones ahead finish in turn. inf when even an
    empty pool would not hold it."""
    heap: list[tuple[float, int]] = []
    prev = 0
    for t, c in zip(times, cum):
        heap.append((t, c - prev))
        prev = c
    heapq.heapify(heap)
    free, clock = free_blocks, now
    out = []
    for n, hold in zip(needs, hold_s):
        while free < n and heap:
            t, b = heapq.heappop(heap)
            free += b
            clock = max(clock, t)
        if free < n:
            out.extend([float("inf")] * (len(needs) - len(out)))
            break
        free -= n
        out.append(clock)
        heapq.heappush(heap, (clock + hold, n))
    return out
