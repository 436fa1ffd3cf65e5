"""The worker pool behind parameter sweeps, as one small interface.

A sweep hands a top-level (picklable) function and a list of items to a `SweepExecutor` and gets the
results back in the items' order. `LocalPool` uses every core of this machine (a process pool);
`SerialPool` runs in-process (tests, debugging, one core). A distributed engine (Ray, ...) only has to
implement ``map`` to replace them.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class SweepExecutor(Protocol):
    """Runs ``fn`` on every item; yields the results in the order of ``items`` (deterministic)."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class SerialPool:
    """Everything in this process, one item after another."""

    workers = 1

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        for item in items:
            yield fn(item)

    def __enter__(self) -> "SerialPool":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LocalPool:
    """A process pool over this machine's cores (``workers`` defaults to all of them). Items are sent in
    chunks; results come back in input order whatever finishes first."""

    def __init__(self, workers: int | None = None, chunksize: int = 1) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunksize = max(1, chunksize)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "LocalPool":
        self._pool = ProcessPoolExecutor(max_workers=self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        if self._pool is None:  # used without `with`: a pool for this call only
            with self:
                yield from self.map(fn, items)
            return
        yield from self._pool.map(fn, list(items), chunksize=self.chunksize)


def make_executor(workers: int | None = None) -> SweepExecutor:
    """``workers=1`` runs serially; otherwise a local process pool (None: all cores)."""
    return SerialPool() if workers == 1 else LocalPool(workers)
