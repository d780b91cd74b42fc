"""The explicit causal attention that compiled CPU graphs use equals SDPA, values and gradients.
(Compiled training through it is checked against eager training in tests/train/test_end_to_end.py.)"""

import torch
import torch.nn.functional as F

from mai.model.transformer import causal_attention


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

