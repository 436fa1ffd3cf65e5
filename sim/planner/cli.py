"""``python -m sim.planner PLAN.yaml``: the cheapest deployment per planned rate, the cost/throughput Pareto
front and the chosen deployment's burst headroom (see `sim.planner`).

Writes to the output folder: ``configs.csv`` (one row per configuration), ``cheapest.csv`` (per model and
planned rate), ``evaluations.jsonl`` (every simulation, appended as it finishes), ``summary.json`` and
``plan.html``. Exit codes: 0 done, 2 bad input (one line on stderr), 1 output folder not writable,
130 interrupted (what is done is written; ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sim.config.schema import ScenarioError
from sim.planner import report, tables
from sim.planner.capacity_search import CapacitySearch, SearchResult
from sim.planner.config import load_plan
from sim.pools.local import make_executor


def write_outputs(res: SearchResult, out: Path) -> dict:
    """The tables, ``summary.json`` and ``plan.html`` for a (possibly partial) search result."""
    configs = tables.configs_frame(res)
    cheapest = tables.cheapest_frame(res)
    summary = tables.summary(res, configs, cheapest)
    configs.to_csv(out / "configs.csv", index=False)
    cheapest.to_csv(out / "cheapest.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    rates = {m.label: m.rates_per_s for m in res.plan.cfg.models}
    report.write(out / "plan.html", summary, configs, cheapest, rates, res.plan.cfg.description)
    return summary


def _progress(quiet: bool):
    if quiet:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    con = Console(stderr=True)
    bar = Progress(TextColumn("simulations"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("failed {task.fields[failed]}"), TextColumn("ETA"), TimeRemainingColumn(),
                   console=con, transient=False, disable=not con.is_terminal)
    task = bar.add_task("sweep", total=None, failed=0)
    t0, last = time.monotonic(), [0.0]

    def update(done: int, failed: int, total: int) -> None:
        bar.update(task, completed=done, total=total, failed=failed)
        now = time.monotonic()
        if not con.is_terminal and now - last[0] > 10:  # a log line now and then instead
            last[0] = now
            eta = (now - t0) / max(done, 1) * max(total - done, 0)
            print(f"  {done}/~{total} simulations, {failed} failed, ~{eta:.0f} s left", file=sys.stderr, flush=True)
    return bar, update


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.planner", description=__doc__.split("\n\n")[0])
    ap.add_argument("plan", help="capacity-planning YAML (e.g. scenarios/capacity.yaml)")
    ap.add_argument("--out", metavar="DIR", help="output folder (default: reports/<plan>-plan/)")
    ap.add_argument("--workers", type=int, help="processes (default: all cores; 1 runs in this process)")
    ap.add_argument("--ray", metavar="ADDRESS", help="run the sweep on Ray: 'auto' (a running local cluster, or "
                    "a new local instance), 'local', or a cluster address; needs the [ray] extra")
    ap.add_argument("--resume", action="store_true", help="reuse the results already in the output folder")
    ap.add_argument("--quiet", action="store_true", help="no progress display")
    args = ap.parse_args(argv)
    try:
        plan = load_plan(args.plan)
    except ScenarioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("reports") / f"{plan.name}-plan"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot write {out}: {e}", file=sys.stderr)
        return 1
    try:
        ex = make_executor(args.workers, args.ray)
        workers = getattr(ex, "workers", 1)  # a Ray pool connects here, so a bad address fails before work
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar, update = _progress(args.quiet)
    t0 = time.perf_counter()
    try:
        with ex:
            if bar is not None:
                bar.start()
            try:
                res = CapacitySearch(plan, out, ex, resume=args.resume, progress=update).run()
            finally:
                if bar is not None:
                    bar.stop()
    except ScenarioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = write_outputs(res, out)
    wall = time.perf_counter() - t0
    if not args.quiet:
        for m, e in summary["models"].items():
            print(f"{m}: {e['verdict']}")
        print(f"{summary['evaluations']} simulations ({summary['failed_evaluations']} failed) in {wall:.0f} s "
              f"on {workers} worker(s); wrote {out}/plan.html")
    if res.interrupted:
        print(f"interrupted: partial results written to {out} (run again with --resume to continue)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
