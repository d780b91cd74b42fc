"""Apply tensor/sequence parallel, expert parallel, activation checkpointing, compile and FSDP2 to a
:class:`mai.model.transformer.Transformer` from outside, in that order (torchtitan's order).

Parameter names never change (no wrapper modules: behaviour is added by swapping a module's class), so a
checkpoint saved under one layout loads under any other and into a single process.

With ``loss_parallel`` the logits stay sharded over the vocabulary on the tp ranks (a DTensor) and the
cross-entropy is computed under :func:`loss_context`, so no rank ever holds the full [tokens, vocab]
fp32 logits (15 GB at seq 8192 × vocab 128k).
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from mai.model.moe import MoE
from mai.model.transformer import Block, FeedForward, Transformer
from mai.parallel.config import ParallelConfig
from mai.parallel.mesh import Meshes
from mai.parallel.moe import (
    DistributedMoE,
    ExpertParallelExperts,
    SequenceLocalMoE,
    replicate_over,
    shard_experts,
    swap_class,
)


def parallelize(model: Transformer, cfg: ParallelConfig, mesh: Meshes, vocab_parallel_loss: bool = False,
                chunks: list[nn.Module] | None = None) -> Transformer:
    """Parallelize ``model`` in place over ``mesh`` (from :func:`mai.parallel.build_mesh`) and return it.
    ``vocab_parallel_loss``: under TP the model returns vocab-sharded logits, for a cross-entropy taken
    inside :func:`loss_context` (callers that need plain logits leave it off and get them gathered).
    ``model`` may live on the meta device: nothing here allocates or reads its values. Under pipeline
    parallel ``model`` is this rank's part (mai.parallel.pipeline) and ``chunks`` its stages, each an
    FSDP root of its own (the schedule runs them one by one)."""
    cfg = cfg.resolve(mesh.size())
    cfg.check_model(model.cfg)
    for block in model.layers.values():
        ffn = block.feed_forward
        if isinstance(ffn, MoE):
            swap_class(ffn, DistributedMoE, load_group=mesh.stage.get_group())
            if cfg.ep > 1:  # before TP, which replicates what is not sharded yet
                shard_experts(ffn.experts, mesh.ep)
    if cfg.tp > 1:
        apply_tensor_parallel(model, mesh.tp, vocab_parallel_loss)
    if cfg.activation_checkpointing != "none":
        for block in model.layers.values():
            mode = cfg.activation_checkpointing
            if cfg.ep > 1 and isinstance(block.feed_forward, MoE):
                # The experts' own FSDP hooks run again in recompute, which selective checkpointing's
                # op-by-op replay rejects: these blocks are checkpointed in full.
                mode = "full"
            checkpoint_block(block, mode)
    if cfg.compile:
        for block in model.layers.values():
            block.compile()
    apply_fsdp(model, cfg, mesh, chunks or [model])
    return model


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh, vocab_parallel_loss: bool = False) -> None:
    """Megatron-style TP with sequence parallel: norms and the residual stream are sharded over the
    sequence, attention heads and FFN columns over ``tp``; logits stay sharded over the vocabulary for a
    loss-parallel cross-entropy, or are gathered."""
    output = (ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False)
              if vocab_parallel_loss else ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()))
    top = {"tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
           "norm": SequenceParallel(), "output": output}
    # A pipeline stage lacks what another stage owns (nn.Identity in its place)
    parallelize_module(model, tp_mesh, {name: plan for name, plan in top.items()
                                        if not isinstance(getattr(model, name), nn.Identity)})
    for block in model.layers.values():
        plan = {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
        }
        if isinstance(block.feed_forward, FeedForward):
            plan.update({
                "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),),
                                                   desired_input_layouts=(Replicate(),)),
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w3": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            })
        else:  # MoE: each rank routes its own sequence shard (see mai.parallel.moe)
            replicate_over(block.feed_forward, tp_mesh)
            swap_class(block.feed_forward, SequenceLocalMoE, tp_mesh=tp_mesh)
            if isinstance(block.feed_forward.experts, ExpertParallelExperts):
                block.feed_forward.experts.grad_sum_group = tp_mesh.get_group()
        parallelize_module(block, tp_mesh, plan)


# Selective checkpointing keeps the results of the expensive ops and recomputes the cheap ones.
_SAVE = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
         torch.ops.aten._scaled_dot_product_flash_attention.default,
         torch.ops.aten._scaled_dot_product_efficient_attention.default,
         torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}
if hasattr(torch.ops.aten, "_grouped_mm"):
    _SAVE.add(torch.ops.aten._grouped_mm.default)


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


class _CheckpointedBlock(Block):
    checkpoint_mode: str = "full"

    def forward(self, x, cos, sin, cache=None):
        if not torch.is_grad_enabled():
            return super().forward(x, cos, sin, cache)
        kwargs = {}
        if self.checkpoint_mode == "selective":
            kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, _policy)
        return checkpoint(super().forward, x, cos, sin, cache, use_reentrant=False, **kwargs)


def checkpoint_block(block: nn.Module, mode: str) -> None:
    """Recompute ``block``'s activations in backward: all of them (full) or all but matmul/attention
    outputs (selective). Done by class swap, so parameter names stay as they are."""
    swap_class(block, type("Checkpointed" + type(block).__name__, (_CheckpointedBlock, type(block)), {}),
               checkpoint_mode=mode)


def apply_fsdp(model: Transformer, cfg: ParallelConfig, mesh: Meshes, roots: list[nn.Module]) -> None:
    """FSDP2 per block, then the roots (the model, or each pipeline chunk). Experts under EP are sharded
    over the dp ranks left after ep, with their gradient divided by the whole dp size (each rank's
    experts saw tokens from every ep peer)."""
    if cfg.dp_shard * cfg.dp_replicate == 1:
        return
    mp = mixed_precision(cfg, mesh.world.device_type)
    for block in model.layers.values():
        ffn = block.feed_forward
        if isinstance(ffn, MoE) and cfg.ep > 1:
            fully_shard(ffn.experts, mesh=mesh.experts_fsdp, mp_policy=mp)
            ffn.experts.set_gradient_divide_factor(float(cfg.dp_replicate * cfg.dp_shard))
        fully_shard(block, mesh=mesh.fsdp, mp_policy=mp)
    for root in roots:
        fully_shard(root, mesh=mesh.fsdp, mp_policy=mp)


def mixed_precision(cfg: ParallelConfig, device_type: str) -> MixedPrecisionPolicy:
    """FSDP2's policy: gathered weights in ``param_dtype``, gradients reduced in ``reduce_dtype`` (by
    default bf16 / fp32 on CUDA, fp32 / fp32 on CPU; see :meth:`ParallelConfig.dtypes`)."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    param, reduce = cfg.dtypes(device_type)
    return MixedPrecisionPolicy(param_dtype=dtypes[param], reduce_dtype=dtypes[reduce])


def loss_context(vocab_parallel: bool) -> contextlib.AbstractContextManager:
    """Where the loss's forward and backward must run when the logits are vocab-sharded DTensors."""
    return loss_parallel() if vocab_parallel else contextlib.nullcontext()
