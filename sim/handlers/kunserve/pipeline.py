"""Cooperative pipeline execution of a KunServe group: stage slices, the exact micro-batch schedule of one
step, and micro-batch formation (naive FCFS and KunServe's lookahead). Pure functions of numbers and a
cost model, so they can be checked by hand.

Model (docs/architecture.md, "KunServe in memslo"): a group of g GPUs holds one copy of the L decoder layers, member r
the slice [r*L//g, (r+1)*L//g). One engine step runs the batch as m micro-batches through the g stages.
Stage s of micro-batch j takes ``n_s * cost.layer_time(mb_j)`` (each micro-batch pays the weight reads of
the stage's layers again: the real cost of pipelining memory-bound decode); the last stage also pays the
cost model's fixed time (LM head, sampling). Between stages the micro-batch's activations (tokens x hidden x
dtype bytes) cross the GPU link. Stage s of micro-batch j starts at
``max(end[s][j-1], end[s-1][j] + transfer_j)``; the step ends when the last stage finishes the last
micro-batch, and the bubbles are ``g * step - sum(busy)``. Steps are synchronous: the engine schedules the
next step when this one ends (the conservative choice; an asynchronous pipeline would overlap the drain of
one step with the fill of the next).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

from sim.core.batch import BatchShape
from sim.cost.base import CostModel


def stage_slices(num_layers: int, g: int) -> list[tuple[int, int]]:
    """Layer ranges [start, end) kept by the g members of a group: member r keeps [r*L//g, (r+1)*L//g)."""
    if not 1 <= g <= num_layers:
        raise ValueError(f"a group of {g} cannot split {num_layers} layers")
    return [(r * num_layers // g, (r + 1) * num_layers // g) for r in range(g)]


@dataclass(frozen=True)
class StepWork:
    """What one engine step computes: prefill chunks ``(tokens, context before)`` in FCFS order, and
    ``decode_tokens`` decode tokens whose context lengths sum to ``decode_ctx_sum``."""

    prefill: tuple[tuple[int, int], ...] = ()
    decode_tokens: int = 0
    decode_ctx_sum: int = 0

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + self.decode_tokens

    def shape(self) -> BatchShape:
        return _shape(list(self.prefill), self.decode_tokens, self.decode_ctx_sum)


def _shape(pieces: list[tuple[int, int]], dec: int, ctx: int) -> BatchShape:
    pt = pk = 0
    pairs = 0.0
    for c, before in pieces:
        pt += c
        pairs += BatchShape.chunk_pairs(c, before)
        pk += before + c
    return BatchShape(pt, len(pieces), pairs, pk, dec, ctx)


@dataclass
class PipelineTiming:
    """One step's schedule. ``start[s][j]``/``end[s][j]``: stage s, micro-batch j, relative to the start of
    the (last simulated) round; ``step_s``: the engine's step time (see `pipeline_schedule`)."""

    step_s: float
    busy_s: list[float]
    start: list[list[float]] = field(default_factory=list)
    end: list[list[float]] = field(default_factory=list)

    @property
    def num_stages(self) -> int:
        return len(self.busy_s)

    @property
    def bubble_s(self) -> float:
        """GPU-seconds the stages sit idle during the step: g * step - sum of busy time."""
        return self.num_stages * self.step_s - sum(self.busy_s)


def pipeline_schedule(stage_times: Sequence[Sequence[float]], transfer_s: Sequence[float],
                      overlap: bool = False, return_s: float = 0.0) -> PipelineTiming:
    """Exact schedule of m micro-batches through g stages (``stage_times[s][j]``); ``transfer_s[j]`` is
    micro-batch j's activation transfer between consecutive stages.

    ``overlap=False``: one synchronous step; the step time is the makespan (the pipeline fills and drains
    every step). ``overlap=True``: steps follow each other through the pipeline as in an asynchronous
    pipeline-parallel engine (vLLM's virtual engines, which KunServe builds on): micro-batch j of the next
    step enters stage 0 once stage 0 is free and micro-batch j's own output has left the last stage
    (``return_s`` later). The step time is then the steady-state period of that cyclic schedule, found by
    repeating the same recurrence until it settles (the max-plus growth rate)."""
    g = len(stage_times)
    m = len(stage_times[0]) if g else 0
    if not m:
        return PipelineTiming(0.0, [0.0] * g)
    rounds = (g + m + 4) if overlap else 1
    free = [0.0] * g
    exit_ = [0.0] * m  # when micro-batch j last left the last stage
    exits: list[float] = []
    start = end = [[0.0] * m for _ in range(g)]
    for rnd in range(rounds):
        start = [[0.0] * m for _ in range(g)]
        end = [[0.0] * m for _ in range(g)]
        for s in range(g):
            row, t_free = stage_times[s], free[s]
            for j in range(m):
                t = t_free
                if s:
                    ready = end[s - 1][j] + transfer_s[j]
                elif rnd:
                    ready = exit_[j] + return_s
                else:
                    ready = 0.0
                if ready > t:
                    t = ready
                start[s][j] = t
                t_free = end[s][j] = t + row[j]
            free[s] = t_free
        exit_ = list(end[g - 1])
        exits.append(end[g - 1][m - 1])
    busy = [sum(r) for r in stage_times]
    if not overlap:
        return PipelineTiming(exits[0], busy, start, end)
    half = rounds // 2
    period = (exits[-1] - exits[half - 1]) / (rounds - half)
    base = exits[-2]  # the last round's times relative to the previous round's end
    rel = lambda rows: [[x - base for x in r] for r in rows]  # noqa: E731
    return PipelineTiming(max(period, max(busy)), busy, rel(start), rel(end))


# --- micro-batch formation --------------------------------------------------------------------------------
def fcfs_micro_batches(work: StepWork, m: int) -> list[BatchShape]:
    """Naive micro-batches: the step's sequences in FCFS order (running decodes first, then the prefill
    chunks as admitted) cut into m contiguous parts of equal sequence count, whatever their cost."""
    n = work.num_seqs
    m = max(1, min(m, n))
    q = -(-n // m)
    out = []
    D = work.decode_tokens
    for j in range(m):
        lo, hi = j * q, min((j + 1) * q, n)
        if lo >= hi:
            break
        dec = max(0, min(hi, D) - lo)
        ctx = _ctx_share(work, dec, sum(_dec_counts_before(j, q, D)))
        pieces = list(work.prefill[max(lo - D, 0):max(hi - D, 0)])
        out.append(_shape(pieces, dec, ctx))
    return _fix_ctx(work, out)


def _dec_counts_before(j: int, q: int, D: int) -> list[int]:
    return [max(0, min((i + 1) * q, D) - i * q) for i in range(j)]


def _ctx_share(work: StepWork, dec: int, before: int) -> int:
    """Context tokens of ``dec`` decode tokens out of the step's, at the average context length."""
    if not work.decode_tokens:
        return 0
    hi = (before + dec) * work.decode_ctx_sum // work.decode_tokens
    lo = before * work.decode_ctx_sum // work.decode_tokens
    return hi - lo


def _fix_ctx(work: StepWork, mbs: list[BatchShape]) -> list[BatchShape]:
    assert sum(b.decode_ctx_sum for b in mbs) == work.decode_ctx_sum
    return mbs


class _Marginal:
    """Predicted cost of work added to a micro-batch: the cost model's layer time above a near-empty batch
    (the weight reads every micro-batch pays anyway). Costs are additive in this approximation only; the
    timing always uses the cost model on the formed micro-batches."""

    def __init__(self, cost: CostModel, work: StepWork) -> None:
        self.cost = cost
        self.base = cost.layer_time(BatchShape(decode_tokens=1, decode_ctx_sum=1))
        D = work.decode_tokens
        self.per_decode = (max(cost.layer_time(BatchShape(decode_tokens=D, decode_ctx_sum=work.decode_ctx_sum))
                               - self.base, 0.0) / D) if D else 0.0

    def piece(self, chunk: int, before: int) -> float:
        return max(self.cost.layer_time(_shape([(chunk, before)], 0, 0)) - self.base, 0.0)


def lookahead_micro_batches(work: StepWork, m: int, cost: CostModel, _mc: "_Marginal | None" = None,
                            _costs: list[float] | None = None) -> list[BatchShape]:
    """KunServe's lookahead formation: balance the predicted cost of the m micro-batches.

    1. Long prompts are chunked: a prefill chunk predicted to cost more than a micro-batch's fair share is
       cut into equal pieces (pieces of one prompt stay in micro-batch order, so each piece finds the KV of
       the earlier ones at every stage).
    2. Longest first: pieces in decreasing predicted cost, each to the micro-batch with the least so far.
    3. Decode tokens fill the micro-batches up to a common level (water-filling), context at the average.
    """
    if m <= 1 or work.num_seqs <= 1:
        return [work.shape()]
    mc = _mc or _Marginal(cost, work)
    costs = _costs if _costs is not None else [mc.piece(c, b) for c, b in work.prefill]
    total = sum(costs) + mc.per_decode * work.decode_tokens
    share = total / m
    pieces: list[tuple[float, int, int, int]] = []  # (cost, request index, tokens, context before)
    for i, ((c, before), pc) in enumerate(zip(work.prefill, costs)):
        k = min(c, m, max(1, math.ceil(pc / share - 1e-9))) if share > 0 else 1
        if k > 1:
            step = -(-c // k)
            done = 0
            while done < c:
                t = min(step, c - done)
                pieces.append((pc * t / c, i, t, before + done))
                done += t
        else:
            pieces.append((pc, i, c, before))
    load = [0.0] * m
    assign: dict[int, list[int]] = {}
    per_req: dict[int, list[tuple[int, int]]] = {}
    for pc, i, t, before in sorted(pieces, key=lambda p: (-p[0], p[1], p[3])):
        j = min(range(m), key=lambda x: (load[x], x))
        load[j] += pc
        assign.setdefault(i, []).append(j)
        per_req.setdefault(i, []).append((t, before))
    bins: list[list[tuple[int, int]]] = [[] for _ in range(m)]
    for i, js in assign.items():
        # the request's pieces in context order go to its micro-batches in index order
        for j, piece in zip(sorted(js), sorted(per_req[i], key=lambda p: p[1])):
            bins[j].append(piece)
    dec = _water_fill(load, work.decode_tokens, mc.per_decode)
    out, before = [], 0
    for j in range(m):
        if not bins[j] and not dec[j]:
            continue
        out.append(_shape(bins[j], dec[j], _ctx_share(work, dec[j], before)))
        before += dec[j]
    return _fix_ctx(work, out)


def _water_fill(load: list[float], D: int, unit: float) -> list[int]:
    """Split D decode tokens so the loads end level: the least-loaded bins get tokens first."""
    m = len(load)
    if D <= 0:
        return [0] * m
    if unit <= 0:
        base = [D // m + (1 if j < D % m else 0) for j in range(m)]
        return base
    order = sorted(range(m), key=lambda j: load[j])
    # find the level: the first k bins (by load) share the tokens
    level = 0.0
    k = m
    for n in range(1, m + 1):
        lvl = (sum(load[order[i]] for i in range(n)) + D * unit) / n
        if n == m or lvl <= load[order[n]]:
            level, k = lvl, n
            break
    want = [max(0.0, (level - load[j]) / unit) if j in order[:k] else 0.0 for j in range(m)]
    out = [int(w) for w in want]
    rest = D - sum(out)
    for j in sorted(range(m), key=lambda j: -(want[j] - int(want[j])))[:rest]:
        out[j] += 1
    return out


# --- one step -------------------------------------------------------------------------------------------
@dataclass
class StepPlan:
    micro_batches: list[BatchShape]
    timing: PipelineTiming


def stage_times(cost: CostModel, mbs: Sequence[BatchShape], layers_per_stage: Sequence[int]) -> list[list[float]]:
    lt = [cost.layer_time(b) for b in mbs]
    out = [[n * t for t in lt] for n in layers_per_stage]
    last = out[-1]
    for j, b in enumerate(mbs):
        last[j] += cost.fixed_time(b)
    return out


def plan_step(work: StepWork, cost: CostModel, layers_per_stage: Sequence[int], act_bytes_per_token: float,
              link_bytes_per_s: float, link_latency_s: float,
              mode: Literal["lookahead", "fcfs"] = "lookahead", max_micro_batches: int | None = None,
              overlap: bool = True) -> StepPlan:
    """Form the step's micro-batches and time the pipeline (`pipeline_schedule`). ``fcfs`` uses g
    micro-batches (one per stage, as a plain pipeline-parallel engine would); ``lookahead`` balances them
    and picks the number of micro-batches (1..max; default g with ``overlap``, 2g without) with the shortest
    predicted step: more micro-batches shrink bubbles, but every one pays the stage's weight reads again."""
    g = len(layers_per_stage)

    def timed(mbs: list[BatchShape]) -> StepPlan:
        xfer = [link_latency_s + b.tokens * act_bytes_per_token / link_bytes_per_s for b in mbs]
        return StepPlan(mbs, pipeline_schedule(stage_times(cost, mbs, layers_per_stage), xfer, overlap,
                                               link_latency_s))

    if mode == "fcfs":
        return timed(fcfs_micro_batches(work, g))
    hi = max(1, min(max_micro_batches or (g if overlap else 2 * g), work.num_seqs))
    best: StepPlan | None = None
    mc = _Marginal(cost, work) if hi > 1 else None
    costs = [mc.piece(c, b) for c, b in work.prefill] if mc else None
    for m in range(1, hi + 1):
        p = timed(lookahead_micro_batches(work, m, cost, mc, costs))
        if best is None or p.timing.step_s < best.timing.step_s:
            best = p
    assert best is not None
    return best
