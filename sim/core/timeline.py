"""Timeline records shared by the simulator and the torch backend, and their Chrome/Perfetto export.

One row per span: ``resource`` (a track such as ``gpu0/compute``, ``gpu0/h2d``, ``bus0/h2d``), ``kind``
(``layer``, ``copy``, ``iteration``, ``swap_out`` ...), ``layer`` (-1 when not about one layer), ``start_s``,
``end_s`` and ``bytes``. Comparing the simulator with the backend is comparing two of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple


class Span(NamedTuple):
    resource: str
    kind: str
    layer: int
    start_s: float
    end_s: float
    bytes: float = 0.0
    label: str = ""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def span_event(s: Span, pid: int, tid: int) -> dict:
    """One span as a Chrome trace complete event ('X'), microseconds, with bytes and achieved GB/s."""
    name = s.label or (f"{s.kind} L{s.layer}" if s.layer >= 0 else s.kind)
    args: dict = {"kind": s.kind}
    if s.layer >= 0:
        args["layer"] = s.layer
    if s.bytes:
        args["bytes"] = s.bytes
        if s.end_s > s.start_s:
            args["gb_per_s"] = round(s.bytes / (s.end_s - s.start_s) / 1e9, 3)
    return {"ph": "X", "name": name, "cat": s.kind, "pid": pid, "tid": tid,
            "ts": s.start_s * 1e6, "dur": (s.end_s - s.start_s) * 1e6, "args": args}


@dataclass
class Timeline:
    """An append-only list of spans with an optional cap (long runs keep the first ``max_spans``) and a
    ``layers`` switch: per-layer spans are many (layers x iterations), so long runs record iterations only."""

    max_spans: int | None = None
    layers: bool = True
    spans: list[Span] = field(default_factory=list)
    dropped: int = 0
    instants: list[tuple[str, str, float]] = field(default_factory=list)  # (resource, name, time_s)

    @property
    def full(self) -> bool:
        return self.max_spans is not None and len(self.spans) >= self.max_spans

    def add(self, resource: str, kind: str, start_s: float, end_s: float, layer: int = -1,
            nbytes: float = 0.0, label: str = "") -> None:
        if end_s < start_s:
            raise ValueError(f"span {resource}/{kind} ends before it starts ({start_s} > {end_s})")
        if self.max_spans is not None and len(self.spans) >= self.max_spans:
            self.dropped += 1
            return
        self.spans.append(Span(resource, kind, layer, start_s, end_s, nbytes, label))

    def add_iteration(self, gpu: int, layers: Iterable[tuple[float, float]],
                      copies: Iterable[tuple[str, int, float, float, float]] = (),
                      fixed: Iterable[tuple[float, float]] = (), label: str = "") -> None:
        """One iteration of GPU ``gpu`` layer by layer: its layers' compute spans (in layer order), its host
        copies ``(kind, layer, start, end, bytes)`` and its fixed work outside the layers (embedding, LM head).
        The simulator and the torch backend both record iterations with it."""
        comp, h2d = f"gpu{gpu}/compute", f"gpu{gpu}/h2d"
        for layer, (s, e) in enumerate(layers):
            self.add(comp, "layer", s, e, layer, label=label)
        for kind, layer, s, e, b in copies:
            self.add(h2d, kind, s, e, layer, b, label=label)
        for s, e in fixed:
            self.add(comp, "fixed", s, e, label=label)

    def mark(self, resource: str, name: str, time_s: float) -> None:
        """An instant event (a drop, a restore, a plan change)."""
        self.instants.append((resource, name, time_s))

    def extend(self, spans: Iterable[Span]) -> None:
        for s in spans:
            self.add(s.resource, s.kind, s.start_s, s.end_s, s.layer, s.bytes, s.label)

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    def by_resource(self, resource: str) -> list[Span]:
        return [s for s in self.spans if s.resource == resource]

    def to_rows(self) -> list[dict]:
        return [s._asdict() for s in self.spans]

    def to_chrome_trace(self, process_name: str = "memslo") -> dict:
        """Chrome trace-event JSON (opens in Perfetto / chrome://tracing). One process per device prefix
        (``gpu0``, ``bus0``, ``host``), one thread per track; times in microseconds."""
        pids: dict[str, int] = {}
        tids: dict[str, tuple[int, int]] = {}
        events: list[dict] = []

        def track(resource: str) -> tuple[int, int]:
            if resource not in tids:
                proc = resource.split("/", 1)[0]
                if proc not in pids:
                    pids[proc] = len(pids) + 1
                    events.append({"ph": "M", "name": "process_name", "pid": pids[proc], "tid": 0,
                                   "args": {"name": f"{process_name}:{proc}"}})
                tid = sum(1 for r in tids if r.split("/", 1)[0] == proc) + 1
                tids[resource] = (pids[proc], tid)
                events.append({"ph": "M", "name": "thread_name", "pid": pids[proc], "tid": tid,
                               "args": {"name": resource}})
            return tids[resource]

        for s in self.spans:
            events.append(span_event(s, *track(s.resource)))
        for resource, name, t in self.instants:
            pid, tid = track(resource)
            events.append({"ph": "i", "name": name, "pid": pid, "tid": tid, "ts": t * 1e6, "s": "p"})
        meta = {"spans": len(self.spans), "dropped_spans": self.dropped}
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": meta}

    def write_chrome_trace(self, path: str | Path, process_name: str = "memslo") -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_chrome_trace(process_name), separators=(",", ":")))
        return path

    @classmethod
    def from_chrome_trace(cls, path: str | Path) -> "Timeline":
        """Read back a trace written by `write_chrome_trace` (from either the simulator or the backend)."""
        data = json.loads(Path(path).read_text())
        names: dict[tuple[int, int], str] = {}
        for e in data["traceEvents"]:
            if e.get("ph") == "M" and e.get("name") == "thread_name":
                names[(e["pid"], e["tid"])] = e["args"]["name"]
        tl = cls()
        for e in data["traceEvents"]:
            if e.get("ph") == "X":
                a = e.get("args", {})
                start = e["ts"] / 1e6
                tl.spans.append(Span(names[(e["pid"], e["tid"])], a.get("kind", e.get("cat", "")),
                                     a.get("layer", -1), start, start + e["dur"] / 1e6, a.get("bytes", 0.0),
                                     e["name"]))
        return tl
