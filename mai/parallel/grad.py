"""Gradient-norm clipping that works when parameters live on different meshes (FSDP, TP, EP experts),
where ``torch.nn.utils.clip_grad_norm_`` would try to stack DTensors of different meshes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale all gradients so their global L2 norm is at most ``max_norm``; returns the norm before."""
    grads = [p.grad for p in parameters if p.grad is not None]
    groups: dict[object, list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else g.device
        groups[key].append(g)
    total = torch.zeros((), dtype=torch.float32)
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total = total + norm.float().cpu().square()
    total = total.sqrt()
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total
