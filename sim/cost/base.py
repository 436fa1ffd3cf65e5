"""The cost-model interface: how long one decoder layer and the per-iteration fixed work take."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sim.core.batch import BatchShape


@runtime_checkable
class CostModel(Protocol):
    """Time of the compute side of one iteration; the layer's weights are assumed to be on the GPU.

    ``layer_time`` is one decoder layer (all layers are alike) for the given batch; ``fixed_time`` is the
    per-iteration work outside the decoder layers (embedding, final norm, LM head, sampling, framework
    overhead). Both must be pure functions of the shape.

    A model may also define ``params() -> dict``, the constants that fully determine it: the Select-N
    performance record then caches by them (equal constants, one record) and names them as its source.
    Without it, a record is cached per model object.
    """

    def layer_time(self, shape: BatchShape) -> float: ...

    def fixed_time(self, shape: BatchShape) -> float: ...
