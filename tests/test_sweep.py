"""The sweep pools (`sim.pools.local`, `sim.pools.ray_pool`) give the same results as running the items in-process:
``map`` in input order, ``imap_unordered`` every index once with its own result, and fn's exceptions
propagate with their own type. Ray runs on a local two-CPU instance (skipped where Ray is not installed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.api import PolicySpec, simulate
from sim.core.workload import LogNormal, Poisson, SyntheticWorkload
from sim.pools.local import LocalPool, SerialPool, SweepExecutor, make_executor
from sim.search import search

REPO = Path(__file__).resolve().parents[1]
POOLS = ["serial", "local", "ray"]


# --- the functions the pools run (top-level: they are pickled to the workers) ----------------------------
def tiny_simulation(item: tuple[int, int]) -> dict[str, Any]:
    """A few seconds of Poisson load on llama-2-7b / A10 at one static interval: the summary dict (less the
    wall time the simulation took, the one entry that is not deterministic)."""
    seed, interval = item
    rs = SyntheticWorkload(Poisson(2.0), LogNormal(256, 0.6, 16, 1024), LogNormal(32, 0.5, 1, 128), 5.0).generate(seed)
    spec = PolicySpec("selectn-static", {"interval": interval})
    run = simulate("llama-2-7b", "a10", rs, [spec], timeline_max_spans=0, detail_iterations=0)[spec.label]
    return {k: v for k, v in run.summary.items() if k != "wall_s"}


def pure_math(n: int) -> tuple[int, float]:
    """Collatz steps of n and a float sum whose last bits depend on the order of operations."""
    steps, x = 0, n
    while x != 1:
        x = x // 2 if x % 2 == 0 else 3 * x + 1
        steps += 1
    return steps, sum(math.sin(k * n) / k for k in range(1, 500))


def fails_on_three(n: int) -> int:
    if n == 3:
        raise KeyError(f"bad item {n}")
    return n


SIM_ITEMS = [(seed, interval) for seed in (1, 2) for interval in (2, 4, 33)]
MATH_ITEMS = list(range(1, 41))  # more than RayPool keeps in flight on 2 CPUs (4 per CPU)
CASES = [(tiny_simulation, SIM_ITEMS), (pure_math, MATH_ITEMS)]


def canon(x: Any) -> str:
    """Exact comparison: json keeps every float digit and writes NaN as NaN (so NaN == NaN)."""
    return json.dumps(x, sort_keys=True, default=str)


# --- pools ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    # the workers unpickle this module's functions; ship them by value so they need not import `tests`
    # (which only works when pytest runs from the repository root)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _make(kind: str, request: pytest.FixtureRequest) -> SweepExecutor:
    if kind == "serial":
        return SerialPool()
    if kind == "local":
        return LocalPool(2)
    request.getfixturevalue("ray_cluster")
    from sim.pools.ray_pool import RayPool

    return RayPool()


@pytest.fixture(params=POOLS)
def pool(request: pytest.FixtureRequest) -> Iterator[SweepExecutor]:
    with _make(request.param, request) as p:
        yield p


# --- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn,items", CASES, ids=["simulation", "math"])
def test_map_gives_the_in_process_results_in_order(pool: SweepExecutor, fn: Callable, items: list) -> None:
    assert canon(list(pool.map(fn, items))) == canon([fn(x) for x in items])


@pytest.mark.parametrize("fn,items", CASES, ids=["simulation", "math"])
def test_imap_unordered_yields_every_index_once_with_its_result(pool: SweepExecutor, fn: Callable,
                                                                 items: list) -> None:
    got = list(pool.imap_unordered(fn, items))
    assert sorted(i for i, _ in got) == list(range(len(items)))  # each index exactly once
    assert canon(sorted(got, key=lambda t: t[0])) == canon(list(enumerate(fn(x) for x in items)))


def test_empty_items(pool: SweepExecutor) -> None:
    assert list(pool.map(pure_math, [])) == [] and list(pool.imap_unordered(pure_math, [])) == []


def test_the_exception_of_fn_propagates_with_its_type(pool: SweepExecutor) -> None:
    with pytest.raises(KeyError, match="bad item 3") as e:
        list(pool.map(fails_on_three, range(10)))
    assert type(e.value) is KeyError
    with pytest.raises(KeyError, match="bad item 3") as e:
        list(pool.imap_unordered(fails_on_three, range(10)))
    assert type(e.value) is KeyError
    assert list(pool.map(pure_math, [5, 6])) == [pure_math(5), pure_math(6)]  # the pool still works after


@pytest.mark.parametrize("kind", POOLS)
def test_pools_work_without_with(kind: str, request: pytest.FixtureRequest) -> None:
    p = _make(kind, request)
    assert list(p.map(pure_math, [7, 8, 9])) == [pure_math(7), pure_math(8), pure_math(9)]
    assert sorted(p.imap_unordered(pure_math, [7, 8])) == [(0, pure_math(7)), (1, pure_math(8))]
    assert p.workers == (1 if kind == "serial" else 2)


def test_ray_pool_leaves_a_ray_it_did_not_start_running(ray_cluster: None) -> None:
    import ray

    from sim.pools.ray_pool import RayPool

    with RayPool(address="local", workers=1) as p:  # Ray is up: used as is, `workers` caps concurrency
        assert p.workers == 1
        assert list(p.map(pure_math, MATH_ITEMS[:12])) == [pure_math(x) for x in MATH_ITEMS[:12]]
    assert ray.is_initialized()


def test_search_on_ray_equals_search_in_process(tmp_path: Path, ray_cluster: None) -> None:
    from sim.pools.ray_pool import RayPool
    from tests.test_selectn_scenarios import _small_search_scenario

    sc = _small_search_scenario(tmp_path, [2, 8, 33], ["short"], [1.5])
    serial, on_ray = search(sc, SerialPool()), search(sc, RayPool())
    assert len(serial) == 3 * 2
    assert serial.to_csv() == on_ray.to_csv()


def test_make_executor() -> None:
    assert isinstance(make_executor(1), SerialPool)
    assert isinstance(make_executor(3), LocalPool) and make_executor(3).workers == 3
    assert isinstance(make_executor(), LocalPool)


def test_sweep_does_not_import_ray() -> None:
    code = "import sys, sim.pools.local, sim.search; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_ray_pool_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'memslo\[ray\]'"):
        make_executor(ray="auto")
