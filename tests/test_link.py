"""The PCIe fabric: processor sharing, water-filling, latency; host memory accounting."""

import pytest
import simpy

from sim.core.hardware import PRESETS as HW
from sim.engine.link import Fabric, HostMemory, HostMemoryError


def run_transfers(cap, specs):
    """specs: (start time, route, bytes, latency). Returns end times."""
    env = simpy.Environment()
    fab = Fabric(env, cap)
    ends = {}

    def start(i, t, route, nbytes, lat):
        yield env.timeout(t)
        v = yield fab.transfer(route, nbytes, lat)
        ends[i] = v

    for i, s in enumerate(specs):
        env.process(start(i, *s))
    env.run()
    return [ends[i] for i in range(len(specs))], fab


def test_two_transfers_share_a_bus_fairly():
    """Bus 2 B/s, links 10 B/s. A (10 B) starts at 0, B (4 B) at 2.
    0-2: A alone at 2 B/s -> 6 B left.  2-6: 1 B/s each -> B done at 6, A has 2 B left.  A alone: done at 7."""
    cap = {"g0": 10.0, "g1": 10.0, "bus": 2.0}
    ends, fab = run_transfers(cap, [(0, ("g0", "bus"), 10.0, 0.0), (2, ("g1", "bus"), 4.0, 0.0)])
    assert ends == pytest.approx([7.0, 6.0], abs=1e-12)
    assert fab.bytes_moved["bus"] == 14.0
    assert fab.busy_s["bus"] == pytest.approx(7.0)


def test_water_filling_gives_leftover_to_the_unconstrained_flow():
    """g0 limits flow 0 to 1 B/s; the bus (3 B/s) gives flow 1 the remaining 2 B/s (max-min fair)."""
    cap = {"g0": 1.0, "g1": 5.0, "bus": 3.0}
    ends, _ = run_transfers(cap, [(0, ("g0", "bus"), 4.0, 0.0), (0, ("g1", "bus"), 4.0, 0.0)])
    # flow 1 at 2 B/s ends at 2; then flow 0 keeps 1 B/s (its own link): ends at 4
    assert ends == pytest.approx([4.0, 2.0], abs=1e-12)


def test_latency_is_paid_before_sharing():
    cap = {"g0": 2.0}
    ends, _ = run_transfers(cap, [(0, ("g0",), 4.0, 0.5)])
    assert ends == [2.5]


def test_separate_buses_do_not_interact_exactly():
    """A lone transfer ends at exactly start + latency + bytes / rate, whatever happens elsewhere."""
    env = simpy.Environment()
    fab = Fabric.for_gpus(env, HW["h100-sxm"], 4)  # GPUs 0,1 on bus0; 2,3 on bus1
    ends = {}

    def go(name, delay, gpu, nbytes):
        yield env.timeout(delay)
        ends[name] = yield fab.transfer(fab.h2d_route(gpu), nbytes, 1e-5)

    env.process(go("a", 0.001, 0, 4.05e8))
    for k in range(20):
        env.process(go(f"o{k}", 0.0003 * k, 2 + k % 2, 1e7 * (k + 1)))
    env.run()
    assert ends["a"] == (0.001 + 1e-5) + 4.05e8 / 53e9


def test_host_memory_accounting():
    h = HostMemory(10.0)
    h.allocate("weights", 6.0)
    h.allocate("kv_swap", 3.0)
    with pytest.raises(HostMemoryError, match="host memory exhausted"):
        h.allocate("kv_swap", 2.0)
    h.free("kv_swap", 3.0)
    assert (h.used_bytes, h.pinned_bytes, h.peak_bytes) == (6.0, 6.0, 9.0)
    with pytest.raises(ValueError):
        h.free("weights", 7.0)
