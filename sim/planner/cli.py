"""``python -m sim.planner PLAN.yaml``: the cheapest deployment per planned rate, the cost/throughput Pareto
front and the chosen deployment's burst headroom (see `sim.planner`).

Writes to the output folder: ``configs.csv`` (one row per configuration), ``cheapest.csv`` (per model and
planned rate), ``evaluations.jsonl`` (every simulation, appended as it finishes), ``summary.json`` and
``plan.html``. Exit codes: 0 done, 2 bad input (one line on stderr; also an output folder holding an earlier
plan's files without ``--resume`` or ``--force``), 1 output folder not writable (checked before the start-up),
130 interrupted (Ctrl-C) and 143 terminated (SIGTERM): what is done is written and ``--resume`` continues;
during the start-up (probing which configurations can start) nothing is simulated yet and nothing is
written. Pool workers are stopped with the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sim import __version__
from sim.config.errors import one_line
from sim.config.schema import ScenarioError
from sim.output.files import (OutputError, OutputExists, out_dir_refused, prepare_out_dir, remove_if_empty,
                              safe_name, write_atomic)
from sim.output.interrupts import Interrupts
from sim.planner import report, tables
from sim.planner.capacity_search import CapacitySearch, SearchResult
from sim.planner.config import load_plan
from sim.pools.local import make_executor


def write_outputs(res: SearchResult, out: Path) -> dict:
    """The tables, ``summary.json`` and ``plan.html`` for a (possibly partial) search result; each file
    whole or not at all."""
    configs = tables.configs_frame(res)
    cheapest = tables.cheapest_frame(res)
    summary = tables.summary(res, configs, cheapest)
    write_atomic(out / "configs.csv", lambda p: configs.to_csv(p, index=False))
    write_atomic(out / "cheapest.csv", lambda p: cheapest.to_csv(p, index=False))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    rates = {m.label: m.rates_per_s for m in res.plan.cfg.models}
    write_atomic(out / "plan.html", lambda p: report.write(p, summary, configs, cheapest, rates,
                                                           res.plan.cfg.description))
    return summary


def _progress(quiet: bool):
    """The progress display: a bar on a terminal, a line every 10 s otherwise; the start-up (probing which
    configurations can start) first, then the simulations with an estimate of the time left (from the
    simulations' own pace, not counting the start-up)."""
    if quiet:
        return None, None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    con = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[note]}"), TimeRemainingColumn(),
                   console=con, transient=False, disable=not con.is_terminal)
    probe_task = bar.add_task("start-up: probing", total=None, note="")
    task = bar.add_task("simulations", total=None, note="", visible=False)
    first: list[float] = []  # when the first simulation finished
    last = [time.monotonic()]

    def line(msg: str) -> None:
        now = time.monotonic()
        if not con.is_terminal and now - last[0] > 10:  # a log line now and then instead of a bar
            last[0] = now
            print(msg, file=sys.stderr, flush=True)

    def startup(done: int, total: int) -> None:
        bar.update(probe_task, completed=done, total=total)
        if done == 0 and not con.is_terminal:
            print(f"  start-up: probing whether each of {total} configurations can start", file=sys.stderr,
                  flush=True)
        line(f"  start-up: {done}/{total} configurations probed")
        if done == total:
            bar.update(task, visible=True)

    def update(done: int, failed: int, total: int) -> None:
        bar.update(task, completed=done, total=total, note=f"failed {failed}")
        now = time.monotonic()
        if not first:
            first.append(now)
        left = "" if done < 3 else f", ~{(now - first[0]) / (done - 1) * max(total - done, 0):.0f} s left"
        line(f"  {done}/~{total} simulations, {failed} failed{left}")
    return bar, startup, update


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sim.planner", description=__doc__.split("\n\n")[0])
    ap.add_argument("plan", help="capacity-planning YAML (e.g. scenarios/capacity.yaml)")
    ap.add_argument("--version", action="version", version=f"memslo {__version__}")
    ap.add_argument("--out", metavar="DIR", help="output folder (default: reports/<plan>-plan/)")
    ap.add_argument("--workers", type=int, help="processes, >= 1 (default: all cores; 1 runs in this process)")
    ap.add_argument("--ray", metavar="ADDRESS", help="run the sweep on Ray: 'auto' (a running local cluster, or "
                    "a new local instance), 'local', or a cluster address; needs the [ray] extra")
    ap.add_argument("--resume", action="store_true", help="reuse the results already in the output folder")
    ap.add_argument("--force", action="store_true", help="start over in an output folder that holds an earlier "
                    "plan's files (they are replaced)")
    ap.add_argument("--quiet", action="store_true", help="no progress display")
    return ap


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code. SIGINT and SIGTERM are handled alike at every phase."""
    with Interrupts() as sig:
        try:
            return _main(argv, sig)
        except KeyboardInterrupt as e:  # loading, checking: nothing done yet
            sig.received(e)
            print(f"{sig.word} before the search started: nothing written", file=sys.stderr)
            return sig.code


def _main(argv: list[str] | None, sig: Interrupts) -> int:
    args = _parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print(f"--workers: must be >= 1 (leave it out for all cores), got {args.workers}", file=sys.stderr)
        return 2
    try:
        plan = load_plan(args.plan)
    except ScenarioError as e:
        print(str(e), file=sys.stderr)
        return 2
    for note in plan.notes:
        print(one_line(f"warning: {plan.path.name}: {note}"), file=sys.stderr)
    out = Path(args.out) if args.out else Path("reports") / f"{safe_name(plan.name, 'plan')}-plan"
    try:  # before any work: a bad --out costs nothing
        created = prepare_out_dir(out, force=args.force or args.resume)
    except (OutputExists, OutputError) as e:
        return out_dir_refused(e, "--resume continues the plan there, --force starts it over, or use another --out")
    try:
        ex = make_executor(args.workers, args.ray)
        workers = ex.workers  # a Ray pool connects here, so a bad address fails before work
    except RuntimeError as e:
        if created:
            remove_if_empty(out)
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        sig.received(e)
        if created:
            remove_if_empty(out)
        print(f"{sig.word} while connecting the worker pool: nothing written", file=sys.stderr)
        return sig.code
    bar, startup, update = _progress(args.quiet)
    t0 = time.perf_counter()
    try:
        with ex:
            if bar is not None:
                bar.start()
            try:
                res = CapacitySearch(plan, out, ex, resume=args.resume, progress=update, startup=startup).run()
            finally:
                if bar is not None:
                    bar.stop()
    except ScenarioError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # e.g. while the pool started: nothing simulated
        sig.received(e)
        res = None
    if res is None or not res.started:
        done, total = res.probed if res is not None else (0, 0)
        if created:
            remove_if_empty(out)
        print(f"{sig.word} during the start-up (probing configurations: {done} of {total} done): nothing "
              "simulated, nothing written", file=sys.stderr)
        return sig.code
    try:
        with sig.deferred(f"{out}: finishing the tables first (a second signal stops the writing)"):
            summary = write_outputs(res, out)
    except OutputError as e:
        print(f"{e}; the files written before it are kept (evaluations.jsonl holds every result)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        sig.received(e)
        print(f"{sig.word} while writing the tables: run again with --resume to write them (every result is in "
              f"{out}/evaluations.jsonl)", file=sys.stderr)
        return sig.code
    wall = time.perf_counter() - t0
    if res.interrupted:
        sig.received(KeyboardInterrupt())
        n = summary["evaluations"]
        print(f"{sig.word} after {n} simulation{'' if n == 1 else 's'}: partial results written to {out} (run "
              "again with --resume to continue)", file=sys.stderr)
        return sig.code
    if not args.quiet:
        for m, e in summary["models"].items():
            print(f"{m}: {e['verdict']}")
        print(f"{summary['evaluations']} simulations ({summary['failed_evaluations']} failed) in {wall:.0f} s "
              f"on {workers} worker(s); wrote {out}/plan.html")
    if sig.pending:
        print(f"{sig.word} while writing: the tables in {out} were written completely first", file=sys.stderr)
        return sig.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
