"""Paged KV cache accounting: a pool of fixed-size blocks on the GPU.

Only counts are kept (which physical block a request owns does not change any timing). Checks
(`can_allocate`) are apart from changes (`allocate`, `free`, `resize`), as in nano-vllm's block manager.
"""

from __future__ import annotations

from dataclasses import dataclass


class KVCacheError(RuntimeError):
    """An allocation the caller should have checked first."""


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int = 16
    used: int = 0
    peak_used: int = 0

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {self.num_blocks}")

    @property
    def free(self) -> int:
        return self.num_blocks - self.used

    @property
    def utilization(self) -> float:
        return self.used / self.num_blocks if self.num_blocks else 1.0

    def blocks_for(self, tokens: int) -> int:
        return blocks_for(tokens, self.block_size)

    def can_allocate(self, n: int, watermark: int = 0) -> bool:
        return n <= self.free - watermark

    def allocate(self, n: int) -> None:
        if n < 0 or n > self.free:
            raise KVCacheError(f"cannot allocate {n} blocks: {self.free} free of {self.num_blocks}")
        self.used += n
        if self.used > self.peak_used:
            self.peak_used = self.used

    def release(self, n: int) -> None:
        if n < 0 or n > self.used:
            raise KVCacheError(f"cannot free {n} blocks: only {self.used} in use")
        self.used -= n

    def can_resize(self, num_blocks: int) -> bool:
        return num_blocks >= self.used

    def resize(self, num_blocks: int) -> None:
        """Grow or shrink the pool (weights moved in or out of GPU memory). Shrinking needs free blocks."""
        if not self.can_resize(num_blocks):
            raise KVCacheError(f"cannot shrink the KV pool to {num_blocks} blocks: {self.used} in use")
        self.num_blocks = num_blocks
