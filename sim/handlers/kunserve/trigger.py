"""When KunServe drops and when it restores (the reference constants of the authors' code; docs/architecture.md,
"Reference figures"): an instance votes to drop when its KV demand is >= 95 % of its blocks and its queue cannot be
admitted (the queued requests need at least the free blocks, or the first of them does not fit); a group
restores when nothing is queued and its demand is at or below 50 % and has fallen over a window (30
samples at 0.5 s)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def votes_to_drop(demand_blocks: int, capacity_blocks: int, queued_blocks: int, head_blocks: int = 0,
                  threshold: float = 0.95) -> bool:
    """Demand = blocks in use + blocks the queued requests need. The queue cannot be admitted when the
    queued blocks reach the free ones (equivalently demand >= capacity) or when its first request does
    not fit in the free blocks (``head_blocks``: what the first queued request needs, watermark included)."""
    free = capacity_blocks - (demand_blocks - queued_blocks)
    stuck = queued_blocks >= free or head_blocks > free
    return queued_blocks > 0 and demand_blocks >= threshold * capacity_blocks and stuck


@dataclass
class DemandWindow:
    """The last ``samples`` demand ratios of a group (demand / capacity after a restore)."""

    samples: int = 30
    low: float = 0.5
    history: deque = field(default_factory=deque)

    def add(self, ratio: float) -> None:
        self.history.append(ratio)
        while len(self.history) > self.samples:
            self.history.popleft()

    def clear(self) -> None:
        self.history.clear()

    def should_restore(self, queued: int) -> bool:
        h = self.history
        return queued == 0 and len(h) >= self.samples and h[-1] <= self.low and h[-1] < h[0]
