"""No policy knows a request's output length: a request whose true length raises when a policy reads it,
and every policy still serves every request (finished, or rejected with a reason)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.core.hardware import get_hardware
from sim.core.lengths import OutputLengths
from sim.core.model import get_model
from sim.core.request import Request, State
from sim.core.workload import Burst, LogNormal, Poisson, SyntheticWorkload
from sim.cost.roofline import RooflineCostModel
from sim.engine.cluster import Cluster
from sim.engine.memory import EngineConfig
from sim.engine.policy import OffloadPolicy
from sim.policies import make_policy

_IN_POLICY = [0]  # > 0 while a policy method runs


class OracleRead(AssertionError):
    pass


class HiddenLength(Request):
    """A request whose output length only the engine may read (it is the simulated ground truth)."""

    __slots__ = ()

    @property  # type: ignore[override]
    def output_tokens(self) -> int:
        if _IN_POLICY[0]:
            raise OracleRead(f"a policy read request {self.id}'s true output length")
        return Request.__dict__["output_tokens"].__get__(self)

    @output_tokens.setter
    def output_tokens(self, v: int) -> None:
        Request.__dict__["output_tokens"].__set__(self, v)


class Guarded(OffloadPolicy):
    """Runs a policy with the guard up during every call the engine makes to it."""

    CALLS = ("setup", "initial_plan", "max_kv_plan", "host_weight_bytes", "plan_for", "admit", "holds_back",
             "on_arrival", "observe", "describe")

    def __init__(self, inner: OffloadPolicy) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name in Guarded.CALLS:
            def call(*a, **kw):
                _IN_POLICY[0] += 1
                try:
                    return attr(*a, **kw)
                finally:
                    _IN_POLICY[0] -= 1
            return call
        return attr

    # the base class defines these, so __getattr__ would not see them
    def setup(self, ctx):
        return self.__getattr__("setup")(ctx)

    def initial_plan(self):
        return self.__getattr__("initial_plan")()

    def max_kv_plan(self):
        return self.__getattr__("max_kv_plan")()

    def host_weight_bytes(self):
        return self.__getattr__("host_weight_bytes")()

    def plan_for(self, view, shape, now):
        return self.__getattr__("plan_for")(view, shape, now)

    def admit(self, view, req, now):
        return self.__getattr__("admit")(view, req, now)

    def holds_back(self, view):
        return self.__getattr__("holds_back")(view)

    def on_arrival(self, view, req, now):
        return self.__getattr__("on_arrival")(view, req, now)

    def observe(self, view, step, duration_s):
        return self.__getattr__("observe")(view, step, duration_s)

    def describe(self):
        return self.__getattr__("describe")()

    @property
    def uses_host_link(self) -> bool:
        _IN_POLICY[0] += 1
        try:
            return self.inner.uses_host_link
        finally:
            _IN_POLICY[0] -= 1


POLICIES = [("none", {}), ("deepspeed", {}), ("uva", {"offload_gib": 1}), ("selectn-static", {"interval": 8}),
            ("selectn", {}), ("selectn", {"correct": True}), ("flexgen", {}), ("goodput", {}),
            ("prefetch", {"group_size": 8, "offload_per_group": 1, "prefetch_step": 4})]


def _requests(n_gpus: int) -> tuple[list[HiddenLength], OutputLengths]:
    rs = SyntheticWorkload(Poisson(0.6 * n_gpus), LogNormal(600, 0.6, 16, 2500), LogNormal(150, 0.8, 1, 900),
                           duration_s=40, bursts=[Burst(10, 8, 3.0 * n_gpus)]).generate(seed=3)
    reqs = [HiddenLength(i, float(a), int(p), int(o), 8.0, 0.15)
            for i, (a, p, o) in enumerate(zip(rs.arrival_s, rs.prompt_tokens, rs.output_tokens))]
    return reqs, OutputLengths(rs.output_tokens)


def test_the_guard_catches_a_policy_that_reads_the_length():
    """The test is able to fail: a policy reading ``output_tokens`` inside a call raises."""
    reqs, _ = _requests(1)
    _IN_POLICY[0] += 1
    try:
        with pytest.raises(OracleRead):
            _ = reqs[0].output_tokens
    finally:
        _IN_POLICY[0] -= 1
    assert reqs[0].output_tokens >= 1  # the engine may


CASES = [(k, p, 1) for k, p in POLICIES] + [(k, p, 2) for k, p in POLICIES if k in ("selectn", "flexgen", "goodput")]


@pytest.mark.parametrize("kind,params,gpus", CASES,
                         ids=[f"{k}{'-' + '-'.join(p) if p else ''}-{g}gpu" for k, p, g in CASES])
def test_no_policy_reads_a_true_output_length(kind, params, gpus):
    """Llama-2-7B on A10s (two on one bus when gpus = 2), a burst that overloads the KV cache; every
    request ends finished or rejected with a reason, none lost."""
    m, hw = get_model("llama-2-7b"), get_hardware("a10")
    reqs, lengths = _requests(gpus)
    cluster = Cluster(m, hw, RooflineCostModel(m, hw), lambda: Guarded(make_policy(kind, **params)),
                      EngineConfig(max_num_seqs=64), num_gpus=gpus, output_lengths=lengths)
    res = cluster.run(reqs)
    assert len(res.requests) == len(reqs)
    assert all(r.state in (State.FINISHED, State.REJECTED) for r in reqs)
    assert all(r.reject_reason for r in reqs if r.state == State.REJECTED)
    fin = [r for r in reqs if r.state == State.FINISHED]
    assert len(fin) >= len(reqs) // 2
    assert sum(len(i.done) for i in res.instances) == len(reqs)
    assert all(r.generated == r.output_tokens for r in fin)


def test_output_lengths_by_hand():
    """Conditional quantiles and means of a small distribution, and a reservation that is exact for a fixed
    length."""
    L = OutputLengths([10, 20, 30, 40], q=0.9)
    r = Request(0, 0.0, 100, 30)
    # given 15 generated: outputs 20, 30, 40 remain possible -> 5, 15, 25 more
    assert L.remaining(r, 15, 0.0) == 5 and L.remaining(r, 15, 1.0 - 1e-9) == 25
    assert L.expected_remaining(r, 15) == pytest.approx(15.0)
    assert L.may_continue(r, 39) and not L.may_continue(r, 40)
    capped = Request(1, 0.0, 100, 20, max_tokens=22)
    assert L.remaining(capped, 15) == 7 and L.total(capped) == 22
    fixed = OutputLengths([64] * 5)
    # 80 tokens held, 16 generated: 48 more -> (80 + 48) / 16 = 8 blocks, no margin (variance 0)
    assert fixed.reserve_blocks([(r, 80, 16)], 16) == 8
    # the median of a sum adds no margin; a higher quantile adds z x sd
    spread = OutputLengths(np.arange(1, 201))
    items = [(Request(i, 0.0, 16, 1), 16, 0) for i in range(10)]
    assert spread.reserve_blocks(items, 16, 0.5) < spread.reserve_blocks(items, 16, 0.9)
