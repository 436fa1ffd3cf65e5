"""The search's answer as tables: one row per configuration, the cheapest configuration per planned rate,
the cost/throughput Pareto front, and ``summary.json`` with the verdict in words. Everything here is a
function of the results only (no wall times), so the same seed gives byte-identical files.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .search import Job, SearchResult, cheapest


def usd_per_million_tokens(usd_per_hour: float, tokens_per_s: float) -> float | None:
    """Price of a million output tokens when the deployment runs at ``tokens_per_s``."""
    return usd_per_hour / (tokens_per_s * 3600) * 1e6 if tokens_per_s > 0 else None


def _at_max(j: Job) -> dict[str, Any] | None:
    """The evaluation at the highest proven rate."""
    return j.records.get(j.search.lo) if j.search.lo >= 0 else None


def configs_frame(res: SearchResult) -> pd.DataFrame:
    """One row per configuration: status, the highest proven rate (``max_rate_per_s``), the lowest proven
    failing rate, the analytic bound, the throughput and price per million output tokens at the max rate."""
    rows = []
    for j in res.jobs:
        rec = _at_max(j)
        tok = rec["output_tokens_per_s"] if rec else 0.0
        rows.append({**j.cand.row(), "status": j.status,
                     "max_rate_per_s": j.search.max_rate, "fail_rate_per_s": j.search.fail_rate,
                     "rate_bound_per_s": j.bound_rate, "output_tokens_per_s": tok,
                     "usd_per_million_output_tokens": usd_per_million_tokens(j.cand.usd_per_hour, tok),
                     "evaluations": len(j.records), "reason": j.reason})
    for p in res.pruned:
        rows.append({**p, "max_rate_per_s": None, "fail_rate_per_s": None, "rate_bound_per_s": None,
                     "output_tokens_per_s": None, "usd_per_million_output_tokens": None, "evaluations": 0})
    df = pd.DataFrame(rows)
    return df.sort_values(["model", "usd_per_hour", "config"], kind="stable").reset_index(drop=True)


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Ids on the cost/throughput Pareto front of ``(id, price, rate)`` points: no other point is at most as
    expensive and at least as fast with one of the two strictly better. Points with rate 0 are never on it.
    Returned cheapest first."""
    front: list[str] = []
    best = 0.0
    for i, c, r in sorted(points, key=lambda p: (p[1], -p[2], p[0])):
        if r > best:
            front.append(i)
            best = r
    return front


def cheapest_frame(res: SearchResult) -> pd.DataFrame:
    """For every model and planned rate: the cheapest configuration proven to sustain it (or none)."""
    rows = []
    for m in res.plan.cfg.models:
        for r in sorted(m.rates_per_s):
            j = cheapest(res.jobs, m.label, r)
            rec = _at_max(j) if j else None
            rows.append({"model": m.label, "rate_per_s": r, "config": j.cand.id if j else None,
                         "gpu": j.cand.gpu if j else None, "count": j.cand.count if j else None,
                         "host_memory_gib_per_gpu": j.cand.host_gib_per_gpu if j else None,
                         "strategy": j.cand.strategy if j else None,
                         "usd_per_hour": j.cand.usd_per_hour if j else None,
                         "max_rate_per_s": j.search.max_rate if j else None,
                         "usd_per_million_output_tokens":
                             usd_per_million_tokens(j.cand.usd_per_hour, rec["output_tokens_per_s"]) if rec else None})
    return pd.DataFrame(rows)


def verdict(j: Job, target: float, rate: float, headroom: float | None, max_factor: float, burst_s: float) -> str:
    """The answer in words: configuration, sustained rate, price, and burst headroom."""
    c = j.cand
    rec = _at_max(j)
    price = usd_per_million_tokens(c.usd_per_hour, rec["output_tokens_per_s"]) if rec else None
    s = (f"{c.count}x {c.gpu} with {c.strategy} ({c.host_gib_per_gpu:g} GiB host memory per GPU) sustains "
         f"{j.search.max_rate:.3g} req/s at {target:.0%} SLO attainment for ${c.usd_per_hour:.2f}/h"
         + (f", ${price:.2f} per million output tokens" if price is not None else "")
         + f": the cheapest configuration for the planned peak of {rate:g} req/s.")
    if headroom is None:
        return s
    if headroom <= 1:
        return s + f" Burst headroom: none; a {burst_s:g} s burst above {rate:g} req/s already breaks the SLO."
    more = " (the largest factor tried)" if headroom >= max_factor else ""
    return s + (f" Burst headroom: it keeps {target:.0%} attainment through a {burst_s:g} s burst to "
                f"{headroom:g}x that rate{more}.")


def burst_headroom(b: Job) -> float:
    """The largest burst factor proven to keep the target (1.0: none above the steady rate)."""
    return b.search.max_rate if b.search.lo >= 0 else 1.0


def summary(res: SearchResult) -> dict[str, Any]:
    """``summary.json``: per model the cheapest configuration per planned rate, the Pareto front, the chosen
    configuration with its burst headroom, and the verdict in words; counts of what was searched."""
    cfg = res.plan.cfg
    cf = configs_frame(res)
    ch = cheapest_frame(res)
    models: dict[str, Any] = {}
    for m in cfg.models:
        js = [j for j in res.jobs if j.cand.model == m.label]
        front = pareto([(j.cand.id, j.cand.usd_per_hour, j.search.max_rate) for j in js if j.status == "done"])
        b = res.bursts.get(m.label)
        entry: dict[str, Any] = {
            "ttft_slo_s": m.ttft_s, "tpot_slo_s": m.tpot_s,
            "cheapest_per_rate": ch[ch.model == m.label].drop(columns="model").to_dict("records"),
            "pareto_front": front, "chosen": None, "verdict": (
                f"No configuration sustains even {min(m.rates_per_s):g} req/s of {m.label} at "
                f"{cfg.search.target_attainment:.0%} SLO attainment.")}
        if b is not None:
            head = burst_headroom(b)
            entry["chosen"] = {"config": b.cand.id, "planned_peak_rate_per_s": b.peak_rate,
                               "burst_headroom_factor": head, "burst_duration_s": cfg.burst.duration_s,
                               "burst_evaluations": len(b.records)}
            entry["verdict"] = verdict(cheapest(res.jobs, m.label, b.peak_rate), cfg.search.target_attainment,  # type: ignore[arg-type]
                                       b.peak_rate, head, cfg.burst.max_factor, cfg.burst.duration_s)
        models[m.label] = entry
    status = cf.status.value_counts().to_dict()
    return {"plan": res.plan.name, "seed": cfg.seed, "complete": not res.interrupted, "target_attainment": cfg.search.target_attainment,
            "configurations": int(len(cf)), "by_status": {k: int(v) for k, v in sorted(status.items())},
            "evaluations": len(res.evaluations),
            "failed_evaluations": sum(1 for e in res.evaluations if e.get("error")), "models": models}
