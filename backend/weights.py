"""Weights of a `ModelSpec`'s real shapes, one flat buffer per decoder layer.

Every decoder layer's weights are views into ONE contiguous flat tensor (`LayerLayout`), so an offloaded
layer is one host buffer and moves with one ``copy_`` into one staging buffer of the same layout. The flat
order puts the small 1-D tensors (norms, biases) first and the four matrices after them; a FlexGen-style
``fraction`` keeps the *tail* of the flat buffer in host memory (`LayerLayout.split_for`), so the part
that moves is again one contiguous range.

`ModelWeights` owns the master copy of every layer in host memory (pinned when the device is CUDA) and the
non-layer weights (embedding, final norm, LM head, OPT's learned positions, RoPE tables) on the device.
The executor decides what else lives on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from sim.core.model import ModelSpec


class SplitRows(NamedTuple):
    """A weight matrix whose first rows live in one buffer and the remaining rows in another (the layer
    split of a ``fraction`` plan falls inside it). `backend.model.linear` multiplies the two parts
    separately and concatenates the outputs, which on the CPU gives bit-identical results (each output
    element is the same dot product)."""

    top: torch.Tensor  # [r, in]
    bottom: torch.Tensor  # [out - r, in]


Weight = torch.Tensor | SplitRows


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple[int, ...]
    offset: int  # in elements, within the layer's flat buffer

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.offset + self.numel


class UnsupportedModelError(ValueError):
    """A `ModelSpec` whose layer layout the torch backend does not implement."""


def check_supported(spec: ModelSpec) -> None:
    """The backend runs ``llama`` layers (optionally with Q/K/V and O biases: Qwen, InternLM) and ``opt``
    layers; anything else raises `UnsupportedModelError` saying which field of the spec is not implemented."""
    if spec.arch not in ("llama", "opt"):
        raise UnsupportedModelError(f"model {spec.name}: arch {spec.arch!r} is not implemented by the torch "
                                    f"backend (allowed: llama, opt); the simulator models it")
    if spec.arch == "llama":
        for field, value, allowed in (("norms_per_layer", spec.norms_per_layer, 2),
                                      ("mlp_bias", spec.mlp_bias, False), ("layer_norm", spec.layer_norm, False),
                                      ("lm_head_bias", spec.lm_head_bias, False)):
            if value != allowed:
                raise UnsupportedModelError(f"model {spec.name}: {field} = {value!r} is not implemented by the torch "
                                            f"backend for arch 'llama' (allowed: {allowed!r})")


class LayerLayout:
    """Names, shapes and offsets of one decoder layer's tensors inside its flat buffer.

    Names: ``attn_norm_w``, ``mlp_norm_w`` (+ ``attn_norm_b``, ``mlp_norm_b`` for OPT's LayerNorm),
    ``qkv_b`` (Qwen, InternLM, OPT), ``o_b`` (InternLM, OPT), ``up_b``, ``down_b`` (OPT), then ``wqkv``
    [q+2kv, h] (Q rows, K rows, V rows), ``wo`` [h, q], ``w_up`` [2I, h] for a gated MLP (gate rows then up
    rows) or [I, h], and ``w_down`` [h, I]. The element count equals ``ModelSpec.params_per_layer`` (a test checks it).
    """

    def __init__(self, spec: ModelSpec) -> None:
        check_supported(spec)
        h, I = spec.hidden_size, spec.intermediate_size
        opt = spec.arch == "opt"
        qkv_out = spec.q_dim + 2 * spec.kv_dim
        shapes: list[tuple[str, tuple[int, ...]]] = [("attn_norm_w", (h,)), ("mlp_norm_w", (h,))]
        if opt:
            shapes += [("attn_norm_b", (h,)), ("mlp_norm_b", (h,))]
        if opt or spec.qkv_bias:
            shapes.append(("qkv_b", (qkv_out,)))
        if opt or spec.o_bias:
            shapes.append(("o_b", (h,)))
        if opt:
            shapes += [("up_b", (I,)), ("down_b", (h,))]
        up_rows = 2 * I if spec.gated_mlp else I
        shapes += [("wqkv", (qkv_out, h)), ("wo", (h, spec.q_dim)), ("w_up", (up_rows, h)),
                   ("w_down", (h, I))]
        self.spec = spec
        self.slots: list[Slot] = []
        off = 0
        for name, shape in shapes:
            self.slots.append(Slot(name, shape, off))
            off += math.prod(shape)
        self.numel = off
        self.first_matrix = next(s.offset for s in self.slots if len(s.shape) == 2)

    def split_for(self, fraction: float) -> int:
        """Element index where the host-memory part of a layer starts: ``[split, numel)`` lives in host
        memory and ``[0, split)`` stays on the GPU. The split is moved to a row boundary of the matrix it
        falls in (so no row is cut), and to 0 when it would fall among the small 1-D tensors; the host
        part is therefore ``fraction`` of the layer to within one matrix row."""
        if fraction >= 1.0:
            return 0
        split = self.numel - round(fraction * self.numel)
        if split <= self.first_matrix:
            return 0
        for s in self.slots:
            if s.offset <= split < s.end:
                row = s.shape[-1]
                return s.offset + round((split - s.offset) / row) * row
        return self.numel

    def views(self, resident: torch.Tensor | None, host_part: torch.Tensor | None,
              split: int) -> dict[str, Weight]:
        """The layer's tensors as views: elements below ``split`` from ``resident`` (which holds
        ``[0, split)``), the rest from ``host_part`` (which holds ``[split, numel)`` at offset 0: a staging
        buffer, or the host buffer itself). A matrix cut by the split becomes a `SplitRows`."""
        out: dict[str, Weight] = {}
        for s in self.slots:
            if s.end <= split:
                assert resident is not None
                out[s.name] = resident[s.offset:s.end].view(s.shape)
            elif s.offset >= split:
                assert host_part is not None
                out[s.name] = host_part[s.offset - split:s.end - split].view(s.shape)
            else:  # a matrix cut at a row boundary (split_for guarantees it)
                assert resident is not None and host_part is not None
                rows = (split - s.offset) // s.shape[1]
                out[s.name] = SplitRows(resident[s.offset:split].view(rows, s.shape[1]),
                                        host_part[:s.end - split].view(s.shape[0] - rows, s.shape[1]))
        return out

    def init_(self, flat: torch.Tensor, generator: torch.Generator, num_layers: int) -> None:
        """Fill a flat buffer with random weights of sane scale: matrices ~ N(0, 1/fan_in) (output
        projections further scaled by 1/sqrt(2L) so the residual stream stays bounded over many layers in
        bf16), norm weights ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.02^2). Never zeros."""
        flat.normal_(generator=generator)
        for s in self.slots:
            v = flat[s.offset:s.end]
            if s.name.endswith("norm_w"):
                v.mul_(0.1).add_(1.0)
            elif s.name.endswith("_b"):
                v.mul_(0.02)
            else:
                std = 1.0 / math.sqrt(s.shape[1])
                if s.name in ("wo", "w_down"):
                    std /= math.sqrt(2 * num_layers)
                v.mul_(std)


def random_layer(layout: LayerLayout, device: torch.device, dtype: torch.dtype, seed: int,
                 layer: int) -> torch.Tensor:
    """Layer ``layer``'s flat buffer of random weights on ``device``; the same (seed, layer) always gives
    the same weights."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + layer)
    flat = torch.empty(layout.numel, dtype=dtype, device=device)
    layout.init_(flat, g, layout.spec.num_layers)
    return flat


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (what serving uses), fp32 on the CPU (exact comparisons, and CPU bf16 GEMMs are slow)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def host_empty(numel: int, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    """A flat host buffer, page-locked when ``pinned`` (needs CUDA: pinned memory is what makes
    ``copy_(non_blocking=True)`` asynchronous and full-speed)."""
    return torch.empty(numel, dtype=dtype, pin_memory=pinned)


class ModelWeights:
    """Master copy of a model's random weights.

    ``host_layers[l]`` is layer l's flat buffer in host memory (pinned when ``device`` is CUDA), allocated
    once. Every layer has one, whether or not the current plan offloads it, so any plan (and any change of
    plan) can be served without re-materialising weights. Non-layer weights live on ``device``.
    """

    def __init__(self, spec: ModelSpec, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 seed: int = 0) -> None:
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.spec = spec.with_dtype_bytes(torch.empty((), dtype=self.dtype).element_size())
        self.layout = LayerLayout(spec)
        self.pinned = self.device.type == "cuda"
        self.host_layers: list[torch.Tensor] = []
        for l in range(spec.num_layers):
            # Generated on the device (fast for 7B-size layers on a GPU), then moved into pinned host memory.
            flat = random_layer(self.layout, self.device, self.dtype, seed, l)
            if self.device.type == "cpu":
                self.host_layers.append(flat)
                continue
            host = host_empty(self.layout.numel, self.dtype, self.pinned)
            host.copy_(flat)
            self.host_layers.append(host)
            del flat
        g = torch.Generator(device=self.device)
        g.manual_seed(seed * 1_000_003 + spec.num_layers)
        h, V = spec.hidden_size, spec.vocab_size
        kw = dict(dtype=self.dtype, device=self.device)
        self.embed = torch.empty(V, h, **kw).normal_(generator=g)  # [V, h]
        self.final_norm_w = torch.empty(h, **kw).normal_(generator=g).mul_(0.1).add_(1.0)  # [h]
        self.final_norm_b: torch.Tensor | None = None
        self.pos_embed: torch.Tensor | None = None
        if spec.arch == "opt":
            self.final_norm_b = torch.empty(h, **kw).normal_(generator=g).mul_(0.02)
            self.pos_embed = torch.empty(spec.max_position, h, **kw).normal_(generator=g).mul_(0.1)
        self.lm_head = (self.embed if spec.tie_embeddings
                        else torch.empty(V, h, **kw).normal_(generator=g).mul_(1 / math.sqrt(h)))  # [V, h]
        self.rope_cos, self.rope_sin = rope_tables(spec, self.device)

    @property
    def layer_numel(self) -> int:
        return self.layout.numel

    @property
    def layer_bytes(self) -> int:
        """Bytes of one decoder layer in this dtype (what a whole-layer copy moves)."""
        return self.layout.numel * self.host_layers[0].element_size()


def rope_tables(spec: ModelSpec, device: torch.device,
                theta: float = 10000.0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """cos and sin of the rotary angles, [max_position, head_dim/2] in fp32 (None for OPT)."""
    if spec.arch != "llama":
        return None, None
    d = spec.head_dim
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # [d/2]
    ang = torch.arange(spec.max_position, dtype=torch.float64, device=device)[:, None] * inv  # [P, d/2]
    return ang.cos().float(), ang.sin().float()
