"""Shared by the parallel tests and their torchrun worker: a tiny dense or MoE model trained for a few
AdamW steps on one fixed global batch, with or without a parallel layout. Like the trainer, every run
builds the model on the meta device, applies the layout, and initialises only its own shards
(mai.parallel.init), so equal losses also show that the sharded init equals the single-process one."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

from mai.model.config import ModelConfig
from mai.model.moe import moe_aux_loss, moe_load, update_expert_bias
from mai.model.transformer import Transformer
from mai.parallel import (
    ParallelConfig,
    build_mesh,
    clip_grad_norm_,
    data_parallel_coords,
    loss_context,
    parallelize,
)
from mai.parallel.init import materialize
from mai.train.trainer import lm_loss

STEPS = 3
GLOBAL_BATCH, SEQ = 4, 32


def tiny(moe: bool, n_layers: int = 2) -> ModelConfig:
    extra = dict(n_experts=4, top_k=2, n_shared_experts=1, expert_ffn_dim=32, first_dense_layers=1,
                 moe_aux_loss_coef=0.01, moe_z_loss_coef=1e-3) if moe else {}
    return ModelConfig(vocab_size=128, d_model=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, ffn_dim=128,
                       max_seq_len=SEQ, **extra)


def big_moe() -> ModelConfig:
    """19M parameters, nearly all in experts (310 MB of fp32 weights, gradients and Adam moments) but
    little compute per token: top-2 of 24 experts."""
    return ModelConfig(vocab_size=128, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256,
                       max_seq_len=SEQ, n_experts=24, top_k=2, expert_ffn_dim=1024, first_dense_layers=0,
                       moe_aux_loss_coef=0.01)


def batch() -> torch.Tensor:
    return torch.randint(0, 128, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(7))


def limit_address_space(extra_mb: int) -> None:
    """Cap this process's virtual memory at what it uses now plus ``extra_mb`` (RLIMIT_AS), so that
    what the model needs on top of the interpreter, torch and the process group is what is measured."""
    import resource

    status = Path("/proc/self/status").read_text().splitlines()
    used_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    cap = (used_kb + extra_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def micro_batches(tokens: torch.Tensor, micro: int, dp: int) -> list[torch.Tensor]:
    """The ``micro`` gradient-accumulation micro-batches one process sees for a run over ``dp`` data
    ranks with ``micro`` micro-batches each: micro-batch j is every dp rank's j-th (MoE's balance loss
    is taken over the tokens of one micro-batch across the dp ranks)."""
    rows = tokens.view(dp, micro, -1, tokens.shape[-1]).transpose(0, 1)
    return list(rows.reshape(micro, -1, tokens.shape[-1]))


def train_losses(moe: bool, layout: dict | None = None, cfg: ModelConfig | None = None,
                 limit_mb: int = 0, micro: int = 1, dp: int = 1) -> list[list[float]]:
    """[cross-entropy, aux loss] of each step, averaged like one process on the global batch would see.
    ``limit_mb``: the memory the run may add once the process group exists, before any weight is made.
    ``micro``, ``dp`` (one process only): accumulate gradients over the micro-batches of a pipeline run
    with ``micro`` micro-batches on ``dp`` data ranks (:func:`micro_batches`)."""
    cfg = cfg or tiny(moe)
    if layout is not None and layout.get("pp", 1) > 1:
        return pipeline_losses(cfg, layout)
    with torch.device("meta"):
        model = Transformer(cfg)
    tokens = batch()
    vocab_parallel = layout is not None and layout.get("tp", 1) > 1  # the trainer's loss-parallel CE
    if layout is not None:
        mesh = build_mesh(ParallelConfig(**layout), int(os.environ["WORLD_SIZE"]), "cpu", cfg)
        model = parallelize(model, ParallelConfig(**layout), mesh, vocab_parallel_loss=vocab_parallel)
        rank, world = data_parallel_coords(mesh)
        tokens = tokens.chunk(world)[rank]
    if limit_mb:
        limit_address_space(limit_mb)
    materialize(model, torch.device("cpu"), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    out = []
    for _ in range(STEPS):
        stats, load = torch.zeros(2), 0
        for part in micro_batches(tokens, micro, dp) if layout is None else [tokens]:
            with loss_context(vocab_parallel):
                ce, _ = lm_loss(model, (part[:, :-1], part[:, 1:]))
                aux = moe_aux_loss(model)
                ((ce + aux) / micro).backward()
            stats += torch.tensor([ce.item(), float(aux.detach()) if torch.is_tensor(aux) else aux]) / micro
            load = load + moe_load(model)
        clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        if layout is not None:
            dist.all_reduce(load)
            dist.all_reduce(stats)  # ce: same on tp peers; aux: each tp peer holds its share
            stats = stats / torch.tensor([dist.get_world_size(), world])
        update_expert_bias(model, load, 1e-2)
        out.append(stats.tolist())
    if vocab_parallel:  # loss-parallel: each tp rank holds only its slice of the vocabulary's logits
        with torch.no_grad():
            logits = model(tokens[:, :-1])
        assert isinstance(logits, DTensor) and logits.placements == (Shard(2),)
        assert logits.to_local().shape[-1] == cfg.vocab_size // layout["tp"]
    return out


def pipeline_losses(cfg: ModelConfig, layout: dict) -> list[list[float]]:
    """:func:`train_losses` of a layout with ``pp`` > 1: the batch of each data rank goes through the
    schedule as ``pp_microbatches`` micro-batches; the loss lives on the last stage."""
    from mai.parallel.pipeline import pipeline_model

    world_size = int(os.environ["WORLD_SIZE"])
    pcfg = ParallelConfig(**layout).resolve(world_size)
    mesh = build_mesh(pcfg, world_size, "cpu", cfg)
    rank, world = data_parallel_coords(mesh)
    tokens = batch().chunk(world)[rank]
    m = pcfg.pp_microbatches
    pipe = pipeline_model(cfg, pcfg, mesh, torch.device("cpu"), len(tokens) // m, SEQ,
                          lambda module: materialize(module, torch.device("cpu"), seed=0))
    model = pipe.rank_module
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    out = []
    for _ in range(STEPS):
        ce = pipe.step(tokens[:, :-1], tokens[:, 1:], 1.0 / m)
        load, aux = pipe.take_moe_stats()
        clip_grad_norm_(model.parameters(), 0.5, mesh.pp.get_group())
        opt.step()
        opt.zero_grad()
        stats = torch.stack([ce, aux.float()])
        dist.all_reduce(stats)  # ce: on each last-stage rank; aux: each stage's, each tp peer its share
        stats = stats / torch.tensor([world_size // pcfg.pp, world])
        if load.numel():
            dist.all_reduce(load, group=mesh.stage.get_group())
        update_expert_bias(model, load, 1e-2)
        out.append(stats.tolist())
    return out
