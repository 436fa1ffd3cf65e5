"""Requests and their life cycle. Every request ends in exactly one terminal state: finished, or rejected
with a reason."""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    PENDING = 0  # not yet arrived
    WAITING = 1  # queued for (re)prefill
    RUNNING = 2  # prefilling or decoding
    SWAPPED = 3  # preempted, KV in host memory
    FINISHED = 4
    REJECTED = 5


class Request:
    """One inference request. Times in seconds of simulated time.

    Decode progress is kept implicitly to make an iteration O(changes) rather than O(batch): a request
    that entered the decode set at iteration ``dec_k0`` with ``dec_g0`` tokens generated and KV length
    ``dec_kv0`` (after that iteration) has ``dec_g0 + (k - dec_k0)`` tokens generated before iteration k.
    """

    __slots__ = (
        "id", "arrival_s", "prompt_tokens", "output_tokens", "ttft_slo_s", "tpot_slo_s", "instance",
        "state", "generated", "computed", "blocks", "host_blocks", "first_scheduled_s", "first_token_s",
        "last_token_s", "finish_s", "max_gap_s", "preemptions", "swaps", "reject_reason", "epoch",
        "dec_k0", "dec_g0", "dec_kv0", "seg_k0", "admit_seq", "stall_until_s", "max_tokens",
    )

    def __init__(self, rid: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 ttft_slo_s: float = float("inf"), tpot_slo_s: float = float("inf"),
                 max_tokens: int | None = None) -> None:
        if prompt_tokens < 1 or output_tokens < 1:
            raise ValueError(f"request {rid}: prompt and output must have >= 1 token")
        if max_tokens is not None and max_tokens < output_tokens:
            raise ValueError(f"request {rid}: max_tokens ({max_tokens}) below its output ({output_tokens})")
        self.id = rid
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        # the simulated ground truth: the engine reads it to know when the request ends; policies must not
        # (they know ``max_tokens`` when the client sent one, and the distribution: `sim.core.lengths`)
        self.output_tokens = output_tokens
        self.max_tokens = max_tokens
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.instance = -1
        self.state = State.PENDING
        self.generated = 0  # output tokens emitted (updated lazily while decoding; see `sync`)
        self.computed = 0  # tokens whose KV is in the cache
        self.blocks = 0  # GPU KV blocks held
        self.host_blocks = 0  # KV blocks swapped to host memory
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.finish_s: float | None = None
        self.max_gap_s = 0.0
        self.preemptions = 0
        self.swaps = 0
        self.reject_reason = ""
        self.epoch = 0  # bumped whenever the request leaves the decode set, to invalidate scheduled events
        self.dec_k0 = self.dec_g0 = self.dec_kv0 = self.seg_k0 = 0
        self.admit_seq = 0
        self.stall_until_s = 0.0

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what a (re)prefill has to compute."""
        return self.prompt_tokens + self.generated

    @property
    def done(self) -> bool:
        return self.state >= State.FINISHED

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_mean_s(self) -> float | None:
        if self.finish_s is None or self.first_token_s is None:
            return None
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    def meets_slo(self) -> bool:
        if self.state != State.FINISHED:
            return False
        return self.ttft_s <= self.ttft_slo_s and self.tpot_mean_s <= self.tpot_slo_s  # type: ignore[operator]

    def reject(self, reason: str, now: float) -> None:
        self.state = State.REJECTED
        self.reject_reason = reason
        self.finish_s = now

    def __repr__(self) -> str:
        return (f"Request({self.id}, t={self.arrival_s:.3f}, P={self.prompt_tokens}, O={self.output_tokens}, "
                f"{self.state.name}, gen={self.generated})")
