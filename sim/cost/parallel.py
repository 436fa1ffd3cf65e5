"""The cost of one GPU's part of an iteration under tensor and pipeline parallelism.

Under ``tp``-way tensor parallelism (Megatron) each GPU holds a slice of every layer (`ModelSpec.shard`) and
each layer ends its attention and its MLP with an all-reduce of the activations (tokens x hidden x dtype
bytes) over the ``tp`` GPUs, so one layer on one GPU costs the slice's compute plus two all-reduces; every
GPU of the group does the same work and waits in the collectives, so the group runs at this pace. The LM
head is vocabulary-parallel: its logits are gathered (costed as half an all-reduce of the whole logits, the
ring all-gather's share). Under ``pp``-way pipeline parallelism the stages run one after another and hand
the activations on with a send/recv each; the engine runs the stage passes (`sim.engine.instance`) and this
model adds the hand-offs and the gather to the fixed time.
"""

from __future__ import annotations

from typing import Any

from sim.core.batch import BatchShape
from sim.core.hardware import HardwareSpec
from sim.core.model import ModelSpec
from sim.cost.base import CostModel
from sim.cost.collectives import CollectiveModel, measured_collectives, ring_collectives


class ParallelCost:
    """A `CostModel` for one GPU of a ``tp`` x ``pp`` instance: ``rank`` costs the GPU's slice
    (``model`` = the slice), ``collectives`` the communication."""

    def __init__(self, rank: CostModel, collectives: CollectiveModel, model: ModelSpec, tp: int, pp: int = 1,
                 full_vocab: int | None = None) -> None:
        if tp < 1 or pp < 1:
            raise ValueError(f"tp and pp must be >= 1, got {tp}, {pp}")
        self.rank, self.collectives, self.model, self.tp, self.pp = rank, collectives, model, tp, pp
        self.act_bytes_per_token = model.hidden_size * model.dtype_bytes
        self.logit_bytes_per_seq = (full_vocab or model.vocab_size * tp) * model.dtype_bytes

    def allreduce_per_layer_s(self, shape: BatchShape) -> float:
        """The two all-reduces of one layer's activations."""
        if self.tp == 1 or shape.tokens == 0:
            return 0.0
        return 2 * self.collectives.all_reduce_s(shape.tokens * self.act_bytes_per_token, self.tp)

    def handoff_s(self, shape: BatchShape) -> float:
        """The pipeline's stage-to-stage activation transfers of one iteration (all of them)."""
        if self.pp == 1 or shape.tokens == 0:
            return 0.0
        return (self.pp - 1) * self.collectives.send_recv_s(shape.tokens * self.act_bytes_per_token)

    def gather_s(self, shape: BatchShape) -> float:
        """Gathering the vocabulary-parallel logits of the sequences that sample a token."""
        if self.tp == 1 or shape.num_seqs == 0:
            return 0.0
        return 0.5 * self.collectives.all_reduce_s(shape.num_seqs * self.logit_bytes_per_seq, self.tp)

    # --- CostModel ----------------------------------------------------------------------------------
    def layer_time(self, shape: BatchShape) -> float:
        return self.rank.layer_time(shape) + self.allreduce_per_layer_s(shape)

    def fixed_time(self, shape: BatchShape) -> float:
        return self.rank.fixed_time(shape) + self.handoff_s(shape) + self.gather_s(shape)

    def params(self) -> dict[str, Any]:
        """What identifies this model (Select-N's record cache keys on it)."""
        inner = self.rank.params() if hasattr(self.rank, "params") else {"rank": id(self.rank)}
        return {**inner, "tp": self.tp, "pp": self.pp, "collectives": repr(self.collectives)}


def collectives_for(hw: HardwareSpec) -> CollectiveModel:
    """The collective costs of ``hw``'s GPU fabric: its measured NCCL table (`sim.cost.collectives`) when it
    names one, else a ring over its GPU link."""
    if hw.collectives:
        return measured_collectives(hw.collectives)
    return ring_collectives(hw.gpu_link_bytes_per_s, hw.gpu_link_latency_s)
