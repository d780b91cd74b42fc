"""mai's decoder against Hugging Face transformers' Llama: same weights, same logits (fp32)."""

import pytest
import torch

from mai.interop.hf_names import (
    hf_config_to_mai,
    hf_to_mai_state_dict,
    mai_config_to_hf,
    mai_to_hf_state_dict,
)
from mai.model.transformer import Transformer

transformers = pytest.importorskip("transformers")


def small_hf_config(**extra):
    return transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=160, max_position_embeddings=64, rope_theta=5000.0, rms_norm_eps=1e-5, **extra
    )


@pytest.mark.parametrize("tied", [False, True])
def test_hf_llama_to_mai_logits_agree(tied):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(small_hf_config(tie_word_embeddings=tied)).eval()
    cfg = hf_config_to_mai(hf.config.to_dict())
    assert cfg.tie_embeddings == tied and cfg.n_kv_heads == 2 and cfg.rope_theta == 5000.0
    model = Transformer(cfg).eval()
    model.load_state_dict(hf_to_mai_state_dict(hf.state_dict(), cfg), strict=True)
    tokens = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()


def test_mai_to_hf_roundtrip_logits_agree():
    torch.manual_seed(1)
    cfg = hf_config_to_mai(small_hf_config().to_dict())
    model = Transformer(cfg).eval()
    hf_cfg = transformers.LlamaConfig(**mai_config_to_hf(cfg))
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(mai_to_hf_state_dict(model.state_dict(), cfg), strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m]
    tokens = torch.randint(0, 300, (1, 50))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-5, rtol=0)
