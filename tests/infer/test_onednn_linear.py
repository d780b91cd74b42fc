"""oneDNN float32 linears: the same outputs as ``F.linear`` on many rows (through the oneDNN op), the plain
path for one row and for training, and a swapped model that keeps its weights, ties and names."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from mai.infer.onednn_linear import OneDnnLinear, onednn_available, swap_to_onednn
from mai.infer.quant import Int8Linear, quantize_int8
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def ops_run(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def layer(n_in: int, n_out: int, bias: bool) -> tuple[torch.nn.Linear, OneDnnLinear]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(n_in, n_out, bias=bias)
    return lin, OneDnnLinear(lin)


def test_many_rows_go_through_onednn_and_match_f_linear():
    lin, fast = layer(96, 40, bias=True)
    x = torch.randn(3, 50, 96)
    with torch.no_grad():
        assert torch.allclose(fast(x), F.linear(x, lin.weight, lin.bias), atol=1e-5)
        assert "mkldnn::_linear_pointwise" in ops_run(lambda: fast(x))


def test_one_row_and_training_keep_f_linear():
    lin, fast = layer(32, 16, bias=False)
    row = torch.randn(1, 1, 32)
    with torch.no_grad():
        assert torch.equal(fast(row), F.linear(row, lin.weight))
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: fast(row))
    x = torch.randn(8, 32)
    fast(x).square().sum().backward()  # grad enabled: the differentiable path
    want = torch.autograd.grad(F.linear(x, lin.weight).square().sum(), lin.weight)[0]
    assert torch.allclose(lin.weight.grad, want)
    with torch.no_grad():  # bfloat16 is not this op's business either
        xb, fb = x.bfloat16(), OneDnnLinear(torch.nn.Linear(32, 16).bfloat16())
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: fb(xb))


def test_swapped_model_keeps_weights_ties_names_and_outputs():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=64, tie_embeddings=True)
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        before = model(tokens)
    keys = list(model.state_dict())
    swap_to_onednn(model)
    assert isinstance(model.output, OneDnnLinear) and isinstance(model.layers["0"].attention.wq, OneDnnLinear)
    assert model.output.weight is model.tok_embeddings.weight
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(model(tokens), before, atol=1e-4)


def test_quantized_layers_stay_quantized():
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=64)
    model = swap_to_onednn(quantize_int8(Transformer(cfg).eval()))
    assert isinstance(model.layers["0"].feed_forward.w1, Int8Linear)
    assert isinstance(model.output, OneDnnLinear)  # the head stays float under int8


@pytest.mark.parametrize("wins", [True, False])
def test_models_switch_to_onednn_only_where_it_measures_faster(monkeypatch, wins):
    import mai.infer.onednn_linear as mod

    monkeypatch.setattr(mod, "onednn_wins", lambda: wins)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      max_seq_len=32)
    model = mod.use_onednn_linears(Transformer(cfg).eval())
    assert isinstance(model.output, OneDnnLinear) is wins


def test_onednn_measurement_compares_the_two_kernels():
    from mai.infer.onednn_linear import measure_onednn_factor

    factor = measure_onednn_factor(rows=64, width=128)
    assert 0.05 < factor < 20  # a ratio of two real timings of the same product
