"""Pipeline parallelism applied from outside the model: a meta-built :class:`Transformer` is cut into
this rank's stages by layer ranges, each run by ``torch.distributed.pipelining``.

A stage is the same ``Transformer`` with the layers of other stages deleted and the modules it does not
own (the embedding off the first stage, norm and head off the last) replaced by ``nn.Identity``; its
class is swapped to :class:`StageTransformer`, whose forward takes tokens or hidden states. Parameter
names stay those of the whole model, so DCP checkpoints reshard between pp 1, 2, 4… and the per-shard
initialisation (mai.parallel.init) gives the single-process weights. With virtual stages a rank holds
several chunks; they share their modules with one ``rank module`` that holds all of them, which is what
the optimizer, checkpoints and export see.

The micro-batches of one schedule step are ``parallel.pp_microbatches`` trainer micro-batches of
``train.batch_size`` sequences each, so a pp run computes exactly what one process computes with that
many gradient-accumulation micro-batches (the MoE balance loss included, which depends on the tokens a
micro-batch holds). Each micro-batch's loss is scaled by 1 / (micro-batches per optimizer step) inside
the loss function (``scale_grads=False``), and a stage's MoE aux loss enters the backward pass through
:class:`_WithAuxLoss`, since the schedule only differentiates the last stage's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleZBVZeroBubble,
)

from mai.model.config import ModelConfig
from mai.model.moe import moe_aux_loss, moe_layers, moe_load
from mai.model.transformer import Transformer
from mai.parallel.config import ParallelConfig
from mai.parallel.mesh import Meshes

SCHEDULES = {"1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B,
             "interleaved_zb": ScheduleInterleavedZeroBubble, "zbv": ScheduleZBVZeroBubble}


def stage_indices(pp_rank: int, pp: int, virtual: int, schedule: str) -> list[int]:
    """The stages rank ``pp_rank`` runs: looped (r, r + pp, …), or V-shaped (r, 2pp − 1 − r) for ZBV."""
    if schedule == "zbv":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(virtual)]


def layer_range(stage: int, n_stages: int, n_layers: int) -> range:
    """Layers of ``stage``: equal consecutive ranges (the layout check makes them divide)."""
    per = n_layers // n_stages
    return range(stage * per, (stage + 1) * per)


class _WithAuxLoss(torch.autograd.Function):
    """Identity on ``out``; in backward also gives ``aux`` (a stage's MoE balance loss) gradient 1, so
    it is minimised with the micro-batch's cross-entropy though the schedule never sees it."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        ctx.aux_shape = aux.shape
        return out.clone()  # not a view: zero-bubble schedules detach stage outputs in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad.new_ones(ctx.aux_shape, dtype=torch.float32)


class StageTransformer(Transformer):
    """A pipeline chunk: takes tokens (first stage) or hidden states, returns hidden states or fp32
    logits (last stage). ``seq_shards``: tensor-parallel degree, by which the sequence of received
    hidden states is sharded (sequence parallel), so rope tables are cut for the full length."""

    seq_shards: int = 1
    aux_scale: float = 1.0  # the MoE aux loss's weight per micro-batch (1 / micro-batches per step)
    load_sum: torch.Tensor | None = None  # tokens per expert over this step's micro-batches
    aux_sum: torch.Tensor | None = None  # scaled aux losses over this step's micro-batches (for logs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = inputs.shape[1] * (self.seq_shards if inputs.is_floating_point() else 1)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        h = self.tok_embeddings(inputs)
        for layer in self.layers.values():
            h = layer(h, cos, sin)
        out = self.head(h).float()
        if moe_layers(self) and torch.is_grad_enabled():
            aux = moe_aux_loss(self) * self.aux_scale
            load = moe_load(self)
            self.load_sum = load if self.load_sum is None else self.load_sum + load
            self.aux_sum = aux.detach() if self.aux_sum is None else self.aux_sum + aux.detach()
            out = _WithAuxLoss.apply(out, aux)
        return out

    def init_rope(self, device=None) -> None:
        param = next(self.parameters(), None)
        device = device or (param.device if param is not None else torch.device("cpu"))
        if device.type != "meta":
            super().init_rope(device)


def _prune(model: Transformer, layers: set[int], first: bool, last: bool) -> Transformer:
    """``model`` (in place) keeping only ``layers`` and, where owned, the embedding / norm + head."""
    for key in [k for k in model.layers if int(k) not in layers]:
        del model.layers[key]
    if not first:
        model.tok_embeddings = nn.Identity()
    if not last:
        model.norm, model.output = nn.Identity(), nn.Identity()
    model.__class__ = StageTransformer
    return model


def split_model(model: Transformer, stages: list[int], n_stages: int,
                seq_shards: int = 1) -> tuple[StageTransformer, list[StageTransformer]]:
    """(rank module, chunks): ``model`` (meta-built) cut to the layers of ``stages``. With one stage per
    rank they are the same module; else the chunks share the rank module's submodules."""
    n = model.cfg.n_layers
    ranges = [layer_range(s, n_stages, n) for s in stages]
    mine = {i for r in ranges for i in r}
    rank_module = _prune(model, mine, 0 in stages, n_stages - 1 in stages)
    rank_module.seq_shards = seq_shards
    if len(stages) == 1:
        return rank_module, [rank_module]
    chunks = []
    for stage, layers in zip(stages, ranges, strict=True):
        chunk = StageTransformer.__new__(StageTransformer)
        nn.Module.__init__(chunk)
        chunk.cfg, chunk.seq_shards = rank_module.cfg, seq_shards
        chunk.tok_embeddings = rank_module.tok_embeddings if stage == 0 else nn.Identity()
        chunk.layers = nn.ModuleDict({str(i): rank_module.layers[str(i)] for i in layers})
        last = stage == n_stages - 1
        chunk.norm, chunk.output = (rank_module.norm, rank_module.output) if last else (nn.Identity(),) * 2
        chunk.register_buffer("rope_cos", torch.empty(0), persistent=False)
        chunk.register_buffer("rope_sin", torch.empty(0), persistent=False)
        chunks.append(chunk)
    return rank_module, chunks


def moe_rows(module: Transformer) -> list[int]:
    """Row of each of ``module``'s MoE layers in the whole model's [MoE layer, expert] load table."""
    first = module.cfg.first_dense_layers
    return [int(k) - first for k, block in module.layers.items() if block.feed_forward in moe_layers(module)]


@dataclass
class Pipeline:
    """This rank's stages and the schedule that runs them (see the module docstring)."""

    rank_module: StageTransformer
    chunks: list[StageTransformer]
    microbatches: int
    micro_batch: int  # sequences per micro-batch (the stages' tensors have this fixed shape)
    group: dist.ProcessGroup  # the pipeline's ranks: loss and gradient-norm sums
    load_group: dist.ProcessGroup | None = None  # the ranks of this rank's stages: MoE load sums
    schedule: Any = None
    loss_scale: float = 1.0  # the weight of each micro-batch's loss in the optimizer step

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The schedule's loss of one micro-batch (last stage): next-token cross-entropy, weighted."""
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100) * self.loss_scale

    def step(self, tokens: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
        """Forward and backward of ``microbatches`` micro-batches stacked in ``tokens``; each one's loss
        is weighted by ``scale``. Returns the sum of the weighted losses on the last stage, else 0."""
        self.loss_scale = scale
        for chunk in self.chunks:
            chunk.aux_scale = scale
        losses: list[torch.Tensor] = []
        self.schedule.step(tokens, target=targets, losses=losses, return_outputs=False)
        if not losses:
            return torch.zeros((), device=tokens.device)
        return torch.stack([loss.detach().float() for loss in losses]).sum()

    def eval_losses(self, tokens: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """Unweighted loss of each micro-batch (on the last stage; empty elsewhere), forward only."""
        self.loss_scale = 1.0
        losses: list[torch.Tensor] = []
        self.schedule.eval(tokens, target=targets, losses=losses)
        return [loss.detach().float() for loss in losses]

    def take_moe_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens per expert [this rank's MoE layers, E], summed aux loss) since the last call."""
        loads = [c.load_sum for c in self.chunks if c.load_sum is not None]
        aux = [c.aux_sum for c in self.chunks if c.aux_sum is not None]
        for chunk in self.chunks:
            chunk.load_sum = chunk.aux_sum = None
        load = torch.cat(loads) if loads else moe_load(self.rank_module)
        return load, (torch.stack(aux).sum() if aux else torch.zeros(()))

    def whole_model_load(self, load: torch.Tensor) -> torch.Tensor:
        """[every MoE layer of the model, expert] from this rank's rows ``load`` (collective over pp)."""
        cfg = self.rank_module.cfg
        full = load.new_zeros(cfg.n_layers - cfg.first_dense_layers, cfg.n_experts)
        if load.numel():  # a stage of dense layers only has none
            full[moe_rows(self.rank_module)] = load
        dist.all_reduce(full, group=self.group)
        return full


def build_pipeline(rank_module: StageTransformer, chunks: list[StageTransformer], stages: list[int],
                   n_stages: int, schedule: str, microbatches: int, mesh: Meshes, device: torch.device,
                   micro_batch: int, seq_len: int, seq_shards: int) -> Pipeline:
    """Wrap the (parallelized, materialised) ``chunks`` in ``PipelineStage`` objects with their tensor
    shapes given up front (static mode: no extra forward to infer them) and build the schedule."""
    cfg = rank_module.cfg
    # requires_grad: activations and their gradients travel between the stages
    hidden = torch.empty(micro_batch, seq_len // seq_shards, cfg.d_model, device="meta", requires_grad=True)
    logits = torch.empty(micro_batch, seq_len, cfg.vocab_size, device="meta", requires_grad=True)
    tokens = torch.empty(micro_batch, seq_len, dtype=torch.long, device="meta")
    group = mesh.pp.get_group()
    pipeline_stages = []
    for stage, chunk in zip(stages, chunks, strict=True):
        pipeline_stages.append(PipelineStage(
            chunk, stage, n_stages, device, input_args=tokens if stage == 0 else hidden,
            output_args=logits if stage == n_stages - 1 else hidden, group=group))
    pipeline = Pipeline(rank_module, chunks, microbatches, micro_batch, group, mesh.stage.get_group())
    cls = SCHEDULES[schedule]
    target = pipeline_stages[0] if cls is Schedule1F1B else pipeline_stages
    pipeline.schedule = cls(target, microbatches, loss_fn=pipeline.loss, scale_grads=False)
    return pipeline


def pipeline_model(model_cfg: ModelConfig, pcfg: ParallelConfig, mesh: Meshes, device: torch.device,
                   micro_batch: int, seq_len: int, fill: Callable[[nn.Module], None]) -> Pipeline:
    """This rank's part of a ``model_cfg`` model, built on meta, cut into its stages, parallelized
    (TP, FSDP… over the stage's ranks), allocated and filled by ``fill(rank_module)`` (the sharded init
    or sharded loading), and wrapped in its schedule. ``pcfg`` is resolved (mai.parallel.config)."""
    from mai.parallel.parallelize import parallelize

    pp_rank = mesh.pp.get_local_rank()
    per_rank = 2 if pcfg.pp_schedule == "zbv" else pcfg.pp_virtual_stages
    n_stages = pcfg.pp * per_rank
    stages = stage_indices(pp_rank, pcfg.pp, per_rank, pcfg.pp_schedule)
    with torch.device("meta"):
        model = Transformer(model_cfg)
    rank_module, chunks = split_model(model, stages, n_stages, pcfg.tp)
    parallelize(rank_module, pcfg, mesh, chunks=chunks if len(chunks) > 1 else None)
    fill(rank_module)
    for chunk in chunks:
        chunk.init_rope(device)
    return build_pipeline(rank_module, chunks, stages, n_stages, pcfg.pp_schedule, pcfg.pp_microbatches,
                          mesh, device, micro_batch, seq_len, pcfg.tp)
