"""`RayPool`: the sweep executor (`sim.pools.local.SweepExecutor`) on a Ray cluster.

Ray is optional (``pip install 'memslo[ray]'``); only this module imports it, and only when a pool is
made, so ``import sim.pools.local`` works without it. ``python -m sim.search SCENARIO.yaml --ray auto`` uses it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# shipped to a remote cluster, whose workers may not have this checkout (or this version of it) installed
SIM_DIR = Path(__file__).resolve().parents[1]  # the sim package, shipped to the workers

# in-flight tasks per cluster CPU: enough that no CPU idles while the driver collects results, few enough
# that a sweep of a million items does not put them all into the object store at once
IN_FLIGHT_PER_CPU = 4


def _call(fn: Callable[[T], R], item: T) -> R:
    """The Ray task: one item (top-level so that it pickles by reference)."""
    return fn(item)


class RayPool:
    """Runs sweep items as Ray tasks (one CPU each).

    ``address``: ``"auto"`` connects to a running local cluster if there is one, otherwise starts a local
    instance; ``"local"`` always starts a fresh local instance with ``workers`` CPUs (None: all cores); any
    other value is a cluster address (``"HOST:6379"``, ``"ray://HOST:10001"``), to which the ``sim``
    package is shipped. If Ray is already initialised in this process, the pool uses that and leaves it
    running; a Ray instance the pool started is shut down when the ``with`` block ends, or by ``close()``.
    Connecting waits for the first use: entering ``with``, reading ``workers`` (which stays connected), or
    a ``map``/``imap_unordered`` call outside ``with`` (which connects for that call only). ``workers``
    given on an existing cluster caps how many items run at once."""

    def __init__(self, address: str = "auto", workers: int | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise RuntimeError("--ray needs Ray: pip install 'memslo[ray]'") from None
        self.address = address
        self._asked = workers if workers and workers > 0 else None
        self._connected = False
        self._owns_ray = False  # True: we started Ray, so we shut it down
        self._workers = 0
        self._max_in_flight = 0
        self._task: Any = None  # the remote version of `_call`

    # --- connection -----------------------------------------------------------------------------------
    def _connect(self) -> None:
        if self._connected:
            return
        import ray

        if not ray.is_initialized():
            quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                     "configure_logging": True, "logging_level": logging.ERROR}
            try:
                if self.address == "local":
                    ray.init(address="local", num_cpus=self._asked, **quiet)
                elif self.address == "auto":
                    ray.init(**quiet)
                else:
                    ray.init(address=self.address, runtime_env={"py_modules": [str(SIM_DIR)]}, **quiet)
            except (ConnectionError, RuntimeError) as e:  # unreachable address, GCS never answered
                raise RuntimeError(f"cannot connect to Ray at {self.address!r}: {e}") from e
            self._owns_ray = True
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._workers = min(cpus, self._asked) if self._asked else cpus
        # a cap below the cluster's size is enforced by the number in flight; otherwise Ray's one-CPU-per-task
        # scheduling limits concurrency and the extra in-flight tasks just keep the CPUs fed
        self._max_in_flight = self._workers if self._workers < cpus else IN_FLIGHT_PER_CPU * cpus
        self._task = ray.remote(_call)
        self._connected = True

    def close(self) -> None:
        """Disconnect; shuts Ray down only if this pool started it."""
        if self._owns_ray:
            import ray

            ray.shutdown()
        self._connected = self._owns_ray = False
        self._task = None

    def __enter__(self) -> Self:
        self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workers(self) -> int:
        """How many items run at once: the cluster's CPUs (or fewer, if ``workers`` asked for fewer)."""
        self._connect()
        return self._workers

    # --- execution ------------------------------------------------------------------------------------
    def imap_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R]]:
        """``(index into items, result)`` as each task finishes. At most a few tasks per CPU are in flight;
        the rest of ``items`` is submitted as results come back."""
        if not self._connected:  # used without `with`: connect for this call only
            with self:
                yield from self.imap_unordered(fn, items)
            return
        import ray

        fn_ref = ray.put(fn)  # pickled once, not once per task
        # If the caller stops early (break, or a task raised), nothing more is submitted; the few tasks in
        # flight (at most a few per CPU) finish and their results are dropped. They are not cancelled:
        # ray.cancel racing a task's completion aborts the driver process in Ray's task manager ("Tried to
        # complete task that was not pending", ray-project/ray#54846; seen in this test suite). A Ray
        # instance this pool started is shut down when the pool closes, which stops them.
        pending: dict[Any, int] = {}
        for i, item in enumerate(items):
            pending[self._task.remote(fn_ref, item)] = i
            while len(pending) >= self._max_in_flight:
                yield from self._collect(pending)
        while pending:
            yield from self._collect(pending)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """The results in the order of ``items``: those that finish early wait in a buffer for their turn."""
        buf: dict[int, R] = {}
        nxt = 0
        for i, r in self.imap_unordered(fn, items):
            buf[i] = r
            while nxt in buf:
                yield buf.pop(nxt)
                nxt += 1

    @staticmethod
    def _collect(pending: dict[Any, int]) -> Iterator[tuple[int, Any]]:
        """Wait for at least one task, then take every one that is done."""
        import ray

        ray.wait(list(pending), num_returns=1)
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in done:
            i = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                # surface fn's own exception type (as LocalPool and SerialPool do), with the worker's
                # traceback attached as a note
                cause = e.cause
                if isinstance(cause, BaseException):
                    remote_tb = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # Ray colours the task name
                    cause.add_note(f"raised in a Ray task for item {i}:\n{remote_tb}")
                    raise cause from None
                raise
            yield i, result
