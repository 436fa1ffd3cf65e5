"""The capacity search: static pruning, then every configuration's rate bisection advanced in rounds on a
worker pool, then the burst headroom of each model's chosen configuration.

Rounds make the outcome independent of the pool: in each round every active search proposes one rate,
dominance is judged on the results of earlier rounds only, and a round's results are applied in a fixed
order. Every result is appended to ``evaluations.jsonl`` as it arrives; a resumed search (``resume=True``)
replays the same rounds and takes the results it already has from that file, so it ends with the same
tables as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from sim.config.schema import ScenarioError
from sim.engine.memory import EngineConfig
from sim.planner.config import LoadedPlan
from sim.planner.evaluate import EvalTask, evaluate, probe
from sim.planner.rate_search import RateSearch, dominated_by
from sim.planner.space import ConfigCandidate, enumerate_space, hardware, mean_lengths, rate_grid, roofline_rate
from sim.pools.local import SerialPool, SweepExecutor

EvaluateFn = Callable[[EvalTask], dict[str, Any]]
ProgressFn = Callable[[int, int, int], None]  # (evaluations done, failed, estimated total)
StartupFn = Callable[[int, int], None]  # (configurations probed, to probe) during the start-up


class SweepInterrupted(Exception):
    """Raised when ``max_new`` new evaluations have been made (a stand-in for Ctrl-C in tests)."""


@dataclass
class Job:
    """One bisection: a configuration's rate search, or a chosen configuration's burst-factor search."""

    cand: ConfigCandidate
    search: RateSearch
    kind: str  # "steady" or "burst"
    status: str = "searching"  # searching, done, dominated, error
    reason: str = ""
    roofline_rate: float = math.inf  # the roofline estimate the search starts from (not a bound)
    peak_rate: float = 0.0  # burst searches: the planned rate the burst is added to
    rank: int = 0  # the strategy's place in the plan: among equals, the one listed first is chosen
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # grid index -> evaluation

    def remaining(self) -> int:
        """Evaluations this search may still need (for the progress estimate)."""
        if self.status != "searching":
            return 0
        s = self.search
        if s.lo >= 0 and s.hi < len(s.grid):
            return max(0, math.ceil(math.log2(max(s.hi - s.lo, 1))))
        return math.ceil(math.log2(len(s.grid))) + 1


@dataclass
class SearchResult:
    plan: LoadedPlan
    jobs: list[Job]  # steady-rate searches, one per configuration that could start
    pruned: list[dict[str, Any]]  # statically pruned or unable to start
    bursts: dict[str, Job]  # model -> the chosen configuration's burst search
    evaluations: list[dict[str, Any]]
    interrupted: bool = False
    started: bool = True  # False: interrupted during the start-up (probing), before any simulation
    probed: tuple[int, int] = (0, 0)  # configurations probed, of how many


class _Evaluations:
    """The results log: a JSON line per evaluation, read back on resume."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.cache: dict[str, dict[str, Any]] = {}
        if resume and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the interruption
                    continue
                self.cache[rec["key"]] = rec
        elif path.exists():
            path.unlink()
        self._f = path.open("a")
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._f.write("\n")  # end a line cut short by the interruption, so the next record stands alone

    def add(self, rec: dict[str, Any]) -> None:
        self.cache[rec["key"]] = rec
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def parallel_engine(engine: EngineConfig, c: ConfigCandidate) -> EngineConfig:
    """The plan's engine settings with the candidate's tensor and pipeline degrees."""
    if c.tp == engine.tensor_parallel_size and c.pp == engine.pipeline_parallel_size:
        return engine
    return replace(engine, tensor_parallel_size=c.tp, pipeline_parallel_size=c.pp)


class CapacitySearch:
    """Drives the search; `run` returns a `SearchResult`."""

    def __init__(self, plan: LoadedPlan, out: Path, executor: SweepExecutor | None = None,
                 evaluate_fn: EvaluateFn = evaluate, resume: bool = False, max_new: int | None = None,
                 progress: ProgressFn | None = None, probe_fn: Callable[..., str | None] = probe,
                 startup: StartupFn | None = None) -> None:
        self.plan, self.out = plan, out
        self.ex = executor or SerialPool()
        self.evaluate_fn, self.probe_fn = evaluate_fn, probe_fn
        self.resume, self.max_new, self.progress, self.startup = resume, max_new, progress, startup
        self.strategies = {s.name: s for s in plan.cfg.strategies}
        self.done = self.failed = self.new = 0

    # --- tasks ----------------------------------------------------------------------------------------
    def task(self, c: ConfigCandidate, rate: float, factor: float = 0.0) -> EvalTask:
        p, m = self.plan.cfg, self.plan.model_config(c.model)
        return EvalTask(c.id, self.plan.models[c.model], c.gpu, c.count, c.host_gib_per_gpu,
                        self.strategies[c.strategy].spec(), parallel_engine(p.engine.config(), c), m.ttft_s, m.tpot_s,
                        p.search.target_attainment, rate, p.workload.duration_s, p.workload.min_requests,
                        self.plan.prompt, self.plan.output, p.seed, factor, p.burst.start_s, p.burst.duration_s)

    # --- rounds ---------------------------------------------------------------------------------------
    def _round(self, jobs: list[Job], log: _Evaluations, dominance: bool) -> bool:
        """One round: every searching job proposes one evaluation. Returns False when all are finished."""
        proven = {}
        if dominance:
            for j in jobs:
                if j.search.lo >= 0:
                    proven.setdefault(j.cand.model, []).append((j.cand.id, j.cand.usd_per_hour, j.search.max_rate))
        pending: list[tuple[Job, int, EvalTask]] = []
        for j in jobs:
            if j.status != "searching":
                continue
            others = [o for o in proven.get(j.cand.model, []) if o[0] != j.cand.id]
            by = dominated_by(j.cand.usd_per_hour, j.search.fail_rate, others) if dominance else None
            if by is not None:
                j.status, j.reason = "dominated", f"{by} sustains more at no higher price"
                continue
            idx = j.search.next_index()
            if idx is None:
                j.status = "done"
                continue
            rate = j.search.grid[idx]
            t = self.task(j.cand, j.peak_rate, rate) if j.kind == "burst" else self.task(j.cand, rate)
            pending.append((j, idx, t))
        if not pending:
            return False
        todo = [t for _, _, t in pending if t.key not in log.cache]
        fresh = {t.key for t in todo}
        for _, rec in self.ex.imap_unordered(self.evaluate_fn, todo):
            log.add(rec)
            self._count(rec, jobs)
            self.new += 1
            if self.max_new is not None and self.new >= self.max_new:
                raise SweepInterrupted(f"stopped after {self.new} new evaluations")
        for j, idx, t in pending:  # applied in job order, whatever order they finished in
            rec = log.cache[t.key]
            if t.key not in fresh:  # taken from an earlier run's log: counted now
                self._count(rec, jobs)
            j.records[idx] = rec
            if rec.get("error"):
                j.status, j.reason = "error", rec["error"]
            else:
                j.search.record(idx, bool(rec["passed"]))
                if j.search.done:
                    j.status = "done"
        return True

    def _count(self, rec: dict[str, Any], jobs: list[Job]) -> None:
        self.done += 1
        self.failed += bool(rec.get("error"))
        if self.progress is not None:
            self.progress(self.done, self.failed, self.done + sum(j.remaining() for j in jobs))

    def _check_fingerprint(self) -> None:
        """Results may only be reused for the same plan: a resumed run checks the plan's fingerprint."""
        fp = hashlib.sha256(self.plan.cfg.model_dump_json().encode()).hexdigest()
        f = self.out / "plan.fingerprint"
        if self.resume and f.exists() and f.read_text().strip() != fp:
            raise ScenarioError(f"{self.plan.path.name}: --resume: {self.out} holds results of a different plan "
                                "(the file changed since); use another --out or drop --resume")
        f.write_text(fp + "\n")

    # --- the whole search -----------------------------------------------------------------------------
    def run(self) -> SearchResult:
        self.out.mkdir(parents=True, exist_ok=True)
        plan, cfg = self.plan, self.plan.cfg
        kept, pruned = enumerate_space(plan)
        mean_p, mean_o = mean_lengths(plan, cfg.seed)
        engine = cfg.engine.config()
        grids = {m.label: rate_grid(plan, m.label) for m in cfg.models}
        jobs: list[Job] = []
        probed = 0
        try:  # the start-up: can each configuration start at all (builds records; minutes on a loaded machine)
            for k, c in enumerate(kept):
                if self.startup is not None:
                    self.startup(k, len(kept))
                model = plan.models[c.model]
                eng = parallel_engine(engine, c)
                why = self.probe_fn(model, c.gpu, c.count, c.host_gib_per_gpu, self.strategies[c.strategy].spec(),
                                    eng)
                probed += 1
                if why is not None:
                    pruned.append({**c.row(), "status": "pruned", "reason": f"cannot start: {why}"})
                    continue
                bound = roofline_rate(model.shard(c.tp, c.pp), hardware(c.gpu, c.host_gib_per_gpu, c.count), eng,
                                      c.instances, mean_p, mean_o) / c.pp
                grid = grids[c.model]
                first = max([k for k, r in enumerate(grid) if r <= 0.5 * bound], default=0)
                jobs.append(Job(c, RateSearch(grid, first), "steady", roofline_rate=bound,
                                rank=list(self.strategies).index(c.strategy)))
        except KeyboardInterrupt:  # nothing simulated yet: nothing to write
            return SearchResult(plan, [], pruned, {}, [], interrupted=True, started=False, probed=(probed, len(kept)))
        if self.startup is not None:
            self.startup(len(kept), len(kept))
        self._check_fingerprint()
        log = _Evaluations(self.out / "evaluations.jsonl", self.resume)
        bursts: dict[str, Job] = {}
        interrupted = False
        try:
            while self._round(jobs, log, dominance=True):
                pass
            for m in cfg.models:  # burst headroom of the configuration chosen for the peak planned rate
                choice = chosen(jobs, m.label, m.rates_per_s)
                if choice is None:
                    continue
                rate, job = choice
                b = cfg.burst
                n = int(math.floor((b.max_factor - 1) / b.factor_step + 1e-9))
                factors = tuple(round(1 + b.factor_step * k, 6) for k in range(1, n + 1))
                bursts[m.label] = Job(job.cand, RateSearch(factors, 0), "burst", peak_rate=rate)
            while self._round(list(bursts.values()), log, dominance=False):
                pass
        except (KeyboardInterrupt, SweepInterrupted):  # what is done is on disk; --resume goes on from it
            interrupted = True
        finally:
            log.close()
        evals = sorted((r for r in log.cache.values()), key=lambda r: r["key"])
        return SearchResult(plan, jobs, pruned, bursts, evals, interrupted)


def tie_order(j: Job) -> tuple[int, str]:
    """Among configurations equal in price and rate: the strategy listed first in the plan (e.g. no
    offloading before an equally good Select-N), then the id."""
    return j.rank, j.cand.id


def cheapest(jobs: list[Job], model: str, rate: float) -> Job | None:
    """The cheapest configuration proven to sustain ``rate`` (ties: the higher rate, then the strategy
    listed first in the plan -- e.g. no offloading before an equal Select-N -- then the id)."""
    ok = [j for j in jobs if j.cand.model == model and j.search.lo >= 0 and j.search.max_rate >= rate]
    return min(ok, key=lambda j: (j.cand.usd_per_hour, -j.search.max_rate, *tie_order(j))) if ok else None


def chosen(jobs: list[Job], model: str, rates: list[float]) -> tuple[float, Job] | None:
    """The highest planned rate some configuration sustains, and the cheapest one that does."""
    for r in sorted(rates, reverse=True):
        j = cheapest(jobs, model, r)
        if j is not None:
            return r, j
    return None
