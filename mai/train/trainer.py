"""`mai train`: one loop from a single CPU process to a torchrun job on many GPUs.

Each optimizer step draws ``grad_accum`` micro-batches from the deterministic mixture sampler, runs them
under bf16 autocast where bf16 is fast (mai.precision; weights and AdamW state stay fp32), clips, steps,
and logs loss, tokens/s and MFU.
Validation, checkpoints and the final export happen on a fixed cadence. A run restarted on the same
``out_dir`` continues from its newest complete checkpoint and reproduces the losses of a run that never
stopped. When launched by torchrun the model is laid out by :mod:`mai.parallel` from outside; with
``parallel.pp`` > 1 each rank holds its pipeline stages and the micro-batches go through the schedule.
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
from torch.distributed.tensor import DTensor

from mai.config import from_dict, to_dict
from mai.data.sampler import MixtureSampler, ValidationBatches
from mai.data.shards import TokenDataset, unigram_entropy
from mai.errors import MaiError
from mai.model.config import ModelConfig
from mai.model.moe import moe_aux_loss, moe_load, update_expert_bias
from mai.model.presets import train_flops_per_token
from mai.model.transformer import Transformer
from mai.parallel.export import export_model
from mai.parallel.grad import clip_grad_norm_, grad_norm
from mai.parallel.parallelize import loss_context
from mai.precision import resolve as resolve_precision
from mai.train.batches import DeviceBatches
from mai.train.checkpoint import Checkpointer, RunLock, list_checkpoints, load_checkpoint, remove_partial
from mai.train.config import RunConfig
from mai.train.guard import StepGuard, StopRequest
from mai.train.logger import RunLogger, plot_loss
from mai.train.peak import MfuMeter, peak_flops
from mai.train.schedule import lr_at

MAX_RELOADS = 3  # reloads of the last checkpoint after bad steps before the run gives up


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    val_loss: float
    unigram_entropy: float
    tokens_per_s: float
    mfu: float  # NaN where the peak could not be trusted
    out_dir: Path
    planned_steps: int = 0  # train.max_steps; more than ``steps`` where train.max_minutes stopped the run
    precision: str = "fp32"


@dataclass
class Runtime:
    """Where this process runs: its device, its rank, and its slice of the data-parallel world."""

    device: torch.device
    rank: int
    world: int
    dp_rank: int
    dp_world: int
    grad_accum: int = 1  # micro-batches per optimizer step (derived from train.global_batch when set)
    cpu_group: dist.ProcessGroup | None = None  # gloo group of the main thread: stop agreement, lock check
    # Pipeline parallel: stages, and micro-batches per schedule step (grad_accum counts schedule steps)
    pp: int = 1
    pp_microbatches: int = 1

    @property
    def micro_batches(self) -> int:
        """Micro-batches of ``train.batch_size`` sequences per optimizer step on each data rank."""
        return self.grad_accum * self.pp_microbatches


def setup_runtime(cfg: RunConfig) -> tuple[Runtime, object | None]:
    """Join the process group when launched by torchrun; pick the device; build the mesh. Every layout
    and batch check runs before the process group exists, so bad input is one error, not a hang."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if world == 1 and not cfg.parallel:
        device = torch.device("cuda" if want_cuda else "cpu")
        return Runtime(device, 0, 1, 0, 1, cfg.grad_accum(1)), None
    # PARALLEL: mai.parallel validates the layout, joins the process group and builds the DeviceMesh.
    from mai.parallel import ParallelConfig, build_mesh, data_parallel_coords

    pcfg = from_dict(ParallelConfig, cfg.parallel, "parallel")
    resolved = pcfg.resolve(world)
    m = resolved.pp_microbatches if resolved.pp > 1 else 1
    grad_accum = cfg.grad_accum(resolved.dp_replicate * resolved.dp_shard, m)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
    device = torch.device(f"cuda:{local}" if want_cuda else "cpu")
    mesh = build_mesh(pcfg, world, device.type, cfg.model_config())  # validates before joining
    rank = dist.get_rank()
    dp_rank, dp_world = data_parallel_coords(mesh)
    cpu_group = dist.new_group(backend="gloo")  # collective: every rank creates it here, once
    return (Runtime(device, rank, world, dp_rank, dp_world, grad_accum, cpu_group, resolved.pp, m),
            (resolved, mesh))


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, norms and biases don't (their scale is not a capacity knob)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]  # LoRA trains matrices only; an empty group breaks DCP's load
    # Fused: one kernel per step on GPU (and CPU), and it honours ``found_inf``, with which the trainer
    # skips a bad step on the device instead of asking the host (mai.train.guard).
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True)


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
    loss = F.cross_entropy(model_fn(x).float().flatten(0, 1), y.flatten(), ignore_index=-100)
    # Vocab-sharded logits (tensor parallel, inside mai.parallel.loss_context) give a replicated DTensor.
    return (loss.to_local() if isinstance(loss, DTensor) else loss), {}


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
             objective: Objective = lm_loss, vocab_parallel: bool = False, pipeline: Any = None) -> float:
    """Mean loss per sequence over ``batches`` (micro-batches: a rank never runs more than a training
    micro-batch at once), data-parallel rank r taking batches r, r + dp, …; each batch's mean is weighted
    by its rows, so the result does not depend on how the windows were grouped. The sums stay on the
    device and meet in one all-reduce. A rank left without a batch in the last round runs batch 0 at
    weight 0, so the collectives inside the forward pass (FSDP, TP) stay in step on every rank."""
    if pipeline is not None:
        return evaluate_pipeline(pipeline, batches, rt, autocast)
    model.eval()
    mine = range(rt.dp_rank, len(batches), rt.dp_world)
    rounds = -(-len(batches) // rt.dp_world)
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)  # loss × rows, rows
    with torch.no_grad(), loss_context(vocab_parallel):
        for r in range(rounds):
            batch = batches[mine[r] if r < len(mine) else 0]
            with autocast():
                loss, _ = objective(model, tuple(t.to(rt.device) for t in batch))
            if r < len(mine):
                rows = len(batch[0])
                sums[0] += loss.detach().double() * rows
                sums[1] += rows
    if dist.is_initialized():
        dist.all_reduce(sums)  # tensor-parallel replicas of a batch add equally to both sums
    model.train()
    return float(sums[0] / sums[1]) if sums[1] > 0 else math.nan  # no validation data: no number


def pad_rows(batch: tuple, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` (x, y) grown to ``rows`` rows whose targets are all -100: the schedule's micro-batches
    have one shape, and the padding carries no loss."""
    x, y = batch
    missing = rows - len(x)
    if missing <= 0:
        return x, y
    return (torch.cat([x, x.new_zeros(missing, x.shape[1])]),
            torch.cat([y, y.new_full((missing, y.shape[1]), -100)]))


def evaluate_pipeline(pipeline: Any, batches: Sequence[tuple], rt: Runtime, autocast) -> float:
    """:func:`evaluate` through the pipeline schedule: ``pp_microbatches`` of a rank's batches per
    schedule step (padding with batch 0 at weight 0); the losses live on the last stage."""
    pipeline.rank_module.eval()
    m = pipeline.microbatches
    mine = range(rt.dp_rank, len(batches), rt.dp_world)
    rounds = -(-len(batches) // rt.dp_world)
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)
    with torch.no_grad():
        for start in range(0, rounds, m):
            picked = [mine[r] if r < len(mine) else None for r in range(start, start + m)]
            parts = [pad_rows(batches[0 if i is None else i], pipeline.micro_batch) for i in picked]
            x, y = (torch.cat([p[k] for p in parts]).to(rt.device) for k in (0, 1))
            with autocast():
                losses = pipeline.eval_losses(x, y)
            for loss, i in zip(losses, picked, strict=False):
                if i is not None:
                    sums[0] += loss.double() * len(batches[i][0])
                    sums[1] += len(batches[i][0])
    dist.all_reduce(sums)
    pipeline.rank_module.train()
    return float(sums[0] / sums[1].clamp(min=1))


def build_model(model_cfg: ModelConfig, init: Any, source: BatchSource, parallel: tuple | None,
                device: torch.device, seed: int, vocab_parallel: bool) -> torch.nn.Module:
    """The model, laid out and on ``device``. It is built on the meta device, parallelized there, and
    only then allocated and initialised shard by shard (mai.parallel.init), so no rank ever holds the
    whole model and the weights equal a single process's under any layout; ``train.init_from`` weights
    (a :class:`mai.parallel.weights.WeightSource`) are then read shard by shard. Only LoRA adapters
    (added to the whole model) need the init weights loaded whole first."""
    from mai.parallel import parallelize
    from mai.parallel.init import materialize
    from mai.parallel.weights import WeightSource, materialize_from

    if (init is None or isinstance(init, WeightSource)) and source.adapt is None:
        with torch.device("meta"):
            model = Transformer(model_cfg)
        if parallel is not None:
            model = parallelize(model, *parallel, vocab_parallel_loss=vocab_parallel)
        if init is None:
            materialize(model, device, seed)
        else:
            materialize_from(model, init, device)
        return model
    model = (init.model.float().train() if init is not None else Transformer(model_cfg)).to(device)
    if source.adapt is not None:
        source.adapt(model)
    if parallel is not None:
        model = parallelize(model, *parallel, vocab_parallel_loss=vocab_parallel)
    return model


def build_pipeline_model(model_cfg: ModelConfig, init: Any, source: BatchSource, parallel: tuple,
                         cfg: RunConfig, device: torch.device) -> Any:
    """This rank's pipeline stages (mai.parallel.pipeline), built on meta and initialised shard by shard;
    ``train.init_from`` weights (a WeightSource) are then read, each rank only the boxes it holds."""
    from mai.parallel.init import materialize
    from mai.parallel.pipeline import pipeline_model
    from mai.parallel.weights import materialize_from

    if source.objective is not lm_loss or source.adapt is not None:
        raise MaiError("parallel.pp > 1 runs the next-token objective on full weights (pretraining, SFT "
                       "without LoRA); use parallel.pp=1 for DPO or LoRA")
    if cfg.train.compile:
        raise MaiError("train.compile does not apply to pipeline stages; use parallel.compile=true")

    def fill(module: torch.nn.Module) -> None:
        if init is None:
            materialize(module, device, cfg.train.seed)
        else:
            materialize_from(module, init, device)

    return pipeline_model(model_cfg, parallel[0], parallel[1], device, cfg.train.batch_size, cfg.data.seq_len,
                          fill)


def lock_run_dir(out_dir: Path, rt: Runtime) -> RunLock:
    """Rank 0 locks ``out_dir``; every rank raises the same :class:`MaiError` when another job holds it."""
    lock = RunLock(out_dir)
    holder = [lock.acquire() if rt.rank == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(holder, src=0, group=rt.cpu_group)
    if holder[0] is not None:
        raise MaiError(f"{out_dir} is in use by another training job ({holder[0]}); wait for it to end or "
                       "use another train.out_dir")
    return lock


@dataclass
class StepOut:
    """What one optimizer step leaves on the device; the host reads it only when it logs."""

    loss: torch.Tensor  # mean over the global batch
    grad_norm: torch.Tensor
    expert_load: torch.Tensor  # MoE: tokens per expert, [moe layer, expert], summed over all ranks
    extras: dict[str, float]


def pipeline_micro_steps(pipeline: Any, batches: Any, autocast: Callable, rt: Runtime) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """``rt.grad_accum`` schedule steps of ``pp_microbatches`` micro-batches each (the loss on the last
    stage, 0 elsewhere), and this rank's MoE loads."""
    loss_sum = torch.zeros((), device=rt.device)
    for _ in range(rt.grad_accum):
        parts = [batches.next_batch() for _ in range(rt.pp_microbatches)]
        x, y = (torch.cat([p[k] for p in parts]) for k in (0, 1))
        with autocast():
            loss_sum += pipeline.step(x, y, 1.0 / rt.micro_batches)
    return loss_sum, pipeline.take_moe_stats()[0]


def train_step(model: torch.nn.Module, step_fn: Callable, optimizer: torch.optim.Optimizer, batches: Any,
               objective: Objective, autocast: Callable, rt: Runtime, cfg: RunConfig, guard: StepGuard,
               vocab_parallel: bool, pipeline: Any = None) -> StepOut:
    """``rt.grad_accum`` micro-batches forward and backward (through the pipeline schedule under pp),
    clip, and the optimizer step — skipped on the device when the guard finds the step bad. Nothing here
    waits for the device."""
    accum = rt.grad_accum
    loss_sum = torch.zeros((), device=rt.device)
    expert_load = torch.zeros_like(moe_load(model))
    extras: dict[str, float] = {}
    if pipeline is not None:
        loss_sum, expert_load = pipeline_micro_steps(pipeline, batches, autocast, rt)
    for _ in range(accum if pipeline is None else 0):
        batch = batches.next_batch()
        with loss_context(vocab_parallel):
            with autocast():
                loss, extras = objective(step_fn, batch)
            loss = loss / accum
            (loss + moe_aux_loss(model) / accum).backward()  # MoE balance terms (0 if dense)
        expert_load += moe_load(model)
        loss_sum += loss.detach()
    if dist.is_initialized():
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)  # every rank judges the same loss
        loss_sum *= rt.pp  # under pp only the last stage's ranks (one per pipeline) held it
    params = [p for p in model.parameters() if p.grad is not None]
    # PARALLEL: parameters may sit on several meshes (FSDP, TP, EP experts) and pipeline stages;
    # mai.parallel clips them all by their global norm.
    pp_group = pipeline.group if pipeline is not None else None
    norm = (clip_grad_norm_(params, cfg.optim.grad_clip, pp_group) if cfg.optim.grad_clip > 0
            else grad_norm([p.grad for p in params], pp_group))
    bad = guard.check(loss_sum, norm)
    optimizer.found_inf = bad  # fused AdamW leaves weights, moments and step count alone where it is 1
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if expert_load.numel():
        if dist.is_initialized():  # every rank (of a stage) keeps the same expert bias
            dist.all_reduce(expert_load, group=pipeline.load_group if pipeline is not None else None)
        rate = model.cfg.moe_bias_update_rate
        if rate:
            update_expert_bias(model, expert_load * (1 - bad).long(), rate)  # a skipped step moves nothing
    if pipeline is not None and model.cfg.is_moe:
        expert_load = pipeline.whole_model_load(expert_load)  # for the log: every MoE layer's row
    return StepOut(loss_sum, norm, expert_load, extras)


def go_back(ckpt_root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig,
            step: int, bad_run: int, reloads: int) -> tuple[dict[str, Any], str]:
    """Reload the newest checkpoint after ``bad_run`` bad steps in a row (the data stream is left where
    it is, past the offending batches); a :class:`MaiError` when there is none or it keeps happening."""
    checkpoints = list_checkpoints(ckpt_root)
    if not checkpoints or reloads >= MAX_RELOADS:
        why = "there is no checkpoint to go back to" if not checkpoints else f"after {reloads} reloads"
        raise MaiError(f"{bad_run} bad steps in a row (non-finite or spiking loss) up to step {step}, and "
                       f"{why}; lower optim.lr or check the data")
    run_state, _ = load_checkpoint(checkpoints[-1], model, optimizer, asdict(model_cfg))
    return run_state, (f"{bad_run} bad steps in a row up to step {step}: reloaded {checkpoints[-1].name}; "
                       "the data continues after the skipped batches")


def write_config(cfg: RunConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(out_dir / "config.yaml")


def run_precision(requested: str, device: torch.device, is_main: bool) -> str:
    """The run's compute precision, measured (and reported) on rank 0 and shared with every rank, so all
    ranks compute in one dtype."""
    name = resolve_precision(requested, device).name if is_main else ""
    if dist.is_initialized():
        chosen = [name]
        dist.broadcast_object_list(chosen, src=0)
        name = chosen[0]
    return name


def end_process_group() -> None:
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def report_once(exc: MaiError) -> BaseException:
    """What a torchrun worker raises for a user error, so that it is printed once, not once per rank:
    rank 0 (or one process) its error as is (the CLI prints the ``error:`` line); before any process
    group exists the error came from the config and files every rank reads alike, so the other ranks
    leave silently with the same exit code; later a rank's own error is prefixed with its rank."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return exc
    if not dist.is_initialized():
        return SystemExit(2)
    return MaiError(f"rank {rank}: {exc}")


def train(cfg: RunConfig, source: BatchSource | None = None) -> TrainResult:
    """Pretrain on cfg.data's token shards, or post-train on ``source`` (SFT, DPO: mai.post). A SIGTERM
    or SIGUSR1 ends the process (exit code 0) after a checkpoint every rank agrees on."""
    try:
        cfg.validate()
        rt, parallel = setup_runtime(cfg)
        lock = lock_run_dir(Path(cfg.train.out_dir), rt)
        stop = StopRequest(cfg.train.max_minutes, rt.cpu_group)  # catches SIGTERM / SIGUSR1 from here on
        try:
            return run(cfg, source, rt, parallel, stop)
        finally:
            stop.restore()
            lock.release()
    except MaiError as exc:
        raise report_once(exc) from None


def run(cfg: RunConfig, source: BatchSource | None, rt: Runtime, parallel: tuple | None,
        stop: StopRequest) -> TrainResult:
    """The training run itself, once the process group, the run directory's lock and the signal
    handlers are in place."""
    init: Any = None
    if cfg.train.init_from:  # start from existing weights (own export, HF dir, GGUF); its shape wins
        if source is None or source.adapt is None:
            from mai.parallel.weights import open_weights

            init = open_weights(cfg.train.init_from)  # read shard by shard once the model is laid out
        else:
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
            # data.val_batches global batches of windows, in micro-batches dealt to the ranks: the same
            # windows, and so the same loss, whatever the layout
            ValidationBatches(TokenDataset(val_path, "val"), cfg.data.seq_len, cfg.train.batch_size,
                              cfg.data.val_batches * rt.micro_batches * rt.dp_world))
    out_dir = Path(cfg.train.out_dir)
    ckpt_root = out_dir / "checkpoints"
    is_main = rt.rank == 0
    if is_main:
        write_config(cfg, out_dir)
        remove_partial(ckpt_root)

    torch.manual_seed(cfg.train.seed)
    # TP: the logits stay vocab-sharded for the next-token loss (other objectives get them gathered)
    # (pipeline stages gather the logits of the last one: its loss runs inside the schedule)
    vocab_parallel = (parallel is not None and parallel[0].tp > 1 and rt.pp == 1
                      and source.objective is lm_loss)
    pipeline = None
    if rt.pp > 1:
        pipeline = build_pipeline_model(model_cfg, init, source, parallel, cfg, rt.device)
        model = pipeline.rank_module
    else:
        model = build_model(model_cfg, init, source, parallel, rt.device, cfg.train.seed, vocab_parallel)
    optimizer = build_optimizer(model, cfg)
    step_fn = torch.compile(model) if cfg.train.compile else model
    sampler = DeviceBatches(source.sampler(cfg.train.seed, rt.dp_rank, rt.dp_world, cfg.train.batch_size),
                            rt.device)

    start_step, tokens_seen, requested = 0, 0, cfg.train.precision
    checkpoints = list_checkpoints(ckpt_root) if cfg.train.resume else []
    if checkpoints:
        run_state, _ = load_checkpoint(checkpoints[-1], model, optimizer, asdict(model_cfg))
        sampler.load_state_dict(run_state["sampler"])
        start_step, tokens_seen = run_state["step"], run_state["tokens"]
        if requested == "auto":  # a resumed run keeps the dtype it started in (exact resume)
            requested = run_state.get("precision", requested)

    precision = run_precision(requested, rt.device, is_main)
    peak = cfg.train.peak_tflops * 1e12 or peak_flops(rt.device, precision)
    flops_per_token = train_flops_per_token(model_cfg, cfg.data.seq_len)
    tokens_per_step = cfg.train.batch_size * rt.micro_batches * cfg.data.seq_len * rt.dp_world

    def autocast():
        return torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    log = RunLogger(out_dir, cfg.train.max_steps, start_step, is_main, cfg.train.progress)
    meter = MfuMeter(peak, None if cfg.train.peak_tflops else lambda: peak_flops(rt.device, precision, True),
                     log.message)
    if start_step:
        log.message(f"resumed from {checkpoints[-1]} at step {start_step}")

    checkpointer = Checkpointer(ckpt_root, cfg.train.keep_checkpoints, cfg.train.async_checkpoint,
                                pinned=rt.device.type == "cuda")
    if start_step and tokens_seen != start_step * tokens_per_step:
        saved, now = tokens_seen // (start_step * cfg.data.seq_len), tokens_per_step // cfg.data.seq_len
        raise MaiError(f"{checkpoints[-1]} was trained with {saved} sequences per step, this run has {now} "
                       "(train.batch_size × grad_accum × data-parallel ranks); set train.global_batch="
                       f"{saved} to continue the same data stream and schedule")
    guard = StepGuard(rt.device, cfg.train.loss_spike)

    def checkpoint(step: int) -> None:
        run_state = {"sampler": sampler.state_dict(), "tokens": tokens_seen,
                     "model_config": asdict(model_cfg), "precision": precision}
        checkpointer.save(step, model, optimizer, run_state, {})

    loss_value, tok_s, mfu, val_loss = math.nan, 0.0, 0.0, math.nan
    step, reloads, stopped = start_step, 0, None
    logged = (step, time.perf_counter())  # the last log point: throughput is measured between log points
    model.train()
    while step < cfg.train.max_steps:
        lr = lr_at(step, cfg.train.max_steps, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = train_step(model, step_fn, optimizer, sampler, source.objective, autocast, rt, cfg, guard,
                         vocab_parallel, pipeline)
        extras = out.extras
        step += 1
        tokens_seen += tokens_per_step
        stopped = stop.poll()  # "SIGTERM", "SIGUSR1", "time" or None: the same on every rank
        last = step == cfg.train.max_steps or stopped is not None
        logging = step % cfg.train.log_every == 0 or last
        if logging or step % cfg.train.ckpt_every == 0:  # the only places the host waits for the device
            flags, bad_run = guard.read()
            skipped = [step - len(flags) + 1 + i for i, bad in enumerate(flags) if bad]
            if skipped:
                log.log(step, skipped_steps=skipped)
                log.message(f"skipped step(s) {skipped}: non-finite or spiking loss, weights left alone")
            if bad_run >= cfg.train.max_bad_steps:
                checkpointer.wait()
                run_state, message = go_back(ckpt_root, model, optimizer, model_cfg, step, bad_run, reloads)
                step, tokens_seen, reloads = run_state["step"], run_state["tokens"], reloads + 1
                guard.forget()
                log.message(message)
                log.log(step, reloaded=message)
                logged = (step, time.perf_counter())
                continue
        if logging:
            loss_value = out.loss.item()
            now = time.perf_counter()
            dt = (now - logged[1]) / max(step - logged[0], 1)
            logged = (step, now)
            tok_s = tokens_per_step / dt
            mfu = meter(tok_s / rt.world * flops_per_token)
            log.progress(step, loss_value, tok_s, mfu)
            log.log(step, loss=loss_value, lr=lr, grad_norm=out.grad_norm.item(), tokens=tokens_seen,
                    tokens_per_s=tok_s,
                    mfu=mfu if math.isfinite(mfu) else None,  # None: the peak is not trusted
                    **extras)  # extras: the objective's own numbers (DPO reward margins)
            if model_cfg.is_moe:
                log.log(step, expert_load=out.expert_load.tolist())  # [moe layer][expert] tokens this step
        preempted = stopped not in (None, "time")  # a signal: save and go, no time for validation
        if (step % cfg.train.eval_every == 0 or last) and not preempted and source.val_batches:
            val_loss = evaluate(model, source.val_batches, rt, autocast, source.objective, vocab_parallel,
                                pipeline)
            log.log(step, val_loss=val_loss)
            log.message(f"step {step}: train loss {loss_value:.4f}, validation loss {val_loss:.4f}")
        if step % cfg.train.ckpt_every == 0 or last:
            checkpoint(step)
        if stopped is not None:
            log.message(f"stopping at step {step}: train.max_minutes={cfg.train.max_minutes} reached"
                        if stopped == "time" else
                        f"stopping at step {step} on {stopped}: checkpoint saved; the same command resumes")
            break
    checkpointer.close()
    log.close()
    if stopped not in (None, "time"):
        end_process_group()
        raise SystemExit(0)

    entropy = unigram_entropy(sources[0][0]) if pretraining else math.nan
    if math.isnan(val_loss) and source.val_batches:  # resumed at the end: nothing left to train
        val_loss = evaluate(model, source.val_batches, rt, autocast, source.objective, vocab_parallel,
                                pipeline)
    tokenizer_dir = (Path(cfg.tokenizer) if cfg.tokenizer else source.tokenizer_dir
                     or Path(cfg.data.sources[0].path) / "tokenizer")
    if source.finalize is not None:
        source.finalize(model)
    # One tensor at a time, gathered from its shards and pipeline stage, streamed to the file by rank 0
    export_model(model, model_cfg, out_dir / "model", tokenizer_dir if tokenizer_dir.is_dir() else None,
                 rt.cpu_group)
    if is_main:
        plot_loss(out_dir, None if math.isnan(entropy) else entropy)
    end_process_group()
    return TrainResult(step, loss_value, val_loss, entropy, tok_s, mfu, out_dir, cfg.train.max_steps,
                       precision)
