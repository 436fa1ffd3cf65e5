"""The run folder that ``python -m sim.run`` writes.

    scenario.yaml   the scenario as run: the validated file plus what was derived (model shape, hardware, SLO)
    summary.json    per-policy metrics (docs/architecture.md, "Outputs") -- reproducible: same seed, same bytes
    requests.csv    one row per request and policy, units in the column names
    timeline.json   Chrome trace (Perfetto): one process per policy, one track per GPU stream, copy engine, bus
    report.html     the plotly report (self-contained)
    run_info.json   what is not reproducible: wall-clock times, start time, command line, versions

Every file is written whole or not at all (`sim.output.files.write_atomic`), ``run_info.json`` last; while
the folder is being written it holds an ``INCOMPLETE`` file, which stays (naming what is missing) if the
writing stops early. ``summary.json`` has an ``input`` key only when something was done to the input:
``trace_rows_dropped`` (``on_bad_rows: drop``), ``context_overflow`` (requests longer than the context).

``summary.json`` keeps the ``wall_s`` key of the contract but sets it to null: wall-clock time differs
from run to run, so it lives in ``run_info.json`` and the summary stays byte-identical for a given seed.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from sim.output.chrome_trace import standard_tracks, write_merged_chrome_trace
from sim.output.files import IncompleteMarker, safe_name, write_atomic

if TYPE_CHECKING:
    from sim.api import PolicyRun
    from sim.config.scenario import LoadedScenario

FILES = ("scenario.yaml", "summary.json", "requests.csv", "timeline.json", "report.html", "run_info.json")


def clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN and infinities to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def policy_metrics(run: "PolicyRun") -> dict[str, Any]:
    """A policy's summary without wall-clock values. A policy that could not run keeps the contract's keys:
    every request rejected, nothing served, ``error`` saying why."""
    s = {k: v for k, v in run.summary.items() if k != "wall_s"}
    if s.get("error") is not None:
        n = s.get("requests", len(run.requests))
        none = {"p50": None, "p90": None, "p99": None, "max": None}
        s = {"requests": n, "finished": 0, "rejected": n, "throughput_tokens_per_s": 0.0,
             "throughput_requests_per_s": 0.0, "slo_attainment": 0.0, "ttft_s": none, "tpot_s": none,
             "e2e_s": none, "gpu_memory_peak_bytes": 0.0, "host_memory_peak_bytes": 0.0,
             "pcie_h2d_utilization": 0.0, "preemptions": 0, "simulated_s": 0.0, "interrupted": False, **s}
    return s


def build_summary(loaded: "LoadedScenario", runs: dict[str, "PolicyRun"], verdict: list[str],
                  interrupted: bool = False) -> dict[str, Any]:
    pols = {name: policy_metrics(r) for name, r in runs.items()}
    extra = {"input": loaded.input} if loaded.input else {}
    return {**extra,
        "scenario": loaded.name,
        "seed": loaded.sc.seed,
        "wall_s": None,  # wall-clock time is in run_info.json, so that this file is reproducible
        "simulated_s": max((r.result.simulated_s for r in runs.values()), default=0.0),
        "model": loaded.model.name,
        "gpu": loaded.hardware.name,
        "num_gpus": loaded.sc.hardware.num_gpus,
        "requests": len(loaded.requests) if loaded.requests is not None else 0,
        "slo": {"ttft_s": loaded.slo.ttft_s, "tpot_s": loaded.slo.tpot_s},
        "compare": [c.name for c in loaded.sc.compare],
        "interrupted": interrupted,
        "not_run": [c.name for c in loaded.sc.compare if c.name not in runs],
        "verdict": verdict,
        "policies": pols,
    }


def summary_bytes(summary: dict[str, Any]) -> str:
    """Sorted keys, floats as Python prints them: the same summary gives the same bytes."""
    return json.dumps(clean(summary), sort_keys=True, indent=2, allow_nan=False) + "\n"


def requests_table(runs: dict[str, "PolicyRun"]) -> pd.DataFrame:
    frames = [r.requests.assign(policy=name)[["policy", *r.requests.columns]] for name, r in runs.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["policy"])


@dataclass
class RunFolder:
    path: Path
    summary: dict[str, Any]
    trace_info: dict[str, Any]


def default_out_dir(name: str, root: str | Path = "reports", now: datetime | None = None) -> Path:
    """``reports/<scenario>-<YYYYmmdd-HHMMSS>``, with a suffix if that folder exists already; the name made
    safe (`safe_name`: one folder, under ``root``)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{safe_name(name, 'scenario')}-{stamp}"
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


def write_run(out: str | Path, loaded: "LoadedScenario", runs: dict[str, "PolicyRun"], verdict: list[str], *,
              interrupted: bool = False, wall_s: float = 0.0, argv: list[str] | None = None,
              report: bool = True) -> RunFolder:
    """Write every output of a run (whatever ``runs`` holds, also after an interruption): each file whole
    (`write_atomic`), the most useful first, ``run_info.json`` last, under an ``INCOMPLETE`` marker that is
    removed at the end. A file that cannot be written raises `sim.output.files.OutputError` naming it; the
    files written before it stay."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [f for f in FILES if report or f != "report.html"]
    marker = IncompleteMarker(out, names)
    try:
        summary = build_summary(loaded, runs, verdict, interrupted)
        write_atomic(out / "summary.json", summary_bytes(summary))
        marker.wrote("summary.json")
        write_atomic(out / "requests.csv",
                     lambda p: requests_table(runs).to_csv(p, index=False, lineterminator="\n"))
        marker.wrote("requests.csv")
        write_atomic(out / "scenario.yaml", resolved_yaml(loaded))
        marker.wrote("scenario.yaml")
        hw = loaded.hardware
        tracks = standard_tracks(loaded.sc.hardware.num_gpus, hw.gpus_per_bus)
        trace_info: dict[str, Any] = {}
        write_atomic(out / "timeline.json", lambda p: trace_info.update(write_merged_chrome_trace(
            p, {n: r.result.timeline for n, r in runs.items()}, tracks)))
        marker.wrote("timeline.json")
        if report:
            from sim.report import ReportData, write_report

            data = ReportData.from_scenario(loaded, runs, verdict, interrupted)
            write_atomic(out / "report.html", lambda p: write_report(p, data))
            marker.wrote("report.html")
    except BaseException as e:
        marker.stopped("writing stopped: " + (str(e) if isinstance(e, OSError) else "interrupted"))
        raise
    info = {
        "wall_s": wall_s,
        "policies_wall_s": {n: r.result.wall_s for n, r in runs.items()},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": argv if argv is not None else sys.argv,
        "interrupted": interrupted,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "timeline": trace_info,
    }
    try:
        write_atomic(out / "run_info.json", json.dumps(clean(info), indent=2) + "\n")
    except BaseException as e:
        marker.stopped("writing stopped: " + (str(e) if isinstance(e, OSError) else "interrupted"))
        raise
    marker.done()
    return RunFolder(out, summary, trace_info)


def resolved_yaml(loaded: "LoadedScenario") -> str:
    """The scenario as run, re-runnable from the run folder: every setting with its default filled in, the
    seed used, file paths made absolute; what was derived from it (model shape, hardware, SLO in seconds)
    follows as comments."""
    d = loaded.sc.model_dump(mode="json", exclude_none=True)
    d["name"] = loaded.name

    def absolute(p: str) -> str:
        return str(loaded.resolve_path(p).resolve())

    if d["model"].endswith(".json") or "/" in d["model"]:
        d["model"] = absolute(d["model"])
    if "profile" in d["hardware"]:
        d["hardware"]["profile"] = absolute(d["hardware"]["profile"])
    w = d.get("workload") or {}
    if "trace" in w:
        w["trace"]["path"] = absolute(w["trace"]["path"])
    for k in ("prompt", "output"):
        if isinstance(w.get(k), dict) and w[k].get("kind") == "empirical":
            w[k]["trace"] = absolute(w[k]["trace"])
    derived = yaml.safe_dump(clean_yaml(loaded.resolved()["resolved"]), sort_keys=False)
    return (f"# memslo: scenario {loaded.name!r} as run (from {loaded.path}); run it again with\n"
            "#   python -m sim.run scenario.yaml\n"
            + yaml.safe_dump(clean_yaml(d), sort_keys=False)
            + "# derived when the run started:\n" + "".join(f"#   {line}" for line in derived.splitlines(True)))


def clean_yaml(obj: Any) -> Any:
    """YAML-safe copy: numpy scalars to Python (infinities stay, YAML has .inf)."""
    if isinstance(obj, dict):
        return {str(k): clean_yaml(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_yaml(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
