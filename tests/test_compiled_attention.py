"""The explicit causal attention that compiled CPU graphs use equals SDPA, values and gradients."""

import torch
import torch.nn.functional as F

from mai.model.config import ModelConfig
from mai.model.transformer import Transformer, causal_attention


def test_explicit_causal_attention_equals_sdpa_with_grouped_queries():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 33, 16, requires_grad=True)
    k = torch.randn(2, 2, 33, 16, requires_grad=True)
    v = torch.randn(2, 2, 33, 16, requires_grad=True)
    ours = causal_attention(q, k, v)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(ours, want, atol=1e-6)
    g_ours = torch.autograd.grad(ours.square().sum(), (q, k, v))
    g_want = torch.autograd.grad(want.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_ours, g_want, strict=True))


def test_compiled_model_matches_eager_logits_and_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                      max_seq_len=32)
    model = Transformer(cfg)
    x = torch.randint(0, 64, (3, 32))
    eager = model(x)
    g_eager = torch.autograd.grad(eager.logsumexp(-1).mean(), list(model.parameters()))
    compiled = torch.compile(model)(x)
    g_compiled = torch.autograd.grad(compiled.logsumexp(-1).mean(), list(model.parameters()))
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_compiled, g_eager, strict=True))
