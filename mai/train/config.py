"""The training run's config: model, data, optimizer, loop, parallel layout — every `mai train` flag.

A run writes the resolved config to ``<out_dir>/config.yaml``; a checkpoint from another model config
refuses to load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mai.config import from_dict
from mai.errors import MaiError
from mai.model.config import ModelConfig
from mai.model.presets import get_preset


@dataclass
class DataSource:
    """A token-shard directory (written by `mai data prepare`) and its share of the training mix."""

    path: str
    weight: float = 1.0


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=lambda: [DataSource("data_cache/default")])
    seq_len: int = 256
    val_source: str | None = None  # defaults to the first source's "val" split
    val_batches: int = 8


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # WSD: the last fraction of steps decays linearly
    grad_clip: float = 1.0  # 0 = off


@dataclass
class LoopConfig:
    out_dir: str = "runs/demo"
    max_steps: int = 1000
    max_minutes: float = 0.0  # 0 = no time limit; else stop (evaluate, save) this long after the start
    batch_size: int = 16  # sequences per optimizer micro-step, per process
    grad_accum: int = 1
    # Sequences per optimizer step over all ranks; 0 = batch_size × grad_accum × data-parallel ranks. When
    # set, grad_accum is derived (global_batch ÷ (batch_size × data-parallel ranks)), so the same command
    # resumes on another world size with the same data order, tokens per step and schedule.
    global_batch: int = 0
    # auto = bf16 on CUDA, and on a CPU only where bf16 measures faster (mai.precision); bf16 = autocast,
    # weights and optimizer state stay fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    seed: int = 1234
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    async_checkpoint: bool = False  # write checkpoints in a background thread while training goes on
    loss_spike: float = 0.0  # skip a step whose loss exceeds this × the running mean of good losses; 0 = off
    max_bad_steps: int = 5  # this many skipped steps in a row reload the last checkpoint (NaN/inf/spike)
    resume: bool = True  # continue from the newest complete checkpoint in out_dir
    device: str = "auto"  # auto = cuda when available, else cpu
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    peak_tflops: float = 0.0  # MFU denominator; 0 = known GPU table, or measured matmul peak on CPU
    progress: bool = True
    init_from: str | None = None  # start from these weights (mai export, run dir, HF dir, .gguf)


@dataclass
class RunConfig:
    # "preset" picks the base shape; any other key overrides a ModelConfig field (model.n_layers=8).
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "demo"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    parallel: dict[str, Any] = field(default_factory=dict)  # mai.parallel's layout; empty = one process
    tokenizer: str | None = None  # defaults to <first source>/tokenizer

    def model_config(self) -> ModelConfig:
        overrides = dict(self.model)
        base = asdict(get_preset(overrides.pop("preset", "demo")))
        if {"d_model", "n_heads"} & overrides.keys() and "head_dim" not in overrides:
            base["head_dim"] = None  # re-derive from the new width
        cfg = from_dict(ModelConfig, {**base, **overrides}, "model")
        if self.data.seq_len > cfg.max_seq_len:
            raise MaiError(f"data.seq_len {self.data.seq_len} exceeds model.max_seq_len {cfg.max_seq_len}")
        return cfg

    def grad_accum(self, dp_world: int, pp_microbatches: int = 1) -> int:
        """Micro-batches (pipeline parallel: schedule steps of ``pp_microbatches`` micro-batches) per
        optimizer step on each rank, from ``train.global_batch`` when it is set; a global batch the ranks
        cannot split evenly is a :class:`MaiError` naming the numbers."""
        t = self.train
        if not t.global_batch:
            return t.grad_accum
        per_micro = t.batch_size * dp_world * pp_microbatches
        pipeline = f" × {pp_microbatches} pipeline micro-batches" if pp_microbatches > 1 else ""
        if t.global_batch % per_micro:
            raise MaiError(f"train.global_batch {t.global_batch} is not divisible by train.batch_size "
                           f"{t.batch_size} × {dp_world} data-parallel ranks{pipeline} = {per_micro}; "
                           "change one")
        return t.global_batch // per_micro

    def validate(self) -> None:
        if not self.train.init_from:  # else the model's shape comes from the checkpoint
            self.model_config()
        if not self.data.sources:
            raise MaiError("data.sources is empty: give at least one token-shard directory")
        for s in self.data.sources:
            if s.weight <= 0:
                raise MaiError(f"data source {s.path} has weight {s.weight}; weights must be positive")
        t = self.train
        if t.max_steps < 1 or t.batch_size < 1 or t.grad_accum < 1:
            raise MaiError("train.max_steps, train.batch_size and train.grad_accum must be at least 1")
        if t.global_batch < 0 or t.loss_spike < 0 or t.max_bad_steps < 1:
            raise MaiError(f"train.global_batch {t.global_batch} and train.loss_spike {t.loss_spike} must "
                           f"not be negative, train.max_bad_steps {t.max_bad_steps} must be at least 1")
        if t.global_batch and t.grad_accum != 1:
            raise MaiError(f"train.global_batch {t.global_batch} derives grad_accum; leave train.grad_accum "
                           f"({t.grad_accum}) at 1")
        if self.optim.warmup_steps >= t.max_steps and self.optim.schedule != "constant":
            raise MaiError(f"optim.warmup_steps {self.optim.warmup_steps} must be below train.max_steps "
                           f"{t.max_steps}")
