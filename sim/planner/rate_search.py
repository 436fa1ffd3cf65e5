"""Finding the highest grid rate a configuration sustains, one evaluation at a time, and dominance.

`RateSearch` is a pure state machine over indices of a sorted rate grid: it proposes the next index to
evaluate and is told whether the configuration passed there. It assumes passing is monotone in the rate
(a deployment that meets the SLO at rate r meets it at every lower rate) and keeps the proven bracket
``lo`` (highest index known to pass, -1 for none) and ``hi`` (lowest index known to fail, ``len(grid)`` for
none). It gallops from a first guess until it has a bracket, then bisects; it is done when ``hi == lo + 1``.
Because it only sees pass/fail, many searches can be advanced in rounds on a worker pool and the outcome
does not depend on which evaluation finished first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class RateSearch:
    grid: Sequence[float]
    first: int = 0
    lo: int = -1
    hi: int = -1  # set to len(grid) in __post_init__
    history: list[tuple[int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError("empty rate grid")
        if list(self.grid) != sorted(self.grid):
            raise ValueError("the rate grid must be sorted")
        if self.hi < 0:
            self.hi = len(self.grid)
        self.first = min(max(self.first, 0), len(self.grid) - 1)

    @property
    def done(self) -> bool:
        return self.hi - self.lo <= 1

    def next_index(self) -> int | None:
        """The index to evaluate next, or None when done."""
        if self.done:
            return None
        n = len(self.grid)
        if not self.history:
            return self.first
        step = 2 ** len(self.history)  # galloping: 2, 4, 8, ... grid steps from the last probe
        if self.hi == n:  # nothing failed yet: go up
            return min(n - 1, max(self.lo + step, self.lo + 1))
        if self.lo == -1:  # nothing passed yet: go down
            return max(0, min(self.hi - step, self.hi - 1))
        return (self.lo + self.hi) // 2

    def record(self, index: int, passed: bool) -> None:
        """Take the outcome at ``index`` (monotonicity: a pass proves every lower index, a fail every
        higher one)."""
        self.history.append((index, passed))
        if passed:
            self.lo = max(self.lo, index)
        else:
            self.hi = min(self.hi, index)
        if self.lo >= self.hi:  # a non-monotone outcome (noise): trust the failure, keep what passed below it
            self.lo = max((i for i, ok in self.history if ok and i < self.hi), default=-1)

    @property
    def max_rate(self) -> float:
        """The highest grid rate proven to pass (0 if none)."""
        return float(self.grid[self.lo]) if self.lo >= 0 else 0.0

    @property
    def fail_rate(self) -> float | None:
        """The lowest grid rate proven to fail (None if none)."""
        return float(self.grid[self.hi]) if self.hi < len(self.grid) else None


def max_passing(grid: Sequence[float], passes: Callable[[float], bool], first: int = 0) -> tuple[float, int]:
    """Run a `RateSearch` to the end with a synchronous predicate; return (max rate, evaluations)."""
    s = RateSearch(grid, first)
    while (i := s.next_index()) is not None:
        s.record(i, passes(grid[i]))
    return s.max_rate, len(s.history)


def dominated_by(cost: float, fail_rate: float | None, others: Sequence[tuple[str, float, float]]) -> str | None:
    """Whether a configuration with price ``cost`` that failed at ``fail_rate`` is dominated: another one
    (``(id, price, proven max rate)``) costs no more and sustains at least ``fail_rate``, so this one
    sustains strictly less at no lower price. Returns the dominating configuration's id (the cheapest, then
    the first), or None."""
    if fail_rate is None:
        return None
    best = [(c, i) for i, c, r in others if c <= cost and r >= fail_rate]
    return min(best)[1] if best else None

