"""LoRA (Hu et al., 2021): train low-rank updates ``W + (alpha/r)·B·A`` of the attention and MLP matrices
while the base weights stay frozen; ``merge`` folds the updates into plain ``nn.Linear`` weights, so the
exported model serves like any other (no adapter code at inference)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mai.model.swap import swap_children

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # B = 0: training starts at the base model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a * self.scale).to(self.base.weight.dtype)
        self.base.weight.requires_grad_(True)
        return self.base


def add_lora(model: nn.Module, rank: int, alpha: float | None = None,
             targets: tuple[str, ...] = TARGETS) -> int:
    """Freeze every parameter and wrap the target linears; returns the number of trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    swap_children(model, lambda name, child: LoRALinear(child, rank, alpha or 2.0 * rank)
                  if name in targets and isinstance(child, nn.Linear) else None)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> None:
    """Replace every LoRALinear by its base linear with the update added in; unfreeze everything."""
    swap_children(model, lambda _, child: child.merged() if isinstance(child, LoRALinear) else None)
    for p in model.parameters():
        p.requires_grad_(True)
