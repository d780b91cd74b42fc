"""int8 weight-only quantization for local inference (its perplexity cost: docs/serving.md).

Every ``nn.Linear`` of the decoder blocks keeps its weight as int8 with one float scale per output
channel (symmetric: ``w ≈ q · s``, ``s = max|w_row| / 127``), a quarter of the float32 bytes. On a CPU
with AVX-512 VNNI, inference runs the product in the compiled int8 kernel
(:mod:`mai.infer.kernels.qmatmul`, activations quantized to int8 per 32 values): eagerly wherever a
timing on this machine shows it faster, in compiled graphs as the eager timing decided; otherwise each
call casts the int8 weight to the activation dtype on the fly and scales the output channels: ``(x @ qᵀ)
· s``. Decoding one token reads every weight once, so reading a quarter of the bytes makes batch-1 decode
faster on a memory-bound CPU (docs/benchmarks.md). The output head stays float: SmolLM2-style models tie
it to the embeddings, so quantizing it would add a copy rather than save one. torch's fused
``_weight_int8pack_mm`` is no alternative on this CPU build: in float32 it runs a scalar loop (25× slower
than the float32 product for 64 rows of a 1536 × 576 layer); it is fast only for bf16 activations. The
model file is untouched; quantization is applied after loading (``mai serve`` catalog field ``quant:
int8``, ``mai generate --quant int8``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mai.errors import MaiError
from mai.infer.kernels.qmatmul import BLOCK, PackedWeight, fits, kernel_available
from mai.model.swap import swap_children

QUANT_MODES = ("none", "int8", "gguf")


def compiled_one_row(x: torch.Tensor) -> bool:
    """True inside a compiled graph for a single input row (batch-1 decode). A quantized linear written
    there as a reduction lets the compiler decode the stored weight inside the dot product, in one pass
    over it, instead of writing a float copy of the weight first."""
    return torch.compiler.is_compiling() and x.shape[:-1].numel() == 1


class Int8Linear(nn.Module):
    """A bias-optional linear layer whose weight is int8 with a per-output-channel scale."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        qweight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                  requires_grad=False)
        self.kernel = None
        if kernel_available() and fits(self.out_features, self.in_features):  # the codes live there only
            groups = self.in_features // BLOCK
            codes = (qweight.to(torch.int16) + 128).to(torch.uint8).reshape(-1, groups, BLOCK)
            self.kernel = PackedWeight(codes, scale[:, None].expand(-1, groups), None, 8, 128)
        else:
            self.register_buffer("qweight", qweight)

    def codes(self) -> torch.Tensor:
        """The int8 weight codes [out, in]."""
        if self.kernel is None:
            return self.qweight
        return (self.kernel.codes().to(torch.int16) - 128).to(torch.int8).reshape(self.out_features, -1)

    def dequantized(self) -> torch.Tensor:
        """The float weight this layer stands for (for tests and error measurement)."""
        return self.codes().to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None and self.kernel.chosen_for(x, self._cast_product, "int8"):
            y = self.kernel(x)
        elif compiled_one_row(x):  # 5x faster than float32 for a 49152 x 576 head on this CPU
            y = (x.reshape(1, -1) * self.codes().to(x.dtype)).sum(-1).reshape(*x.shape[:-1], -1)
            y = y * self.scale.to(x.dtype)
        else:
            y = self._cast_product(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _cast_product(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.codes().to(x.dtype)) * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` under ``model.layers`` by an :class:`Int8Linear`."""
    blocks = getattr(model, "layers", None)
    if blocks is None:
        raise MaiError("int8 quantization expects a mai Transformer (a model with .layers)")
    swap_children(blocks, lambda _, child: Int8Linear(child) if type(child) is nn.Linear else None)
    return model


def apply_quant(model: nn.Module, mode: str | None, source: str | Path | None = None) -> nn.Module:
    """``mode`` "int8" quantizes; "gguf" keeps the block-quantized weights of the GGUF file ``source``
    the model was loaded from (:mod:`mai.infer.gguf_quant`); "none" or None leaves the model as it is."""
    if mode in (None, "none"):
        return model
    if mode == "gguf":
        if source is None or Path(source).suffix != ".gguf":
            raise MaiError("quantization 'gguf' keeps a GGUF file's own quantized weights: load a .gguf file")
        from mai.infer.gguf_quant import apply_gguf_quant

        apply_gguf_quant(model, source, kernel=True)
        return model
    if mode != "int8":
        raise MaiError(f"unknown quantization '{mode}': choose one of {', '.join(QUANT_MODES)}")
    return quantize_int8(model)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (tied tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
