"""``python -m sim.record SCENARIO.yaml``: build Select-N's performance record for a scenario's model(s) and
hardware, print i_min/i_max per grid point, and save it.

    python -m sim.record scenarios/selectn_a_decode.yaml                      # from the scenario's cost model
    python -m sim.record S.yaml --layer-times DIR/layer_times.csv --copy-bandwidth DIR/copy_bandwidth.csv
    python -m sim.record S.yaml --out record.json --slo-x 2.0 --slo-levels 1.25,1.5,2,3

The staging of an offloaded layer (`staging_chunks`, `staging_slots`) is the first ``selectn`` entry's of the
scenario's ``compare`` list (whole layers if it has none). Exit codes: 0 done, 2 bad input (one line on
stderr), 1 the record file cannot be written, 130 Ctrl-C / 143 SIGTERM (records saved so far are kept; a
record is saved whole or not at all).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from sim import __version__
from sim.config.scenario import ScenarioError, load_scenario
from sim.output.files import OutputError, safe_name, write_atomic
from sim.output.interrupts import Interrupts
from sim.policies.selectn.performance_record import DEFAULT_SLO_LEVELS, PerformanceRecord


def table(rec: PerformanceRecord, phase: str, slo_x: float, max_seq: int | None = None) -> pd.DataFrame:
    """Rows: batch size; columns: sequence length; cells ``i_min-i_max`` (``-``: no interval meets the SLO
    and fits; ``none``: nothing needs to be offloaded and nothing may be)."""
    L = rec.num_layers
    bs, ss = rec.grid[phase]
    ss = [s for s in ss if max_seq is None or s <= max_seq]

    def cell(b: int, s: int) -> str:
        e = rec.entries.get((phase, b, s))
        if e is None:
            return ""
        lo = e.i_min.get(slo_x)
        hi = e.i_max
        if lo is None or hi == 0 or lo > hi:
            return "-"
        fmt = lambda i: "none" if i > L else str(i)  # noqa: E731
        return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"

    return pd.DataFrame([[cell(b, s) for s in ss] for b in bs], index=pd.Index(bs, name="batch"),
                        columns=pd.Index(ss, name=f"{phase} seq"))


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code. SIGINT and SIGTERM are handled alike."""
    with Interrupts() as sig:
        try:
            return _main(argv)
        except KeyboardInterrupt as e:
            sig.received(e)
            print(f"{sig.word}: the records saved before it are kept", file=sys.stderr)
            return sig.code


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ScenarioError(f"--slo-levels: must be numbers separated by commas, got {text[:40]!r}") from None
    if not levels or len(levels) > 100 or not all(math.isfinite(x) and 1 <= x <= 1e6 for x in levels):
        raise ScenarioError(f"--slo-levels: must be 1 to 100 finite numbers in [1, 1000000], got {text[:40]!r}")
    return levels


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.record", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", help="scenario YAML: its model(s), hardware, cost model and engine")
    ap.add_argument("--version", action="version", version=f"memslo {__version__}")
    ap.add_argument("--out", help="record file (default: record-<model>-<gpu>.json in the working directory)")
    ap.add_argument("--slo-levels", default=",".join(str(x) for x in DEFAULT_SLO_LEVELS),
                    help="SLO levels as multiples of the no-offload time of each grid point (comma-separated)")
    ap.add_argument("--slo-x", type=float, default=1.5, help="which level the printed tables show")
    ap.add_argument("--layer-times", help="the profiler's layer_times.csv (measured record)")
    ap.add_argument("--copy-bandwidth", help="the profiler's copy_bandwidth.csv (with --layer-times)")
    args = ap.parse_args(argv)
    try:
        sc = load_scenario(args.scenario)
        levels = _levels(args.slo_levels)
        if not (math.isfinite(args.slo_x) and 1 <= args.slo_x <= 1e6):
            raise ScenarioError(f"--slo-x: must be a finite number in [1, 1000000], got {args.slo_x}")
    except ScenarioError as e:
        print(str(e), file=sys.stderr)
        return 2
    if args.slo_x not in levels:
        levels = tuple(sorted(set(levels) | {args.slo_x}))
    models = sc.gpu_models or [sc.model]
    sn = next((c.params for c in sc.sc.compare if c.policy == "selectn"), {})
    staging = {"staging_chunks": sn.get("staging_chunks", 1), "staging_slots": sn.get("staging_slots", 2)}
    if not all(isinstance(v, int) and v >= 1 for v in staging.values()):
        print(f"{Path(args.scenario).name}: compare (selectn).params: staging_chunks and staging_slots must be "
              f"integers >= 1, got {staging}", file=sys.stderr)
        return 2
    seen = set()
    for model in models:
        if model.name in seen:
            continue
        seen.add(model.name)
        try:
            if args.layer_times:
                rec = PerformanceRecord.from_measurements(model, sc.hardware, args.layer_times, args.copy_bandwidth,
                                                          sc.engine, slo_levels=levels, **staging)
            else:
                cost = sc.cost if model is sc.model else None
                if cost is None:
                    from sim.cost.roofline import RooflineCostModel
                    cost = RooflineCostModel(model, sc.hardware)
                rec = PerformanceRecord.build(model, sc.hardware, cost, sc.engine, slo_levels=levels, **staging)
        except (ValueError, FileNotFoundError) as e:
            print(f"{Path(args.scenario).name}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}",
                  file=sys.stderr)
            return 2
        mname, gname = safe_name(model.name, "model"), safe_name(sc.hardware.name, "gpu")  # one file name each
        out = Path(args.out) if args.out and len(models) == 1 else Path(
            f"record-{mname}-{gname}.json" if not args.out else
            Path(args.out).with_name(f"{Path(args.out).stem}-{mname}{Path(args.out).suffix or '.json'}"))
        try:
            write_atomic(out, rec.save)
        except OutputError as e:
            print(str(e), file=sys.stderr)
            return 1
        print(rec.describe())
        print(f"i_min-i_max at SLO = {args.slo_x}x the no-offload time of each point "
              f"(interval {rec.num_layers + 1} = none offloaded; '-' = infeasible)")
        with pd.option_context("display.width", 250, "display.max_columns", 40):
            for phase in ("prefill", "decode"):
                print(table(rec, phase, args.slo_x, model.max_position).to_string())
                print()
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
