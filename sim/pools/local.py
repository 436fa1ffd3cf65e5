"""The worker pool behind parameter sweeps, as one small interface.

A sweep hands a top-level (picklable) function and a list of items to a `SweepExecutor` and gets the
results back, either in the items' order (``map``) or as each finishes, tagged with its item's index
(``imap_unordered``). `LocalPool` uses every core of this machine (a process pool); `SerialPool` runs
in-process (tests, debugging, one core); `sim.pools.ray_pool.RayPool` runs on a Ray cluster. Every pool works
as a context manager (the workers live for the ``with`` block) and also without one (each call then
starts and stops its own workers).

Workers never outlive their parent: they ignore Ctrl-C (the terminal sends it to the whole process group;
the parent decides), die on SIGTERM, are terminated when the ``with`` block is left by an interruption
(KeyboardInterrupt, which the commands also raise for SIGTERM) instead of finishing their items, and each
watches its parent and exits when the parent is gone (even killed with SIGKILL).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Protocol, Self, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class SweepExecutor(Protocol):
    """Runs ``fn`` on every item of ``items``. ``fn`` must be a top-level (picklable) function; an exception
    it raises propagates out of the iterator with its own type (sweeps catch per-item failures inside
    ``fn``, so this only surfaces bugs)."""

    @property
    def workers(self) -> int:
        """How many items run at once."""
        ...

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """The results in the order of ``items`` (deterministic)."""
        ...

    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """``(index into items, result)`` as each item finishes; every index exactly once."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


PARENT_POLL_S = 0.5  # how often a worker checks that its parent is alive


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:  # re-parented: the process that started us is gone
            os._exit(1)


def _worker_init(parent: int) -> None:
    """In each worker: ignore Ctrl-C, die on SIGTERM (a forked worker inherits the parent's Python-level
    handler, which would raise inside the item instead), and exit when the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


class SerialPool:
    """Everything in this process, one item after another."""

    workers = 1

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        for item in items:
            yield fn(item)

    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        for i, item in enumerate(items):
            yield i, fn(item)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LocalPool:
    """A process pool over this machine's cores (``workers`` defaults to all of them). ``map`` sends items in
    chunks and returns results in input order whatever finishes first; ``imap_unordered`` yields each
    result as soon as it is done."""

    def __init__(self, workers: int | None = None, chunksize: int = 1) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunksize = max(1, chunksize)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        # workers ignore Ctrl-C: the terminal sends SIGINT to the whole process group, and only the parent
        # should react (stop handing out work, keep what is finished) -- a worker hit mid-item would
        # otherwise return a half-done result or break the pool
        self._pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_worker_init,
                                         initargs=(os.getpid(),))
        return self

    def __exit__(self, exc_type: object = None, *exc: object) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
            # interrupted: the items in flight are not wanted; stop their workers now rather than wait
            terminate_workers(pool)
        pool.shutdown(cancel_futures=True)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        if self._pool is None:  # used without `with`: a pool for this call only
            with self:
                yield from self.map(fn, items)
            return
        try:
            yield from self._pool.map(fn, list(items), chunksize=self.chunksize)
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM while waiting: the items in flight are not wanted
            terminate_workers(self._pool)
            raise

    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        if self._pool is None:
            with self:
                yield from self.imap_unordered(fn, items)
            return
        futures: dict[Future[R], int] = {self._pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()  # re-raises fn's exception with its own type
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM while waiting: the items in flight are not wanted
            terminate_workers(self._pool)
            raise
        finally:
            # the caller stopped early (break, or fn raised): don't leave the rest queued on the pool
            for fut in futures:
                fut.cancel()


def terminate_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM to every worker of ``pool`` (Python 3.14's ``ProcessPoolExecutor.terminate_workers``; before
    it, the same through the executor's process table)."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.terminate()
        except (OSError, ValueError):  # already gone
            pass


def make_executor(workers: int | None = None, ray: str | None = None) -> SweepExecutor:
    """``ray`` given (``"auto"``, ``"local"`` or a cluster address): a `sim.pools.ray_pool.RayPool`. Otherwise
    ``workers=1`` runs serially, anything else is a local process pool (None: all cores)."""
    if ray is not None:
        # imported here: `import sim.pools.local` must not need (or load) Ray
        from sim.pools.ray_pool import RayPool

        return RayPool(address=ray, workers=workers)
    return SerialPool() if workers == 1 else LocalPool(workers)
