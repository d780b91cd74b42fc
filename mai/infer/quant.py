"""int8 weight-only quantization for local inference, and the perplexity that measures what it costs.

Every ``nn.Linear`` inside the decoder blocks keeps its weight as int8 with one float scale per output
channel (symmetric: ``w ≈ q · s``, ``s = max|w_row| / 127``), a quarter of the float32 bytes. The product
runs through torch's fused weight-only kernel ``_weight_int8pack_mm`` (``(x @ qᵀ) · s``), which dequantizes
on the fly. Embeddings and the output head stay in float: SmolLM2-style models tie them, and quantizing
the head alone would add a copy rather than save one. The model file is untouched; quantization is applied
after loading (``mai serve`` catalog field ``quant: int8``, ``mai generate --quant int8``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mai.errors import MaiError

QUANT_MODES = ("none", "int8")


class Int8Linear(nn.Module):
    """A bias-optional linear layer whose weight is int8 with a per-output-channel scale."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                  requires_grad=False)

    def dequantized(self) -> torch.Tensor:
        """The float weight this layer stands for (for tests and error measurement)."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch._weight_int8pack_mm(flat.contiguous(), self.qweight, self.scale.to(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` under ``model.layers`` by an :class:`Int8Linear`."""
    blocks = getattr(model, "layers", None)
    if blocks is None:
        raise MaiError("int8 quantization expects a mai Transformer (a model with .layers)")
    for parent in list(blocks.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear(child))
    return model


def apply_quant(model: nn.Module, mode: str | None) -> nn.Module:
    """``mode`` "int8" quantizes; "none" or None leaves the model as it is."""
    if mode in (None, "none"):
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


@torch.inference_mode()
def perplexity(model: nn.Module, documents: Iterable[Sequence[int]], max_len: int) -> tuple[float, int]:
    """exp(mean next-token cross-entropy) over ``documents`` (token id lists, each cut to ``max_len``);
    returns (perplexity, tokens scored)."""
    total, count = 0.0, 0
    for ids in documents:
        ids = list(ids)[:max_len]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids])
        logits = model(x[:, :-1]).float()
        total += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += len(ids) - 1
    if not count:
        raise MaiError("no document has two tokens or more to score")
    return float(torch.tensor(total / count).exp()), count
