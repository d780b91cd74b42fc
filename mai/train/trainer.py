"""`mai train`: one loop from a single CPU process to a torchrun job on many GPUs.

Each optimizer step draws ``grad_accum`` micro-batches from the deterministic mixture sampler, runs them
under bf16 autocast (weights and AdamW state stay fp32), clips, steps, and logs loss, tokens/s and MFU.
Validation, checkpoints and the final export happen on a fixed cadence. A run restarted on the same
``out_dir`` continues from its newest complete checkpoint and reproduces the losses of a run that never
stopped. When launched by torchrun the model is wrapped by :mod:`mai.parallel` from outside.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from mai.config import from_dict, to_dict
from mai.data.sampler import MixtureSampler, ValidationBatches
from mai.data.shards import TokenDataset, unigram_entropy
from mai.errors import MaiError
from mai.interop.native import save_native
from mai.model.moe import moe_aux_loss, moe_load, update_expert_bias
from mai.model.presets import train_flops_per_token
from mai.model.transformer import Transformer
from mai.parallel.grad import clip_grad_norm_
from mai.train.checkpoint import Checkpointer, list_checkpoints, load_checkpoint, remove_partial
from mai.train.config import RunConfig
from mai.train.logger import RunLogger, plot_loss
from mai.train.peak import peak_flops
from mai.train.schedule import lr_at


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float
    unigram_entropy: float
    tokens_per_s: float
    mfu: float
    out_dir: Path


@dataclass
class Runtime:
    """Where this process runs: its device, its rank, and its slice of the data-parallel world."""

    device: torch.device
    rank: int
    world: int
    dp_rank: int
    dp_world: int


def setup_runtime(cfg: RunConfig) -> tuple[Runtime, object | None]:
    """Join the process group when launched by torchrun; pick the device; build the mesh."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if world == 1 and not cfg.parallel:
        device = torch.device("cuda" if want_cuda else "cpu")
        return Runtime(device, 0, 1, 0, 1), None
    # PARALLEL: mai.parallel validates the layout, joins the process group and builds the DeviceMesh.
    from mai.parallel import ParallelConfig, build_mesh, data_parallel_coords

    pcfg = from_dict(ParallelConfig, cfg.parallel, "parallel")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
    device = torch.device(f"cuda:{local}" if want_cuda else "cpu")
    mesh = build_mesh(pcfg, world, device.type, cfg.model_config())  # validates before joining
    rank = dist.get_rank()
    dp_rank, dp_world = data_parallel_coords(mesh)
    return Runtime(device, rank, world, dp_rank, dp_world), (pcfg, mesh)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, norms and biases don't (their scale is not a capacity knob)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def load_sources(cfg: RunConfig, vocab_size: int) -> list[tuple[TokenDataset, float]]:
    sources = []
    for src in cfg.data.sources:
        ds = TokenDataset(src.path, "train")
        if ds.vocab_size > vocab_size:
            raise MaiError(f"{src.path} was tokenized with a vocabulary of {ds.vocab_size} but the model has "
                           f"{vocab_size}; set model.vocab_size={ds.vocab_size} or re-tokenize")
        sources.append((ds, src.weight))
    return sources


Objective = Callable[[Callable[[torch.Tensor], torch.Tensor], tuple], tuple[torch.Tensor, dict[str, float]]]


def lm_loss(model_fn: Callable[[torch.Tensor], torch.Tensor],
            batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy; targets of -100 (SFT's non-assistant tokens, padding) carry no loss."""
    x, y = batch
    return F.cross_entropy(model_fn(x).float().flatten(0, 1), y.flatten(), ignore_index=-100), {}


@dataclass
class BatchSource:
    """What post-training plugs into the one loop: its batches, its objective and its tokenizer.

    ``sampler(seed, rank, world, batch_size)`` returns an object with ``next_batch()`` (a tuple of tensors),
    ``state_dict()`` and ``load_state_dict()`` (saved in checkpoints for exact resume); ``val_batches`` is a
    fixed sequence of such tuples. Pretraining's default is the token-shard mixture with :func:`lm_loss`.
    """

    sampler: Callable[[int, int, int, int], Any]
    val_batches: Sequence[tuple]
    objective: Objective = lm_loss
    tokenizer_dir: Path | None = None
    adapt: Callable[[torch.nn.Module], None] | None = None  # before the optimizer: e.g. add LoRA adapters
    finalize: Callable[[torch.nn.Module], None] | None = None  # before the export: e.g. merge them back


def evaluate(model: torch.nn.Module, batches: Sequence[tuple], rt: Runtime, autocast,
             objective: Objective = lm_loss) -> float:
    """Mean loss over ``batches``, each data-parallel rank taking every dp_world-th batch; the sums meet
    in one all-reduce. A rank left without a batch in the last round runs batch 0 at weight 0, so the
    collectives inside the forward pass (FSDP, TP) stay in step on every rank."""
    model.eval()
    mine = range(rt.dp_rank, len(batches), rt.dp_world)
    rounds = -(-len(batches) // rt.dp_world)
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)  # loss sum, batches
    with torch.no_grad():
        for r in range(rounds):
            batch = batches[mine[r] if r < len(mine) else 0]
            with autocast():
                loss, _ = objective(model, tuple(t.to(rt.device) for t in batch))
            if r < len(mine):
                sums[0] += loss.item()
                sums[1] += 1
    if dist.is_initialized():
        dist.all_reduce(sums)  # tensor-parallel replicas of a batch add equally to both sums
    model.train()
    return float(sums[0] / sums[1].clamp(min=1))


def write_config(cfg: RunConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(out_dir / "config.yaml")


def train(cfg: RunConfig, source: BatchSource | None = None) -> TrainResult:
    """Pretrain on cfg.data's token shards, or post-train on ``source`` (SFT, DPO: mai.post)."""
    cfg.validate()
    rt, parallel = setup_runtime(cfg)
    init = None
    if cfg.train.init_from:  # start from existing weights (own export, HF dir, GGUF); its shape wins
        from mai.interop import load_model

        init = load_model(cfg.train.init_from)
        if init.cfg.max_seq_len < cfg.data.seq_len:
            raise MaiError(f"data.seq_len {cfg.data.seq_len} exceeds the context of {cfg.train.init_from}")
    model_cfg = init.cfg if init is not None else cfg.model_config()
    pretraining = source is None
    if source is None:
        sources = load_sources(cfg, model_cfg.vocab_size)
        val_path = cfg.data.val_source or cfg.data.sources[0].path
        source = BatchSource(
            lambda seed, rank, world, batch: MixtureSampler(sources, cfg.data.seq_len, batch, seed, rank=rank,
                                                            world_size=world),
            # global batches: the same validation windows whatever the number of data-parallel ranks
            ValidationBatches(TokenDataset(val_path, "val"), cfg.data.seq_len,
                              cfg.train.batch_size * rt.dp_world, cfg.data.val_batches))
    out_dir = Path(cfg.train.out_dir)
    ckpt_root = out_dir / "checkpoints"
    is_main = rt.rank == 0
    if is_main:
        write_config(cfg, out_dir)
        remove_partial(ckpt_root)

    torch.manual_seed(cfg.train.seed)
    model = (init.model.float().train() if init is not None else Transformer(model_cfg)).to(rt.device)
    if source.adapt is not None:
        source.adapt(model)
    if parallel is not None:
        from mai.parallel import parallelize

        model = parallelize(model, *parallel)
    optimizer = build_optimizer(model, cfg)
    step_fn = torch.compile(model) if cfg.train.compile else model
    sampler = source.sampler(cfg.train.seed, rt.dp_rank, rt.dp_world, cfg.train.batch_size)

    start_step, tokens_seen = 0, 0
    checkpoints = list_checkpoints(ckpt_root) if cfg.train.resume else []
    if checkpoints:
        run_state, _ = load_checkpoint(checkpoints[-1], model, optimizer, asdict(model_cfg))
        sampler.load_state_dict(run_state["sampler"])
        start_step, tokens_seen = run_state["step"], run_state["tokens"]

    precision = cfg.train.precision
    peak = cfg.train.peak_tflops * 1e12 or peak_flops(rt.device, precision)
    flops_per_token = train_flops_per_token(model_cfg, cfg.data.seq_len)
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len * rt.dp_world

    def autocast():
        return torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    log = RunLogger(out_dir, cfg.train.max_steps, start_step, is_main, cfg.train.progress)
    if start_step:
        log.message(f"resumed from {checkpoints[-1]} at step {start_step}")

    checkpointer = Checkpointer(ckpt_root, cfg.train.keep_checkpoints, cfg.train.async_checkpoint)

    def checkpoint(step: int) -> None:
        checkpointer.save(step, model, optimizer, {"sampler": sampler.state_dict(), "tokens": tokens_seen,
                                                   "model_config": asdict(model_cfg)}, {})

    started = time.perf_counter()
    loss_value, tok_s, mfu, val_loss = math.nan, 0.0, 0.0, math.nan
    step = start_step
    model.train()
    while step < cfg.train.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg.train.max_steps, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=rt.device)
        expert_load = torch.zeros_like(moe_load(model))  # MoE: tokens per expert this step, per layer
        for _ in range(cfg.train.grad_accum):
            batch = tuple(t.to(rt.device, non_blocking=True) for t in sampler.next_batch())
            with autocast():
                loss, extras = source.objective(step_fn, batch)
            loss = loss / cfg.train.grad_accum
            (loss + moe_aux_loss(model) / cfg.train.grad_accum).backward()  # MoE balance terms (0 if dense)
            expert_load += moe_load(model)
            loss_sum += loss.detach()
        # PARALLEL: parameters may sit on several meshes (FSDP, TP, EP experts); mai.parallel clips them all.
        clip = clip_grad_norm_ if parallel is not None else torch.nn.utils.clip_grad_norm_
        grad_norm = (clip(model.parameters(), cfg.optim.grad_clip)
                     if cfg.optim.grad_clip > 0 else torch.zeros(()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if model_cfg.is_moe:
            if dist.is_initialized():
                dist.all_reduce(expert_load)  # every rank keeps the same expert bias
            if model_cfg.moe_bias_update_rate:
                update_expert_bias(model, expert_load, model_cfg.moe_bias_update_rate)
        if dist.is_initialized():
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        step += 1
        tokens_seen += tokens_per_step
        loss_value = loss_sum.item()
        if not math.isfinite(loss_value):
            raise MaiError(f"the loss became {loss_value} at step {step}; lower optim.lr or check the data")
        dt = time.perf_counter() - t0
        tok_s = tokens_per_step / dt
        mfu = tok_s / rt.world * flops_per_token / peak
        log.progress(step, loss_value, tok_s, mfu)
        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            log.log(step, loss=loss_value, lr=lr, grad_norm=float(gn), tokens=tokens_seen, tokens_per_s=tok_s,
                    mfu=mfu, **extras)  # extras: the objective's own numbers (DPO reward margins)
            if model_cfg.is_moe:
                log.log(step, expert_load=expert_load.tolist())  # [moe layer][expert] tokens this step
        elapsed = time.perf_counter() - started
        out_of_time = bool(cfg.train.max_minutes) and elapsed > 60 * cfg.train.max_minutes
        if dist.is_initialized() and cfg.train.max_minutes:  # every rank must stop at the same step
            flag = torch.tensor([int(out_of_time)], device=rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        last = step == cfg.train.max_steps or out_of_time
        if step % cfg.train.eval_every == 0 or last:
            val_loss = evaluate(model, source.val_batches, rt, autocast, source.objective)
            log.log(step, val_loss=val_loss)
            log.message(f"step {step}: train loss {loss_value:.4f}, validation loss {val_loss:.4f}")
        if step % cfg.train.ckpt_every == 0 or last:
            checkpoint(step)
        if out_of_time:
            log.message(f"stopping at step {step}: train.max_minutes={cfg.train.max_minutes} reached")
            break
    checkpointer.wait()
    log.close()

    entropy = unigram_entropy(sources[0][0]) if pretraining else math.nan
    if math.isnan(val_loss):  # resumed at the end: nothing left to train
        val_loss = evaluate(model, source.val_batches, rt, autocast, source.objective)
    tokenizer_dir = (Path(cfg.tokenizer) if cfg.tokenizer else source.tokenizer_dir
                     or Path(cfg.data.sources[0].path) / "tokenizer")
    if source.finalize is not None:
        source.finalize(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main:
        save_native(full, model_cfg, out_dir / "model", tokenizer_dir if tokenizer_dir.is_dir() else None)
        plot_loss(out_dir, None if math.isnan(entropy) else entropy)
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()
    return TrainResult(step, loss_value, val_loss, entropy, tok_s, mfu, out_dir)
