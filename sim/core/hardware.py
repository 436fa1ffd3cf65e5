"""GPU, host-link and host-memory specs: `HardwareSpec` and its presets.

A `HardwareSpec` describes one kind of node (a server box): its GPUs (all alike), how each GPU reaches host
memory -- a tree: a full-duplex PCIe link per GPU; ``gpus_per_bus`` GPUs share one upstream bus per
direction behind a PCIe switch; ``gpus_per_root`` GPUs (their switches) hang under one host root complex /
CPU socket, whose path to host memory (``root_bytes_per_s``) is shared when it is narrower than its
switches' uplinks -- how GPUs reach each other (``nvlink``: an NVSwitch, NVLink pairs, or PCIe only; the
collectives' cost table), and the node's host memory. Per-GPU presets (``h100-sxm``) describe the GPU in its
usual box; box presets (``dgx-h100``, ``hgx-a100-8``, ``pcie-l40s-8``) name the whole server. Numbers are
vendor peaks or public measurements; calibration replaces the compute side with fitted values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from sim.core.units import GB, TB, TFLOPS, US, GiB, MiB


class HardwareSpecError(ValueError):
    """An unknown GPU name or a field override that makes no sense."""


@dataclass(frozen=True)
class HardwareSpec:
    """One node type. All bandwidths in bytes/s, latencies in s, memory in bytes, compute in FLOP/s."""

    name: str
    gpu_memory_bytes: float
    hbm_bytes_per_s: float
    peak_flops: float  # dense bf16/fp16 tensor-core peak
    kernel_overhead_s: float  # launch + tail of one small kernel
    h2d_bytes_per_s: float  # pinned host->device, one GPU alone
    d2h_bytes_per_s: float
    link_latency_s: float  # fixed cost of one host<->device copy
    gpus_per_bus: int  # GPUs behind one upstream PCIe bus (switch uplink)
    bus_bytes_per_s: float  # upstream bus bandwidth per direction, shared by those GPUs
    gpu_link_bytes_per_s: float  # GPU<->GPU, per direction (NVLink or PCIe peer)
    gpu_link_latency_s: float
    host_memory_bytes: float  # per node
    gpus_per_node: int = 8
    pageable_slowdown: float = 3.0  # pageable copies run this many times slower than pinned ones
    gpus_per_root: int = 0  # GPUs under one host root complex / CPU socket (0: the whole node)
    root_bytes_per_s: float = 0.0  # a root complex's path to host memory per direction (0: not narrower)
    nvlink: Literal["nvswitch", "nvlink-pairs", "pcie"] = "nvswitch"  # the GPU<->GPU fabric
    collectives: str = ""  # measured NCCL table (sim.cost.collectives); "": a ring over gpu_link_bytes_per_s

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("name", "nvlink", "collectives"):
                continue
            if not isinstance(v, (int, float)) or v < 0:
                raise HardwareSpecError(f"hardware {self.name}: {f.name} must be a number >= 0, got {v!r}")
        if self.nvlink not in ("nvswitch", "nvlink-pairs", "pcie"):
            raise HardwareSpecError(f"hardware {self.name}: nvlink must be 'nvswitch', 'nvlink-pairs' or 'pcie', "
                                    f"got {self.nvlink!r}")
        root = self.gpus_per_root or self.gpus_per_node
        if root % self.gpus_per_bus or self.gpus_per_node % root:
            raise HardwareSpecError(
                f"hardware {self.name}: gpus_per_root ({root}) must be a multiple of gpus_per_bus "
                f"({self.gpus_per_bus}) and divide gpus_per_node ({self.gpus_per_node})")
        for f in ("gpu_memory_bytes", "hbm_bytes_per_s", "peak_flops", "h2d_bytes_per_s", "d2h_bytes_per_s",
                  "bus_bytes_per_s", "gpu_link_bytes_per_s", "gpus_per_bus", "gpus_per_node"):
            if getattr(self, f) <= 0:
                raise HardwareSpecError(f"hardware {self.name}: {f} must be > 0, got {getattr(self, f)}")

    def with_overrides(self, **overrides: Any) -> "HardwareSpec":
        """Copy with some fields replaced; unknown names raise with the list of allowed ones."""
        allowed = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise HardwareSpecError(f"unknown hardware field(s) {bad}; allowed: {sorted(allowed)}")
        return replace(self, **overrides)

    @property
    def root_gpus(self) -> int:
        """GPUs under one root complex (socket)."""
        return self.gpus_per_root or self.gpus_per_node

    @property
    def sockets_per_node(self) -> int:
        return self.gpus_per_node // self.root_gpus

    @property
    def host_memory_per_socket_bytes(self) -> float:
        return self.host_memory_bytes / self.sockets_per_node

    @property
    def root_is_narrower(self) -> bool:
        """Whether a root complex limits its switches' copies (its path is narrower than their uplinks)."""
        return 0 < self.root_bytes_per_s < self.bus_bytes_per_s * (self.root_gpus // self.gpus_per_bus)

    @property
    def hbm_over_pcie(self) -> float:
        """How many bytes the GPU reads from HBM in the time one byte crosses the host link."""
        return self.hbm_bytes_per_s / self.h2d_bytes_per_s


PRESETS: dict[str, HardwareSpec] = {
    # NVIDIA A10 datasheet: 24 GB GDDR6 (nvidia-smi: 23,028 MiB), 600 GB/s, 125 TFLOPS FP16/BF16 tensor
    # (dense; 250 with sparsity), PCIe Gen4 x16. Select-N paper (arXiv 2502.08182, §6): effective
    # PCIe ~24 GB/s on its 4x A10 server, two GPUs per upstream bus in the contention experiment.
    "a10": HardwareSpec(
        name="a10", gpu_memory_bytes=23028 * MiB, hbm_bytes_per_s=600 * GB, peak_flops=125 * TFLOPS,
        kernel_overhead_s=5 * US,  # typical launch+tail on Ampere (Vidur A100 small-op medians: 4-5 us)
        h2d_bytes_per_s=24 * GB, d2h_bytes_per_s=24 * GB,  # Select-N paper's measured effective PCIe
        link_latency_s=10 * US,  # cudaMemcpyAsync issue + DMA setup, CUDA programming guide order of magnitude
        gpus_per_bus=2, bus_bytes_per_s=24 * GB,  # paper's contention test: 2 GPUs share one Gen4 x16 uplink
        gpu_link_bytes_per_s=24 * GB, gpu_link_latency_s=10 * US,  # no NVLink on A10: peer copies over PCIe
        host_memory_bytes=256 * GiB, gpus_per_node=4,  # 4-GPU server as in the paper; host RAM assumed
        nvlink="pcie"),  # ring collectives over PCIe peer copies
    # NVIDIA A100 datasheet (SXM4 80GB): 80 GB HBM2e (81,920 MiB), 2,039 GB/s, 312 TFLOPS BF16 dense,
    # NVLink 3 600 GB/s total (300 GB/s per direction), PCIe Gen4 x16 (~25 GB/s pinned, measured widely).
    # DGX A100 user guide: 2 GPUs per PCIe Gen4 switch, one x16 uplink to the CPU; 2 TB host memory.
    "a100-80g": HardwareSpec(
        name="a100-80g", gpu_memory_bytes=81920 * MiB, hbm_bytes_per_s=2039 * GB, peak_flops=312 * TFLOPS,
        kernel_overhead_s=4 * US,  # Vidur A100 profiles: small-kernel medians 4-5 us
        h2d_bytes_per_s=25 * GB, d2h_bytes_per_s=25 * GB, link_latency_s=10 * US,
        gpus_per_bus=2, bus_bytes_per_s=25 * GB,
        gpu_link_bytes_per_s=300 * GB, gpu_link_latency_s=8 * US,
        host_memory_bytes=2048 * GiB, gpus_per_node=8, gpus_per_root=4, collectives="a100-nvswitch"),
    # NVIDIA H100 datasheet (SXM5): 80 GB HBM3 (nvidia-smi 81,559 MiB), 3.35 TB/s, 989 TFLOPS BF16 dense,
    # NVLink 4 900 GB/s total (450 per direction), PCIe Gen5 x16 (~53 GB/s pinned measured; docs/architecture.md: 50-56).
    # DGX H100 user guide: 2 TB host memory; GPUs pair behind PCIe Gen5 switches with one x16 uplink each.
    "h100-sxm": HardwareSpec(
        name="h100-sxm", gpu_memory_bytes=81559 * MiB, hbm_bytes_per_s=3.35 * TB, peak_flops=989 * TFLOPS,
        kernel_overhead_s=4 * US,  # Vidur H100 profiles: norm/add kernels 1-4 us medians
        h2d_bytes_per_s=53 * GB, d2h_bytes_per_s=53 * GB, link_latency_s=8 * US,
        gpus_per_bus=2, bus_bytes_per_s=53 * GB,
        gpu_link_bytes_per_s=450 * GB, gpu_link_latency_s=8 * US,  # Vidur NCCL send/recv: ~10 us at 2 KB
        host_memory_bytes=2048 * GiB, gpus_per_node=8, gpus_per_root=4, collectives="h100-nvswitch"),
    # NVIDIA H200 datasheet (SXM): 141 GB HBM3e (nvidia-smi 143,771 MiB), 4.8 TB/s, 989 TFLOPS BF16 dense,
    # NVLink 900 GB/s, PCIe Gen5 x16. HGX H200 platform: same topology as HGX H100.
    "h200": HardwareSpec(
        name="h200", gpu_memory_bytes=143771 * MiB, hbm_bytes_per_s=4.8 * TB, peak_flops=989 * TFLOPS,
        kernel_overhead_s=4 * US,
        h2d_bytes_per_s=53 * GB, d2h_bytes_per_s=53 * GB, link_latency_s=8 * US,
        gpus_per_bus=2, bus_bytes_per_s=53 * GB,
        gpu_link_bytes_per_s=450 * GB, gpu_link_latency_s=8 * US,
        host_memory_bytes=2048 * GiB, gpus_per_node=8, gpus_per_root=4,
        collectives="h100-nvswitch"),  # the same NVSwitch generation as HGX H100: its measured table
    # NVIDIA GH200 Grace Hopper superchip datasheet (480 GB LPDDR5X variant): 96 GB HBM3 at 4 TB/s,
    # 989 TFLOPS BF16 dense, NVLink-C2C 900 GB/s total; ~375 GB/s host->device measured (docs/architecture.md,
    # from published GH200 microbenchmarks). One GPU per Grace CPU, so nothing shares the C2C link.
    "gh200": HardwareSpec(
        name="gh200", gpu_memory_bytes=96 * GiB, hbm_bytes_per_s=4.0 * TB, peak_flops=989 * TFLOPS,
        kernel_overhead_s=4 * US,
        h2d_bytes_per_s=375 * GB, d2h_bytes_per_s=375 * GB, link_latency_s=5 * US,
        gpus_per_bus=1, bus_bytes_per_s=375 * GB,
        gpu_link_bytes_per_s=450 * GB, gpu_link_latency_s=8 * US,  # NVLink 4 between superchips
        host_memory_bytes=480 * GB, gpus_per_node=1, pageable_slowdown=1.0),  # C2C is coherent: no pinning
}

# Whole servers. Each box preset is its GPU's preset with the box's topology.
PRESETS.update({
    # NVIDIA DGX H100 user guide: 8x H100 SXM5 on NVSwitch (4 NVSwitch chips, 900 GB/s per GPU), two CPU
    # sockets with 4 GPUs each, each pair of GPUs behind one PCIe Gen5 switch (x16 uplink), 2 TB host memory.
    "dgx-h100": replace(PRESETS["h100-sxm"], name="dgx-h100"),
    # NVIDIA HGX A100 8-GPU (as in DGX A100): 8x A100 SXM4 80GB on NVSwitch (600 GB/s per GPU), 2 sockets of
    # 4 GPUs, 2 GPUs per PCIe Gen4 switch, 2 TB host memory.
    "hgx-a100-8": replace(PRESETS["a100-80g"], name="hgx-a100-8"),
    # An 8-GPU PCIe server with NVIDIA L40S (datasheet: 48 GB GDDR6 (46,068 MiB in nvidia-smi), 864 GB/s,
    # 362 TFLOPS FP16/BF16 tensor dense, PCIe Gen4 x16, no NVLink), two GPUs per PCIe Gen4 switch, two
    # switches per CPU socket (4 GPUs per root complex), 1 TB host memory. GPUs talk over PCIe peer-to-peer
    # through their switch and the CPUs: ~20 GB/s measured across sockets in such boxes (the ring's slowest hop).
    "pcie-l40s-8": HardwareSpec(
        name="pcie-l40s-8", gpu_memory_bytes=46068 * MiB, hbm_bytes_per_s=864 * GB, peak_flops=362 * TFLOPS,
        kernel_overhead_s=5 * US, h2d_bytes_per_s=25 * GB, d2h_bytes_per_s=25 * GB, link_latency_s=10 * US,
        gpus_per_bus=2, bus_bytes_per_s=25 * GB, gpu_link_bytes_per_s=20 * GB, gpu_link_latency_s=10 * US,
        host_memory_bytes=1024 * GiB, gpus_per_node=8, gpus_per_root=4, nvlink="pcie"),
})


def get_hardware(name: str, **overrides: Any) -> HardwareSpec:
    """A preset by name (case-insensitive), optionally with fields replaced."""
    key = name.lower()
    if key not in PRESETS:
        shown = repr(name) if len(name) <= 60 else repr(name[:60]) + "..."
        raise HardwareSpecError(f"unknown GPU {shown}: allowed are {', '.join(sorted(PRESETS))}")
    spec = PRESETS[key]
    return spec.with_overrides(**overrides) if overrides else spec
