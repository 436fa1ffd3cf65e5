"""``python -m sim.run SCENARIO.yaml [--out DIR] [--force] [--seed N] [--quiet] [--trace PATH] [--max-spans N]``

Runs every policy of the scenario's ``compare:`` list on the same requests, shows progress, prints a short
comparison table and writes the run folder (see `sim.output.run_folder`). Exit codes: 0 done (a policy that
could not run is reported and the others still run); 2 bad input (one line on stderr: ``file: field:
problem``; also ``--out`` into a non-empty folder without ``--force``); 1 the output folder could not be
written (checked before simulating); 130 interrupted (Ctrl-C) and 143 terminated (SIGTERM): what was
simulated is written, or ``nothing written`` if nothing was simulated yet. A signal while the folder is
being written lets the writing finish; a second one stops it and leaves the folder marked ``INCOMPLETE``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

from sim import __version__
from sim.output.interrupts import Interrupts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim.run",
                                description="Simulate a scenario's compared policies and write a run folder.")
    p.add_argument("scenario", help="scenario YAML file (see scenarios/)")
    p.add_argument("--version", action="version", version=f"memslo {__version__}")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/<scenario>-<time>/); must be "
                   "empty or new unless --force")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing its files")
    p.add_argument("--seed", type=int, metavar="N", help="replace the scenario's seed")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--trace", metavar="PATH", help="replace workload.trace.path (relative to the working directory)")
    p.add_argument("--max-spans", type=int, metavar="N",
                   help="timeline spans kept per policy (replaces output.timeline_max_spans)")
    p.add_argument("--no-report", action="store_true", help="skip report.html (faster; the rest is the same)")
    return p


class ProgressDisplay:
    """A rich progress bar per policy on a terminal, one line per policy otherwise, nothing when quiet."""

    def __init__(self, mode: str, names: list[str], total: int, horizon_s: float) -> None:
        self.mode, self.names, self.total, self.horizon_s = mode, names, total, horizon_s
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> "ProgressDisplay":
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("requests \u00b7 {task.fields[sim]}"), TimeElapsedColumn(),
                                console=Console(stderr=True))
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _line(self, msg: str) -> None:
        if self.mode == "lines":
            print(msg, file=sys.stderr, flush=True)

    def start(self, label: str) -> Callable[[float, int, int], None]:
        """Called by `simulate` when a policy starts; returns its progress callback."""
        k = self.names.index(label) + 1 if label in self.names else 0
        self._line(f"[{k}/{len(self.names)}] {label}: simulating {self.total} requests")
        if self.bar is not None:
            self.task = self.bar.add_task(label, total=self.total, sim="")

        def update(now: float, done: int, total: int) -> None:
            if self.bar is not None:
                self.bar.update(self.task, completed=done, sim=f"{now:,.0f} s simulated "
                                f"(arrivals end at {self.horizon_s:,.0f} s)")
        return update

    def finished(self, label: str, run: Any) -> None:
        if run.result.error is not None:
            self._line(f"{label}: could not run")
        elif self.bar is not None and self.task is not None:
            res = run.result
            if res.interrupted:
                done = int(run.summary.get("finished", 0))
                self.bar.update(self.task, completed=done, sim=f"interrupted at {res.simulated_s:,.0f} s simulated")
            else:
                self.bar.update(self.task, completed=len(run.requests), sim=f"{res.simulated_s:,.0f} s simulated")
            self.task = None
        else:
            state = "interrupted" if run.result.interrupted else "done"
            self._line(f"{label}: {state} ({run.result.wall_s:.1f} s)")


def _fmt(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x * scale, fmt)


def print_table(runs: dict[str, Any], not_run: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False, header_style="bold")
    t.add_column("policy", no_wrap=True, min_width=max([6, *map(len, runs), *map(len, not_run)]))
    for col in ("SLO attain.", "tokens/s", "p99 TTFT (s)", "p99 TPOT (ms)", "host mem (GiB)", "finished",
                "rejected"):
        t.add_column(col, justify="right")
    for name, r in runs.items():
        s = r.summary
        if s.get("error") is not None:
            t.add_row(name, "could not run", "", "", "", "", "0", str(s["requests"]))
            continue
        t.add_row(name, _fmt(s["slo_attainment"], ".1%"), _fmt(s["throughput_tokens_per_s"], ",.0f"),
                  _fmt(s["ttft_s"]["p99"], ".3g"), _fmt(s["tpot_s"]["p99"], ".0f", 1e3),
                  _fmt(s["host_memory_peak_bytes"], ".1f", 2**-30), str(s["finished"]), str(s["rejected"]))
    for name in not_run:
        t.add_row(name, "not run", "", "", "", "", "", "")
    console = Console(width=None if sys.stdout.isatty() else 120, highlight=False)
    console.print(t)


def _all_failed(path: Path, loaded: Any, runs: dict[str, Any]) -> str:
    from sim.core.units import GiB
    from sim.engine.memory import EngineConfig, workspace_bytes

    names = [c.name for c in loaded.sc.compare]
    errs = [(names.index(n), n, r.summary["error"]) for n, r in runs.items()]
    k, name, err = errs[0]
    if all("does not fit" in e for _, _, e in errs):
        usable = loaded.hardware.gpu_memory_bytes * loaded.engine.gpu_memory_utilization
        ws, ws0 = workspace_bytes(loaded.model, loaded.engine), workspace_bytes(loaded.model, EngineConfig())
        if ws > ws0 and loaded.model.total_weight_bytes + ws0 < usable <= loaded.model.total_weight_bytes + ws:
            # the model fits with the default engine: the engine's settings are what does not fit
            e = loaded.engine
            return (f"{path.name}: engine: max_num_seqs {e.max_num_seqs} and max_num_batched_tokens "
                    f"{e.max_num_batched_tokens} need {ws / GiB:.1f} GiB of activation workspace, more than "
                    f"{loaded.hardware.name} has beside the weights ({usable / GiB:.1f} GiB usable); lower them")
        return f"{path.name}: model: {loaded.model.name} cannot run under any compared policy ({name}: {err})"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{path.name}: compare.{k} ({name}): could not run: {err}{more}"


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code. SIGINT and SIGTERM are handled alike while it runs."""
    with Interrupts() as sig:
        try:
            return _main(argv, sig)
        except KeyboardInterrupt as e:  # before the simulation started (loading, checking): nothing to keep
            sig.received(e)
            print(f"{sig.word} before the simulation started: nothing written", file=sys.stderr)
            return sig.code


def _main(argv: list[str] | None, sig: Interrupts) -> int:
    args = _parser().parse_args(argv)
    from sim.config.scenario import ScenarioError, load_scenario
    from sim.output.files import OutputError, OutputExists, out_dir_refused, prepare_out_dir, remove_if_empty

    path = Path(args.scenario)
    try:
        loaded = load_scenario(path, seed=args.seed, trace=args.trace)
        if loaded.requests is None:
            raise ScenarioError(f"{path.name}: workload: required by sim.run (this scenario has only experiments)")
        if len(loaded.requests) == 0:
            raise ScenarioError(f"{path.name}: workload: produces no requests")
        if args.max_spans is not None and not 0 <= args.max_spans <= 10**9:
            raise ScenarioError(f"--max-spans: must be in [0, 1000000000], got {args.max_spans}")
    except ScenarioError as e:
        print(str(e), file=sys.stderr)
        return 2
    from sim.config.errors import one_line

    for note in loaded.notes:
        print(one_line(f"warning: {path.name}: {note}"), file=sys.stderr)
    from sim.output.run_folder import default_out_dir

    out = Path(args.out) if args.out else default_out_dir(loaded.name)
    try:  # before simulating: a bad --out costs no work
        created = prepare_out_dir(out, force=args.force)
    except (OutputExists, OutputError) as e:
        return out_dir_refused(e)
    specs = loaded.policies()
    names = [s.label for s in specs]
    kw: dict[str, Any] = {}
    if args.max_spans is not None:
        kw["timeline_max_spans"] = args.max_spans
    mode = "off" if args.quiet else ("bar" if sys.stderr.isatty() else "lines")
    horizon = loaded.sc.until_s or float(loaded.requests.arrival_s[-1])
    runs: dict[str, Any] = {}
    interrupted = False
    t0 = time.perf_counter()
    try:
        with ProgressDisplay(mode, names, len(loaded.requests), horizon) as display:
            for k, spec in enumerate(specs):
                run = loaded.simulate([spec], progress=display.start if mode != "off" else None, **kw)[spec.label]
                runs[spec.label] = run
                display.finished(spec.label, run)
                if run.result.interrupted:
                    interrupted = True
                    break
    except KeyboardInterrupt as e:
        sig.received(e)
        interrupted = True
    wall = time.perf_counter() - t0
    if interrupted and not runs:
        if created:
            remove_if_empty(out)
        print(f"{sig.word} before any policy was simulated: nothing written", file=sys.stderr)
        return sig.code
    failed = [n for n, r in runs.items() if r.summary.get("error") is not None]
    if runs and not interrupted and len(failed) == len(runs):
        print(one_line(_all_failed(path, loaded, runs)), file=sys.stderr)
        if created:
            remove_if_empty(out)
        return 2
    for n in failed:
        k = names.index(n)
        print(one_line(f"warning: {path.name}: compare.{k} ({n}): could not run: {runs[n].summary['error']}"),
              file=sys.stderr)
    return _write(args, argv, sig, loaded, runs, names, out, interrupted, wall)


def _write(args: argparse.Namespace, argv: list[str] | None, sig: Interrupts, loaded: Any, runs: dict[str, Any],
           names: list[str], out: Path, interrupted: bool, wall: float) -> int:
    """Write the run folder (a signal now lets it finish; a second one stops it), then print the results."""
    from sim.output.files import OutputError
    from sim.output.run_folder import write_run
    from sim.report.verdict import verdict

    about = [loaded.overflow.sentence(len(loaded.requests))] if loaded.overflow else []
    lines = verdict({n: r.summary for n, r in runs.items()}, loaded.slo.ttft_s, loaded.slo.tpot_s, interrupted,
                    about)
    try:
        with sig.deferred(f"{out}: finishing the run folder first (a second signal stops the writing)"):
            write_run(out, loaded, runs, lines, interrupted=interrupted, wall_s=wall, report=not args.no_report,
                      argv=["python", "-m", "sim.run", *(argv if argv is not None else sys.argv[1:])])
    except OutputError as e:
        print(f"{e}; the files written before it are kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        sig.received(e)
        print(f"{sig.word} while writing: {out} is incomplete (see {out}/INCOMPLETE)", file=sys.stderr)
        return sig.code
    print_table(runs, [n for n in names if n not in runs])
    print()
    for line in lines:
        print(line)
    if interrupted:
        print(f"{sig.word}: partial results written to {out}", file=sys.stderr)
        return sig.code
    if sig.pending:  # the simulation had finished: the folder is complete
        print(f"{sig.word} while writing: {out} was written completely first", file=sys.stderr)
        return sig.code
    files = "scenario.yaml, summary.json, requests.csv, timeline.json, " + \
        ("" if args.no_report else "report.html, ") + "run_info.json"
    print(f"\nwrote {out}/ ({files}); simulating took {wall:.1f} s")
    return 0


def cli() -> None:
    """Entry point: `main` with a quiet exit when stdout is closed early (``| head``)."""
    import os

    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    cli()
