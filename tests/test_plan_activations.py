"""The planner's activation memory is MAI's own: bytes a real :class:`mai.model.transformer.Block` keeps
for backward per token, measured under each checkpointing policy mai.parallel applies (none, selective,
full) at tp 1 (one process) and tp 2 (a real 2-process gloo run with mai.parallel's tensor + sequence
parallel), must equal :func:`mai.plan.activation_bytes_per_token`.

What counts as kept: every tensor autograd packs (``saved_tensors_hooks``; that includes the checkpoint's
block input) plus every tensor made during the forward that is still alive when it ends (selective
checkpointing's cache of matmul and attention outputs bypasses the hooks). Parameters, the output and the
rotary tables are not per-token; two batch sizes are measured and their difference is divided by the
extra tokens, so per-sequence constants cancel too. Compute is bf16 (FSDP's GPU default param dtype).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from mai.model.config import ModelConfig
from mai.model.transformer import Block, Transformer, rope_tables
from mai.parallel.parallelize import checkpoint_block
from mai.plan import activation_bytes_per_token

MODES = ("none", "selective", "full")
CFG = ModelConfig(vocab_size=128, d_model=64, n_heads=4, n_kv_heads=2, ffn_dim=160, max_seq_len=64)
SEQ = 32


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of the memory behind ``t``; for a tensor subclass (a DTensor, an async collective's
    result), that of the plain tensor it wraps."""
    while is_traceable_wrapper_subclass(t):
        t = getattr(t, t.__tensor_flatten__()[0][0])
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class _Made(TorchDispatchMode):
    """Remembers (weakly) every tensor an op returns during the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[weakref.ref, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.made.append((weakref.ref(t), *_storage(t)))
        return out


def kept_bytes(block: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    """Bytes ``block`` keeps for backward after a forward on ``x`` (not counting weights or output)."""
    packed: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, size = _storage(t)
        packed[ptr] = size
        return t

    made = _Made()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), made:
        y = block(x, cos, sin)
    gc.collect()
    skip = {_storage(p)[0] for p in block.parameters()} | {_storage(y)[0], _storage(cos)[0],
                                                            _storage(sin)[0]}
    alive = {ptr: size for ref, ptr, size in made.made if ref() is not None}
    kept = {**packed, **alive}
    return sum(size for ptr, size in kept.items() if ptr not in skip)


def per_token(measure, local_seq: int) -> float:
    """Kept bytes per token from batches of 1 and 3 sequences (per-sequence constants cancel)."""
    return (measure(3) - measure(1)) / (2 * local_seq)


def measure_tp1(mode: str) -> float:
    cos, sin = rope_tables(CFG.head_dim, SEQ, CFG.rope_theta)

    def run(batch: int) -> int:
        torch.manual_seed(0)
        block = Block(CFG, 0).to(torch.bfloat16)
        if mode != "none":
            checkpoint_block(block, mode)
        x = torch.randn(batch, SEQ, CFG.d_model, dtype=torch.bfloat16, requires_grad=True)
        return kept_bytes(block, x, cos, sin)

    return per_token(run, SEQ)


def measure_tp(mode: str) -> float:
    """Inside a torchrun worker: one block under mai.parallel's tensor + sequence parallel."""
    from mai.parallel import ParallelConfig, build_mesh, parallelize
    from mai.parallel.init import materialize

    world = int(os.environ["WORLD_SIZE"])
    layout = ParallelConfig(tp=world, activation_checkpointing=mode)
    cfg = ModelConfig(**{**CFG.__dict__, "n_layers": 1})
    with torch.device("meta"):
        model = Transformer(cfg)
    mesh = build_mesh(layout, world, "cpu", cfg)
    parallelize(model, layout, mesh)
    materialize(model, torch.device("cpu"), seed=0)
    block = model.layers["0"].to(torch.bfloat16)
    cos, sin = rope_tables(cfg.head_dim, SEQ, cfg.rope_theta)

    def run(batch: int) -> int:
        # the residual stream between blocks: this rank's sequence shard, a plain tensor
        x = torch.randn(batch, SEQ // world, cfg.d_model, dtype=torch.bfloat16, requires_grad=True)
        return kept_bytes(block, x, cos, sin)

    return per_token(run, SEQ)  # bytes per token of the whole sequence, on one rank


def formula(mode: str, tp: int) -> float:
    """The planner's count with CPU's composite RMSNorm (the one term that differs from CUDA's)."""
    return activation_bytes_per_token(CFG, False, mode, tp, fused_norm=False)


@pytest.mark.parametrize("mode", MODES)
def test_one_process_matches_formula(mode):
    assert measure_tp1(mode) == pytest.approx(formula(mode, 1), rel=0.02)


@pytest.mark.slow
def test_tp2_gloo_matches_formula(tmp_path):
    out = tmp_path / "kept.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           str(Path(__file__)), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(out.read_text())
    for mode in MODES:
        assert got[mode] == pytest.approx(formula(mode, 2), rel=0.02), (mode, got)


if __name__ == "__main__":  # the torchrun worker of test_tp2_gloo_matches_formula
    import torch.distributed as dist

    torch.set_num_threads(1)
    result = {mode: measure_tp(mode) for mode in MODES}
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(result))
    dist.destroy_process_group()
