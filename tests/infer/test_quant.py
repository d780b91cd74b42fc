"""int8 weight-only quantization: exact layer arithmetic, small logit error, bytes saved, and the
perplexity change of SmolLM2-135M on real text (slow)."""

import pytest
import torch
import torch.nn.functional as F

from mai.errors import MaiError
from mai.infer.engine import Engine
from mai.infer.quant import Int8Linear, apply_quant, quantize_int8, weight_bytes
from mai.infer.sampling import SamplingParams
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.serve.catalog import Catalog, ModelEntry


def tiny_model(seed=0, bias=False):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=64, attn_bias=bias)
    return Transformer(cfg).eval()


def test_int8_linear_is_per_channel_symmetric_and_exact_to_its_dequantized_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24, bias=True)
    q = Int8Linear(lin)
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (24,)
    assert int(q.qweight.abs().amax(dim=1).min()) == 127  # each row uses the full range
    w = lin.weight.detach()
    assert torch.allclose(q.dequantized(), w, atol=float(q.scale.max()) / 2 + 1e-7)  # half a step at most
    x = torch.randn(3, 5, 48)
    assert torch.allclose(q(x), F.linear(x, q.dequantized(), lin.bias), atol=1e-5)


def test_quantized_model_stays_close_and_is_smaller():
    model = tiny_model(bias=True)
    tokens = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        ref = model(tokens)
        before = weight_bytes(model)
        quantize_int8(model)
        out = model(tokens)
    assert all(type(m) is not torch.nn.Linear for m in model.layers.modules())
    assert type(model.output) is torch.nn.Linear  # the head stays float (see mai.infer.quant)
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert weight_bytes(model) < 0.6 * before


def test_engine_runs_a_quantized_model_and_modes_are_checked():
    model = apply_quant(tiny_model(), "int8")
    engine = Engine(model, lambda ids: "".join(chr(97 + i % 26) for i in ids), max_batch=4)
    req = engine.generate([1, 2, 3], SamplingParams(max_tokens=5, temperature=0))
    assert req.finish_reason == "length" and len(req.token_ids) == 5
    assert apply_quant(tiny_model(), "none") is not None
    with pytest.raises(MaiError, match="unknown quantization"):
        apply_quant(tiny_model(), "int4")
    with pytest.raises(MaiError, match="quant 'fp8'"):
        Catalog([ModelEntry("m", "x.gguf", quant="fp8")])


@pytest.mark.slow
def test_smollm_int8_perplexity_change_is_small(smollm):
    """SmolLM2-135M on the first Wikipedia intros of the default corpus: int8 within 2% of float32."""
    from mai.data.corpus import default_corpus
    from mai.eval.perplexity import text_perplexity
    from mai.interop import load_model
    from mai.interop.bundled import smollm2_gguf

    try:
        texts = list(default_corpus(limit=6))
    except MaiError as exc:
        pytest.skip(str(exc))
    fp32 = text_perplexity(smollm.model, smollm.tokenizer, texts, 256)
    quantized = apply_quant(load_model(smollm2_gguf(), max_seq_len=1024).model, "int8")
    int8 = text_perplexity(quantized, smollm.tokenizer, texts, 256)
    assert fp32.tokens == int8.tokens > 500
    assert abs(int8.perplexity / fp32.perplexity - 1) < 0.02, (fp32.perplexity, int8.perplexity)
