"""Costs of the collectives tensor and pipeline parallelism add: all-reduce within a TP group, send/recv
between pipeline stages.

Two models, one interface (`CollectiveModel`):

- `measured_collectives(table)`: real NCCL timings (Vidur's public profiles, A100 and H100 servers), reduced
  by ``python -m calibration.collectives`` to a small table per fabric (``calibration/profiles/
  collectives.yaml``: knots of message size -> seconds per worker count, with provenance and held-out
  errors). Between knots the time is interpolated piecewise linearly in log size and log time (exact at
  the knots, monotone between two knots). Outside the data:
  - below the smallest measured size: the smallest size's time (the latency floor: a smaller message is
    not faster);
  - above the largest: the largest size's time plus the extra bytes at the marginal bandwidth of the last
    measured octave (time grows linearly in bytes once the link is saturated);
  - 1 worker: no all-reduce (0 s); a worker count between measured ones: the next larger measured count
    (where the message is bandwidth-bound, time grows with the count, as a ring's 2(n-1)/n does, so this
    errs on the slow side; below ~1 MiB the measured times do not order by count, e.g. H100 NVSwitch at
    1 MiB: 43 us on 2 GPUs, 33 us on 8); above the largest measured count: `CollectiveError` (use
    `ring_collectives` for that fabric).
- `ring_collectives(link_bytes_per_s, latency_s)`: the analytic fallback for fabrics without measurements
  (PCIe boxes): a ring all-reduce moves 2(n-1)/n of the message over each link in 2(n-1) steps, each step
  paying ``latency_s``; send/recv is one step.

Tables: ``h100-nvswitch`` and ``a100-nvswitch`` (DGX nodes; every worker on one node), ``h100-nvlink-pairs``
and ``a100-nvlink-pairs`` (servers whose GPUs are NVLink-bridged in pairs), ``a100-nvswitch-2nodes``
(workers split evenly over two DGX nodes; send/recv between the nodes) and ``h100-nvswitch-2nodes``
(send/recv between two nodes only: no two-node all-reduce was measured on H100).
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIVES_PATH = REPO_ROOT / "calibration" / "profiles" / "collectives.yaml"
COLLECTIVES_FORMAT = 1


class CollectiveError(ValueError):
    """A collective table or request memslo cannot serve; the message names the table and what is allowed."""


@runtime_checkable
class CollectiveModel(Protocol):
    """Time of the collectives of tensor and pipeline parallelism, in seconds."""

    def all_reduce_s(self, nbytes: float, workers: int) -> float:
        """One all-reduce of ``nbytes`` (each rank's buffer) over ``workers`` GPUs."""
        ...

    def send_recv_s(self, nbytes: float) -> float:
        """One point-to-point transfer of ``nbytes`` between two pipeline stages."""
        ...


class SizeCurve:
    """Seconds of one collective against message bytes: knots ``size_bytes`` (increasing) -> ``time_s``,
    piecewise linear in (log size, log time); flat below the first knot, linear in bytes beyond the last at
    the marginal bandwidth of the last octave of knots."""

    __slots__ = ("_log_s", "_log_t", "_tail_s_per_byte", "size_bytes", "time_s")

    def __init__(self, size_bytes: tuple[float, ...], time_s: tuple[float, ...]) -> None:
        s, t = tuple(size_bytes), tuple(time_s)
        if len(s) != len(t) or not s:
            raise CollectiveError(f"a size curve needs as many times as sizes (>= 1), got {len(s)} and {len(t)}")
        if any(b <= a for a, b in itertools.pairwise(s)) or s[0] <= 0 or min(t) <= 0:
            raise CollectiveError("a size curve needs increasing positive sizes and positive times")
        self.size_bytes, self.time_s = s, t
        self._log_s = tuple(math.log(x) for x in s)
        self._log_t = tuple(math.log(x) for x in t)
        # beyond the last knot: seconds per byte from the knot about one octave below it to the last
        j = max(0, bisect.bisect_right(s, s[-1] / 2) - 1)
        dt, ds = t[-1] - t[j], s[-1] - s[j]
        self._tail_s_per_byte = dt / ds if ds > 0 and dt > 0 else t[-1] / s[-1]

    def __call__(self, nbytes: float) -> float:
        s, t = self.size_bytes, self.time_s
        if nbytes <= s[0]:
            return t[0]
        if nbytes >= s[-1]:
            return t[-1] + (nbytes - s[-1]) * self._tail_s_per_byte
        i = bisect.bisect_right(s, nbytes)  # s[i-1] <= nbytes < s[i]
        if nbytes == s[i - 1]:
            return t[i - 1]  # a knot: its measured time, not exp(log(t)) one ulp off
        ls, lt = self._log_s, self._log_t
        w = (math.log(nbytes) - ls[i - 1]) / (ls[i] - ls[i - 1])
        return math.exp(lt[i - 1] + w * (lt[i] - lt[i - 1]))


@dataclass(frozen=True)
class MeasuredCollectives:
    """`CollectiveModel` from one measured table: an all-reduce curve per worker count, one send/recv curve."""

    name: str
    all_reduce: dict[int, SizeCurve]
    send_recv: SizeCurve | None

    @property
    def workers(self) -> tuple[int, ...]:
        """The worker counts whose all-reduce was measured."""
        return tuple(sorted(self.all_reduce))

    def all_reduce_s(self, nbytes: float, workers: int) -> float:
        if workers < 1:
            raise CollectiveError(f"collectives {self.name}: workers must be >= 1, got {workers}")
        if workers == 1 or nbytes <= 0:
            return 0.0
        counts = self.workers
        if not counts:
            raise CollectiveError(f"collectives {self.name}: no all-reduce was measured on this fabric")
        i = bisect.bisect_left(counts, workers)
        if i == len(counts):
            raise CollectiveError(
                f"collectives {self.name}: all-reduce measured for {', '.join(map(str, counts))} workers, not "
                f"{workers}; use ring_collectives for larger groups")
        return self.all_reduce[counts[i]](nbytes)

    def send_recv_s(self, nbytes: float) -> float:
        if self.send_recv is None:
            raise CollectiveError(f"collectives {self.name}: no send/recv was measured on this fabric")
        return 0.0 if nbytes <= 0 else self.send_recv(nbytes)


@dataclass(frozen=True)
class RingCollectives:
    """`CollectiveModel` of a ring over links of ``link_bytes_per_s`` with ``latency_s`` per step."""

    link_bytes_per_s: float
    latency_s: float

    def __post_init__(self) -> None:
        if not self.link_bytes_per_s > 0 or not self.latency_s >= 0:
            raise CollectiveError(f"ring collectives need link_bytes_per_s > 0 and latency_s >= 0, got "
                                  f"{self.link_bytes_per_s} and {self.latency_s}")

    def all_reduce_s(self, nbytes: float, workers: int) -> float:
        if workers < 1:
            raise CollectiveError(f"ring collectives: workers must be >= 1, got {workers}")
        if workers == 1 or nbytes <= 0:
            return 0.0
        steps = 2 * (workers - 1)  # reduce-scatter, then all-gather, each n-1 steps of nbytes/n
        return steps / workers * nbytes / self.link_bytes_per_s + steps * self.latency_s

    def send_recv_s(self, nbytes: float) -> float:
        return 0.0 if nbytes <= 0 else self.latency_s + nbytes / self.link_bytes_per_s


def ring_collectives(link_bytes_per_s: float, latency_s: float) -> RingCollectives:
    """The analytic ring model for a fabric with no measurements (e.g. GPUs talking over PCIe)."""
    return RingCollectives(float(link_bytes_per_s), float(latency_s))


def _curve(data: Any, where: str) -> SizeCurve:
    try:
        return SizeCurve(tuple(float(x) for x in data["size_bytes"]), tuple(float(x) for x in data["time_s"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CollectiveError(f"{where}: needs lists size_bytes and time_s of positive numbers ({e})") from None


@cache
def _load(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CollectiveError(f"{path}: collectives table file not found") from None
    except yaml.YAMLError as e:
        raise CollectiveError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise CollectiveError(f"{path}: a collectives file needs a 'tables' mapping")
    if data.get("format") != COLLECTIVES_FORMAT:
        raise CollectiveError(f"{path}: format {data.get('format')!r} is not {COLLECTIVES_FORMAT}")
    return data


def collective_tables(path: str | Path | None = None) -> tuple[str, ...]:
    """Names of the measured tables (``measured_collectives`` accepts these)."""
    return tuple(sorted(_load(str(path or COLLECTIVES_PATH))["tables"]))


@cache
def _measured(table: str, path: str) -> MeasuredCollectives:
    tables = _load(path)["tables"]
    if table not in tables:
        raise CollectiveError(f"unknown collectives table {table!r}: allowed are {', '.join(sorted(tables))}")
    t = tables[table] or {}
    where = f"{Path(path).name}: tables.{table}"
    ar = {int(w): _curve(c, f"{where}.all_reduce.{w}") for w, c in (t.get("all_reduce") or {}).items()}
    sr = _curve(t["send_recv"], f"{where}.send_recv") if t.get("send_recv") else None
    return MeasuredCollectives(table, ar, sr)


def measured_collectives(table: str, path: str | Path | None = None) -> MeasuredCollectives:
    """The measured `CollectiveModel` of ``table`` (e.g. ``h100-nvswitch``) from the committed collectives
    file (or ``path``). Loaded once per process."""
    return _measured(table.lower(), str(path or COLLECTIVES_PATH))
