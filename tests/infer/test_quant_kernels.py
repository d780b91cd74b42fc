"""The compiled quantized-matmul kernel (mai.infer.kernels.qmatmul) against float products of the same
weights: gguf's own quantizer and dequantizer make the blocks and the reference, the real SmolLM2 GGUF
runs through it, the choice between it and pure torch is a cached measurement, and without a compiler
everything still runs in pure torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mai.infer.gguf_quant import apply_gguf_quant, blocks_of
from mai.infer.kernels import build
from mai.infer.kernels.qmatmul import PackedWeight, kernel_available
from mai.infer.quant import Int8Linear

needs_kernel = pytest.mark.skipif(not kernel_available(), reason="no AVX-512 VNNI CPU or no C compiler")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


def gguf_layer(kind: str, out_features: int, in_features: int, seed: int = 0):
    """A BlockQuantLinear of random weights quantized by gguf-py, and gguf-py's dequantized weight."""
    import gguf
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_features, in_features)) * 0.05 + 0.01).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    raw = quantize(w, qtype)
    return blocks_of(raw, kind, out_features).use_kernel(), torch.from_numpy(dequantize(raw, qtype).copy())


@needs_kernel
@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 64])
def test_kernel_matches_the_float_product_of_gguf_dequantized_blocks(kind, rows):
    layer, w = gguf_layer(kind, 96, 320)
    assert torch.equal(layer.dequantized(), w)  # mai reads the blocks as gguf-py does
    x = torch.randn(rows, 320)
    with torch.inference_mode():
        y = layer.kernel(x)
    ref = x @ w.T
    # only the int8 rounding of x's 32-value blocks differs (llama.cpp's method): ~0.4% of the output
    assert rel_err(y, ref) < 0.01, rel_err(y, ref)
    assert (y - ref).abs().max() < 0.05 * ref.abs().max()


@needs_kernel
@pytest.mark.parametrize("bits", [4, 8])
def test_packing_keeps_every_code(bits):
    codes = torch.randint(0, 1 << bits, (48, 3, 32), dtype=torch.uint8)
    packed = PackedWeight(codes, torch.rand(48, 3), None, bits, 1 << (bits - 1))
    assert torch.equal(packed.codes(), codes)


@needs_kernel
def test_kernel_threads_and_batched_shapes_give_the_same_rows():
    layer, _ = gguf_layer("Q4_1", 256, 576, seed=1)
    x = torch.randn(2, 7, 576)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        batched = layer.kernel(x)
        torch.set_num_threads(2)
        try:
            rows = torch.stack([layer.kernel(x[i, j]) for i in range(2) for j in range(7)]).reshape(2, 7, -1)
        finally:
            torch.set_num_threads(threads)
    assert batched.shape == (2, 7, 256)
    assert torch.equal(batched, rows)  # a row's result does not depend on its batch or the thread count


@needs_kernel
def test_int8_linear_runs_the_kernel_close_to_its_dequantized_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 64, bias=True)
    q = Int8Linear(lin)
    assert q.kernel is not None and "qweight" not in dict(q.named_buffers())  # codes kept once, packed
    w = lin.weight.detach()
    assert torch.equal(q.codes(), torch.round(w / q.scale[:, None]).clamp(-127, 127).to(torch.int8))
    x = torch.randn(5, 256)
    with torch.inference_mode():
        y = q.kernel(x) + q.bias
    ref = F.linear(x, q.dequantized(), lin.bias).detach()
    assert rel_err(y, ref) < 0.01


@needs_kernel
def test_kernel_operands_survive_a_bf16_cast_and_bf16_inputs_work():
    layer, w = gguf_layer("Q8_0", 64, 128)
    layer = layer.to(torch.bfloat16)  # what load_for_inference does when precision resolves to bf16
    x = torch.randn(3, 128)
    with torch.inference_mode():
        y = layer.kernel(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert rel_err(y.float(), x.bfloat16().float() @ w.T) < 0.02


@needs_kernel
def test_layer_choice_is_measured_and_cached(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("MAI_CACHE_DIR", str(tmp_path))
    layer, w = gguf_layer("Q4_1", 64, 128)
    x = torch.randn(2, 128)
    with torch.inference_mode():
        y = layer(x)
    entries = next(iter(json.loads((tmp_path / "hardware.json").read_text()).values()))
    assert any(k.startswith("qmatmul_q4_1_64x128_float32_rows8") for k in entries), entries
    assert rel_err(y, x @ w.T) < 0.01  # whichever path was chosen
    with torch.enable_grad():  # autograd: the torch path, exact to the dequantized weight
        assert torch.equal(layer(x), F.linear(x, w))


def test_without_a_compiler_the_kernel_is_unavailable_and_layers_stay_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("MAI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(build, "compiler", lambda: "false")
    assert build.load_kernel.__wrapped__("qmatmul") is None
    assert build.load_kernel.__wrapped__("no_such_kernel") is None
    layer, w = gguf_layer("Q4_0", 32, 64)
    layer.kernel = None  # what a machine without the kernel builds
    x = torch.randn(4, 64)
    with torch.inference_mode():
        assert torch.equal(layer(x), F.linear(x, w))


@needs_kernel
@pytest.mark.slow
def test_smollm_gguf_layers_through_the_kernel_match_their_float_weights(smollm):
    """Every block-quantized linear of the real SmolLM2 Q4_1 file (and its Q8_0 tied head) on real
    hidden states: within 1% of the float32 product of the very weights the float model holds."""
    from mai.interop import load_model
    from mai.interop.bundled import smollm2_gguf

    model = load_model(smollm2_gguf(), max_seq_len=256).model
    assert apply_gguf_quant(model, smollm2_gguf(), kernel=True) == 211
    float_model = smollm.model
    ids = torch.tensor([smollm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)])
    with torch.inference_mode():
        hidden = float_model.tok_embeddings(ids)
        checked = 0
        for name, module in model.named_modules():
            if getattr(module, "kernel", None) is None:
                continue
            weight = dict(float_model.named_modules())[name].weight
            width = module.in_features
            x = hidden if width == hidden.shape[-1] else torch.randn(*ids.shape, width)
            for rows in (x[:, :1], x):
                assert rel_err(module.kernel(rows), F.linear(rows, weight)) < 0.01, name
            checked += 1
        assert checked == 211
        ref, out = float_model(ids), model(ids)
    assert (ref.argmax(-1) == out.argmax(-1)).float().mean() > 0.9
