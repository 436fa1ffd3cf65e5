"""The two streams the executor drives (``compute`` and ``copy``), on a GPU or emulated on the host.

The executor is written once against this small interface: ``record`` a marker on a stream (a CUDA event,
which is both a dependency and a timestamp), make a stream ``wait`` for a marker, ``copy`` on a stream, and
after the iteration ``synchronize`` once and read ``seconds`` between markers.

- `CudaStreams`: the compute stream is the current CUDA stream, the copy stream a dedicated one; markers
  are ``torch.cuda.Event``s (with timing when asked), waits are ``Stream.wait_event`` (no host blocking),
  copies are ``copy_(non_blocking=True)`` (asynchronous from pinned memory).
- `HostStreams`: no CUDA. Everything runs synchronously in program order, which satisfies every wait by
  construction (the executor issues a copy only after the markers it waits for were recorded); markers
  are ``time.perf_counter`` stamps. With ``log=[]`` it also records the stream program (records, waits,
  copies in host issue order), which tests replay under CUDA stream semantics to check the GPU logic on
  a machine without one.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Literal, Protocol

import torch

StreamName = Literal["compute", "copy"]


class Streams(Protocol):
    is_cuda: bool

    def record(self, stream: StreamName, what: str = "", layer: int = -1) -> Any: ...
    def wait(self, stream: StreamName, marker: Any) -> None: ...
    def copy(self, stream: StreamName, dst: torch.Tensor, src: torch.Tensor) -> None: ...
    def on_compute(self) -> ContextManager[Any]: ...
    def synchronize(self) -> None: ...
    def seconds(self, origin: Any, marker: Any) -> float: ...


@dataclass(frozen=True)
class HostMarker:
    id: int
    stream: StreamName
    what: str
    layer: int
    t: float  # time.perf_counter() when recorded


class HostStreams:
    """Synchronous host emulation of the two streams (see the module docstring)."""

    is_cuda = False

    def __init__(self, log: list[tuple] | None = None) -> None:
        self.log = log
        self._n = 0

    def record(self, stream: StreamName, what: str = "", layer: int = -1) -> HostMarker:
        self._n += 1
        m = HostMarker(self._n, stream, what, layer, time.perf_counter())
        if self.log is not None:
            self.log.append(("record", stream, m.id, what, layer))
        return m

    def wait(self, stream: StreamName, marker: HostMarker) -> None:
        if self.log is not None:
            self.log.append(("wait", stream, marker.id))

    def copy(self, stream: StreamName, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)
        if self.log is not None:
            self.log.append(("copy", stream, src.numel() * src.element_size()))

    def on_compute(self) -> ContextManager[Any]:
        return nullcontext()

    def synchronize(self) -> None:
        pass

    def seconds(self, origin: HostMarker, marker: HostMarker) -> float:
        return marker.t - origin.t


class CudaStreams:
    """The current CUDA stream computes; a dedicated stream copies. Markers are CUDA events."""

    is_cuda = True

    def __init__(self, device: torch.device, timing: bool = True) -> None:
        self.device = device
        self.timing = timing
        self.compute = torch.cuda.current_stream(device)
        self.copy_stream = torch.cuda.Stream(device)

    def _s(self, name: StreamName) -> "torch.cuda.Stream":
        return self.compute if name == "compute" else self.copy_stream

    def record(self, stream: StreamName, what: str = "", layer: int = -1) -> "torch.cuda.Event":
        ev = torch.cuda.Event(enable_timing=self.timing)
        ev.record(self._s(stream))
        return ev

    def wait(self, stream: StreamName, marker: "torch.cuda.Event") -> None:
        self._s(stream).wait_event(marker)

    def copy(self, stream: StreamName, dst: torch.Tensor, src: torch.Tensor) -> None:
        s = self._s(stream)
        with torch.cuda.stream(s):
            dst.copy_(src, non_blocking=True)
        if s is not self.compute and dst.is_cuda:
            # dst was allocated on the compute stream; if it is freed (demote, buffer regrowth) the caching
            # allocator must not hand its memory out again before this copy has run.
            dst.record_stream(s)

    def on_compute(self) -> ContextManager[Any]:
        return torch.cuda.stream(self.compute)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def seconds(self, origin: "torch.cuda.Event", marker: "torch.cuda.Event") -> float:
        return origin.elapsed_time(marker) / 1e3


def make_streams(device: torch.device, timing: bool = True) -> Streams:
    return CudaStreams(device, timing) if device.type == "cuda" else HostStreams()
