"""Reading a Hugging Face ``config.json`` into the fields of a `sim.core.model.ModelSpec`: one reader per
family layout (Llama and its relatives, Qwen v1, Phi-2, OPT), typed field reads whose errors name the file,
the field and the model_type, and the refusals (mixture-of-experts, quantized checkpoints).
`sim.core.model.from_hf_config` builds the spec from what `read_hf_config` returns."""

from __future__ import annotations

import json
from pathlib import Path

from sim.core.units import MiB

MAX_CONFIG_BYTES = 4 * MiB  # a Hugging Face config.json is a few KB


class ModelSpecError(ValueError):
    """A model name or config file that memslo cannot turn into a `ModelSpec`."""


def short_text(x: object, n: int = 100) -> str:
    """``x`` as text, cut to ``n`` characters (for error messages quoting user input)."""
    s = str(x)
    return s if len(s) <= n else s[:n] + "..."


_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp16": 2, "bf16": 2, "float": 4, "half": 2,
                "float8_e4m3fn": 1, "float8_e5m2": 1}
# Dense families with Llama's layer layout (RMSNorm, RoPE, gated MLP); the biases and norms in which each
# family differs are set in `_llama_family`. ``mixtral_dense`` was accepted before and stays.
_LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3", "mixtral_dense", "internlm", "internlm2", "phi3", "gemma",
                 "gemma2")
_SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "qwen", "internlm", "internlm2", "phi", "phi3", "gemma",
              "gemma2", "opt")
# Mixture-of-experts families (their expert MLPs are not one dense MLP per layer): refused.
_MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek", "deepseek_v2", "deepseek_v3", "dbrx", "phimoe",
              "olmoe", "jamba", "granitemoe", "jetmoe", "arctic", "llama4", "gpt_oss", "minimax",
              "switch_transformers", "nllb_moe")
_EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_REQUIRED = object()


class _Fields:
    """Typed reads of a config.json's fields; every error names the file, the field and the model_type."""

    def __init__(self, cfg: dict, path: Path, model_type: str) -> None:
        self.cfg, self.path, self.model_type = cfg, path, model_type

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def integer(self, *keys: str, default: object = _REQUIRED) -> int:
        """The first of ``keys`` present (aliases), as a positive integer."""
        for k in keys:
            v = self.cfg.get(k)
            if v is None:
                continue
            whole = isinstance(v, int) or (isinstance(v, float) and v.is_integer())
            if isinstance(v, bool) or not whole or v <= 0:
                raise ModelSpecError(f"{self.path}: field {k!r} must be a positive integer, got {v!r}")
            return int(v)
        if default is _REQUIRED:
            raise ModelSpecError(f"{self.path}: missing field {keys[0]!r} for model_type {self.model_type!r}")
        return default  # type: ignore[return-value]

    def flag(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ModelSpecError(f"{self.path}: field {key!r} must be true or false, got {v!r}")
        return v

    def head_dim(self, hidden: int, heads: int, *keys: str) -> int:
        """An explicit head width (Gemma: 256 with 16 heads of a 3072-wide model), else hidden / heads."""
        if any(self.has(k) for k in keys):
            return self.integer(*keys)
        if hidden % heads:
            raise ModelSpecError(f"{self.path}: field 'num_attention_heads' ({heads}) must divide 'hidden_size' "
                                 f"({hidden}) when the config gives no head_dim")
        return hidden // heads

    def dtype_bytes(self) -> int:
        for key in ("torch_dtype", "dtype"):
            v = self.cfg.get(key)
            if v is None:
                continue
            if str(v) not in _DTYPE_BYTES:
                raise ModelSpecError(f"{self.path}: field {key!r} is {v!r}; allowed: {', '.join(_DTYPE_BYTES)}")
            return _DTYPE_BYTES[str(v)]
        return 4 if self.cfg.get("fp32") is True else 2  # Qwen v1 names its dtype by flags (bf16, fp16, fp32)


def _refuse_moe(f: _Fields) -> None:
    for k in _EXPERT_FIELDS:
        v = f.cfg.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1:
            raise ModelSpecError(f"{f.path}: field {k!r} = {v}: mixture-of-experts models are not supported "
                                 f"(memslo models dense decoder layers)")
    ffn = f.cfg.get("ffn_config")  # DBRX keeps its expert count one level down
    if isinstance(ffn, dict) and isinstance(ffn.get("moe_num_experts"), int) and ffn["moe_num_experts"] > 1:
        raise ModelSpecError(f"{f.path}: field 'ffn_config.moe_num_experts' = {ffn['moe_num_experts']}: "
                             f"mixture-of-experts models are not supported (memslo models dense decoder layers)")
    if f.model_type in _MOE_TYPES:
        raise ModelSpecError(f"{f.path}: model_type {f.model_type!r} is a mixture-of-experts family, which is not "
                             f"supported (memslo models dense decoder layers)")


def _llama_family(f: _Fields) -> dict:
    """Llama's layout. Biases as each family's modelling code (transformers, or the model's remote code) sets
    them: Llama and Qwen3 put ``attention_bias`` on Q, K, V and O; Qwen2 always on Q, K, V and never on O;
    InternLM and InternLM2 put ``bias`` on Q, K, V and O (InternLM's default: on); Llama's ``mlp_bias`` on
    the MLP. Gemma ties its embeddings unless the config says otherwise; Gemma-2 adds a post-norm after
    attention and after the MLP (four norms per layer)."""
    mt = f.model_type
    hidden, heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    if mt in ("internlm", "internlm2"):
        qkv_bias = o_bias = f.flag("bias", mt == "internlm")
    elif mt == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = f.flag("attention_bias", False)
    return {"num_layers": f.integer("num_hidden_layers"), "hidden_size": hidden, "num_heads": heads,
            "num_kv_heads": f.integer("num_key_value_heads", default=heads),
            "head_dim": f.head_dim(hidden, heads, "head_dim"), "intermediate_size": f.integer("intermediate_size"),
            "vocab_size": f.integer("vocab_size"), "gated_mlp": True, "arch": "llama", "qkv_bias": qkv_bias,
            "o_bias": o_bias, "mlp_bias": f.flag("mlp_bias", False), "norms_per_layer": 4 if mt == "gemma2" else 2,
            "tie_embeddings": f.flag("tie_word_embeddings", mt in ("gemma", "gemma2")),
            "max_position": f.integer("max_position_embeddings", default=4096)}


def _qwen_v1(f: _Fields) -> dict:
    """Qwen (v1, remote code): ``intermediate_size`` is the two MLP branches together (w1 and w2 are each
    half of it wide, c_proj reads half); c_attn always has a bias, c_proj and the MLP only when ``no_bias``
    is false; the head width is ``kv_channels``; the trained context is ``seq_length``."""
    hidden, heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    both = f.integer("intermediate_size")
    if both % 2:
        raise ModelSpecError(f"{f.path}: field 'intermediate_size' ({both}) must be even for model_type 'qwen' "
                             f"(it is the width of the two MLP branches together)")
    bias = not f.flag("no_bias", True)
    return {"num_layers": f.integer("num_hidden_layers"), "hidden_size": hidden, "num_heads": heads,
            "num_kv_heads": heads, "head_dim": f.head_dim(hidden, heads, "kv_channels"),
            "intermediate_size": both // 2, "vocab_size": f.integer("vocab_size"), "gated_mlp": True,
            "arch": "llama", "qkv_bias": True, "o_bias": bias, "mlp_bias": bias,
            "tie_embeddings": f.flag("tie_word_embeddings", False),
            "max_position": f.integer("seq_length", "max_position_embeddings", default=2048)}


def _phi(f: _Fields) -> dict:
    """Phi-2 (transformers' ``phi``): one LayerNorm feeding attention and the MLP in parallel, biases on Q, K,
    V, the output projection, fc1, fc2 and the LM head, a GELU MLP (not gated), untied embeddings."""
    hidden, heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    return {"num_layers": f.integer("num_hidden_layers"), "hidden_size": hidden, "num_heads": heads,
            "num_kv_heads": f.integer("num_key_value_heads", default=heads), "head_dim": f.head_dim(hidden, heads),
            "intermediate_size": f.integer("intermediate_size"), "vocab_size": f.integer("vocab_size"),
            "gated_mlp": False, "arch": "phi", "qkv_bias": True, "o_bias": True, "mlp_bias": True,
            "layer_norm": True, "norms_per_layer": 1, "lm_head_bias": True,
            "tie_embeddings": f.flag("tie_word_embeddings", False),
            "max_position": f.integer("max_position_embeddings", default=2048)}


def _opt_config(f: _Fields) -> dict:
    hidden = f.integer("hidden_size")
    if f.cfg.get("word_embed_proj_dim", hidden) != hidden:
        raise ModelSpecError(f"{f.path}: field 'word_embed_proj_dim' != hidden_size is not supported for OPT")
    heads = f.integer("num_attention_heads")
    return {"num_layers": f.integer("num_hidden_layers"), "hidden_size": hidden, "num_heads": heads,
            "num_kv_heads": heads, "head_dim": f.head_dim(hidden, heads), "intermediate_size": f.integer("ffn_dim"),
            "vocab_size": f.integer("vocab_size"), "gated_mlp": False, "arch": "opt",
            "tie_embeddings": f.flag("tie_word_embeddings", True),
            "max_position": f.integer("max_position_embeddings", default=2048) + 2}


def read_hf_config(path: str | Path) -> tuple[str, int, dict]:
    """Read a Hugging Face ``config.json`` of a dense decoder: Llama, Mistral, Qwen2/Qwen2.5 (and Qwen3), Qwen
    (v1), InternLM, InternLM2, Phi-2, Phi-3, Gemma, Gemma-2 or OPT. Anything else, a mixture-of-experts model
    or a quantized checkpoint raises `ModelSpecError` naming the file and the field. Returns the model's name
    (``_name_or_path``, else the folder's), its bytes per parameter and the other `ModelSpec` fields."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelSpecError(f"{path}: over {MAX_CONFIG_BYTES // MiB} MiB; not a model config.json")
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelSpecError(f"{path}: model config file not found") from None
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise ModelSpecError(f"{path}: cannot read the model config: {short_text(getattr(e, 'strerror', None) or e)}") \
            from None
    if not isinstance(cfg, dict):
        raise ModelSpecError(f"{path}: a model config.json holds a JSON object, got {type(cfg).__name__}")
    f = _Fields(cfg, path, short_text(cfg.get("model_type", "llama"), 40).lower())
    _refuse_moe(f)
    if f.model_type not in _SUPPORTED and f.model_type not in _LLAMA_FAMILY:
        raise ModelSpecError(f"{path}: model_type {f.model_type!r} is not supported "
                             f"(allowed: {', '.join(_SUPPORTED)})")
    if cfg.get("quantization_config") is not None:
        raise ModelSpecError(f"{path}: field 'quantization_config': quantized checkpoints are not supported "
                             f"(give the full-precision config; for FP8 weights set dtype_bytes: 1)")
    if f.model_type == "opt":
        fields = _opt_config(f)
    elif f.model_type == "qwen":
        fields = _qwen_v1(f)
    elif f.model_type == "phi":
        fields = _phi(f)
    else:
        fields = _llama_family(f)
    return short_text(cfg.get("_name_or_path") or path.parent.name or path.stem), f.dtype_bytes(), fields
