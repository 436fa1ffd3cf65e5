"""`from_hf_config` on one real model per family (tests/fixtures/hf/README.md says which), against the shapes
in each model's published config.json and a derived quantity worked out by hand from the family's layout;
the refusals (mixture-of-experts, unsupported families, bad fields); and the presets' numbers unchanged by
the layout fields the families added.
"""

from __future__ import annotations

import json

import pytest

from sim.core.model import PRESETS, ModelSpec, ModelSpecError, from_hf_config
from sim.core.units import KiB

from .helpers import FIXTURES

HF = FIXTURES / "hf"

# (folder, model_type, layers, hidden, heads, kv heads, head dim, MLP width per branch, vocab, tied embeddings):
# the numbers of each model's config.json on the Hugging Face hub (the hub ids are in tests/fixtures/hf/README.md).
PUBLISHED = [
    # meta-llama/Llama-2-7b-hf
    ("llama-2-7b", "llama", 32, 4096, 32, 32, 128, 11008, 32000, False),
    # mistralai/Mistral-7B-v0.1: GQA, 8 KV heads
    ("mistral-7b", "mistral", 32, 4096, 32, 8, 128, 14336, 32000, False),
    # Qwen/Qwen2.5-7B: 28 Q heads, 4 KV heads (model card: "Number of Attention Heads (GQA): 28 for Q and 4 for KV")
    ("qwen2.5-7b", "qwen2", 28, 3584, 28, 4, 128, 18944, 152064, False),
    # Qwen/Qwen-7B: intermediate_size 22016 is both branches, 11008 each; kv_channels 128
    ("qwen-7b", "qwen", 32, 4096, 32, 32, 128, 11008, 151936, False),
    # internlm/internlm-7b
    ("internlm-7b", "internlm", 32, 4096, 32, 32, 128, 11008, 103168, False),
    # internlm/internlm2-chat-7b: GQA, 8 KV heads
    ("internlm2-chat-7b", "internlm2", 32, 4096, 32, 8, 128, 14336, 92544, False),
    # microsoft/phi-2: head dim 2560 / 32 = 80, MLP 4 x hidden, not gated
    ("phi-2", "phi", 32, 2560, 32, 32, 80, 10240, 51200, False),
    # microsoft/Phi-3-mini-4k-instruct: head dim 3072 / 32 = 96
    ("phi-3-mini-4k-instruct", "phi3", 32, 3072, 32, 32, 96, 8192, 32064, False),
    # google/gemma-7b: head_dim 256 explicit (16 heads x 256 = 4096 != hidden 3072); Gemma ties its embeddings
    ("gemma-7b", "gemma", 28, 3072, 16, 16, 256, 24576, 256000, True),
    # google/gemma-2-9b-it: head_dim 256, GQA 16/8
    ("gemma-2-9b-it", "gemma2", 42, 3584, 16, 8, 256, 14336, 256000, True),
    # facebook/opt-13b: ffn_dim 20480, tied
    ("opt-13b", "opt", 40, 5120, 40, 40, 128, 20480, 50272, True),
]


@pytest.mark.parametrize("case", PUBLISHED, ids=[c[0] for c in PUBLISHED])
def test_shapes_match_the_published_config(case):
    folder, model_type, layers, hidden, heads, kv, head_dim, inter, vocab, tied = case
    assert json.loads((HF / folder / "config.json").read_text())["model_type"] == model_type
    m = from_hf_config(HF / folder / "config.json")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate_size,
            m.vocab_size, m.tie_embeddings) == (layers, hidden, heads, kv, head_dim, inter, vocab, tied)
    # KV bytes per token by hand: K and V, kv heads x head dim, 2 bytes (every fixture is fp16/bf16)
    assert m.kv_bytes_per_token == layers * 2 * kv * head_dim * 2


def _non_embedding(m: ModelSpec) -> int:
    """Parameters outside the embedding table and LM head: the decoder layers and the final norm."""
    return m.num_layers * m.params_per_layer + m.non_layer_params - m.vocab_size * m.hidden_size * (
        1 if m.tie_embeddings else 2) - (m.vocab_size if m.lm_head_bias else 0)


def _total(m: ModelSpec) -> int:
    return m.num_layers * m.params_per_layer + m.non_layer_params


def test_qwen_v1_halves_its_intermediate_size_and_matches_the_preset(tmp_path):
    m = from_hf_config(HF / "qwen-7b" / "config.json")
    h, i = 4096, 11008  # 22016 / 2 per branch (w1, w2), c_proj reads 11008
    # c_attn (QKV) has a bias; with no_bias: true, c_proj and the MLP have none; two RMSNorms
    assert m.params_per_layer == (h * 3 * h + 3 * h) + h * h + 3 * h * i + 2 * h
    assert m.weight_bytes_per_layer == PRESETS["qwen-7b"].weight_bytes_per_layer
    assert m.max_position == 8192  # seq_length, the trained context
    # Hugging Face hub: Qwen/Qwen-7B has 7.72B parameters; read as llama (22016 per branch) it would be 10.6B
    assert _total(m) == pytest.approx(7.72e9, rel=0.01)
    as_llama = _read(tmp_path, {**_cfg("qwen-7b"), "model_type": "llama"})
    assert as_llama.intermediate_size == 22016 and _total(as_llama) > 10.5e9


def test_internlm_biases_by_hand():
    v1 = from_hf_config(HF / "internlm-7b" / "config.json")
    h, i = 4096, 11008
    # bias: true puts a bias on Q, K, V and O (InternLM's modeling code); gated MLP without biases
    assert v1.params_per_layer == 4 * (h * h + h) + 3 * h * i + 2 * h
    assert v1.dtype_bytes == 2
    v2 = from_hf_config(HF / "internlm2-chat-7b" / "config.json")
    kv = 8 * 128
    assert v2.params_per_layer == h * (h + 2 * kv) + h * h + 3 * h * 14336 + 2 * h  # bias: false
    # Hugging Face hub: internlm/internlm2-chat-7b has 7.74B parameters
    assert _total(v2) == pytest.approx(7.74e9, rel=0.01)


def test_phi2_layout_by_hand():
    m = from_hf_config(HF / "phi-2" / "config.json")
    h, i, v = 2560, 10240, 51200
    assert (m.arch, m.gated_mlp, m.layer_norm, m.norms_per_layer) == ("phi", False, True, 1)
    # Q, K, V and dense with biases; fc1, fc2 with biases; ONE LayerNorm (weight + bias): attention and MLP
    # read the same normed input
    assert m.params_per_layer == 3 * (h * h + h) + (h * h + h) + (h * i + i) + (i * h + h) + 2 * h
    # embedding, LM head with its bias, final LayerNorm
    assert m.non_layer_params == v * h + (v * h + v) + 2 * h
    # microsoft/phi-2 model card: "a Transformer with 2.7 billion parameters" (hub: 2.78B)
    assert _total(m) == pytest.approx(2.78e9, rel=0.01)


def test_phi3_mini_by_hand():
    m = from_hf_config(HF / "phi-3-mini-4k-instruct" / "config.json")
    h, i = 3072, 8192
    assert m.params_per_layer == 4 * h * h + 3 * h * i + 2 * h  # fused qkv_proj, gate_up_proj, no biases
    # microsoft/Phi-3-mini-4k-instruct model card: "a 3.8B parameters ... model"
    assert _total(m) == pytest.approx(3.8e9, rel=0.01)


def test_gemma_against_the_papers_parameter_counts():
    # Gemma (arXiv 2403.08295), Table 2: 7B has 7,751,248,896 non-embedding parameters. Per layer: Q, K, V 16 x 256
    # wide each, O back, a gated GELU MLP of 24576, two RMSNorms; plus the final norm.
    g1 = from_hf_config(HF / "gemma-7b" / "config.json")
    h, q = 3072, 16 * 256
    assert g1.params_per_layer == 3 * h * q + q * h + 3 * h * 24576 + 2 * h
    assert _non_embedding(g1) == 7_751_248_896
    # Gemma 2 (arXiv 2408.00118), Table 1: 9B has 917,504,000 embedding and 8,324,201,984 non-embedding
    # parameters. Four RMSNorms per layer (pre- and post-norm around attention and around the MLP).
    g2 = from_hf_config(HF / "gemma-2-9b-it" / "config.json")
    h, q, kv = 3584, 16 * 256, 8 * 256
    assert g2.norms_per_layer == 4
    assert g2.params_per_layer == h * (q + 2 * kv) + q * h + 3 * h * 14336 + 4 * h
    assert _non_embedding(g2) == 8_324_201_984
    assert g2.vocab_size * g2.hidden_size == 917_504_000
    assert g2.tie_embeddings and _total(g2) == 917_504_000 + 8_324_201_984


def test_mistral_and_qwen2_totals():
    # Hugging Face hub: mistralai/Mistral-7B-v0.1 has 7.24B parameters
    assert _total(from_hf_config(HF / "mistral-7b" / "config.json")) == pytest.approx(7.24e9, rel=0.01)
    # Qwen/Qwen2.5-7B model card: "Number of Parameters: 7.61B; Number of Parameters (Non-Embedding): 6.53B"
    q = from_hf_config(HF / "qwen2.5-7b" / "config.json")
    assert (q.qkv_bias, q.o_bias) == (True, False)  # Qwen2: biases on Q, K, V only
    assert _total(q) == pytest.approx(7.61e9, rel=0.01)
    assert _non_embedding(q) == pytest.approx(6.53e9, rel=0.01)


# --- refusals -------------------------------------------------------------------------------------------------

def _cfg(folder: str) -> dict:
    return json.loads((HF / folder / "config.json").read_text())


def _read(tmp_path, cfg: dict) -> ModelSpec:
    """from_hf_config on an edited config."""
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return from_hf_config(p)


MOE = [
    # mistralai/Mixtral-8x7B-v0.1: 8 experts per layer
    ({**_cfg("mistral-7b"), "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2},
     "num_local_experts"),
    # Qwen/Qwen1.5-MoE-A2.7B: 60 experts
    ({**_cfg("qwen2.5-7b"), "model_type": "qwen2_moe", "num_experts": 60}, "num_experts"),
    # deepseek-ai/DeepSeek-V2-Lite: 64 routed experts
    ({**_cfg("llama-2-7b"), "model_type": "deepseek_v2", "n_routed_experts": 64}, "n_routed_experts"),
    # a llama-typed config that carries experts is refused by the field, whatever its model_type
    ({**_cfg("llama-2-7b"), "num_local_experts": 4}, "num_local_experts"),
    # databricks/dbrx-base keeps the count under ffn_config
    ({"model_type": "dbrx", "ffn_config": {"moe_num_experts": 16}}, "ffn_config.moe_num_experts"),
    # the family alone is enough
    ({**_cfg("mistral-7b"), "model_type": "mixtral"}, "model_type 'mixtral'"),
]


@pytest.mark.parametrize("cfg,field", MOE, ids=[f for _, f in MOE])
def test_mixture_of_experts_is_refused_with_the_reason(tmp_path, cfg, field):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ModelSpecError) as e:
        from_hf_config(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and "mixture-of-experts" in msg and "\n" not in msg


BAD = [
    ({"model_type": "t5"}, r"model_type 't5' is not supported \(allowed: llama, .*opt\)"),
    ({**_cfg("llama-2-7b"), "hidden_size": "4096"}, "field 'hidden_size' must be a positive integer, got '4096'"),
    ({**_cfg("llama-2-7b"), "num_hidden_layers": 0}, "field 'num_hidden_layers' must be a positive integer"),
    ({**_cfg("internlm-7b"), "bias": "yes"}, "field 'bias' must be true or false"),
    ({**_cfg("qwen-7b"), "intermediate_size": 22017}, "field 'intermediate_size' .* must be even"),
    ({**_cfg("phi-2"), "num_attention_heads": 33}, "field 'num_attention_heads' .* must divide 'hidden_size'"),
    ({**_cfg("mistral-7b"), "num_key_value_heads": 5}, "num_heads .* must be a multiple of num_kv_heads"),
    ({**_cfg("llama-2-7b"), "torch_dtype": "int4"}, "field 'torch_dtype' is 'int4'; allowed:"),
    ({**_cfg("llama-2-7b"), "quantization_config": {"quant_method": "awq", "bits": 4}},
     "field 'quantization_config': quantized checkpoints are not supported"),
    ({k: v for k, v in _cfg("gemma-7b").items() if k != "vocab_size"},
     "missing field 'vocab_size' for model_type 'gemma'"),
]


@pytest.mark.parametrize("cfg,match", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_configs_name_the_field(tmp_path, cfg, match):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ModelSpecError, match=match) as e:
        from_hf_config(p)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_dtype_fields(tmp_path):
    assert from_hf_config(HF / "qwen-7b" / "config.json").dtype_bytes == 2  # no torch_dtype; bf16/fp16 flags
    assert _read(tmp_path, {**_cfg("qwen-7b"), "fp32": True}).dtype_bytes == 4
    assert _read(tmp_path, {**_cfg("llama-2-7b"), "torch_dtype": None, "dtype": "float32"}).dtype_bytes == 4


# --- the presets keep their numbers ---------------------------------------------------------------------------

def _before_the_layout_fields(m: ModelSpec) -> tuple[int, int, int, int, int]:
    """The derived numbers as ModelSpec computed them before o_bias, mlp_bias, layer_norm, norms_per_layer and
    lm_head_bias existed (only ``arch == "opt"`` added biases and LayerNorm)."""
    opt = m.arch == "opt"
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    h, i, v = m.hidden_size, m.intermediate_size, m.vocab_size
    qkv = h * (q + 2 * kv) + ((q + 2 * kv) if (m.qkv_bias or opt) else 0)
    o = q * h + (h if opt else 0)
    up = (2 if m.gated_mlp else 1) * h * i + (i if opt else 0)
    down = i * h + (h if opt else 0)
    norms = 2 * h * (2 if opt else 1)
    non_layer = v * h + (0 if m.tie_embeddings else v * h) + (m.max_position * h if opt else 0) + h * (2 if opt else 1)
    return ((qkv + o + up + down + norms) * m.dtype_bytes, non_layer * m.dtype_bytes,
            m.num_layers * 2 * kv * m.dtype_bytes, 2 * (qkv + o + up + down), 4 * q)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("dtype_bytes", [1, 2, 4])
def test_presets_derived_numbers_are_unchanged(name, dtype_bytes):
    m = PRESETS[name].with_dtype_bytes(dtype_bytes)
    now = (m.weight_bytes_per_layer, m.non_layer_bytes, m.kv_bytes_per_token, m.matmul_flops_per_token_per_layer,
           m.attn_flops_per_pair)
    assert now == _before_the_layout_fields(m)  # integers: exact


def test_preset_kv_and_layer_figures_still_published():
    assert PRESETS["llama-2-70b"].kv_bytes_per_token == 320 * KiB
    assert PRESETS["llama-2-7b"].weight_bytes_per_layer / 1e6 == pytest.approx(405, abs=1)


# --- the torch backend: what it runs and what it refuses -------------------------------------------------------

def test_backend_lays_out_internlm_and_gemma_and_refuses_the_rest():
    from backend.weights import LayerLayout, UnsupportedModelError  # torch: a test dependency

    for folder in ("internlm-7b", "internlm2-chat-7b", "qwen-7b", "phi-3-mini-4k-instruct", "gemma-7b"):
        spec = from_hf_config(HF / folder / "config.json")
        assert LayerLayout(spec).numel == spec.params_per_layer, folder
    with pytest.raises(UnsupportedModelError, match="arch 'phi' is not implemented by the torch backend"):
        LayerLayout(from_hf_config(HF / "phi-2" / "config.json"))
    with pytest.raises(UnsupportedModelError, match="norms_per_layer = 4 is not implemented"):
        LayerLayout(from_hf_config(HF / "gemma-2-9b-it" / "config.json"))
