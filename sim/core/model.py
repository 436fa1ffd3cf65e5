"""Model shapes: `ModelSpec`, its presets and loading from a Hugging Face ``config.json``.

Only what the simulator needs is kept: the shape of one decoder layer (all decoder layers of the models we
cover are identical), the non-layer weights (embeddings, LM head), and the derived byte and FLOP counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sim.core.hf_config import ModelSpecError, read_hf_config, short_text

# ModelSpecError is defined beside the config reader (which raises it too) and is part of this API
__all__ = ["PRESETS", "ModelSpec", "ModelSpecError", "from_hf_config", "get_model"]


_MAX_SHAPE = {"num_layers": 10_000, "hidden_size": 1 << 20, "num_heads": 1 << 16, "num_kv_heads": 1 << 16,
              "head_dim": 1 << 16, "intermediate_size": 1 << 22, "vocab_size": 1 << 24, "dtype_bytes": 8,
              "max_position": 1 << 24, "norms_per_layer": 16}


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer.

    ``arch`` selects the layer layout: ``llama`` (RMSNorm, RoPE, gated MLP, no biases unless the fields below
    say so; also Mistral, Qwen, InternLM, Phi-3 and Gemma), ``opt`` (LayerNorm with bias, learned
    positions, ReLU MLP, biases everywhere) or ``phi`` (Phi-2: attention and MLP in parallel on one
    LayerNorm, partial RoPE, GELU MLP, biases everywhere; the torch backend does not implement it).

    The layout fields after ``max_position`` add to what ``arch`` implies (OPT has every bias and LayerNorm
    whatever they say); their defaults add nothing, so a spec that does not set them keeps its numbers.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True
    arch: Literal["llama", "opt", "phi"] = "llama"
    qkv_bias: bool = False
    tie_embeddings: bool = False
    dtype_bytes: int = 2
    max_position: int = 4096
    o_bias: bool = False  # bias on the attention output projection (InternLM, Phi-2)
    mlp_bias: bool = False  # biases on the MLP projections (Phi-2)
    layer_norm: bool = False  # LayerNorm (weight and bias) instead of RMSNorm (Phi-2)
    norms_per_layer: int = 2  # Phi-2: 1 (one norm feeds attention and MLP); Gemma-2: 4 (pre- and post-norms)
    lm_head_bias: bool = False  # Phi-2

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                      "intermediate_size", "vocab_size", "dtype_bytes", "max_position", "norms_per_layer"):
            v = getattr(self, field)
            # bounded far beyond any real model: per-layer tables and plans are sized by these
            if not 0 < v <= _MAX_SHAPE[field]:
                got = v if abs(v) < 10**30 else f"a number of {len(str(abs(int(v))))} digits"
                raise ModelSpecError(f"model {self.name[:100]}: {field} must be in [1, {_MAX_SHAPE[field]:,}], "
                                     f"got {got}")
        if self.num_heads % self.num_kv_heads:
            raise ModelSpecError(
                f"model {self.name}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")

    # --- shapes -------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    # --- parameters of one decoder layer, by operator ------------------------------------------------
    @property
    def qkv_params(self) -> int:
        bias = (self.q_dim + 2 * self.kv_dim) if (self.qkv_bias or self.arch == "opt") else 0
        return self.hidden_size * (self.q_dim + 2 * self.kv_dim) + bias

    @property
    def o_params(self) -> int:
        return self.q_dim * self.hidden_size + (self.hidden_size if (self.o_bias or self.arch == "opt") else 0)

    @property
    def up_params(self) -> int:
        """Gate and up projections (gated MLP) or the single fc1 (OPT, Phi-2)."""
        n_up = 2 if self.gated_mlp else 1
        bias = n_up * self.intermediate_size if (self.mlp_bias or self.arch == "opt") else 0
        return n_up * self.hidden_size * self.intermediate_size + bias

    @property
    def down_params(self) -> int:
        bias = self.hidden_size if (self.mlp_bias or self.arch == "opt") else 0
        return self.intermediate_size * self.hidden_size + bias

    @property
    def _norm_width(self) -> int:
        """Parameters of one norm: LayerNorm has a bias, RMSNorm does not."""
        return self.hidden_size * (2 if (self.layer_norm or self.arch == "opt") else 1)

    @property
    def norm_params(self) -> int:
        return self.norms_per_layer * self._norm_width

    @property
    def matmul_params_per_layer(self) -> int:
        return self.qkv_params + self.o_params + self.up_params + self.down_params

    @property
    def params_per_layer(self) -> int:
        return self.matmul_params_per_layer + self.norm_params

    @property
    def weight_bytes_per_layer(self) -> int:
        """Bytes of one decoder layer's weights (what an offloaded layer moves over PCIe)."""
        return self.params_per_layer * self.dtype_bytes

    @property
    def non_layer_params(self) -> int:
        """Token embedding, LM head (unless tied) and its bias, final norm and OPT's learned positions."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        head_bias = self.vocab_size if self.lm_head_bias else 0
        pos = self.max_position * self.hidden_size if self.arch == "opt" else 0
        return emb + head + head_bias + pos + self._norm_width

    @property
    def non_layer_bytes(self) -> int:
        return self.non_layer_params * self.dtype_bytes

    @property
    def total_weight_bytes(self) -> int:
        return self.num_layers * self.weight_bytes_per_layer + self.non_layer_bytes

    # --- KV cache -----------------------------------------------------------------------------------
    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return 2 * self.kv_dim * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes of one token over all layers."""
        return self.num_layers * self.kv_bytes_per_token_per_layer

    # --- FLOPs --------------------------------------------------------------------------------------
    @property
    def matmul_flops_per_token_per_layer(self) -> int:
        """FLOPs of the layer's weight matrix products for one token (2 per multiply-add)."""
        return 2 * self.matmul_params_per_layer

    @property
    def attn_flops_per_pair(self) -> int:
        """FLOPs of attention for one (query token, key token) pair in one layer: QK^T and PV."""
        return 4 * self.q_dim

    def with_dtype_bytes(self, dtype_bytes: int) -> "ModelSpec":
        return replace(self, dtype_bytes=dtype_bytes)

    # --- parallelism ----------------------------------------------------------------------------------
    def check_parallel(self, tp: int, pp: int = 1) -> None:
        """Raise `ModelSpecError` unless the model splits over ``tp`` tensor-parallel ranks (Megatron:
        heads, KV heads and the MLP width divide evenly; KV heads are replicated when ``tp`` exceeds them,
        which needs ``tp`` to be a multiple of them) and ``pp`` pipeline stages (at most one per layer)."""
        if tp < 1 or pp < 1:
            raise ModelSpecError(f"model {self.name}: tp and pp must be >= 1, got tp={tp}, pp={pp}")
        kv_ok = self.num_kv_heads % tp == 0 if tp <= self.num_kv_heads else tp % self.num_kv_heads == 0
        if self.num_heads % tp or self.intermediate_size % tp or not kv_ok:
            raise ModelSpecError(
                f"model {self.name}: tp={tp} must divide num_heads ({self.num_heads}) and intermediate_size "
                f"({self.intermediate_size}), and divide num_kv_heads ({self.num_kv_heads}) or be a multiple of it")
        if pp > self.num_layers:
            raise ModelSpecError(f"model {self.name}: pp={pp} exceeds num_layers ({self.num_layers})")

    def shard(self, tp: int = 1, pp: int = 1) -> "ModelSpec":
        """The slice of the model one GPU holds under ``tp``-way tensor and ``pp``-way pipeline parallelism
        (Megatron layout): its heads, KV heads (one replicated head when ``tp`` exceeds them), MLP columns
        and vocabulary rows (vocabulary-parallel embedding and LM head, padded up), and the layers of the
        largest pipeline stage. The hidden size, norms and positions stay whole. Weight bytes, KV bytes per
        token and FLOPs of the slice are one rank's; with ``pp`` > 1 every stage is taken to hold the
        embedding and the LM head (conservative by one of them). ``shard(1, 1)`` is the model itself."""
        self.check_parallel(tp, pp)
        if tp == 1 and pp == 1:
            return self
        return replace(self, name=f"{self.name}/tp{tp}" + (f"pp{pp}" if pp > 1 else ""),
                       num_layers=-(-self.num_layers // pp), num_heads=self.num_heads // tp,
                       num_kv_heads=max(1, self.num_kv_heads // tp), intermediate_size=self.intermediate_size // tp,
                       vocab_size=-(-self.vocab_size // tp))

    def summary(self) -> str:
        return (f"{self.name}: {self.num_layers} layers, {self.weight_bytes_per_layer / 1e6:.0f} MB/layer, "
                f"{self.total_weight_bytes / 1e9:.1f} GB weights, "
                f"{self.kv_bytes_per_token / 1024:.0f} KiB KV/token")


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
           max_pos: int = 4096, **kw: object) -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=hidden // heads, intermediate_size=inter, vocab_size=vocab, max_position=max_pos,
                     **kw)  # type: ignore[arg-type]


def _opt(name: str, layers: int, hidden: int, heads: int, ffn: int) -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=heads,
                     head_dim=hidden // heads, intermediate_size=ffn, vocab_size=50272, gated_mlp=False,
                     arch="opt", tie_embeddings=True, max_position=2050)


# Shapes from each model's config.json on the Hugging Face hub (facebook/opt-*, meta-llama/*, Qwen/*).
PRESETS: dict[str, ModelSpec] = {
    # facebook/opt-6.7b, opt-13b, opt-30b config.json: hidden, layers, heads, ffn_dim; vocab 50272, tied
    "opt-6.7b": _opt("opt-6.7b", 32, 4096, 32, 16384),
    "opt-13b": _opt("opt-13b", 40, 5120, 40, 20480),
    "opt-30b": _opt("opt-30b", 48, 7168, 56, 28672),
    # meta-llama/Llama-2-{7b,13b,70b}-hf config.json
    "llama-2-7b": _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000),
    "llama-2-13b": _llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000),
    "llama-2-70b": _llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000),
    # meta-llama/Meta-Llama-3-{8B,70B} config.json (GQA with 8 KV heads, 128,256-token vocabulary)
    "llama-3-8b": _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, max_pos=8192),
    "llama-3-70b": _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, max_pos=8192),
    # Qwen/Qwen2.5-{7B,14B} config.json (QKV biases; 7B ties no embeddings)
    "qwen2.5-7b": _llama("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, max_pos=32768, qkv_bias=True),
    "qwen2.5-14b": _llama("qwen2.5-14b", 48, 5120, 40, 8, 13824, 152064, max_pos=32768, qkv_bias=True),
    # Qwen/Qwen-7B config.json (the Select-N paper's Qwen-7B): 32 layers, MHA, intermediate 22016/2
    "qwen-7b": _llama("qwen-7b", 32, 4096, 32, 32, 11008, 151936, max_pos=8192, qkv_bias=True),
}


def from_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """A `ModelSpec` from a Hugging Face ``config.json`` of a dense decoder (`sim.core.hf_config` reads it:
    Llama, Mistral, Qwen2/Qwen2.5/Qwen3, Qwen v1, InternLM(2), Phi-2, Phi-3, Gemma(-2), OPT); ``name``
    overrides the config's. Errors (`ModelSpecError`) name the file and the field."""
    default_name, dtype_bytes, fields = read_hf_config(path)
    try:
        return ModelSpec(name=name or default_name, dtype_bytes=dtype_bytes, **fields)
    except ModelSpecError as e:
        raise ModelSpecError(f"{Path(path)}: {e}") from None



def get_model(name_or_path: str | Path) -> ModelSpec:
    """A preset by name (case-insensitive) or a path to a ``config.json`` (or a folder holding one)."""
    key = str(name_or_path).lower()
    if key in PRESETS:
        return PRESETS[key]
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if p.suffix == ".json" or p.exists():
        return from_hf_config(p)
    raise ModelSpecError(
        f"unknown model {short_text(repr(str(name_or_path)))}: allowed are the presets {', '.join(sorted(PRESETS))} "
        f"or a path to a Hugging Face config.json")
