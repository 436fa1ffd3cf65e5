"""End-to-end fixed-batch runs: ``python -m backend.run SCENARIO.yaml [--out DIR]``.

Runs the scenario's ``experiments:`` (batch size, sequence length, plans; `sim.config.fixed_batch`) on the device
with `OffloadExecutor` and writes the simulator's outputs for them, so `calibration/verify.py` can compare:

- ``iterations.csv``: one `FixedBatchRow` per (experiment, plan) with ``source="backend"``;
  ``iteration_s`` and its p10/p90 over the timed repeats, and the medians of ``layers_s``, ``compute_s``
  (sum of layer spans), ``copy_s`` (sum of copy spans) over the same repeats; ``copy_bytes`` per iteration.
- ``timeline.json``: Chrome trace (`Timeline.write_chrome_trace`) of one representative repeat (the one
  closest to the median) per (experiment, plan), laid one after another in time, labelled
  ``experiment|plan``; resources use the simulator's names (``gpu0/compute``, ``gpu0/h2d``) on every device.
- ``provenance.json``: device, GPU, driver, torch/CUDA versions, dtype, date, command line, model.

Plans are expanded from the scenario's model as written (its dtype), exactly as the simulator does, so
both sides run the same plans. Each (experiment, plan) starts with ``--warmup`` untimed iterations, which
also absorb the promotions a plan change causes. A prefill repeat feeds fresh random prompts into an empty
cache; a decode repeat feeds fresh random tokens after ``seq_len - 1`` tokens of random context (the
context does not grow between repeats, so every repeat has the same shape).

Exit codes (``cli``): 0 done, 2 bad input (one line on stderr; also ``--out`` into a non-empty folder
without ``--force``), 1 the output folder cannot be written (checked before the model is built), 130 Ctrl-C
and 143 SIGTERM: the (experiment, plan) pairs measured so far are written, ``provenance.json`` says
``"interrupted": true``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from sim import __version__
from sim.config.fixed_batch import FixedBatchExperiment, FixedBatchRow, write_rows
from sim.config.scenario import ScenarioError, load_experiment_file
from sim.core.timeline import Timeline
from sim.output.files import OutputError, OutputExists, out_dir_refused, prepare_out_dir, remove_if_empty, write_atomic
from sim.output.interrupts import Interrupts

from .executor import IterationRecord, OffloadExecutor
from .kv import PaddedKVCache, StepInputs
from .timing import command_line, parse_dtype, provenance, resolve_device, summarize
from .weights import ModelWeights

GAP_S = 1e-3  # between laid-out iterations on the timeline, as the simulator does


def run_experiment(ex: OffloadExecutor, exp: FixedBatchExperiment, plans: list, repeats: int, warmup: int,
                   gen: torch.Generator, tl: Timeline, t0: float) -> tuple[list[FixedBatchRow], float]:
    w = ex.w
    B, T = exp.batch_size, exp.seq_len
    kv = PaddedKVCache(w.spec, B, T, w.device, w.dtype)
    if exp.phase == "decode":
        kv.fill_random_(gen)
    new, start = (T, 0) if exp.phase == "prefill" else (1, T - 1)

    def inputs() -> StepInputs:
        tok = torch.randint(0, w.spec.vocab_size, (B, new), generator=gen, device=w.device)
        return StepInputs.build(tok, [start] * B, w.device)

    rows = []
    for plan in plans:
        ex.set_plan(plan)
        for _ in range(warmup):
            ex.step(kv, inputs())
        recs: list[IterationRecord] = []
        for _ in range(repeats):
            _, rec = ex.step(kv, inputs())
            assert rec is not None and not rec.promoted
            recs.append(rec)
        dur = [r.duration_s for r in recs]
        med, p10, p90 = summarize(dur)
        rep = min(recs, key=lambda r: abs(r.duration_s - med))
        label = f"{exp.name}|{plan.name}"
        rep.to_timeline(tl, t0, gpu=0, label=label)
        t0 += rep.end_s + GAP_S
        rows.append(FixedBatchRow(
            source="backend", experiment=exp.name, plan=plan.name, interval=plan.interval or 0,
            phase=exp.phase, batch_size=B, seq_len=T, offloaded_layers=plan.num_offloaded,
            iteration_s=med, layers_s=summarize([r.layers_s for r in recs])[0],
            compute_s=summarize([r.compute_s for r in recs])[0], copy_s=summarize([r.copy_s for r in recs])[0],
            copy_bytes=rep.copy_bytes, repeats=repeats, iteration_p10_s=p10, iteration_p90_s=p90))
        print(f"{label:40s} {med * 1e3:9.3f} ms (p10 {p10 * 1e3:.3f}, p90 {p90 * 1e3:.3f})", file=sys.stderr)
    return rows, t0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m backend.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", type=Path, help="scenario YAML with an experiments: list (e.g. "
                    "scenarios/backend_smoke.yaml)")
    ap.add_argument("--version", action="version", version=f"memslo {__version__}")
    ap.add_argument("--out", type=Path, default=None, help="default: reports/backend-<scenario>-<time>/; must be "
                    "empty or new unless --force")
    ap.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing its files")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    ap.add_argument("--dtype", default=None, help="bf16 (GPU default), fp16 or fp32 (CPU default)")
    ap.add_argument("--layers", type=int, default=None, help="override the model's number of layers")
    ap.add_argument("--repeats", type=int, default=None, help="override every experiment's repeats")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations per plan (>= 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uva-impl", default="auto", choices=["auto", "zero_copy", "copy"])
    a = ap.parse_args(argv)
    if a.warmup < 1:
        ap.error("--warmup must be >= 1 (the first iteration after a plan change carries its promotions)")
    return a


def main(argv: list[str] | None = None, sig: Interrupts | None = None) -> Path:
    """Run the experiments and write the folder; returns it. Raises `ScenarioError` (bad scenario),
    `OutputExists` / `OutputError` (the folder). A KeyboardInterrupt (Ctrl-C, or SIGTERM under `cli`) stops
    the measurements: what was measured is written, marked interrupted (nothing measured: nothing written,
    and the KeyboardInterrupt propagates)."""
    a = parse_args(argv)
    model, exps = load_experiment_file(a.scenario)
    if a.layers is not None:
        if not 1 <= a.layers <= 10_000:
            raise ScenarioError(f"--layers: must be in [1, 10000], got {a.layers}")
        model = dataclasses.replace(model, num_layers=a.layers)
    if a.repeats is not None and not 1 <= a.repeats <= 1_000_000:
        raise ScenarioError(f"--repeats: must be in [1, 1000000], got {a.repeats}")
    device = resolve_device(a.device)
    dtype = parse_dtype(a.dtype, device)
    out = a.out or Path("reports") / f"backend-{a.scenario.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    created = prepare_out_dir(out, force=a.force)  # before the model is built: a bad --out costs nothing
    started = time.perf_counter()
    tl = Timeline()
    rows: list[FixedBatchRow] = []
    skipped: list[str] = []
    interrupted = False
    try:
        weights = ModelWeights(model, device, dtype, seed=a.seed)
        ex = OffloadExecutor(weights, record=True, uva_impl=a.uva_impl)
        gen = torch.Generator(device=device)
        gen.manual_seed(a.seed + 1)
        t0 = 0.0
        for exp in exps:
            try:
                r, t0 = run_experiment(ex, exp, exp.expand(model), a.repeats or exp.repeats, a.warmup, gen, tl, t0)
                rows += r
            except torch.OutOfMemoryError:
                skipped.append(exp.name)
                print(f"{exp.name}: out of device memory, skipped", file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    except KeyboardInterrupt:
        if not rows:
            if created:
                remove_if_empty(out)
            raise
        interrupted = True
    prov = provenance(device, weights.dtype, command_line("backend.run", argv), scenario=str(a.scenario),
                      model=model.name, num_layers=model.num_layers, layer_bytes=weights.layer_bytes, seed=a.seed,
                      warmup=a.warmup, uva_impl=ex.uva_impl, skipped=skipped, wall_s=time.perf_counter() - started,
                      interrupted=interrupted)
    note = f"{out}: finishing the files first (a second signal stops the writing)"
    with sig.deferred(note) if sig is not None else contextlib.nullcontext():
        write_atomic(out / "iterations.csv", lambda p: write_rows(p, rows))
        write_atomic(out / "timeline.json", lambda p: tl.write_chrome_trace(p, process_name="memslo-backend"))
        write_atomic(out / "provenance.json", json.dumps(prov, indent=2) + "\n")
    print(f"wrote {out}" + (" (interrupted: the pairs measured so far)" if interrupted else ""), file=sys.stderr)
    return out


def cli(argv: list[str] | None = None) -> int:
    """``python -m backend.run``: `main` with exit codes and SIGINT/SIGTERM handled alike."""
    with Interrupts() as sig:
        try:
            main(argv, sig)
        except ScenarioError as e:
            print(str(e), file=sys.stderr)
            return 2
        except (OutputExists, OutputError) as e:
            return out_dir_refused(e)
        except KeyboardInterrupt as e:
            sig.received(e)
            print(f"{sig.word} before anything was measured: nothing written", file=sys.stderr)
            return sig.code
        return sig.code if sig.signum is not None else 0


if __name__ == "__main__":
    sys.exit(cli())
