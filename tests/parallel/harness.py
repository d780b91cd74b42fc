"""Shared by the parallel tests and their torchrun worker: a tiny dense or MoE model trained for a few
AdamW steps on one fixed global batch, with or without a parallel layout."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mai.model.config import ModelConfig
from mai.model.moe import moe_aux_loss, moe_load, update_expert_bias
from mai.model.transformer import Transformer
from mai.parallel import ParallelConfig, build_mesh, clip_grad_norm_, data_parallel_coords, parallelize

STEPS = 3
GLOBAL_BATCH, SEQ = 4, 32


def tiny(moe: bool) -> ModelConfig:
    extra = dict(n_experts=4, top_k=2, n_shared_experts=1, expert_ffn_dim=32, first_dense_layers=1,
                 moe_aux_loss_coef=0.01, moe_z_loss_coef=1e-3) if moe else {}
    return ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                       max_seq_len=SEQ, **extra)


def batch() -> torch.Tensor:
    return torch.randint(0, 128, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(7))


def train_losses(moe: bool, layout: dict | None = None) -> list[list[float]]:
    """[cross-entropy, aux loss] of each step, averaged like one process on the global batch would see."""
    cfg = tiny(moe)
    torch.manual_seed(0)
    model = Transformer(cfg)
    tokens = batch()
    if layout is not None:
        mesh = build_mesh(ParallelConfig(**layout), int(os.environ["WORLD_SIZE"]), "cpu", cfg)
        model = parallelize(model, ParallelConfig(**layout), mesh)
        rank, world = data_parallel_coords(mesh)
        tokens = tokens.chunk(world)[rank]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    out = []
    for _ in range(STEPS):
        logits = model(tokens[:, :-1])
        ce = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        aux = moe_aux_loss(model)
        (ce + aux).backward()
        clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        stats = torch.tensor([ce.item(), float(aux.detach()) if torch.is_tensor(aux) else aux])
        load = moe_load(model)
        if layout is not None:
            dist.all_reduce(load)
            dist.all_reduce(stats)  # ce: same on tp peers; aux: each tp peer holds its share
            stats = stats / torch.tensor([dist.get_world_size(), world])
        update_expert_bias(model, load, 1e-2)
        out.append(stats.tolist())
    return out
