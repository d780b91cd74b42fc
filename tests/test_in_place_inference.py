"""Without autograd the decoder writes elementwise results into its own fresh buffers: the outputs equal
the autograd path's, and no caller's tensor is changed."""

import torch

from mai.model.config import ModelConfig
from mai.model.transformer import Transformer, apply_rope, rope_tables


def tiny(**extra) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=64, **extra)
    return Transformer(cfg).eval()


def test_no_grad_outputs_equal_autograd_outputs():
    for model in (tiny(), tiny(qk_norm=True, attn_bias=True)):
        tokens = torch.randint(0, 64, (2, 24))
        with_grad = model(tokens)
        assert with_grad.requires_grad
        with torch.no_grad():
            assert torch.allclose(model(tokens), with_grad.detach(), atol=1e-5)


def test_inputs_are_left_as_they_were():
    model = tiny()
    cos, sin = rope_tables(16, 64, 10000.0)
    x = torch.randn(2, 4, 10, 16)
    kept = x.clone()
    with torch.no_grad():
        rotated = apply_rope(x, cos[:10], sin[:10])
        h = torch.randn(2, 10, 64)
        h_kept = h.clone()
        out = model.layers["0"](h, cos[:10], sin[:10])
    assert torch.equal(x, kept) and torch.equal(h, h_kept)
    assert torch.allclose(rotated, apply_rope(x, cos[:10], sin[:10]).detach(), atol=1e-6)
    assert torch.allclose(out, model.layers["0"](h, cos[:10], sin[:10]).detach(), atol=1e-5)
