"""Model shapes: `ModelSpec`, its presets and loading from a Hugging Face ``config.json``.

Only what the simulator needs is kept: the shape of one decoder layer (all decoder layers of the models we
cover are identical), the non-layer weights (embeddings, LM head), and the derived byte and FLOP counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal


class ModelSpecError(ValueError):
    """A model name or config file that memslo cannot turn into a `ModelSpec`."""


_MAX_SHAPE = {"num_layers": 10_000, "hidden_size": 1 << 20, "num_heads": 1 << 16, "num_kv_heads": 1 << 16,
              "head_dim": 1 << 16, "intermediate_size": 1 << 22, "vocab_size": 1 << 24, "dtype_bytes": 8,
              "max_position": 1 << 24}
MAX_CONFIG_BYTES = 4 * 2**20  # a Hugging Face config.json is a few KB


def _short(x: object, n: int = 100) -> str:
    s = str(x)
    return s if len(s) <= n else s[:n] + "..."


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer.

    ``arch`` selects the layer layout: ``llama`` (RMSNorm, RoPE, gated SiLU MLP, no biases; also Mistral and
    Qwen2, the latter with QKV biases) or ``opt`` (LayerNorm with bias, learned positions, ReLU MLP, biases).
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
    arch: Literal["llama", "opt"] = "llama"
    qkv_bias: bool = False
    tie_embeddings: bool = False
    dtype_bytes: int = 2
    max_position: int = 4096

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                      "intermediate_size", "vocab_size", "dtype_bytes", "max_position"):
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
        return self.q_dim * self.hidden_size + (self.hidden_size if self.arch == "opt" else 0)

    @property
    def up_params(self) -> int:
        """Gate and up projections (gated MLP) or the single fc1 (OPT)."""
        n_up = 2 if self.gated_mlp else 1
        bias = self.intermediate_size if self.arch == "opt" else 0
        return n_up * self.hidden_size * self.intermediate_size + bias

    @property
    def down_params(self) -> int:
        return self.intermediate_size * self.hidden_size + (self.hidden_size if self.arch == "opt" else 0)

    @property
    def norm_params(self) -> int:
        # two norms per layer; LayerNorm has a bias, RMSNorm does not
        return 2 * self.hidden_size * (2 if self.arch == "opt" else 1)

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
        """Token embedding, LM head (unless tied), final norm and OPT's learned positions."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        pos = self.max_position * self.hidden_size if self.arch == "opt" else 0
        return emb + head + pos + self.hidden_size * (2 if self.arch == "opt" else 1)

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


def _get(cfg: dict, *keys: str, default: object = None) -> object:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp16": 2, "bf16": 2, "float": 4, "half": 2}


def from_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face ``config.json`` of the Llama, Mistral, Qwen2 or OPT families."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelSpecError(f"{path}: over {MAX_CONFIG_BYTES // 2**20} MiB; not a model config.json")
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelSpecError(f"{path}: model config file not found") from None
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise ModelSpecError(f"{path}: cannot read the model config: {_short(getattr(e, 'strerror', None) or e)}") \
            from None
    if not isinstance(cfg, dict):
        raise ModelSpecError(f"{path}: a model config.json holds a JSON object, got {type(cfg).__name__}")
    model_type = _short(cfg.get("model_type", "llama"), 40).lower()
    name = name or _short(cfg.get("_name_or_path") or path.parent.name or path.stem)
    dtype = _DTYPE_BYTES.get(str(cfg.get("torch_dtype", "float16")), 2)
    try:
        if model_type == "opt":
            hidden = int(cfg["hidden_size"])
            if cfg.get("word_embed_proj_dim", hidden) != hidden:
                raise ModelSpecError(f"{path}: OPT with word_embed_proj_dim != hidden_size is not supported")
            heads = int(cfg["num_attention_heads"])
            return ModelSpec(
                name=name, num_layers=int(cfg["num_hidden_layers"]), hidden_size=hidden, num_heads=heads,
                num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=int(cfg["ffn_dim"]),
                vocab_size=int(cfg["vocab_size"]), gated_mlp=False, arch="opt",
                tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), dtype_bytes=dtype,
                max_position=int(cfg.get("max_position_embeddings", 2048)) + 2)
        if model_type not in ("llama", "mistral", "qwen2", "qwen3", "mixtral_dense"):
            raise ModelSpecError(
                f"{path}: model_type {model_type!r} is not supported (allowed: llama, mistral, qwen2, opt)")
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(_get(cfg, "num_key_value_heads", default=heads))  # type: ignore[arg-type]
        head_dim = int(_get(cfg, "head_dim", default=hidden // heads))  # type: ignore[arg-type]
        return ModelSpec(
            name=name, num_layers=int(cfg["num_hidden_layers"]), hidden_size=hidden, num_heads=heads,
            num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]), gated_mlp=True, arch="llama",
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), dtype_bytes=dtype,
            max_position=int(cfg.get("max_position_embeddings", 4096)))
    except ModelSpecError as e:
        raise ModelSpecError(f"{path}: {e}") if not str(e).startswith(str(path)) else e from None
    except KeyError as e:
        raise ModelSpecError(f"{path}: missing field {e.args[0]!r} for model_type {model_type!r}") from None
    except (ValueError, TypeError, OverflowError, ZeroDivisionError) as e:  # a field that is not a usable number
        raise ModelSpecError(f"{path}: a field is not a valid positive number ({_short(e)})") from None


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
        f"unknown model {_short(repr(str(name_or_path)))}: allowed are the presets {', '.join(sorted(PRESETS))} "
        f"or a path to a Hugging Face config.json")
