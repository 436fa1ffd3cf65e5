"""Profiler: ``python -m backend.profile --model llama-2-7b --out DIR [--quick]``.

Writes three CSVs into DIR, each starting with ``# key: value`` provenance lines (GPU name, driver, torch
and CUDA versions, date, command line, dtype):

- ``layer_times.csv``: one decoder layer over a grid of phase x batch x context. ``layer_s`` is the whole
  layer; ``attn_s`` the attention part (KV-cache write + SDPA) and ``linear_s`` the rest (norms, QKV, RoPE,
  O, MLP), each timed on its own. ``context_tokens`` and ``new_tokens`` are per request: a prefill of
  ``new_tokens = context_tokens`` fresh tokens, or a decode step of 1 token attending to ``context_tokens``
  (itself included).
- ``copy_bandwidth.csv``: H2D and D2H copy time against size, from pinned and pageable host memory, alone
  and while the compute stream is busy (``concurrent_compute=1``: GEMM and HBM-copy kernels queued on the
  compute stream for about twice the transfer's time).
- ``microbatch.csv``: a decode batch run through one layer as ``num_microbatches`` sequential micro-batches;
  ``overhead_ratio`` = layer_s / layer_s at one micro-batch.

Every timing is the median of ``--repeats`` calls after ``--warmup`` calls, CUDA-event timed on a GPU
(``time.perf_counter`` on the CPU, where "h2d" is a host-to-host memcpy and pinned memory does not exist),
with fresh random inputs per call. Grid points that do not fit in memory are skipped and listed in the
provenance (``skipped``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from sim.core.model import PRESETS as MODEL_PRESETS
from sim.core.model import ModelSpec, get_model

from .kv import StepInputs
from .model import attention, post_attention, pre_attention
from .timing import command_line, parse_dtype, provenance, resolve_device, summarize, time_calls, write_csv
from .weights import LayerLayout, default_dtype, random_layer, rope_tables

LAYER_COLUMNS = ["model", "phase", "batch_size", "context_tokens", "new_tokens", "layer_s", "layer_p10_s",
                 "layer_p90_s", "attn_s", "linear_s", "repeats"]
COPY_COLUMNS = ["direction", "memory", "size_bytes", "seconds", "gb_per_s", "concurrent_compute", "repeats"]
MICRO_COLUMNS = ["batch_size", "context_tokens", "num_microbatches", "layer_s", "overhead_ratio"]


def _ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split(",") if x.strip()]


class LayerBench:
    """One decoder layer's weights on the device, and the callables the profiler times."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        self.spec, self.device, self.dtype = spec, device, dtype
        layout = LayerLayout(spec)
        self.flat = random_layer(layout, device, dtype, seed, 0)
        self.lw = layout.views(self.flat, None, layout.numel)
        self.rope = rope_tables(spec, device)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed + 1)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, device=self.device, dtype=self.dtype)

    def case(self, batch: int, context: int, new: int) -> tuple[torch.Tensor, StepInputs]:
        """A random KV cache for one layer and the step's inputs (a prefill if new == context)."""
        s = self.spec
        kv = self.randn(2, batch, s.num_kv_heads, context, s.head_dim)  # [2, B, Hkv, C, D]
        tokens = torch.ones(batch, new, dtype=torch.long)  # ids are not read by a layer
        return kv, StepInputs.build(tokens, [context - new] * batch, self.device)

    def layer(self, kv: torch.Tensor, inp: StepInputs) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            q, k, v = pre_attention(self.spec, self.lw, x, inp, self.rope)
            return post_attention(self.spec, self.lw, x, attention(self.spec, q, k, v, kv, inp))
        return run


def profile_layers(b: LayerBench, grid: list[tuple[str, int, int]], repeats: int, warmup: int,
                   skipped: list[str]) -> list[dict[str, Any]]:
    s, rows = b.spec, []
    H, Hkv, D, h = s.num_heads, s.num_kv_heads, s.head_dim, s.hidden_size
    for phase, B, C in grid:
        new = C if phase == "prefill" else 1
        kv = None
        try:
            kv, inp = b.case(B, C, new)
            cache, step = kv, inp  # bound for the closures below

            def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                return attention(s, q, k, v, cache, step)

            def rest(x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
                pre_attention(s, b.lw, x, step, b.rope)
                return post_attention(s, b.lw, x, o)

            x_shape, q_shape, kv_shape = (B, new, h), (B, H, new, D), (B, Hkv, new, D)
            lt = time_calls(b.layer(kv, inp), b.device, repeats, warmup, setup=lambda: (b.randn(*x_shape),))
            at = time_calls(attn, b.device, repeats, warmup,
                            setup=lambda: (b.randn(*q_shape), b.randn(*kv_shape), b.randn(*kv_shape)))
            rt = time_calls(rest, b.device, repeats, warmup,
                            setup=lambda: (b.randn(*x_shape), b.randn(B, new, H * D)))
        except torch.OutOfMemoryError:
            skipped.append(f"layer {phase} B={B} C={C}")
            kv = None
            _free(b.device)
            continue
        med, p10, p90 = summarize(lt)
        rows.append(dict(model=s.name, phase=phase, batch_size=B, context_tokens=C, new_tokens=new, layer_s=med,
                         layer_p10_s=p10, layer_p90_s=p90, attn_s=summarize(at)[0], linear_s=summarize(rt)[0],
                         repeats=repeats))
        del kv
        print(f"layer {phase:7s} B={B:<4d} C={C:<6d} {med * 1e3:9.3f} ms", file=sys.stderr)
    return rows


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class ComputeLoad:
    """Keeps the device busy while a copy is timed: on a GPU, GEMM + HBM-copy kernels queued on the compute
    stream; on the CPU, a thread running matrix products."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        n = 4096 if device.type == "cuda" else 256
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.c = torch.empty(n, n, device=device, dtype=dtype)
        self.big_src = torch.randn((64 << 20) if device.type == "cuda" else (1 << 16), device=device, dtype=dtype)
        self.big_dst = torch.empty_like(self.big_src)
        self.unit_s = 0.0
        if device.type == "cuda":
            self.unit_s = summarize(time_calls(self.unit, device, 5, 2))[0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def unit(self) -> None:
        torch.mm(self.a, self.b, out=self.c)
        self.big_dst.copy_(self.big_src)

    def queue(self, seconds: float) -> None:
        """GPU: queue about ``seconds`` of work on the current (compute) stream."""
        for _ in range(max(1, math.ceil(seconds / max(self.unit_s, 1e-6)))):
            self.unit()

    def start_thread(self) -> None:
        self._stop.clear()

        def loop() -> None:
            with torch.inference_mode():  # inference mode is per thread; the buffers are inference tensors
                while not self._stop.is_set():
                    self.unit()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def time_copy(dst: torch.Tensor, src: torch.Tensor, device: torch.device, repeats: int, warmup: int,
              load: ComputeLoad | None, expected_s: float) -> list[float]:
    """Seconds per ``dst.copy_(src)``; on a GPU issued on a dedicated copy stream and event-timed there."""
    if device.type != "cuda":
        if load is not None:
            load.start_thread()
        try:
            return time_calls(lambda: dst.copy_(src), device, repeats, warmup)
        finally:
            if load is not None:
                load.stop_thread()
    stream = torch.cuda.Stream(device)
    for _ in range(warmup):
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    pairs = []
    for _ in range(repeats):
        if load is not None:  # compute first, so the copy starts while it runs
            load.queue(2 * expected_s)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            s.record(stream)
            dst.copy_(src, non_blocking=True)
            e.record(stream)
        pairs.append((s, e))
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) / 1e3 for s, e in pairs]


def profile_copies(device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int, warmup: int,
                   skipped: list[str]) -> list[dict[str, Any]]:
    rows = []
    load = ComputeLoad(device, dtype)
    memories = ["pinned", "pageable"] if device.type == "cuda" else ["pageable"]
    for direction in ("h2d", "d2h"):
        for memory in memories:
            for size in sizes:
                try:
                    host = torch.randint(1, 255, (size,), dtype=torch.uint8, pin_memory=memory == "pinned")
                    dev = torch.randint(1, 255, (size,), dtype=torch.uint8, device=device)
                except (torch.OutOfMemoryError, RuntimeError):
                    skipped.append(f"copy {direction} {memory} {size}")
                    continue
                dst, src = (dev, host) if direction == "h2d" else (host, dev)
                alone = summarize(time_copy(dst, src, device, repeats, warmup, None, 0.0))[0]
                busy = summarize(time_copy(dst, src, device, repeats, warmup, load, alone))[0]
                for conc, sec in ((0, alone), (1, busy)):
                    rows.append(dict(direction=direction, memory=memory, size_bytes=size, seconds=sec,
                                     gb_per_s=size / sec / 1e9, concurrent_compute=conc, repeats=repeats))
                print(f"copy {direction} {memory:8s} {size:>12d} B {size / alone / 1e9:8.2f} GB/s alone, "
                      f"{size / busy / 1e9:8.2f} GB/s under compute", file=sys.stderr)
                del host, dev
    return rows


def profile_microbatches(b: LayerBench, batches: list[int], contexts: list[int], splits: list[int],
                         repeats: int, warmup: int, skipped: list[str]) -> list[dict[str, Any]]:
    rows = []
    h = b.spec.hidden_size
    for B in batches:
        for C in contexts:
            base = None
            for m in sorted(set([1, *splits])):
                if B % m:
                    continue
                n = B // m
                kv = None
                try:
                    kv, _ = b.case(B, C, 1)
                    inp = StepInputs.build(torch.ones(n, 1, dtype=torch.long), [C - 1] * n, b.device)
                    # each micro-batch works on its own rows of the cache (a view, no copy)
                    parts = [(b.layer(kv[:, i * n:(i + 1) * n], inp), i) for i in range(m)]

                    def run(x: torch.Tensor) -> None:
                        for fn, i in parts:
                            fn(x[i * n:(i + 1) * n])
                    t = summarize(time_calls(run, b.device, repeats, warmup, setup=lambda: (b.randn(B, 1, h),)))[0]
                except torch.OutOfMemoryError:
                    skipped.append(f"microbatch B={B} C={C} m={m}")
                    kv = None
                    _free(b.device)
                    continue
                base = t if m == 1 else base
                rows.append(dict(batch_size=B, context_tokens=C, num_microbatches=m, layer_s=t,
                                 overhead_ratio=t / base if base else float("nan")))
                del kv
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m backend.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="preset name or path to a Hugging Face config.json")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    ap.add_argument("--dtype", default=None, help="bf16 (GPU default), fp16 or fp32 (CPU default)")
    ap.add_argument("--phases", default="prefill,decode")
    ap.add_argument("--prefill-batches", default="1,4,16")
    ap.add_argument("--prefill-contexts", default="128,512,2048")
    ap.add_argument("--decode-batches", default="1,8,32,128")
    ap.add_argument("--decode-contexts", default="128,512,2048,4096")
    ap.add_argument("--copy-sizes", default=",".join(str(1 << (16 + 2 * k)) for k in range(8)),
                    help="transfer sizes in bytes (default 64 KiB .. 1 GiB, x4)")
    ap.add_argument("--microbatch-batches", default="32,128")
    ap.add_argument("--microbatch-contexts", default="512,2048")
    ap.add_argument("--microbatches", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny grids and 3 repeats (a smoke run)")
    a = ap.parse_args(argv)
    if a.quick:
        a.prefill_batches, a.prefill_contexts = "1,2", "16,32"
        a.decode_batches, a.decode_contexts = "1,4", "16,64"
        a.copy_sizes = f"{1 << 16},{1 << 20}"
        a.microbatch_batches, a.microbatch_contexts, a.microbatches = "4", "32", "1,2"
        a.repeats, a.warmup = 3, 1
    return a


def main(argv: list[str] | None = None) -> Path:
    a = parse_args(argv)
    device = resolve_device(a.device)
    dtype = parse_dtype(a.dtype, device) or default_dtype(device)
    spec = get_model(a.model)
    spec = spec.with_dtype_bytes(torch.empty((), dtype=dtype).element_size())
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    skipped: list[str] = []
    phases = [p for p in a.phases.split(",") if p]
    grid = []
    for phase in phases:
        if phase not in ("prefill", "decode"):
            raise SystemExit(f"--phases: {phase!r} is not prefill or decode")
        if phase == "prefill":
            bs, cs = a.prefill_batches, a.prefill_contexts
        else:
            bs, cs = a.decode_batches, a.decode_contexts
        for B in _ints(bs):
            for C in _ints(cs):
                if C > spec.max_position:
                    skipped.append(f"layer {phase} B={B} C={C} (beyond max_position {spec.max_position})")
                    continue
                grid.append((phase, B, C))
    bench = LayerBench(spec, device, dtype, a.seed)
    with torch.inference_mode():
        layer_rows = profile_layers(bench, grid, a.repeats, a.warmup, skipped)
        micro_rows = profile_microbatches(bench, _ints(a.microbatch_batches), _ints(a.microbatch_contexts),
                                          _ints(a.microbatches), a.repeats, a.warmup, skipped)
        del bench
        _free(device)
        copy_rows = profile_copies(device, dtype, _ints(a.copy_sizes), a.repeats, a.warmup, skipped)
    prov = provenance(device, dtype, command_line("backend.profile", argv), model=spec.name,
                      layer_bytes=spec.weight_bytes_per_layer,
                      repeats=a.repeats, warmup=a.warmup, statistic="median over repeats",
                      skipped="; ".join(skipped) or "none")
    if a.model.lower() not in MODEL_PRESETS:  # a config.json: keep it beside the CSVs so a fit can rebuild the shape
        src = Path(a.model) / "config.json" if Path(a.model).is_dir() else Path(a.model)
        shutil.copyfile(src, a.out / "config.json")
    write_csv(a.out / "layer_times.csv", layer_rows, LAYER_COLUMNS,
              {**prov, "columns": "context_tokens and new_tokens are per request; times in seconds"})
    write_csv(a.out / "copy_bandwidth.csv", copy_rows, COPY_COLUMNS,
              {**prov, "columns": "seconds: median time of one copy of size_bytes; "
                                  "gb_per_s = size_bytes / seconds / 1e9"})
    write_csv(a.out / "microbatch.csv", micro_rows, MICRO_COLUMNS,
              {**prov, "columns": "layer_s: all micro-batches of one decode layer; overhead_ratio = layer_s / "
                                  "layer_s at num_microbatches=1"})
    print(f"wrote {a.out}/layer_times.csv, copy_bandwidth.csv, microbatch.csv", file=sys.stderr)
    return a.out


if __name__ == "__main__":
    main()
