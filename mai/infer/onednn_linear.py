"""Float32 linear layers through oneDNN for CPU inference on many rows (evaluation, perplexity).

torch's float32 ``F.linear`` on CPU calls MKL's sgemm. On this project's x86 CPUs (AMD EPYC with AVX-512)
oneDNN's matmul, which torch ships too, is 10-14% faster on the shapes a forward pass over thousands of
tokens has (SmolLM2's 4096 × 576 × 1536 projections: 98.5 against 89.3 GFLOP/s at one thread; its
49152-row output head: 90.1 against 80.9), with the same float32 arithmetic (a different summation
order: results differ in the last bits, as between any two GEMM libraries). For one row (batch-1
decode) it is no faster, so such calls keep ``F.linear``; so do training (the oneDNN op has no backward),
other dtypes and devices, and compiled graphs. Measured by ``benchmarks/eval_speed.py``.

Other CPUs may rank the two libraries the other way, so the swap happens only where a short timing on
this machine (cached, mai.precision) shows oneDNN ahead, and the choice is reported once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mai.model.swap import swap_children
from mai.model.transformer import eager_inference
from mai.precision import alternating_best, cached, report_once

MIN_ROWS = 2


def onednn_available() -> bool:
    """Whether this torch build has the oneDNN CPU linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def measure_onednn_factor(rows: int = 256, width: int = 512) -> float:
    """oneDNN's float32 linear speed ÷ ``F.linear``'s for a [rows, width] × [width, width] product."""
    x, w, b = torch.randn(rows, width), torch.randn(width, width), torch.randn(width)
    plain, onednn = alternating_best(
        lambda: F.linear(x, w, b), lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [None], ""), 5)
    return plain / onednn


def onednn_wins() -> bool:
    """Whether oneDNN's linear beats ``F.linear`` on this CPU (measured once per machine)."""
    factor = cached("onednn_linear_factor", measure_onednn_factor)
    verdict = "oneDNN" if factor > 1.0 else "torch's default (oneDNN is not faster here)"
    report_once(f"kernels: float32 linears through {verdict}: oneDNN {factor:.2f}× F.linear on this CPU")
    return factor > 1.0


class OneDnnLinear(nn.Module):
    """An ``nn.Linear`` that computes through oneDNN when the call qualifies. It holds the very weight and
    bias tensors of the layer it replaces (a tied output head stays tied, state-dict names stay)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 == self.weight.dtype and eager_inference()
                and x.shape[:-1].numel() >= MIN_ROWS):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [None], "")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN on CPU"


def swap_to_onednn(model: nn.Module) -> nn.Module:
    """Replace, in place, every plain ``nn.Linear`` of ``model`` by a :class:`OneDnnLinear` sharing its
    tensors. Quantized layers are other classes and stay as they are."""
    swap_children(model, lambda _, child: OneDnnLinear(child) if type(child) is nn.Linear else None)
    return model


def use_onednn_linears(model: nn.Module) -> nn.Module:
    """:func:`swap_to_onednn` where this torch has the op and it measures faster on this CPU; else
    ``model`` unchanged."""
    return swap_to_onednn(model) if onednn_available() and onednn_wins() else model
