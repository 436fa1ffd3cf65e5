"""Per-request records and per-run metrics (the keys of ``summary.json``: docs/architecture.md, "Outputs")."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from sim.core.request import State
from sim.engine.cluster import RunResult
from sim.engine.sample import SAMPLE_FIELDS

REQUEST_COLUMNS = ("id", "instance", "arrival_s", "prompt_tokens", "output_tokens", "state", "reject_reason",
                   "queue_s", "ttft_s", "tpot_mean_s", "tpot_max_s", "e2e_s", "finish_s", "preemptions",
                   "swaps", "ttft_slo_s", "tpot_slo_s", "slo_met")


def requests_frame(result: RunResult) -> pd.DataFrame:
    rows = []
    for r in sorted(result.requests, key=lambda r: r.id):
        fin = r.state == State.FINISHED
        rows.append((r.id, r.instance, r.arrival_s, r.prompt_tokens, r.output_tokens,
                     "finished" if fin else "rejected", r.reject_reason,
                     (r.first_scheduled_s - r.arrival_s) if r.first_scheduled_s is not None else math.nan,
                     r.ttft_s if r.ttft_s is not None else math.nan,
                     r.tpot_mean_s if fin else math.nan, r.max_gap_s if fin else math.nan,
                     (r.finish_s - r.arrival_s) if fin else math.nan,
                     r.finish_s if r.finish_s is not None else math.nan, r.preemptions, r.swaps,
                     r.ttft_slo_s, r.tpot_slo_s, r.meets_slo()))
    return pd.DataFrame(rows, columns=list(REQUEST_COLUMNS))


def series_frame(result: RunResult) -> pd.DataFrame:
    rows = [s for inst in result.instances for s in inst.samples]
    return pd.DataFrame(rows, columns=list(SAMPLE_FIELDS))


_NUMBER = re.compile(r"(?<![\w-])\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?(?!\w)")  # not inside a name


def reason_kind(reason: str) -> str:
    """A rejection reason with its numbers replaced by N: the key that counts alike rejections together
    (``TTFT SLO N s: first token predicted N s after arrival ...``); requests.csv keeps the full reason."""
    return _NUMBER.sub("N", reason)


def _pcts(x: pd.Series) -> dict[str, float | None]:
    x = x.dropna().to_numpy()
    if len(x) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(x.max())}


def summarize(result: RunResult, df: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per-run metrics. SLO attainment counts rejected requests as misses."""
    if result.error is not None:
        return {"error": result.error, "requests": len(result.requests)}
    df = requests_frame(result) if df is None else df
    fin = df[df.state == "finished"]
    sim_s = result.simulated_s if result.simulated_s > 0 else float("nan")
    out_tokens = int(fin.output_tokens.sum())
    fab = result.fabric
    h2d_util = d2h_util = 0.0
    if fab is not None and result.instances and result.simulated_s > 0:
        gpus = [g for i in result.instances for g in i.gpus]  # every GPU's own host link
        h2d_util = float(np.mean([fab.bytes_moved[f"gpu{g}/h2d"] / (fab.capacity[f"gpu{g}/h2d"] * sim_s)
                                  for g in gpus]))
        d2h_util = float(np.mean([fab.bytes_moved[f"gpu{g}/d2h"] / (fab.capacity[f"gpu{g}/d2h"] * sim_s)
                                  for g in gpus]))
    samples = series_frame(result)
    used = samples.weights_bytes + samples.staging_bytes + samples.workspace_bytes + samples.kv_used_bytes
    summary: dict[str, Any] = {
        "policy": result.description,
        "requests": len(df),
        "finished": int(len(fin)),
        "rejected": int((df.state == "rejected").sum()),
        "throughput_tokens_per_s": out_tokens / sim_s if result.simulated_s > 0 else 0.0,
        "throughput_requests_per_s": len(fin) / sim_s if result.simulated_s > 0 else 0.0,
        "slo_attainment": float(df.slo_met.mean()) if len(df) else 0.0,
        "ttft_s": _pcts(df.ttft_s),
        "tpot_s": _pcts(fin.tpot_mean_s),
        "tpot_max_s": _pcts(fin.tpot_max_s),
        "e2e_s": _pcts(fin.e2e_s),
        "queue_s": _pcts(df.queue_s),
        "gpu_memory_peak_bytes": float(max((i.peak_gpu_bytes for i in result.instances), default=0.0)),
        "gpu_memory_mean_bytes": float(used.mean()) if len(used) else 0.0,
        "kv_used_peak_bytes": float(samples.kv_used_bytes.max()) if len(samples) else 0.0,
        # host memory the policy actually holds: offloaded weights under its plans + swapped KV (per GPU
        # peaks summed); the pinned reservation (a host copy of every layer it may offload) is separate
        "host_memory_peak_bytes": float(sum(i.peak_host_bytes for i in result.instances)),
        "host_memory_reserved_peak_bytes": float(max((h.peak_bytes for h in result.hosts), default=0.0)),
        "host_weight_bytes": float(sum(i.host_weight_bytes * len(i.gpus) for i in result.instances)),
        "offloaded_weight_bytes_mean": float(samples.groupby("gpu").host_weights_bytes.mean().sum())
        if len(samples) else 0.0,
        "pcie_h2d_utilization": h2d_util,
        "pcie_d2h_utilization": d2h_util,
        "preemptions": int(sum(i.sched.preemptions for i in result.instances)),
        "iterations": int(sum(i.iterations for i in result.instances)),
        "plan_changes": int(sum(i.plan_changes for i in result.instances)),
        "output_tokens": out_tokens,
        "reject_reasons": dict(Counter(map(reason_kind, df.reject_reason[df.state == "rejected"]))),
        "simulated_s": result.simulated_s,
        "wall_s": result.wall_s,
        "interrupted": result.interrupted,
    }
    return summary
