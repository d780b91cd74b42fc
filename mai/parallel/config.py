"""The parallel layout of a run (the ``parallel:`` section of a run config) and its validation.

Validation happens here, before any process group exists, so a bad layout is one clear error on every
rank instead of a hang inside a collective.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from mai.errors import MaiError
from mai.model.config import ModelConfig

DTYPES = ("auto", "float32", "bfloat16")
PP_SCHEDULES = ("1f1b", "interleaved_1f1b", "interleaved_zb", "zbv")


@dataclass
class ParallelConfig:
    dp_replicate: int = 1  # HSDP: replicas of the sharded model (across nodes)
    dp_shard: int = -1  # FSDP2 shard group size; -1 = every rank left after dp_replicate and tp
    tp: int = 1  # tensor parallel with sequence parallel (keep it inside one node)
    ep: int = 1  # expert parallel; its ranks are taken from dp_shard (ep divides dp_shard)
    pp: int = 1  # pipeline stages (outermost mesh dimension; one layer range per stage)
    # 1f1b; interleaved_1f1b and interleaved_zb (zero bubble) run pp_virtual_stages chunks per rank,
    # looped; zbv runs 2 chunks per rank in a V (rank r: stages r and 2·pp − 1 − r)
    pp_schedule: Literal["1f1b", "interleaved_1f1b", "interleaved_zb", "zbv"] = "1f1b"
    pp_microbatches: int = 0  # train.batch_size micro-batches per schedule step; 0 = pp
    pp_virtual_stages: int = 1  # stages per rank (interleaved schedules: at least 2; zbv: 2)
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    # FSDP2 compute dtype of the gathered weights; auto = bfloat16 on GPU (half the all-gather bytes and
    # memory of fp32), float32 on CPU (whose bf16 matmul may be a slow path). Master weights stay fp32.
    param_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    reduce_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # gradient reduce-scatter; auto = float32
    compile: bool = False  # torch.compile each transformer block
    timeout_minutes: float = 10.0  # a collective waiting longer than this fails the job instead of hanging

    def dtypes(self, device_type: str) -> tuple[str, str]:
        """(param_dtype, reduce_dtype) with ``auto`` resolved for ``device_type``: bf16 compute with fp32
        gradient reduction on CUDA, fp32 on CPU."""
        auto_param = "bfloat16" if device_type == "cuda" else "float32"
        return (auto_param if self.param_dtype == "auto" else self.param_dtype,
                "float32" if self.reduce_dtype == "auto" else self.reduce_dtype)

    def resolve(self, world_size: int) -> ParallelConfig:
        """A copy with ``dp_shard`` and ``pp_microbatches`` filled in; raises :class:`MaiError` when the
        sizes don't multiply out or the pipeline schedule cannot run them."""
        for name in ("dp_replicate", "tp", "ep", "pp", "pp_virtual_stages"):
            if getattr(self, name) < 1:
                raise MaiError(f"parallel.{name} must be at least 1, got {getattr(self, name)}")
        if self.param_dtype not in DTYPES or self.reduce_dtype not in DTYPES:
            raise MaiError(f"parallel.param_dtype and parallel.reduce_dtype must be one of {DTYPES}")
        if not self.timeout_minutes > 0:
            raise MaiError(f"parallel.timeout_minutes must be positive, got {self.timeout_minutes}")
        fixed = self.pp * self.dp_replicate * self.tp
        pp = f"pp {self.pp} × " if self.pp > 1 else ""
        dp_shard = self.dp_shard
        if dp_shard == -1:
            if world_size % fixed:
                raise MaiError(f"world size {world_size} is not divisible by {pp}dp_replicate "
                               f"{self.dp_replicate} × tp {self.tp}; launch a multiple of {fixed} processes")
            dp_shard = world_size // fixed
        if dp_shard < 1 or fixed * dp_shard != world_size:
            raise MaiError(f"mesh {pp}dp_replicate {self.dp_replicate} × dp_shard {dp_shard} × tp {self.tp} "
                           f"= {fixed * dp_shard} does not match the world size {world_size} (torchrun "
                           "--nproc-per-node × --nnodes); fix parallel.* or the launch")
        if dp_shard % self.ep:
            raise MaiError(f"parallel.ep {self.ep} must divide dp_shard {dp_shard} (experts are spread over "
                           "data-parallel ranks)")
        return replace(self, dp_shard=dp_shard, pp_microbatches=self._check_pipeline(dp_shard))

    def _check_pipeline(self, dp_shard: int) -> int:
        """The schedule's micro-batch count, after checking that the schedule can run this layout (the
        rules of torch.distributed.pipelining's schedules, stated before any process group exists)."""
        m = self.pp_microbatches or self.pp
        if self.pp == 1:
            return max(m, 1)
        s, v = self.pp_schedule, self.pp_virtual_stages
        if s not in PP_SCHEDULES:
            raise MaiError(f"parallel.pp_schedule must be one of {PP_SCHEDULES}, got {s!r}")
        if s == "1f1b" and v != 1:
            raise MaiError(f"parallel.pp_schedule 1f1b runs one stage per rank, but pp_virtual_stages is "
                           f"{v}; use interleaved_1f1b for virtual stages")
        if s == "zbv" and v != 2:
            raise MaiError(f"parallel.pp_schedule zbv runs exactly 2 stages per rank (a V); set "
                           f"parallel.pp_virtual_stages=2, not {v}")
        if s.startswith("interleaved") and v < 2:
            raise MaiError(f"parallel.pp_schedule {s} needs parallel.pp_virtual_stages of at least 2, "
                           f"got {v}")
        if "zb" in s and dp_shard * self.dp_replicate * self.tp > 1:
            # Measured: with FSDP the weight gradients of the deferred W steps come out wrong (the loss
            # departs from one process's after the first step); 1f1b and interleaved_1f1b match it.
            raise MaiError(f"parallel.pp_schedule {s} (zero bubble) runs only with pipeline parallel alone "
                           "here (dp 1, tp 1); use 1f1b or interleaved_1f1b with FSDP or TP")
        if m < self.pp:
            raise MaiError(f"parallel.pp_microbatches {m} is below parallel.pp {self.pp}: schedule {s} needs "
                           "at least one micro-batch per stage in flight; raise it")
        rounds = max(1, m // self.pp)
        if s.startswith("interleaved") and m % rounds:
            raise MaiError(f"parallel.pp_microbatches {m} is not a multiple of its {rounds} rounds of pp "
                           f"{self.pp} (schedule {s}); use a multiple of {self.pp}")
        return m

    def check_model(self, model: ModelConfig) -> None:
        """Shapes the layout must divide: heads and KV heads by tp, experts by ep."""
        for what, n in (("n_heads", model.n_heads), ("n_kv_heads", model.n_kv_heads),
                        ("ffn_dim", model.ffn_dim)):
            if n % self.tp:
                raise MaiError(f"model.{what} {n} is not divisible by parallel.tp {self.tp}")
        if self.tp > 1 and model.tie_embeddings:
            raise MaiError("tensor parallel needs untied embeddings (model.tie_embeddings=false)")
        stages = self.pp * self.pp_virtual_stages
        if self.pp > 1 and model.tie_embeddings:
            raise MaiError("pipeline parallel needs untied embeddings (model.tie_embeddings=false): the "
                           "embedding lives on the first stage, the head on the last")
        if self.pp > 1 and model.n_layers % stages:
            raise MaiError(f"model.n_layers {model.n_layers} is not divisible into parallel.pp {self.pp} × "
                           f"pp_virtual_stages {self.pp_virtual_stages} = {stages} pipeline stages")
        if self.ep > 1 and not model.is_moe:
            raise MaiError("parallel.ep > 1 needs a Mixture-of-Experts model (model.n_experts > 0)")
        if model.is_moe and model.n_experts % self.ep:
            raise MaiError(f"model.n_experts {model.n_experts} is not divisible by parallel.ep {self.ep}")
