"""Checks on input beyond what the schema sees field by field: the size of a YAML file's content (anchors
and aliases can expand a few lines into billions of values; nesting can be arbitrarily deep), the total work
a scenario asks for (expected requests, GPUs) against ``limits:``, and requests longer than the model's
context (``workload.context_overflow``).

Each check raises `ScenarioError` with one line naming the file, the field, the numbers and what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sim.config.errors import ScenarioError
from sim.config.schema import BatchArrivals
from sim.core.units import MiB
from sim.core.workload import RequestSet

MAX_FILE_BYTES = 10 * MiB  # a scenario or plan file: 10 MiB of YAML is far beyond any real one
MAX_VALUES = 100_000  # values after expanding aliases
MAX_DEPTH = 64  # nesting levels


def read_yaml_mapping(path: Path, kind: str = "scenario") -> dict[str, Any]:
    """A YAML file's top-level mapping, safe-loaded; a missing file, a folder, a binary or oversized file,
    broken YAML, nesting deeper than `MAX_DEPTH`, more than `MAX_VALUES` values once aliases are expanded,
    or another top level raise `ScenarioError` with one line (``kind`` names the file: scenario, plan)."""
    if not path.exists():
        raise ScenarioError(f"{path}: {kind} file not found")
    if path.is_dir():
        raise ScenarioError(f"{path}: is a folder, not a {kind} file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ScenarioError(f"{path.name}: {size / MiB:.0f} MiB; a {kind} file is at most "
                                f"{MAX_FILE_BYTES // MiB} MiB of YAML")
        raw = path.read_bytes()
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the {kind} file: {e.strerror or e}") from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ScenarioError(f"{path.name}: not a text file (a NUL byte at offset {nul}); a {kind} file is YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path.name}: not a UTF-8 text file (byte {e.start}); a {kind} file is YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).splitlines()[0][:200]
        raise ScenarioError(f"{path.name}: not valid YAML{where}: {problem}") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits, which Python refuses to convert
        raise ScenarioError(f"{path.name}: not valid YAML: {str(e).splitlines()[0][:120]}") from None
    except RecursionError:
        raise ScenarioError(f"{path.name}: nested too deeply to read (a {kind} is at most {MAX_DEPTH} "
                            "levels deep)") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path.name}: (top level): must be a mapping of keys, got {type(data).__name__}")
    check_size(data, path.name)
    return data


def check_size(data: Any, name: str) -> None:
    """Walk the loaded YAML (iteratively, stopping at the limits): at most `MAX_VALUES` values, counting
    every alias expansion, and at most `MAX_DEPTH` levels. Work is bounded by the limits, not the input."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    count = 0
    while stack:
        node, depth, where = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ScenarioError(f"{name}: {where or '(top level)'}: more than {MAX_VALUES:,} values once YAML "
                                "aliases (*name) are expanded; a scenario needs far fewer")
        if depth > MAX_DEPTH:
            raise ScenarioError(f"{name}: {where}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            for k, v in node.items():
                key = str(k) if len(str(k)) <= 40 else str(k)[:40] + "..."
                stack.append((v, depth + 1, where or key))  # the message names the top-level key
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1, where) for v in node)


# --- total work -----------------------------------------------------------------------------------------
def expected_synthetic(w: Any) -> tuple[float, str]:
    """Arrivals a synthetic workload draws (before ``max_requests`` cuts them: they are drawn all the
    same), and how that number is made, for the message."""
    a, d = w.arrivals, w.duration_s
    if isinstance(a, BatchArrivals):
        n, how = (float(a.count) if a.at_s <= d else 0.0), f"arrivals.count {a.count}"
    else:
        n, how = a.rate_per_s * d, f"arrivals.rate_per_s {a.rate_per_s:g} x duration_s {d:g}"
    extra = sum(b.rate_per_s * max(0.0, min(b.start_s + b.duration_s, d) - b.start_s) for b in w.bursts)
    if w.bursts:
        how += f" + {extra:,.0f} in bursts"
    return n + extra, how


def too_many_requests(name: str, where: str, expected: float, how: str, limit: int) -> ScenarioError:
    return ScenarioError(f"{name}: {where}: about {expected:,.0f} requests ({how}), over the limit of {limit:,} "
                         "that keeps a run within memory and time; shorten or thin the workload, or raise "
                         "limits.max_expected_requests if you mean it")


def check_requests(name: str, where: str, expected: float, how: str, limit: int) -> None:
    if expected > limit:
        raise too_many_requests(name, where, expected, how, limit)


def check_gpus(name: str, num_gpus: int, limit: int) -> None:
    if num_gpus > limit:
        raise ScenarioError(f"{name}: hardware.num_gpus: {num_gpus:,} GPUs, over the limit of {limit:,} (each GPU "
                            "is simulated as its own engine); raise limits.max_gpus if you mean it")


# --- context overflow -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContextOverflow:
    """What ``workload.context_overflow`` did: requests whose prompt + output exceed ``context_tokens``."""

    mode: str  # "reject" or "truncate"
    context_tokens: int
    requests: int  # how many exceeded the context

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "context_tokens": self.context_tokens, "requests": self.requests}

    def sentence(self, total: int) -> str:
        what = ("rejected on arrival (workload.context_overflow: reject)" if self.mode == "reject" else
                "truncated to fit (workload.context_overflow: truncate)")
        return (f"{self.requests} of {total} requests exceed the {self.context_tokens:,}-token context "
                f"(prompt + output): {what}.")


def truncate_to_context(rs: RequestSet, limit: int) -> RequestSet:
    """Requests longer than ``limit`` tokens cut to fit: the prompt keeps its last ``limit - output`` tokens
    (vLLM's ``truncate_prompt_tokens``); an output that alone fills the context is cut to ``limit - 1`` after
    a one-token prompt (generation stops at the context's end)."""
    p, o = rs.prompt_tokens, rs.output_tokens
    over = p + o > limit
    if not over.any():
        return rs
    o2 = np.where(over, np.minimum(o, limit - 1), o)
    p2 = np.where(over, np.maximum(1, np.minimum(p, limit - o2)), p)
    return RequestSet(rs.arrival_s.copy(), p2, o2)


def overflow_count(rs: RequestSet, limit: int) -> int:
    return int(np.count_nonzero(rs.prompt_tokens + rs.output_tokens > limit))
