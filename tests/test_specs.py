"""Model and hardware specs against published figures (docs/architecture.md, 'Reference figures')."""

import pytest

from sim.core.hardware import PRESETS as HW
from sim.core.hardware import HardwareSpecError, get_hardware
from sim.core.model import PRESETS, ModelSpecError, from_hf_config, get_model
from sim.core.units import KiB

from .helpers import FIXTURES


@pytest.mark.parametrize("name,mb", [("llama-2-7b", 405), ("llama-2-13b", 634), ("llama-2-70b", 1711),
                                     ("opt-13b", 629)])
def test_layer_bytes_match_published(name, mb):
    assert PRESETS[name].weight_bytes_per_layer / 1e6 == pytest.approx(mb, abs=1)


@pytest.mark.parametrize("name,kib", [("llama-2-7b", 512), ("llama-2-13b", 800), ("llama-3-8b", 128),
                                      ("llama-2-70b", 320)])
def test_kv_bytes_per_token(name, kib):
    assert PRESETS[name].kv_bytes_per_token == kib * KiB


def test_llama2_7b_by_hand():
    m = PRESETS["llama-2-7b"]
    # q,k,v,o: 4 * 4096^2; gate, up, down: 3 * 4096 * 11008; two RMSNorm weights: 2 * 4096
    assert m.params_per_layer == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    assert m.matmul_flops_per_token_per_layer == 2 * (4 * 4096**2 + 3 * 4096 * 11008)
    assert m.attn_flops_per_pair == 4 * 4096
    # about 6.7e9 parameters in all
    assert 6.6e9 < m.total_weight_bytes / 2 < 6.8e9


@pytest.mark.parametrize("folder,preset", [("llama-2-7b", "llama-2-7b"), ("qwen2.5-7b", "qwen2.5-7b"),
                                           ("opt-13b", "opt-13b")])
def test_hf_config_matches_preset(folder, preset):
    m = from_hf_config(FIXTURES / "hf" / folder / "config.json")
    p = PRESETS[preset]
    assert m.weight_bytes_per_layer == p.weight_bytes_per_layer
    assert m.kv_bytes_per_token == p.kv_bytes_per_token
    assert m.num_layers == p.num_layers


def test_hf_mistral_gqa():
    m = get_model(str(FIXTURES / "hf" / "mistral-7b"))
    assert (m.num_kv_heads, m.head_dim) == (8, 128)
    assert m.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2  # 128 KiB like Llama-3-8B
    assert m.dtype_bytes == 2


def test_bad_model_inputs(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown model 'gpt-9'.*allowed"):
        get_model("gpt-9")
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama", "hidden_size": 64}')
    with pytest.raises(ModelSpecError, match="missing field 'num_attention_heads'"):
        from_hf_config(bad)
    bad.write_text('{"model_type": "t5"}')
    with pytest.raises(ModelSpecError, match="not supported"):
        from_hf_config(bad)
    bad.write_text("{not json")
    with pytest.raises(ModelSpecError, match="not valid JSON"):
        from_hf_config(bad)


def test_hardware_presets_and_overrides():
    assert set(HW) == {"a10", "a100-80g", "h100-sxm", "h200", "gh200", "dgx-h100", "hgx-a100-8", "pcie-l40s-8"}
    h = get_hardware("H100-SXM", h2d_bytes_per_s=25e9)
    assert h.h2d_bytes_per_s == 25e9 and h.hbm_bytes_per_s == 3.35e12
    with pytest.raises(HardwareSpecError, match="unknown hardware field.*allowed"):
        get_hardware("a10", pcie_gen=4)
    with pytest.raises(HardwareSpecError, match="unknown GPU 'v100'"):
        get_hardware("v100")
    with pytest.raises(HardwareSpecError, match="h2d_bytes_per_s must be > 0"):
        get_hardware("a10", h2d_bytes_per_s=0)


def test_a10_copy_to_compute_ratio_is_paper_like():
    """Select-N's A10: one layer's copy is several times its decode compute (paper: 13.8x decode at batch
    128, seq 64) -- the preset's HBM/PCIe ratio must put us in that range."""
    assert 20 < HW["a10"].hbm_over_pcie < 30
    assert 55 < HW["h100-sxm"].hbm_over_pcie < 70  # docs/architecture.md: ~60 on H100 + Gen5
