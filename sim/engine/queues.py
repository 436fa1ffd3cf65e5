"""Request queues that keep the KV demand of their requests as a counter (O(1) demand for routers and
overload handlers)."""

from __future__ import annotations

from collections import deque
from typing import Iterable

from sim.core.request import Request


class DemandQueue(deque):
    """A request queue that keeps, as ``blocks``, the KV blocks its requests need to run again
    (``ceil((tokens + 1) / block_size)`` each: their KV plus the next token), updated on every change."""

    def __init__(self, block_size: int, items: Iterable[Request] = ()) -> None:
        super().__init__()
        self.block_size = block_size
        self.blocks = 0
        for r in items:
            self.append(r)

    def need(self, r: Request) -> int:
        return -(-(r.prompt_tokens + r.generated + 1) // self.block_size)

    def append(self, r: Request) -> None:
        super().append(r)
        self.blocks += self.need(r)

    def appendleft(self, r: Request) -> None:
        super().appendleft(r)
        self.blocks += self.need(r)

    def insert(self, i: int, r: Request) -> None:
        super().insert(i, r)
        self.blocks += self.need(r)

    def extend(self, rs: Iterable[Request]) -> None:
        for r in rs:
            self.append(r)

    def extendleft(self, rs: Iterable[Request]) -> None:
        for r in rs:
            self.appendleft(r)

    def pop(self) -> Request:
        r = super().pop()
        self.blocks -= self.need(r)
        return r

    def popleft(self) -> Request:
        r = super().popleft()
        self.blocks -= self.need(r)
        return r

    def remove(self, r: Request) -> None:
        super().remove(r)
        self.blocks -= self.need(r)

    def __delitem__(self, i: int) -> None:  # type: ignore[override]
        r = self[i]
        super().__delitem__(i)
        self.blocks -= self.need(r)

    def clear(self) -> None:
        super().clear()
        self.blocks = 0
