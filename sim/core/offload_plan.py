"""`OffloadPlan`: which layers' weights live in host memory and how their copies are scheduled.

The plan is data, used unchanged by the simulator's executors and by the torch backend. For every
offloaded layer (in layer order) it names the *issue layer*: the copy into a staging buffer is issued when
the compute stream reaches that layer (i.e. when the layer before it finishes; layer 0 means the start of
the iteration). A copy also waits for the copy stream (copies run one after another, in order) and for its
staging buffer, which is free once the layer that used it last has finished. Buffers are used round-robin.

``fraction`` < 1 offloads only that share of each offloaded layer's bytes (FlexGen's per-layer split).
``chunks`` > 1 streams each offloaded layer in that many equal pieces, each into a staging slot of one
piece (``num_buffers`` slots, round-robin over the pieces); the layer computes piece by piece as they land,
so the staging memory is ``num_buffers / chunks`` of a layer instead of whole layers.
``mode="uva"`` is vLLM's ``--cpu-offload-gb``: no staging buffers, no prefetch; the kernel reads the
offloaded bytes over the host link while it computes, so the layer takes max(compute, bytes / link).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from sim.core.model import ModelSpec


class PlanError(ValueError):
    """A plan that is inconsistent or cannot be built for the requested parameters."""


@dataclass(frozen=True)
class OffloadPlan:
    num_layers: int
    offloaded: tuple[int, ...] = ()
    issue_at: tuple[int, ...] = ()
    num_buffers: int = 0
    fraction: float = 1.0
    mode: Literal["prefetch", "uva"] = "prefetch"
    name: str = "resident"
    chunks: int = 1  # pieces each offloaded layer is streamed in (staging slots hold one piece each)
    interval: int | None = None  # the Select-N offloading interval when the plan is one

    def __post_init__(self) -> None:
        L = self.num_layers
        if L <= 0:
            raise PlanError(f"num_layers must be > 0, got {L}")
        if list(self.offloaded) != sorted(set(self.offloaded)):
            raise PlanError("offloaded layers must be unique and in increasing order")
        if any(not 0 <= l < L for l in self.offloaded):
            raise PlanError(f"offloaded layers must lie in [0, {L})")
        if not 0 < self.fraction <= 1:
            raise PlanError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.mode not in ("prefetch", "uva"):
            raise PlanError(f"mode must be 'prefetch' or 'uva', got {self.mode!r}")
        if self.chunks < 1 or (self.mode == "uva" and self.chunks != 1):
            raise PlanError(f"chunks must be >= 1 (1 for mode 'uva'), got {self.chunks}")
        if self.mode == "prefetch":
            if len(self.issue_at) != len(self.offloaded):
                raise PlanError("issue_at needs one entry per offloaded layer")
            if any(not 0 <= s <= l for s, l in zip(self.issue_at, self.offloaded)):
                raise PlanError("a copy must be issued at or before its own layer (0 <= issue_at <= layer)")
            if list(self.issue_at) != sorted(self.issue_at):
                raise PlanError("issue_at must be non-decreasing (copies are issued in layer order)")
            # Copies, buffers and layers are all taken in layer order, so no schedule can deadlock.
            if self.offloaded and self.num_buffers < 1:
                raise PlanError("a plan with offloaded layers needs at least one staging buffer")

    # --- constructors -------------------------------------------------------------------------------
    @classmethod
    def resident(cls, num_layers: int) -> "OffloadPlan":
        """Every layer on the GPU (the ``none`` policy)."""
        return cls(num_layers, name="resident")

    @classmethod
    def select_n(cls, num_layers: int, interval: int, chunks: int = 1, slots: int = 2) -> "OffloadPlan":
        """Select-N with offloading interval ``interval``: layers form groups of ``interval``; the last layer
        of each full group lives in host memory and its copy starts when the group's first layer starts, so
        ``interval - 1`` layers of compute hide it. A trailing partial group stays resident.

        ``chunks`` = 1: one staging buffer of a whole layer (group g's copy is issued when group g-1's
        offloaded layer has finished). ``chunks`` > 1: the layer is streamed in ``chunks`` pieces through
        ``slots`` slots of one piece (``slots`` / ``chunks`` of a layer): only the first ``slots`` pieces can
        land ahead of the layer, the rest stream while its earlier pieces compute."""
        if not 1 <= interval <= num_layers:
            raise PlanError(f"interval must be in [1, {num_layers}], got {interval}")
        if chunks > 1 and not 1 <= slots <= chunks:
            raise PlanError(f"slots must be in [1, chunks={chunks}], got {slots}")
        groups = num_layers // interval
        off = tuple(g * interval + interval - 1 for g in range(groups))
        issue = tuple(g * interval for g in range(groups))
        return cls(num_layers, off, issue, num_buffers=1 if chunks == 1 else slots, name=f"select-n(i={interval})",
                   chunks=chunks, interval=interval)

    @classmethod
    def deepspeed(cls, num_layers: int) -> "OffloadPlan":
        """ZeRO-Inference style: every layer offloaded, copy of layer l issued when layer l-1 starts,
        two staging buffers (double buffering)."""
        off = tuple(range(num_layers))
        issue = tuple(max(l - 1, 0) for l in off)
        return cls(num_layers, off, issue, num_buffers=2, name="deepspeed")

    @classmethod
    def layerwise(cls, num_layers: int, fraction: float, name: str = "flexgen") -> "OffloadPlan":
        """FlexGen style: ``fraction`` of every layer's weights in host memory, the next layer's part
        prefetched while the current one computes, two buffers of that part's size."""
        off = tuple(range(num_layers))
        issue = tuple(max(l - 1, 0) for l in off)
        return cls(num_layers, off, issue, num_buffers=2, fraction=fraction, name=name)

    @classmethod
    def prefetch_groups(cls, num_layers: int, group_size: int, offload_per_group: int,
                        prefetch_step: int = 1) -> "OffloadPlan":
        """vLLM/SGLang group offloader: in each group of ``group_size`` layers the last
        ``offload_per_group`` live in host memory; each is prefetched ``prefetch_step`` layers ahead, with
        ``prefetch_step`` buffers so the look-ahead is not blocked by buffer reuse."""
        if not 1 <= group_size <= num_layers:
            raise PlanError(f"group_size must be in [1, {num_layers}], got {group_size}")
        if not 0 <= offload_per_group <= group_size:
            raise PlanError(f"offload_per_group must be in [0, {group_size}], got {offload_per_group}")
        if prefetch_step < 0:
            raise PlanError(f"prefetch_step must be >= 0, got {prefetch_step}")
        off = tuple(l for l in range(num_layers) if l % group_size >= group_size - offload_per_group)
        if not off:
            return cls.resident(num_layers)
        issue = tuple(max(l - prefetch_step, 0) for l in off)
        return cls(num_layers, off, issue, num_buffers=max(prefetch_step, 1),
                   name=f"prefetch(N={group_size},k={offload_per_group},s={prefetch_step})")

    @classmethod
    def uva(cls, num_layers: int, layers: tuple[int, ...] | range, fraction: float = 1.0) -> "OffloadPlan":
        """vLLM ``--cpu-offload-gb``: the given layers are read over the host link by the kernels."""
        return cls(num_layers, tuple(layers), (), 0, fraction, "uva", name="uva")

    @classmethod
    def uva_bytes(cls, model: ModelSpec, offload_bytes: float) -> "OffloadPlan":
        """vLLM fills the offload budget with whole layers from the first one, then part of the next."""
        per_layer = model.weight_bytes_per_layer
        n_full = min(int(offload_bytes // per_layer), model.num_layers)
        if n_full == 0:
            if offload_bytes <= 0:
                return cls.resident(model.num_layers)
            # a budget under one layer: spread it over all layers as a fraction
            return cls.uva(model.num_layers, range(model.num_layers), offload_bytes / per_layer / model.num_layers)
        return cls.uva(model.num_layers, range(n_full))

    # --- derived ------------------------------------------------------------------------------------
    @cached_property
    def offloaded_set(self) -> frozenset[int]:
        return frozenset(self.offloaded)

    @property
    def num_offloaded(self) -> int:
        return len(self.offloaded)

    def host_bytes(self, model: ModelSpec) -> float:
        """Weight bytes that live in host memory under this plan."""
        return self.num_offloaded * self.fraction * model.weight_bytes_per_layer

    def resident_layer_bytes(self, model: ModelSpec) -> float:
        return model.num_layers * model.weight_bytes_per_layer - self.host_bytes(model)

    @property
    def staging_layers(self) -> float:
        """Staging memory in layers' worth of weights (``num_buffers`` slots of a piece of the host part)."""
        if self.mode == "uva":
            return 0.0
        return self.num_buffers * self.fraction / self.chunks

    def staging_bytes(self, model: ModelSpec) -> float:
        return self.staging_layers * model.weight_bytes_per_layer

    def copy_bytes_per_iteration(self, model: ModelSpec) -> float:
        """Bytes that cross the host link per iteration (every offloaded byte, once)."""
        return self.host_bytes(model)

    def describe(self) -> str:
        if not self.offloaded:
            return "all layers resident"
        frac = "" if self.fraction == 1 else f" ({self.fraction:.0%} of each)"
        staged = "" if self.chunks == 1 else f", streamed in {self.chunks} pieces through {self.num_buffers} slots"
        return f"{self.name}: {self.num_offloaded}/{self.num_layers} layers offloaded{frac}{staged}"

