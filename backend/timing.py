"""Timing and provenance helpers shared by the profiler and the end-to-end runner.

Timing: warm-up calls first, then each repeat gets fresh inputs from an untimed ``setup`` and is timed on
its own -- with CUDA events around the call on the current stream (one synchronize after all repeats) on
a GPU, with ``time.perf_counter`` on the CPU. Results are summarised by median and 10th/90th percentiles.
"""

from __future__ import annotations

import csv
import datetime as _dt
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch build or machine has no CUDA")
    return dev


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype | None:
    if name is None:
        return None
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise SystemExit(f"--dtype {name!r}: allowed are {', '.join(table)}")
    return table[name]


def time_calls(fn: Callable[..., Any], device: torch.device, repeats: int, warmup: int = 2,
               setup: Callable[[], tuple] = tuple) -> list[float]:
    """Seconds of ``fn(*setup())`` for each of ``repeats`` timed calls (``setup`` is not timed)."""
    for _ in range(warmup):
        fn(*setup())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(repeats):
            args = setup()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn(*args)
            e.record()
            pairs.append((s, e))
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) / 1e3 for s, e in pairs]
    out = []
    for _ in range(repeats):
        args = setup()
        t = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t)
    return out


def summarize(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, p10, p90)."""
    a = np.asarray(xs, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))


def _driver_version() -> str:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except OSError:
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How the command was invoked, as ``python -m module args`` (``argv`` None: this process's argv)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def provenance(device: torch.device, dtype: torch.dtype | None = None, command: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """Where and how a measurement was taken: GPU name, driver, torch and CUDA versions, date, command."""
    p: dict[str, Any] = {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
        "driver": _driver_version() if device.type == "cuda" else "none",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or shlex.join(sys.argv),
    }
    if dtype is not None:
        p["dtype"] = str(dtype).replace("torch.", "")
    p.update(extra)
    return p


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str], prov: dict[str, Any]) -> Path:
    """CSV with ``# key: value`` provenance lines before the header row."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        for k, v in prov.items():
            fh.write(f"# {k}: {v}\n")
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r[c] for c in columns})
    return path


def read_csv(path: str | Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Provenance and rows of a file written by `write_csv`."""
    prov: dict[str, str] = {}
    lines = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("# "):
            k, _, v = line[2:].partition(": ")
            prov[k] = v
        else:
            lines.append(line)
    return prov, list(csv.DictReader(lines))
