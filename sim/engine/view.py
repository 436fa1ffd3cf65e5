"""`EngineView`: what an offload policy may see of the instance it serves.

The view is read-only except for three requests a policy may make: wake the instance now, wake it at a
later time (to retry a queue it held back), and switch to another plan before the next iteration (a policy
that decides its plan from the first request it sees). Everything else a policy knows comes from its
`sim.engine.policy.InstanceContext`. The instance implements the view (`sim.engine.instance_view.InstanceView`);
tests may implement it with a stub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from sim.core.model import ModelSpec
    from sim.core.offload_plan import OffloadPlan
    from sim.core.request import Request
    from sim.engine.memory import EngineConfig
    from sim.engine.scheduler import ScheduledBatch


class EngineView(Protocol):
    """One instance's state as its policy and its bus peers see it."""

    @property
    def gpu(self) -> int:
        """The instance's first GPU: its name in timelines and messages (``gpu3``)."""
        ...

    @property
    def index(self) -> int:
        """The instance's index in the cluster (its id on the bus and in `Request.instance`); equal to
        `gpu` only without tensor or pipeline parallelism."""
        ...

    @property
    def model(self) -> "ModelSpec":
        """The model this instance serves."""
        ...

    @property
    def config(self) -> "EngineConfig":
        """The engine settings this instance runs with."""
        ...

    @property
    def plan(self) -> "OffloadPlan":
        """The offload plan of the iteration in flight (or of the next one, between iterations)."""
        ...

    @property
    def step(self) -> int:
        """Index of the next iteration to be scheduled."""
        ...

    @property
    def now(self) -> float: ...

    @property
    def current_batch(self) -> "ScheduledBatch | None":
        """The iteration being planned or run."""
        ...

    @property
    def waiting(self) -> Sequence["Request"]: ...

    @property
    def prefilling(self) -> Sequence["Request"]: ...

    @property
    def decoding(self) -> Mapping[int, "Request"]: ...

    @property
    def kv_used_blocks(self) -> int: ...

    @property
    def kv_total_blocks(self) -> int: ...

    def in_flight(self) -> bool:
        """Requests admitted and not finished: running or swapped out."""
        ...

    def decode_ctx_sum(self) -> int:
        """Summed context length of the decoding requests at iteration `step`."""
        ...

    def generated_now(self, req: "Request") -> int:
        """Tokens ``req`` has generated before iteration `step`."""
        ...

    def decodes_needing_block(self, step: int) -> int:
        """Decoding requests that may need a new KV block at iteration ``step`` (an upper bound)."""
        ...

    def wake(self) -> None:
        """Let an idle instance look at its queue again."""
        ...

    def wake_at(self, time_s: float) -> None:
        """Wake the instance at ``time_s`` (once; an earlier pending wake-up wins)."""
        ...

    def request_plan(self, plan: "OffloadPlan") -> bool:
        """Switch to ``plan`` now if the KV pool can shrink to what it leaves (host memory for weights follows
        the policy's `host_weight_bytes`); False if not possible now."""
        ...
