"""Gradient-norm clipping that works when parameters live on different meshes (FSDP, TP, EP experts),
where ``torch.nn.utils.clip_grad_norm_`` would try to stack DTensors of different meshes.

It never synchronises with the host: the norm stays a device tensor (the trainer reads it only when it
logs) and the scale ``min(1, max_norm / norm)`` is applied by one ``_foreach_mul_`` per device, so a GPU
step is queued without waiting for the backward pass to finish.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def grad_norm(grads: list[torch.Tensor], pp_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Global L2 norm of ``grads`` (fp32, on their device); DTensors of each mesh reduced over it, and
    the squares summed over the pipeline stages in ``pp_group`` (each rank holds other layers)."""
    groups: dict[object, list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else g.device
        groups[key].append(g)
    squares = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group, foreach=True)
        squares.append(_local(norm.full_tensor() if isinstance(norm, DTensor) else norm).float().square())
    device = squares[0].device if squares else torch.device("cpu")
    total = torch.stack([s.to(device) for s in squares]).sum() if squares else torch.zeros((), device=device)
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.nn.Parameter], max_norm: float,
                    pp_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Scale all gradients so their global L2 norm (over every pipeline stage) is at most ``max_norm``;
    returns the norm before (a device tensor: non-finite when a gradient is)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = grad_norm(grads, pp_group)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    for g in grads:  # scaling each local shard scales the whole tensor, whatever its placement
        by_device[_local(g).device].append(_local(g))
    for device, local in by_device.items():
        torch._foreach_mul_(local, coef.to(device))
    return total
