"""Llama 3.1 "llama3" rope scaling: mai's frequencies and logits agree with transformers on a tiny Llama
whose pretraining context is short enough that the scaling changes every band, and survive export."""

import json

import pytest
import torch

from mai.interop import export_hf, load_model
from mai.model.transformer import rope_tables

transformers = pytest.importorskip("transformers")

SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 32}


def tiny_llama31():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=320, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=160, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_parameters={**SCALING, "rope_theta": 500000.0})
    return transformers.LlamaForCausalLM(cfg).eval()


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    hf = tiny_llama31()
    hf.save_pretrained(tmp_path / "in")
    loaded = load_model(tmp_path / "in")
    cfg = loaded.cfg
    assert cfg.rope_scaling_factor == 8.0 and cfg.rope_original_max_len == 32
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf.config, "cpu")
    cos, _ = rope_tables(cfg.head_dim, 4, cfg.rope_theta, cfg=cfg)
    plain, _ = rope_tables(cfg.head_dim, 4, cfg.rope_theta)
    expected = torch.cos(torch.cat([inv_freq, inv_freq]))  # position 1
    assert torch.allclose(cos[1], expected, atol=1e-6)
    assert not torch.allclose(plain[1], expected, atol=1e-3)  # the scaling does change the tables
    tokens = torch.randint(0, 320, (1, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
        assert torch.allclose(loaded.model(tokens), ref, atol=1e-4, rtol=0)
    export_hf(loaded, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["rope_scaling"]["rope_type"] == "llama3"
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(back(tokens).logits, ref, atol=1e-4, rtol=0)
