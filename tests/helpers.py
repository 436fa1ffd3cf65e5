"""Test helpers: where ../shared lives, a constant cost model, tiny specs."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.engine.bus import Bus

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# a small valid scenario (one A10, 5 s of Poisson arrivals); tests derive bad inputs from it
GOOD = """\
model: llama-2-7b
hardware: {gpu: a10}
slo: {ttft_s: 5, tpot_s: 0.2}
workload:
  duration_s: 5
  arrivals: {kind: poisson, rate_per_s: 1}
  prompt: {kind: fixed, value: 100}
  output: {kind: fixed, value: 10}
compare:
  - {name: none, policy: none}
"""


def shared_dir() -> Path:
    """The project's shared data folder: $MEMSLO_SHARED, or ../shared beside the checkout (CI), or two up
    (a git worktree under a folder beside the checkout)."""
    candidates = [os.environ.get("MEMSLO_SHARED"), REPO.parent / "shared", REPO.parent.parent / "shared"]
    for c in candidates:
        if c and (Path(c) / "data").is_dir():
            return Path(c)
    raise FileNotFoundError(f"shared data not found (tried {[str(c) for c in candidates if c]}); set MEMSLO_SHARED")


class ConstCost:
    """A cost model with fixed times, for hand-computed expectations."""

    def __init__(self, layer_s: float = 1e-3, fixed_s: float = 0.5e-3) -> None:
        self.layer_s, self.fixed_s = layer_s, fixed_s

    def layer_time(self, shape: BatchShape) -> float:
        return self.layer_s

    def fixed_time(self, shape: BatchShape) -> float:
        return self.fixed_s


def tiny_model(layers: int = 4, **kw) -> ModelSpec:
    """4 layers, hidden 64: weight bytes per layer = 2 * (4*64*64 + 3*64*128 + 2*64) = 82,176."""
    base = ModelSpec(name="tiny", num_layers=layers, hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=16,
                     intermediate_size=128, vocab_size=256, max_position=4096)
    return replace(base, **kw) if kw else base


def lone_bus(gpu: int = 0) -> Bus:
    """The bus of a GPU alone under it (for a policy set up without a cluster)."""
    return Bus(0, 1e12, (gpu,))


def tiny_hw(gpu_bytes: float, **kw) -> HardwareSpec:
    base = HardwareSpec(name="tiny-gpu", gpu_memory_bytes=gpu_bytes, hbm_bytes_per_s=1e12, peak_flops=1e14,
                        kernel_overhead_s=0.0, h2d_bytes_per_s=1e9, d2h_bytes_per_s=1e9, link_latency_s=0.0,
                        gpus_per_bus=1, bus_bytes_per_s=1e9, gpu_link_bytes_per_s=1e10, gpu_link_latency_s=0.0,
                        host_memory_bytes=1e12, gpus_per_node=8)
    return replace(base, **kw) if kw else base


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120.0):
    """``python -m sim.run ARGS`` in a subprocess (the repository on PYTHONPATH, so no install is needed)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "sim.run", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
