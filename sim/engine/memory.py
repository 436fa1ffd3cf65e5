"""Engine configuration and the GPU memory layout of one instance.

GPU memory (times ``gpu_memory_utilization``) = non-layer weights + resident layer weights + staging
buffers + activation workspace + KV pool. The KV pool is what is left, so the offload plan decides the KV
capacity: offloading more layers buys KV blocks, promoting a layer costs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.core.offload_plan import OffloadPlan
from sim.core.units import GiB, MiB


class ModelDoesNotFit(RuntimeError):
    """The model cannot run at all on this GPU under this plan."""


@dataclass(frozen=True)
class EngineConfig:
    """Serving-engine knobs, named after vLLM's where they match."""

    block_size: int = 16
    max_num_batched_tokens: int = 8192  # token budget of one iteration
    max_num_seqs: int = 256
    chunked_prefill: bool = True
    preemption: Literal["recompute", "swap"] = "recompute"
    gpu_memory_utilization: float = 0.9
    swap_space_gib: float = 4.0  # per GPU, pinned host memory for swapped KV (vLLM's swap_space)
    watermark: float = 0.01  # share of KV blocks kept free when admitting new requests
    # vLLM V0's chunked-prefill scheduler admits waiting requests in an iteration that preempted (True);
    # V1's admits none until an iteration preempts nothing (False), which damps the preemption spiral.
    admit_after_preemption: bool = True
    # an instance spans tensor_parallel_size x pipeline_parallel_size GPUs (vLLM's engine arguments); its
    # memory layout, KV pool and plans are those of one GPU's slice of the model (`ModelSpec.shard`)
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # vLLM's max_model_len: a request whose prompt + output exceeds it is rejected on arrival with the reason
    # (`Cluster`). None: no limit -- the Python API's default; scenarios set the model's context.
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise ValueError("tensor_parallel_size and pipeline_parallel_size must be >= 1")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.preemption not in ("recompute", "swap"):
            raise ValueError(f"preemption must be 'recompute' or 'swap', got {self.preemption!r}")


def workspace_bytes(model: ModelSpec, cfg: EngineConfig) -> float:
    """Peak activation memory of one iteration: the largest per-token intermediates of a layer for a full
    token budget (QKV output, MLP gate+up output, residual stream), plus fp32 logits for every sequence."""
    per_token = (model.hidden_size * 2 + model.q_dim + 2 * model.kv_dim
                 + model.intermediate_size * (3 if model.gated_mlp else 2)) * model.dtype_bytes
    logits = cfg.max_num_seqs * model.vocab_size * 4
    return cfg.max_num_batched_tokens * per_token + logits


@dataclass(frozen=True)
class MemoryLayout:
    """Bytes by kind for one plan. ``kv_blocks`` is how many KV blocks the rest holds."""

    usable_bytes: float
    non_layer_bytes: float
    resident_layer_bytes: float
    staging_bytes: float
    workspace_bytes: float
    kv_pool_bytes: float
    block_bytes: float

    @property
    def kv_blocks(self) -> int:
        return int(self.kv_pool_bytes // self.block_bytes)

    @property
    def weights_bytes(self) -> float:
        return self.non_layer_bytes + self.resident_layer_bytes

    @classmethod
    def build(cls, model: ModelSpec, hw: HardwareSpec, cfg: EngineConfig, plan: OffloadPlan,
              check: bool = True) -> "MemoryLayout":
        usable = hw.gpu_memory_bytes * cfg.gpu_memory_utilization
        fixed = model.non_layer_bytes + plan.resident_layer_bytes(model) + plan.staging_bytes(model)
        ws = workspace_bytes(model, cfg)
        block = cfg.block_size * model.kv_bytes_per_token
        kv = usable - fixed - ws
        layout = cls(usable, model.non_layer_bytes, plan.resident_layer_bytes(model), plan.staging_bytes(model),
                     ws, kv, block)
        if check and layout.kv_blocks < 1:
            raise ModelDoesNotFit(
                f"{model.name} does not fit on {hw.name} under {plan.describe()}: weights "
                f"{layout.weights_bytes / GiB:.1f} GiB + staging {layout.staging_bytes / GiB:.1f} GiB + "
                f"workspace {ws / GiB:.1f} GiB leave {kv / GiB:.2f} GiB for KV, less than one "
                f"{cfg.block_size}-token block ({block / MiB:.1f} MiB) of the "
                f"{usable / GiB:.1f} GiB usable")
        return layout
