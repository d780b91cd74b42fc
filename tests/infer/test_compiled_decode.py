"""Compiled batch-1 decoding and GGUF block-quantized weights: the same weights, the same tokens."""

import dataclasses

import numpy as np
import pytest
import torch

from mai.errors import MaiError
from mai.infer.compiled_decode import CompiledDecoder
from mai.infer.generate import Generation
from mai.infer.gguf_quant import BlockQuantLinear, apply_gguf_quant, blocks_of
from mai.infer.quant import Int8Linear, apply_quant
from mai.infer.sampling import SamplingParams
from mai.interop.bundled import smollm2_gguf
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=600)
    return Transformer(cfg).eval()


def greedy(model, prompt, n, decoder=None):
    gen = Generation(model, lambda ids: "", prompt, SamplingParams(max_tokens=n, temperature=0),
                     decoder=decoder)
    gen.run()
    return gen.token_ids


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_reproduce_the_gguf_package_dequantization_bit_for_bit(type_name):
    gguf = pytest.importorskip("gguf")
    kind = gguf.GGMLQuantizationType[type_name]
    w = np.random.default_rng(0).standard_normal((24, 96)).astype(np.float32)
    raw = gguf.quants.quantize(w, kind)
    layer = blocks_of(raw, type_name, rows=24)
    want = torch.from_numpy(np.asarray(gguf.quants.dequantize(raw, kind), dtype=np.float32))
    assert torch.equal(layer.dequantized(), want)
    x = torch.randn(3, 96)
    assert torch.allclose(layer(x), x @ want.t(), atol=1e-5)


@pytest.mark.parametrize("quant", ["none", "int8"])
def test_compiled_decoding_gives_the_eager_tokens(quant):
    model = apply_quant(tiny_model(), quant)
    prompt = [5, 9, 14, 2, 7, 33, 1]
    decoder = CompiledDecoder(model)
    want = greedy(model, prompt, 40)
    assert greedy(model, prompt, 40, decoder) == want
    assert greedy(model, prompt[:3], 12, decoder) == greedy(model, prompt[:3], 12)  # a second request
    if quant == "none":  # a longer request reads a wider key table: 521 positions → 1024, capped at 608
        long_prompt = list(range(1, 90)) * 5 + [3]
        assert greedy(model, long_prompt, 70, decoder) == greedy(model, long_prompt, 70)
        assert decoder.compiled_steps > 0


def test_one_row_reduction_paths_match_the_matmul_paths():
    torch.manual_seed(1)
    lin = torch.nn.Linear(64, 40, bias=False)
    int8 = Int8Linear(lin)
    gguf = pytest.importorskip("gguf")
    raw = gguf.quants.quantize(lin.weight.detach().numpy(), gguf.GGMLQuantizationType.Q4_1)
    block = blocks_of(raw, "Q4_1", rows=40)
    x = torch.randn(1, 1, 64)
    for layer in (int8, block):
        compiled = torch.compile(layer, fullgraph=True)
        assert torch.allclose(compiled(x), layer(x), atol=1e-5)


@pytest.mark.slow
def test_smollm2_keeps_its_gguf_weights_and_decodes_the_same_tokens_compiled():
    """SmolLM2 on its own Q4_1 blocks: logits bit-identical to its float weights, the same greedy answer,
    and compiled decoding over the blocks gives the eager tokens."""
    from mai.interop import load_model

    try:
        loaded = load_model(smollm2_gguf(), max_seq_len=512)
    except MaiError as exc:
        pytest.skip(str(exc))
    model, tok = loaded.model, loaded.tokenizer
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.encode(tok.apply_chat_template(chat, add_generation_prompt=True))
    want = greedy(model, prompt, 24)
    x = torch.tensor([prompt])
    with torch.no_grad():
        ref = model(x)
    assert apply_gguf_quant(model, smollm2_gguf()) == 211  # 30 layers x 7 linears + the tied head
    assert isinstance(model.output, BlockQuantLinear)
    assert model.tok_embeddings.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # bit-identical weights, same kernels → same logits
    assert greedy(model, prompt, 24) == want and "Paris" in tok.decode(want)
    # compiled over the GGUF blocks: compiling time grows with the blocks compiled, so the first 4 of 30
    # (the same weights and kernels) stand for the whole stack
    for key in list(model.layers)[4:]:
        del model.layers[key]
    model.cfg = dataclasses.replace(model.cfg, n_layers=4)
    assert greedy(model, prompt, 16, CompiledDecoder(model)) == greedy(model, prompt, 16)


def test_gguf_mode_needs_a_gguf_file(tmp_path):
    with pytest.raises(MaiError, match="gguf"):
        apply_quant(tiny_model(), "gguf", tmp_path / "model.safetensors")

