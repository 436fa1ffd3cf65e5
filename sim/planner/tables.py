"""The search's answer as tables: one row per configuration, the cheapest configuration per planned rate,
the cost/throughput Pareto front, and ``summary.json`` with the verdict in words. Everything here is a
function of the results only (no wall times), so the same seed gives byte-identical files.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sim.planner.capacity_search import Job, SearchResult, cheapest, tie_order
from sim.planner.space import mean_lengths


def usd_per_million_tokens(usd_per_hour: float, tokens_per_s: float) -> float | None:
    """Price of a million output tokens when the deployment produces ``tokens_per_s`` (None at 0)."""
    return usd_per_hour / (tokens_per_s * 3600) * 1e6 if tokens_per_s > 0 else None


def _at_max(j: Job) -> dict[str, Any] | None:
    """The evaluation at the highest proven rate."""
    return j.records.get(j.search.lo) if j.search.lo >= 0 else None


def configs_frame(res: SearchResult) -> pd.DataFrame:
    """One row per configuration: status, the highest proven rate (``max_rate_per_s``), the lowest proven
    failing rate, the roofline estimate the search started from, and the output tokens/s and price per
    million output tokens when it runs at its max rate (its lowest price per token)."""
    rows = []
    for j in res.jobs:
        rec = _at_max(j)
        tok = rec["output_tokens_per_s"] if rec else 0.0
        rows.append({**j.cand.row(), "status": j.status,
                     "max_rate_per_s": j.search.max_rate, "fail_rate_per_s": j.search.fail_rate,
                     "roofline_rate_per_s": j.roofline_rate, "output_tokens_per_s_at_max": tok,
                     "usd_per_million_output_tokens_at_max": usd_per_million_tokens(j.cand.usd_per_hour, tok),
                     "evaluations": len(j.records), "reason": j.reason})
    for p in res.pruned:
        rows.append({**p, "max_rate_per_s": None, "fail_rate_per_s": None, "roofline_rate_per_s": None,
                     "output_tokens_per_s_at_max": None, "usd_per_million_output_tokens_at_max": None,
                     "evaluations": 0})
    df = pd.DataFrame(rows)
    return df.sort_values(["model", "usd_per_hour", "config"], kind="stable").reset_index(drop=True)


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Ids on the cost/throughput Pareto front of ``(id, price, rate)`` points: no other point is at most as
    expensive and at least as fast with one of the two strictly better. Points with rate 0 are never on it.
    Among identical points the first given wins. Returned cheapest first."""
    front: list[str] = []
    best = 0.0
    for i, c, r in sorted(points, key=lambda p: (p[1], -p[2])):  # stable: ties keep the given order
        if r > best:
            front.append(i)
            best = r
    return front


def front_of(res: SearchResult, model: str) -> list[str]:
    """The Pareto front over every configuration with a proven rate that was not dominated (a search that
    ended in an error keeps the rate it proved), ties broken as `cheapest` breaks them."""
    js = sorted((j for j in res.jobs if j.cand.model == model and j.status != "dominated" and j.search.lo >= 0),
                key=tie_order)
    return pareto([(j.cand.id, j.cand.usd_per_hour, j.search.max_rate) for j in js])


def cheapest_frame(res: SearchResult) -> pd.DataFrame:
    """For every model and planned rate: the cheapest configuration proven to sustain it (or none), its price
    per hour and per million output tokens at that rate."""
    _, mean_output = mean_lengths(res.plan, res.plan.cfg.seed)
    rows = []
    for m in res.plan.cfg.models:
        for r in sorted(m.rates_per_s):
            j = cheapest(res.jobs, m.label, r)
            row: dict[str, Any] = {"model": m.label, "rate_per_s": r, "config": None, "gpu": None, "count": None,
                                   "tp": None, "pp": None,
                                   "host_memory_gib_per_gpu": None, "strategy": None, "usd_per_hour": None,
                                   "max_rate_per_s": None, "usd_per_million_output_tokens": None}
            if j is not None:
                c = j.cand
                row.update(config=c.id, gpu=c.gpu, count=c.count, tp=c.tp, pp=c.pp,
                           host_memory_gib_per_gpu=c.host_gib_per_gpu,
                           strategy=c.strategy, usd_per_hour=c.usd_per_hour, max_rate_per_s=j.search.max_rate,
                           usd_per_million_output_tokens=usd_per_million_tokens(c.usd_per_hour, r * mean_output))
            rows.append(row)
    return pd.DataFrame(rows)


def burst_headroom(b: Job) -> float:
    """The largest burst factor proven to keep the target (1.0: not even the smallest one tried)."""
    return b.search.max_rate if b.search.lo >= 0 else 1.0


def verdict(j: Job, target: float, peak: float, planned_peak: float, price_per_mtok: float | None,
            headroom: float | None, first_factor: float, max_factor: float, burst_s: float) -> str:
    """The answer in words: configuration, sustained rate, price, and burst headroom."""
    c = j.cand
    s = ""
    if peak < planned_peak:
        s = f"No configuration sustains the planned peak of {planned_peak:g} req/s; the highest planned rate served is {peak:g} req/s. "
    par = "" if c.tp * c.pp == 1 else f" as {c.instances} instance(s) of TP {c.tp}" + (f" x PP {c.pp}" if c.pp > 1 else "")
    s += (f"{c.count}x {c.gpu}{par} (strategy {c.strategy}, {c.host_gib_per_gpu:g} GiB host memory per GPU) sustains "
          f"{j.search.max_rate:.3g} req/s at {target:.0%} SLO attainment for ${c.usd_per_hour:.2f}/h"
          + (f", ${price_per_mtok:.2f} per million output tokens at {peak:g} req/s" if price_per_mtok else "")
          + f": the cheapest configuration for {peak:g} req/s.")
    if headroom is None:
        return s
    if headroom <= 1:
        return s + (f" Burst headroom: none found; a {burst_s:g} s burst to {first_factor:g}x {peak:g} req/s "
                    "already breaks the SLO.")
    more = " (the largest factor tried)" if headroom >= max_factor else ""
    return s + (f" Burst headroom: it keeps {target:.0%} attainment through a {burst_s:g} s burst to "
                f"{headroom:g}x {peak:g} = {headroom * peak:.3g} req/s{more}.")


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (missing values as null, not NaN)."""
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def summary(res: SearchResult, cf: pd.DataFrame | None = None, ch: pd.DataFrame | None = None) -> dict[str, Any]:
    """``summary.json``: per model the cheapest configuration per planned rate, the Pareto front, the chosen
    configuration with its burst headroom, and the verdict in words; counts of what was searched. ``cf`` and
    ``ch``: `configs_frame` and `cheapest_frame` of ``res`` if the caller has them already."""
    cfg = res.plan.cfg
    cf = configs_frame(res) if cf is None else cf
    ch = cheapest_frame(res) if ch is None else ch
    models: dict[str, Any] = {}
    for m in cfg.models:
        b = res.bursts.get(m.label)
        rows = ch[ch.model == m.label].drop(columns="model")
        entry: dict[str, Any] = {
            "ttft_slo_s": m.ttft_s, "tpot_slo_s": m.tpot_s, "cheapest_per_rate": _records(rows),
            "pareto_front": front_of(res, m.label), "chosen": None, "verdict": (
                f"Interrupted before the search for {m.label} finished (see configs.csv for what was proven); "
                "run again with --resume to continue." if res.interrupted else
                f"No configuration sustains even {min(m.rates_per_s):g} req/s of {m.label} at "
                f"{cfg.search.target_attainment:.0%} SLO attainment.")}
        if b is not None:
            head = burst_headroom(b)
            entry["chosen"] = {"config": b.cand.id, "planned_peak_rate_per_s": b.peak_rate,
                               "burst_headroom_factor": head, "burst_duration_s": cfg.burst.duration_s,
                               "burst_evaluations": len(b.records)}
            price = rows[rows.rate_per_s == b.peak_rate].usd_per_million_output_tokens.iloc[0]
            entry["verdict"] = ("Interrupted (partial results): " if res.interrupted else "") + verdict(
                cheapest(res.jobs, m.label, b.peak_rate), cfg.search.target_attainment,  # type: ignore[arg-type]
                b.peak_rate, max(m.rates_per_s), None if pd.isna(price) else float(price),
                head, float(b.search.grid[0]), cfg.burst.max_factor, cfg.burst.duration_s)
        models[m.label] = entry
    status = cf.status.value_counts().to_dict()
    return {"plan": res.plan.name, "seed": cfg.seed, "complete": not res.interrupted,
            "target_attainment": cfg.search.target_attainment, "configurations": int(len(cf)),
            "by_status": {k: int(v) for k, v in sorted(status.items())}, "evaluations": len(res.evaluations),
            "failed_evaluations": sum(1 for e in res.evaluations if e.get("error")), "models": models}
