"""One Chrome/Perfetto trace for a whole comparison: one process per compared policy, one thread per track.

Each policy's `Timeline` holds spans on tracks such as ``gpu0/compute``, ``gpu0/h2d``, ``gpu0/d2h``,
``bus0/h2d``. Here every policy becomes a process (named after it) and every track a thread named
``<policy> <track>``, so Perfetto shows the policies one under the other. The tracks of every GPU's compute
stream and copy engines and of every bus are declared even when empty, in that order. Instants (plan
changes, drops, restores) are thread-scoped markers on the track they were recorded on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from sim.core.timeline import Timeline, span_event


def standard_tracks(num_gpus: int, gpus_per_bus: int) -> list[str]:
    """The tracks every deployment has: per GPU its compute stream and copy engines, then per bus."""
    tracks = [f"gpu{g}/{k}" for g in range(num_gpus) for k in ("compute", "h2d", "d2h")]
    buses = sorted({g // gpus_per_bus for g in range(num_gpus)})
    return tracks + [f"bus{b}/{d}" for b in buses for d in ("h2d", "d2h")]


def merged_chrome_trace(timelines: dict[str, Timeline | None], tracks: Iterable[str] = (),
                        max_instants: int = 20_000) -> dict:
    """Chrome trace-event JSON for several policies' timelines (times in microseconds).

    ``tracks`` are declared for every policy first (in order); tracks found only in the spans follow,
    sorted. At most ``max_instants`` instants per policy are kept (the first ones)."""
    events: list[dict] = []
    meta: dict[str, dict] = {}
    declared = list(tracks)
    for pid, (policy, tl) in enumerate(timelines.items(), start=1):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": policy}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        spans = tl.spans if tl is not None else []
        instants = tl.instants if tl is not None else []
        extra = sorted(({s.resource for s in spans} | {r for r, _, _ in instants}) - set(declared))
        tids: dict[str, int] = {}
        for tid, res in enumerate([*declared, *extra], start=1):
            tids[res] = tid
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": f"{policy} {res}"}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                           "args": {"sort_index": tid}})
        for s in spans:
            events.append(span_event(s, pid, tids[s.resource]))
        kept = instants[:max_instants]
        for res, name, t in kept:
            events.append({"ph": "i", "name": name, "cat": "event", "pid": pid, "tid": tids[res], "ts": t * 1e6,
                           "s": "t"})
        meta[policy] = {"spans": len(spans), "dropped_spans": tl.dropped if tl is not None else 0,
                        "instants": len(kept), "dropped_instants": len(instants) - len(kept)}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"policies": meta}}


def write_merged_chrome_trace(path: str | Path, timelines: dict[str, Timeline | None], tracks: Iterable[str] = (),
                              max_instants: int = 20_000) -> dict:
    """Write the merged trace; returns its ``otherData`` (span counts per policy)."""
    trace = merged_chrome_trace(timelines, tracks, max_instants)
    Path(path).write_text(json.dumps(trace, separators=(",", ":")))
    return trace["otherData"]
