"""`OffloadExecutor`: runs prefill and decode iterations of a model under an `OffloadPlan`.

The schedule is the simulator's: `sim.engine.iteration.compile_copies` turns the plan (plus pending promotions)
into the copy stream's task list, and this module only *issues* those tasks with the plan's dependencies:

- a copy task waits for "compute reached its trigger layer" (the end marker of layer ``trigger - 1``; the
  iteration-start marker for trigger 0) and, for a staging copy, for "its buffer's last user finished"
  (``buffer_dep``'s end marker, or the buffer's last user of the previous iteration);
- copies run in task order on one copy stream; plan copy k uses staging buffer ``k % num_buffers``;
- a layer waits for its copy's end marker, then computes on the compute stream.

The host issues a copy as soon as the markers it waits for have been recorded (i.e. before launching layer
``max(trigger, buffer_dep + 1)``), so no wait ever refers to a marker that does not exist yet and nothing
on the host blocks: there is no ``synchronize`` inside the layer loop. With ``record=True`` one
``synchronize`` after the iteration turns the markers into seconds since the iteration start.

Memory (all allocated once, reused across iterations):
- every layer's master copy: one host buffer per layer (`ModelWeights.host_layers`, pinned on CUDA) that
  is kept for every layer, offloaded or not, so any later plan can demote or promote it;
- resident layers: one device buffer per layer (for a ``fraction`` plan, the resident head of each
  offloaded layer);
- staging buffers: ``num_buffers`` device buffers sized for the offloaded part of a layer; the pool only
  grows (a plan needing more or larger buffers adds/enlarges them; a plan needing fewer leaves the rest
  idle);
- ``uva`` mode: see `host_alias`.

Changing the plan (`set_plan`): a **demoted** layer's device buffer is dropped at once (its host master
copy stays). A **promoted** layer gets an empty device buffer at once and is filled by the next
iteration's first copies (compile_copies' ``promote`` list: issued at the iteration start, before the
plan's copies, and the layer waits for its copy), exactly as the simulator charges promotions. A layer
whose resident *head* changes size (a different ``fraction``) is refilled synchronously on the compute
stream at `set_plan` (rare; not charged to an iteration).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sim.core.offload_plan import OffloadPlan
from sim.core.timeline import Timeline
from sim.engine.iteration import CopyTask, compile_copies

from .kv import PaddedKVCache, StepInputs
from .model import embed, head, layer_forward
from .streams import Streams, make_streams
from .weights import ModelWeights, Weight


@dataclass(frozen=True)
class CopySpan:
    layer: int
    kind: str  # "copy" (staging), "promote" (into a resident buffer), "uva" (read by the layer's kernels)
    start_s: float
    end_s: float
    bytes: float


@dataclass
class IterationRecord:
    """Spans of one iteration, in seconds since its start (the iteration-start marker)."""

    plan: str
    end_s: float
    layers: list[tuple[float, float]]  # per layer: (start, end) on the compute stream
    copies: list[CopySpan]
    fixed: list[tuple[float, float]]  # embedding (before the layers) and final norm + LM head (after)
    tasks: tuple[CopyTask, ...] = ()
    promoted: tuple[int, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.end_s

    @property
    def layers_s(self) -> float:
        return self.layers[-1][1] - self.layers[0][0]

    @property
    def compute_s(self) -> float:
        return sum(e - s for s, e in self.layers)

    @property
    def copy_s(self) -> float:
        return sum(c.end_s - c.start_s for c in self.copies)

    @property
    def copy_bytes(self) -> float:
        return sum(c.bytes for c in self.copies)

    def to_timeline(self, tl: Timeline, t0: float = 0.0, gpu: int = 0, label: str = "") -> None:
        """Add the spans to ``tl`` shifted by ``t0``, with the simulator's resource names and kinds."""
        tl.add_iteration(gpu, [(t0 + s, t0 + e) for s, e in self.layers],
                         [(c.kind, c.layer, t0 + c.start_s, t0 + c.end_s, c.bytes) for c in self.copies],
                         [(t0 + s, t0 + e) for s, e in self.fixed], label)


def host_alias(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CUDA tensor that aliases pinned host memory (zero-copy), so kernels read it over PCIe.

    Under unified virtual addressing (every 64-bit CUDA platform torch supports), a pointer returned by
    ``cudaHostAlloc`` -- which is how torch's pinned allocator gets memory -- is valid inside kernels as
    is; torch exposes no ``cudaHostGetDevicePointer``, but it builds a CUDA tensor around a raw pointer
    through ``__cuda_array_interface__`` (``torch.as_tensor``), after checking with
    ``cudaPointerGetAttributes`` that the pointer is known to CUDA (pinned host memory is). The bytes are
    wrapped as uint8 and viewed back as the weight dtype because the interface has no bfloat16 type.
    Raises RuntimeError if torch copied instead of aliasing (``as_tensor`` copies when the pointer's device
    differs from ``device``).

    Cost: a kernel reads each weight byte over the host link as often as it loads it. A decode GEMM with a
    few tokens loads every weight tile about once, so the layer runs at about bytes / link bandwidth, as the
    simulator's uva model assumes; a prefill GEMM re-reads weight tiles once per block of tokens, so uva
    prefill is several times slower than that model. Not verified on a GPU in this repository yet: the
    ``gpu`` tests check the aliasing and the logits.
    """
    nbytes = host.numel() * host.element_size()

    class _Iface:
        __cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (host.data_ptr(), False),
                                    "version": 3, "strides": None}

    with torch.cuda.device(device):
        alias = torch.as_tensor(_Iface(), device=device).view(host.dtype)
    if alias.data_ptr() != host.data_ptr():
        raise RuntimeError("torch copied the pinned buffer instead of mapping it")
    return alias


class OffloadExecutor:
    """Runs iterations of ``weights``' model under a plan; see the module docstring for the mechanics.

    ``uva_impl`` for ``mode="uva"`` plans on CUDA: ``"zero_copy"`` (kernels read the pinned host buffer
    through `host_alias`), ``"copy"`` (an approximation: the layer's host part is copied on the compute
    stream right before the layer, so transfer and compute serialise instead of overlapping), or
    ``"auto"`` (zero_copy, falling back to copy with a warning if mapping fails). On the CPU, uva layers
    simply compute from the host buffer, which is what uva means there.
    """

    def __init__(self, weights: ModelWeights, plan: OffloadPlan | None = None, *,
                 streams: Streams | None = None, record: bool = True,
                 uva_impl: Literal["auto", "zero_copy", "copy"] = "auto") -> None:
        self.w = weights
        self.L = weights.spec.num_layers
        self.device = weights.device
        self.record = record
        self.streams: Streams = streams or make_streams(self.device, timing=record)
        self.uva_impl = uva_impl
        self.numel = weights.layer_numel
        self._resident: dict[int, torch.Tensor] = {}  # layer -> device buffer holding [0, numel held)
        self._staging: list[torch.Tensor] = []
        self._buf_release: list[Any] = []  # per staging buffer: end marker of its last user, or None
        self._pending_promote: list[int] = []
        self._alias: dict[int, torch.Tensor] = {}  # uva: layer -> host part readable by device kernels
        self._views: dict[tuple[int, Any], dict[str, Weight]] = {}
        self.plan = OffloadPlan.resident(self.L)
        self._split = self.numel
        self.set_plan(plan or OffloadPlan.resident(self.L), initial=True)

    # --- plan changes -------------------------------------------------------------------------------
    def _resident_numel(self, plan: OffloadPlan, layer: int, split: int) -> int:
        return split if layer in plan.offloaded_set else self.numel

    def set_plan(self, plan: OffloadPlan, initial: bool = False) -> list[int]:
        """Switch to ``plan`` before the next iteration. Returns the layers to be promoted by it."""
        if plan.num_layers != self.L:
            raise ValueError(f"plan has {plan.num_layers} layers, the model {self.L}")
        if plan.chunks != 1:  # the kernels read a layer's weights as one tensor; pieces are not split here
            raise ValueError(f"plan {plan.name} streams layers in {plan.chunks} pieces (staging_chunks > 1): the "
                             "backend stages whole layers only; run it with staging_chunks: 1")
        split = self.w.layout.split_for(plan.fraction)
        host = self.w.host_layers
        pending = set(self._pending_promote)
        self._alias = {}
        if plan.mode == "uva" and not self._uva_copy_fallback(plan):
            for l in plan.offloaded:  # may switch uva_impl to "copy" when mapping fails
                self._alias[l] = self._map_host(host[l][split:])
            if self._uva_copy_fallback(plan):
                self._alias = {}
        with torch.inference_mode(), self.streams.on_compute():
            for l in range(self.L):
                want = self._resident_numel(plan, l, split)
                have = self._resident[l].numel() if l in self._resident else 0
                if want == have:
                    continue
                pending.discard(l)
                self._resident.pop(l, None)  # demote (or resize): drop the device buffer
                if want == 0:
                    continue
                buf = torch.empty(want, dtype=self.w.dtype, device=self.device)
                if want == self.numel and not initial:
                    pending.add(l)  # promote: filled by the next iteration's first copies
                else:  # initial load, or a resident head of another size: fill now, on the compute stream
                    buf.copy_(host[l][:want], non_blocking=True)
                self._resident[l] = buf
            host_part = self.numel - split
            if plan.offloaded and (plan.mode == "prefetch" or self._uva_copy_fallback(plan)):
                for b in range(max(plan.num_buffers, 1)):
                    if b >= len(self._staging):
                        self._staging.append(torch.empty(0, dtype=self.w.dtype, device=self.device))
                        self._buf_release.append(None)
                    if self._staging[b].numel() < host_part:
                        self._staging[b] = torch.empty(host_part, dtype=self.w.dtype, device=self.device)
                        self._buf_release[b] = None
        self._pending_promote = sorted(pending)
        self._views = {}
        self.plan, self._split = plan, split
        return list(self._pending_promote)

    def _uva_copy_fallback(self, plan: OffloadPlan) -> bool:
        return plan.mode == "uva" and self.device.type == "cuda" and self.uva_impl == "copy"

    def _map_host(self, part: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return part  # the CPU computes from host memory directly
        try:
            return host_alias(part, self.device)
        except Exception as e:  # noqa: BLE001 - any mapping failure means: fall back, loudly
            if self.uva_impl == "zero_copy":
                raise
            warnings.warn(f"uva: cannot map pinned memory into the device ({e}); copying before each layer")
            self.uva_impl = "copy"
            return part

    @property
    def staging_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._staging)

    @property
    def resident_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._resident.values())

    # --- one iteration ------------------------------------------------------------------------------
    def _layer_weights(self, l: int, source: Any) -> dict[str, Weight]:
        key = (l, source)
        lw = self._views.get(key)
        if lw is None:
            part = None
            if source == "uva":
                part = self._alias[l]
            elif source is not None:
                part = self._staging[source][:self.numel - self._split]
            split = self._split if l in self.plan.offloaded_set else self.numel
            lw = self.w.layout.views(self._resident.get(l), part, split)
            self._views[key] = lw
        return lw

    def step(self, kv: PaddedKVCache, inp: StepInputs) -> tuple[torch.Tensor, IterationRecord | None]:
        """One forward pass over the batch in ``inp`` (prefill or decode). Returns the logits of each
        request's last new token, [B, V] fp32, and the iteration's spans when ``record`` is on."""
        kv.check_fits(inp)
        plan, S, L = self.plan, self.streams, self.L
        split, host = self._split, self.w.host_layers
        part_bytes = (self.numel - split) * self.w.host_layers[0].element_size()
        tasks = compile_copies(plan, self.w.layer_bytes, promote=self._pending_promote)
        promoted = tuple(self._pending_promote)
        self._pending_promote = []
        done: list[Any] = [None] * L  # end marker of each layer
        arrival: dict[int, Any] = {}  # layer -> end marker of its copy
        buffer_of: dict[int, int] = {}  # layer -> staging buffer it computes from
        starts: list[Any] = []  # start marker of each layer
        copies: list[tuple[int, str, Any, Any, float]] = []  # (layer, kind, start marker, end marker, bytes)
        uva_copy = self._uva_copy_fallback(plan)
        nxt = k = 0

        def issue(upto: int) -> None:
            """Enqueue, in order, every copy whose markers exist once layers < ``upto`` are launched."""
            nonlocal nxt, k
            while nxt < len(tasks):
                t = tasks[nxt]
                if t.trigger > upto or t.buffer_dep >= upto:
                    return
                S.wait("copy", it0 if t.trigger == 0 else done[t.trigger - 1])
                if t.promote:
                    dst, src, kind, nb = self._resident[t.layer], host[t.layer], "promote", t.nbytes
                else:
                    b = k % plan.num_buffers
                    k += 1
                    dep = done[t.buffer_dep] if t.buffer_dep >= 0 else self._buf_release[b]
                    if dep is not None:
                        S.wait("copy", dep)
                    dst, src = self._staging[b][:self.numel - split], host[t.layer][split:]
                    kind, nb = "copy", part_bytes
                    buffer_of[t.layer] = b
                c0 = S.record("copy", "copy_start", t.layer)
                S.copy("copy", dst, src)
                c1 = S.record("copy", "copy_end", t.layer)
                arrival[t.layer] = c1
                copies.append((t.layer, kind, c0, c1, nb))
                nxt += 1

        with torch.inference_mode(), S.on_compute():
            it0 = S.record("compute", "iteration_start")
            issue(0)
            f0 = S.record("compute", "fixed_start")
            x = embed(self.w, inp)  # [B, S, h]
            f1 = S.record("compute", "fixed_end")
            for l in range(L):
                issue(l)
                if l in arrival:
                    S.wait("compute", arrival[l])
                source: Any = buffer_of.get(l)
                uva = plan.mode == "uva" and l in plan.offloaded_set
                if uva:
                    if uva_copy:  # approximation: bring the host part in on the compute stream, then compute
                        c0 = S.record("compute", "uva_start", l)
                        S.copy("compute", self._staging[0][:self.numel - split], host[l][split:])
                        source = 0
                    else:
                        source = "uva"
                lw = self._layer_weights(l, source)
                s = S.record("compute", "layer_start", l)
                x = layer_forward(self.w, lw, x, kv.layers[l], inp)
                done[l] = S.record("compute", "layer_end", l)
                if uva:
                    copies.append((l, "uva", c0 if uva_copy else s, done[l], part_bytes))
                if l in buffer_of:
                    self._buf_release[buffer_of[l]] = done[l]
                starts.append(s)
            if nxt != len(tasks):  # compile_copies only makes copies for layers that exist
                raise RuntimeError(f"{len(tasks) - nxt} copies were never issued")
            h0 = S.record("compute", "fixed_start")
            logits = head(self.w, x, inp)
            h1 = S.record("compute", "fixed_end")
        if not self.record:
            return logits, None
        S.synchronize()
        sec = lambda m: S.seconds(it0, m)  # noqa: E731
        rec = IterationRecord(
            plan=plan.name, end_s=sec(h1),
            layers=[(sec(s), sec(e)) for s, e in zip(starts, done)],
            copies=[CopySpan(l, kind, sec(a), sec(b), nb) for l, kind, a, b, nb in copies],
            fixed=[(sec(f0), sec(f1)), (sec(h0), sec(h1))], tasks=tasks, promoted=promoted)
        return logits, rec
