"""memslo's goodput controller (`policy: goodput`), beside the paper's Select-N: offload only when memory
blocks admission or would force a preemption, weigh the queue's TTFT deadlines, reject at arrival what
cannot be served in time (`controller`); when queued requests would find room without offloading more
(`forecast`)."""

from sim.policies.goodput.controller import Goodput

__all__ = ["Goodput"]
