"""``python -m sim.search SCENARIO.yaml [--out DIR] [--force] [--workers N] [--ray ADDRESS]``: Select-N's offline
search across workloads.

Sweeps static offloading intervals x workloads (Poisson arrival rates x length mixes) x SLO levels, in
parallel on every core (`sim.pools`), and reports for each workload and SLO level the range of intervals
whose SLO attainment reaches the target, with the throughput at each. Writes ``search.csv`` and a
self-contained ``search.html`` (heat maps of SLO attainment and throughput over interval x load).

The scenario supplies model, hardware, cost model, engine and the default length mix; its ``search:``
section the sweep (every key optional)::

    search:
      intervals: [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 32, 33]   # > num_layers: nothing offloaded
      rates_per_s: [0.25, 0.5, 0.75, 1.0]
      mixes:                                                  # default: the scenario's prompt/output
        - {name: short, prompt: {kind: lognormal, median: 256, sigma: 0.6}, output: {kind: fixed, value: 64},
           rates_per_s: [1, 2, 4]}                            # optional: this mix's own rates
      slo_levels: [1.25, 1.5, 2.0]     # x the no-offload latency of slo.reference, or {ttft_s:, tpot_s:}
      duration_s: 60
      target_attainment: 0.99

An SLO level does not change how a static interval runs, only which requests meet it, so each (interval,
workload) is simulated once and scored at every level.

Exit codes as ``python -m sim.run``'s: 0 done, 2 bad input (one line), 1 output folder not writable (checked
before the sweep), 130 Ctrl-C / 143 SIGTERM: the simulations finished so far are written (``search.csv``,
``search.html``); pool workers are stopped with the command.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sim import __version__
from sim.api import PolicySpec, simulate
from sim.config.scenario import Length, LoadedScenario, ScenarioError, load_scenario
from sim.core.units import GiB
from sim.core.workload import Poisson, SyntheticWorkload
from sim.pools.local import SweepExecutor, make_executor


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Mix(_Strict):
    name: str
    prompt: Length
    output: Length
    rates_per_s: list[float] | None = Field(default=None, min_length=1, description="default: search.rates_per_s")


class AbsoluteSLO(_Strict):
    ttft_s: float = Field(gt=0)
    tpot_s: float = Field(gt=0)


class SearchConfig(_Strict):
    intervals: list[int] = Field(default_factory=list, description="default: every efficient interval")
    rates_per_s: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0], min_length=1)
    mixes: list[Mix] = Field(default_factory=list)
    slo_levels: list[Union[float, AbsoluteSLO]] = Field(default_factory=lambda: [1.25, 1.5, 2.0], min_length=1)
    duration_s: float = Field(default=60.0, gt=0)
    target_attainment: float = Field(default=0.99, gt=0, le=1)
    seed: int | None = None


def _config(sc: LoadedScenario) -> SearchConfig:
    try:
        cfg = SearchConfig.model_validate(sc.sc.search or {})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"] if not (isinstance(x, str) and "[" in x))
        raise ScenarioError(f"{sc.path.name}: search.{where}: {err['msg']}") from None
    L = sc.model.num_layers
    bad = [i for i in cfg.intervals if i < 1]
    if bad:
        raise ScenarioError(f"{sc.path.name}: search.intervals: must be >= 1 (> {L} = nothing offloaded), got {bad}")
    if not cfg.intervals:
        from sim.policies.selectn.performance_record import efficient_intervals
        cfg.intervals = list(efficient_intervals(L))
    if cfg.mixes == [] and (sc.sc.workload is None or sc.sc.workload.prompt is None):
        raise ScenarioError(f"{sc.path.name}: search.mixes: needed (the scenario's workload has no prompt/output)")
    return cfg


def _levels(sc: LoadedScenario, cfg: SearchConfig) -> list[tuple[str, float, float]]:
    ttft_ref, tpot_ref = sc.reference_latency()
    out = []
    for lv in cfg.slo_levels:
        if isinstance(lv, AbsoluteSLO):
            out.append((f"ttft {lv.ttft_s:g}s tpot {lv.tpot_s * 1e3:g}ms", lv.ttft_s, lv.tpot_s))
        else:
            out.append((f"{lv:g}x", lv * ttft_ref, lv * tpot_ref))
    return out


def run_point(item: dict[str, Any]) -> list[dict[str, Any]]:
    """One static interval on one workload, scored at every SLO level (a top-level function: picklable)."""
    L = item["model"].num_layers
    i = item["interval"]
    spec = PolicySpec("none") if i > L else PolicySpec("selectn-static", {"interval": i})
    run = simulate(item["model"], item["hw"], item["requests"], [spec], cost=item["cost"], engine=item["engine"],
                   timeline_max_spans=0, detail_iterations=0, sample_interval_s=1e9)[spec.label]
    base = {"mix": item["mix"], "rate_per_s": item["rate"], "interval": i,
            "offloaded_layers": 0 if i > L else L // i,
            "host_weight_gib": (0 if i > L else L // i) * item["model"].weight_bytes_per_layer / GiB}
    if not run.ok:
        return [{**base, "slo": name, "ttft_slo_s": t, "tpot_slo_s": p, "attainment": 0.0,
                 "throughput_tokens_per_s": 0.0, "ttft_p99_s": math.nan, "tpot_p99_s": math.nan,
                 "finished": 0, "requests": len(item["requests"]), "error": run.summary["error"]}
                for name, t, p in item["levels"]]
    df, s = run.requests, run.summary
    fin = (df.state == "finished").to_numpy()
    ttft, tpot = df.ttft_s.to_numpy(), df.tpot_mean_s.to_numpy()
    rows = []
    for name, t, p in item["levels"]:
        ok = fin & (np.nan_to_num(ttft, nan=np.inf) <= t) & (np.nan_to_num(tpot, nan=np.inf) <= p)
        rows.append({**base, "slo": name, "ttft_slo_s": t, "tpot_slo_s": p,
                     "attainment": float(ok.mean()) if len(ok) else 0.0,
                     "throughput_tokens_per_s": s["throughput_tokens_per_s"],
                     "ttft_p99_s": s["ttft_s"]["p99"], "tpot_p99_s": s["tpot_s"]["p99"],
                     "finished": int(fin.sum()), "requests": len(df), "error": ""})
    return rows


def build_items(sc: LoadedScenario, cfg: SearchConfig) -> list[dict[str, Any]]:
    mixes = [(m.name, sc.length_dist(m.prompt, "prompt", f"search.mixes.{k}.prompt"),
              sc.length_dist(m.output, "output", f"search.mixes.{k}.output"), m.rates_per_s or cfg.rates_per_s)
             for k, m in enumerate(cfg.mixes)]
    if not mixes:
        w = sc.sc.workload
        mixes = [("scenario", sc.length_dist(w.prompt, "prompt", "workload.prompt"),
                  sc.length_dist(w.output, "output", "workload.output"), cfg.rates_per_s)]
    seed = sc.sc.seed if cfg.seed is None else cfg.seed
    levels = _levels(sc, cfg)
    items = []
    for name, prompt, output, rates in mixes:
        for rate in rates:
            reqs = SyntheticWorkload(Poisson(rate), prompt, output, cfg.duration_s).generate(seed)
            for i in cfg.intervals:
                items.append({"model": sc.model, "hw": sc.hardware, "cost": sc.cost, "engine": sc.engine,
                              "requests": reqs, "interval": i, "mix": name, "rate": rate, "levels": levels})
    return items


def search(sc: LoadedScenario, executor: SweepExecutor | None = None,
           rows: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """Run the sweep; ``rows`` (if given) collects the results as they come, so that a caller interrupted
    (KeyboardInterrupt) keeps what was done."""
    cfg = _config(sc)
    items = build_items(sc, cfg)
    ex = executor or make_executor()
    rows = [] if rows is None else rows
    if hasattr(ex, "__enter__"):
        with ex:  # type: ignore[attr-defined]
            for res in ex.map(run_point, items):
                rows.extend(res)
    else:
        for res in ex.map(run_point, items):
            rows.extend(res)
    df = pd.DataFrame(rows)
    df.attrs["target_attainment"] = cfg.target_attainment
    return df


def summarize(df: pd.DataFrame, L: int, target: float) -> pd.DataFrame:
    """Per workload and SLO level: the intervals meeting the target, their throughput, and the one that
    keeps the most weights in host memory."""
    out = []
    for (mix, rate, slo), g in df.groupby(["mix", "rate_per_s", "slo"], sort=False):
        ok = g[g.attainment >= target].sort_values("interval")
        lab = lambda i: "none" if i > L else str(int(i))  # noqa: E731
        out.append({"mix": mix, "rate_per_s": rate, "slo": slo,
                    "meeting": ", ".join(f"{lab(r.interval)} ({r.throughput_tokens_per_s:.0f} tok/s)"
                                         for r in ok.itertuples()) or "none meets it",
                    "range": f"{lab(ok.interval.min())}..{lab(ok.interval.max())}" if len(ok) else "-",
                    "most_host_memory": lab(ok.interval.min()) if len(ok) else "-"})
    return pd.DataFrame(out)


def write_html(df: pd.DataFrame, path: Path, title: str, L: int) -> Path:
    """Heat maps over interval x load: SLO attainment per level, and throughput, one block per mix."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.subplots import make_subplots

    parts = [f"<h1>{title}</h1><p>Rows: Poisson arrival rate; columns: static offloading interval "
             f"(&gt; {L}: nothing offloaded; smaller interval = more weights in host memory).</p>"]
    first = True
    for mix, g in df.groupby("mix", sort=False):
        slos = list(dict.fromkeys(g.slo))
        ivs = sorted(g.interval.unique())
        rates = sorted(g.rate_per_s.unique())
        xs = ["none" if i > L else str(int(i)) for i in ivs]
        ys = [f"{r:g}/s" for r in rates]
        fig = make_subplots(rows=1, cols=len(slos) + 1, horizontal_spacing=0.05,
                            subplot_titles=[f"SLO attainment, SLO {s}" for s in slos] + ["throughput (tokens/s)"])
        for c, s in enumerate(slos, start=1):
            z = g[g.slo == s].pivot_table(index="rate_per_s", columns="interval", values="attainment")
            z = z.reindex(index=rates, columns=ivs)
            fig.add_trace(go.Heatmap(z=z.values, x=xs, y=ys, zmin=0, zmax=1, colorscale="RdYlGn",
                                     showscale=c == 1, colorbar={"title": "attained", "x": -0.08},
                                     text=np.round(z.values, 2), texttemplate="%{text}",
                                     hovertemplate="i=%{x}, %{y}: %{z:.1%}<extra></extra>"), row=1, col=c)
        z = g[g.slo == slos[0]].pivot_table(index="rate_per_s", columns="interval", values="throughput_tokens_per_s")
        z = z.reindex(index=rates, columns=ivs)
        fig.add_trace(go.Heatmap(z=z.values, x=xs, y=ys, colorscale="Viridis", colorbar={"title": "tok/s"},
                                 text=np.round(z.values, 0), texttemplate="%{text}",
                                 hovertemplate="i=%{x}, %{y}: %{z:.0f} tok/s<extra></extra>"),
                      row=1, col=len(slos) + 1)
        fig.update_xaxes(title_text="interval", type="category")
        fig.update_yaxes(title_text="load", type="category", col=1)
        fig.update_layout(title=f"mix: {mix}", height=380, width=360 * (len(slos) + 1), template="plotly_white")
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=first))
        first = False
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title></head><body>"
                    + "\n".join(parts) + "</body></html>")
    return path


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code. SIGINT and SIGTERM are handled alike at every phase."""
    from sim.output.interrupts import Interrupts

    with Interrupts() as sig:
        try:
            return _main(argv, sig)
        except KeyboardInterrupt as e:  # loading, checking, building the workloads: nothing simulated
            sig.received(e)
            print(f"{sig.word} before the sweep started: nothing written", file=sys.stderr)
            return sig.code


def _main(argv: list[str] | None, sig: Any) -> int:
    from sim.output.files import (OutputError, OutputExists, out_dir_refused, prepare_out_dir, remove_if_empty,
                                  write_atomic)
    from sim.output.run_folder import default_out_dir

    ap = argparse.ArgumentParser(prog="python -m sim.search", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", help="scenario YAML with a search: section (see scenarios/selectn_search.yaml)")
    ap.add_argument("--version", action="version", version=f"memslo {__version__}")
    ap.add_argument("--out", metavar="DIR", help="output folder (default: reports/search-<scenario>-<time>/); must "
                    "be empty or new unless --force")
    ap.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing its files")
    ap.add_argument("--workers", type=int, help="processes, >= 1 (default: all cores; 1 runs serially); with --ray "
                    "local: the local instance's CPUs, with a cluster: at most this many at once")
    ap.add_argument("--ray", metavar="ADDRESS", help="run the sweep on Ray: auto (a running local cluster, else a "
                    "new local instance), local (a new local instance) or a cluster address (HOST:6379, "
                    "ray://HOST:10001); needs pip install 'memslo[ray]'")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.workers is not None and args.workers < 1:
        print(f"--workers: must be >= 1 (leave it out for all cores), got {args.workers}", file=sys.stderr)
        return 2
    try:
        sc = load_scenario(args.scenario)
        cfg = _config(sc)
    except ScenarioError as e:
        print(e, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_out_dir(f"search-{sc.name}")
    try:  # before the sweep: a bad --out costs no work
        created = prepare_out_dir(out, force=args.force)
    except (OutputExists, OutputError) as e:
        return out_dir_refused(e)
    try:
        ex = make_executor(args.workers, ray=args.ray)
        workers = ex.workers  # a Ray pool connects here, so a missing Ray or a bad address fails before the work
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    loads = sum(len(m.rates_per_s or cfg.rates_per_s) for m in cfg.mixes) or len(cfg.rates_per_s)
    n = len(cfg.intervals) * loads
    where = f" on Ray ({args.ray})" if args.ray else ""
    print(f"{sc.name}: {len(cfg.intervals)} intervals x {loads} loads x "
          f"{len(cfg.slo_levels)} SLO levels = {n} simulations on {workers} worker(s){where}",
          file=sys.stderr)
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        df = search(sc, ex, rows)
    except KeyboardInterrupt as e:
        sig.received(e)
        interrupted = True
        df = pd.DataFrame(rows)
    if df.empty:
        if created:
            remove_if_empty(out)
        print(f"{sig.word} before any simulation finished: nothing written", file=sys.stderr)
        return sig.code
    L = sc.model.num_layers
    title = f"Select-N offline search: {sc.name} ({sc.model.name} on {sc.hardware.name})" + \
        (f" -- interrupted, {len(df) // len(cfg.slo_levels)} of {n} simulations" if interrupted else "")
    try:
        with sig.deferred(f"{out}: finishing search.csv and search.html first (a second signal stops them)"):
            write_atomic(out / "search.csv", lambda p: df.to_csv(p, index=False))
            write_atomic(out / "search.html", lambda p: write_html(df, p, title, L))
    except OutputError as e:
        print(f"{e}; the files written before it are kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        sig.received(e)
        print(f"{sig.word} while writing the results in {out}", file=sys.stderr)
        return sig.code
    summ = summarize(df, L, cfg.target_attainment)
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print(summ.to_string(index=False))
    wall = time.perf_counter() - t0
    if interrupted:
        print(f"{sig.word} after {len(df) // len(cfg.slo_levels)} of {n} simulations: partial results written to "
              f"{out}", file=sys.stderr)
        return sig.code
    print(f"\nwrote {out / 'search.csv'} and {out / 'search.html'} in {wall:.1f} s")
    return sig.code if sig.pending else 0


if __name__ == "__main__":
    raise SystemExit(main())
