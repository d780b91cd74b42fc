"""Materialise a model built on the meta device and initialise only this rank's shards.

Every parameter's values are a pure function of (seed, parameter name, position in the full tensor): a
counter-based hash turned into Normal(0, σ) by Box–Muller. A rank computes the values at the global
positions of its own shard only (``compute_local_shape_and_global_offset``), so the memory a rank needs
is its shard's, and the weights are bit for bit those of a single process under any layout (FSDP, TP,
EP, HSDP) — which torch's stateful generator cannot give (on CPU every shard would draw the same values;
on CUDA DTensor's offset tracker gives values that depend on the layout).
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from mai.model.moe import MoE
from mai.model.transformer import Transformer

MASK = 0xFFFFFFFF
CHUNK = 1 << 20  # elements generated at a time (bounds the int64 temporaries)


def _mix_(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32), in place on int64 tensors holding 32-bit
    values; the products may wrap in int64, their low 32 bits stay exact."""
    x ^= x >> 16
    x.mul_(0x7FEB352D).bitwise_and_(MASK)
    x ^= x >> 15
    x.mul_(0x846CA68B).bitwise_and_(MASK)
    x ^= x >> 16
    return x


def _mix(value: int) -> int:
    """:func:`_mix_` of one Python integer."""
    value ^= value >> 16
    value = (value * 0x7FEB352D) & MASK
    value ^= value >> 15
    value = (value * 0x846CA68B) & MASK
    return value ^ (value >> 16)


def _uniform(base: torch.Tensor, salt: int) -> torch.Tensor:
    """Uniform (0, 1) float64 from a 32-bit hash of ``base`` and ``salt``."""
    return _mix_(base ^ salt).double().add_(0.5).mul_(2.0**-32)


def normal_at(index: torch.Tensor, key: int, wide: bool = False) -> torch.Tensor:
    """Standard normal values (float64) at flat positions ``index`` (int64) of the stream ``key``;
    ``wide``: positions may reach 2³² (else the high word is 0 and hashed once, in Python)."""
    high = _mix_((index >> 32) ^ key) if wide else _mix(key)
    base = _mix_((index & MASK) ^ high)
    radius = _uniform(base, 0x68E31DA4).log_().mul_(-2.0).sqrt_()
    return radius.mul_(_uniform(base, 0x1B56C4E9).mul_(2 * math.pi).cos_())


def _global_positions(local_shape: tuple[int, ...], offset: tuple[int, ...], full_shape: tuple[int, ...],
                      start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Flat positions in the full tensor of local elements ``start..stop`` (row-major) of a box-shaped
    shard at ``offset``."""
    local = torch.arange(start, stop, dtype=torch.int64, device=device)
    position = torch.zeros_like(local)
    stride = 1
    for size, off, full in zip(reversed(local_shape), reversed(offset), reversed(full_shape), strict=True):
        position += (local % size + off) * stride
        local = local // size
        stride *= full
    return position


@torch.no_grad()
def fill_normal_(p: torch.Tensor, std: float, key: int) -> None:
    """Fill ``p`` (a tensor or a DTensor shard) with std × the stream ``key`` at its full-tensor positions."""
    if isinstance(p, DTensor):
        local_shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        target = p.to_local()
    else:
        local_shape, offset, target = tuple(p.shape), (0,) * p.dim(), p
    flat = target.view(-1)
    for start in range(0, flat.numel(), CHUNK):
        stop = min(start + CHUNK, flat.numel())
        where = _global_positions(tuple(local_shape), tuple(offset), tuple(p.shape), start, stop, flat.device)
        flat[start:stop] = normal_at(where, key, wide=p.numel() >= 2**32).mul_(std)


def param_key(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode())


@torch.no_grad()
def init_weights(model: Transformer, seed: int) -> None:
    """Initialise every parameter by the model's own rule (:meth:`Transformer.init_rule`) from the
    counter-based streams, and the buffers (rotary tables, MoE bias and load counters)."""
    for name, p in model.named_parameters():
        rule = model.init_rule(name, p)
        local = p.to_local() if isinstance(p, DTensor) else p
        if rule == "zeros":
            local.zero_()
        elif rule == "ones":
            local.fill_(1.0)
        else:
            fill_normal_(p, float(rule), param_key(seed, name))
    model.init_rope()
    for m in model.modules():
        if isinstance(m, MoE):
            m.reset_buffers()


def to_empty(model: nn.Module, device: torch.device) -> None:
    """``model.to_empty(device)``, keeping a tied head tied: moving plain parameters off meta gives each
    module a new Parameter, which would silently untie the head from the embedding (DTensor parameters
    are swapped in place and stay shared)."""
    model.to_empty(device=device)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and cfg.tie_embeddings and model.output.weight is not model.tok_embeddings.weight:
        model.output.weight = model.tok_embeddings.weight


def materialize(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate a meta-built (and possibly sharded) model on ``device`` — each rank only its shards —
    and initialise it with :func:`init_weights`."""
    to_empty(model, device)
    init_weights(model, seed)
