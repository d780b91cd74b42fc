"""Parallel layouts reproduce one process: real torchrun processes on CPU (gloo) train a tiny dense and a
tiny MoE model for 3 AdamW steps on the same global batch; every step's cross-entropy and MoE aux loss
must match the single-process run within 1e-5 (fp32; differences seen are ~1e-6). Bad layouts fail
with a MaiError before any process group exists."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from mai.config import from_dict
from mai.errors import MaiError
from mai.parallel import ParallelConfig, build_mesh

from .harness import big_moe, tiny, train_losses

HERE = Path(__file__).parent
TOL = 1e-5


def torchrun(tmp_path: Path, nproc: int, layouts: dict[str, dict]) -> dict:
    out = tmp_path / f"losses_{nproc}.json"
    specs = (f"{name}={json.dumps(layout)}" for name, layout in layouts.items())
    proc = launch(nproc, "worker.py", str(out), *specs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def launch(nproc: int, script: str, *args: str) -> subprocess.CompletedProcess:
    """``script`` (in this folder) under torchrun on ``nproc`` ranks, or as one plain process (nproc 0)."""
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone"]
    # No 64 MB arena per thread; blocks of 1 MB and more always mmapped and unmapped when freed (glibc
    # otherwise raises that threshold as they are freed and serves FSDP's gathered blocks from a heap
    # that fragmentation grows, which a memory cap counts)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576"}
    cmd = [sys.executable, *(launcher if nproc else []), str(HERE / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def reference():
    return {"dense": train_losses(False), "moe": train_losses(True)}


def assert_same(got, want, tol=TOL):
    assert len(got) == len(want) == 3
    for (ce, aux), (ce_ref, aux_ref) in zip(got, want, strict=True):
        assert abs(ce - ce_ref) <= tol and abs(aux - aux_ref) <= tol, (got, want)


@pytest.mark.slow
def test_two_ranks_fsdp_tp_ep_match_one_process(tmp_path, reference):
    layouts = {
        "dense-fsdp": {},
        "moe-fsdp": {},
        "dense-tp": {"tp": 2},
        "moe-tp": {"tp": 2},
        "moe-ep": {"ep": 2, "activation_checkpointing": "selective"},
        "dense-fsdp-bf16": {"param_dtype": "bfloat16", "activation_checkpointing": "full"},
    }
    got = torchrun(tmp_path, 2, layouts)
    for name in layouts:
        want = reference[name.split("-")[0]]
        assert_same(got[name], want, tol=0.05 if name.endswith("bf16") else TOL)
    assert reference["moe"][0][1] > 0  # the aux loss is really in play


@pytest.mark.slow
def test_four_ranks_dp2_tp2_hsdp_ep_and_ep_tp_match_one_process(tmp_path, reference):
    layouts = {
        "dense-dp2tp2": {"tp": 2},
        "moe-dp2tp2": {"tp": 2, "activation_checkpointing": "full"},
        "moe-hsdp-ep": {"dp_replicate": 2, "ep": 2},
        "moe-ep2tp2": {"ep": 2, "tp": 2},
    }
    got = torchrun(tmp_path, 4, layouts)
    for name in layouts:
        assert_same(got[name], reference[name.split("-")[0]])


LIMIT_MB = 220  # what a rank may allocate beyond the interpreter, torch and the process group: under the
# model's 310 MB of training state, well above a rank's quarter of it plus FSDP's gathered buffers
# (a 4-rank run needed up to ~180 MB and failed once at 180)


@pytest.mark.slow
def test_four_ranks_train_a_model_that_one_process_cannot_hold(tmp_path):
    """Built on meta, sharded (EP 4 + FSDP), then each rank materialises only its own shards: the run fits
    a memory cap that one process cannot train the model under, and its losses are one process's."""
    import torch

    from mai.model.transformer import Transformer

    with torch.device("meta"):
        n = sum(p.numel() for p in Transformer(big_moe()).parameters())
    assert 16 * n > 1.3 * LIMIT_MB * 2**20  # fp32 weights + gradients + two Adam moments
    alone = launch(0, "limited.py", str(tmp_path / "alone.json"), str(LIMIT_MB))
    assert alone.returncode != 0 and "can't allocate memory" in alone.stderr, alone.stderr[-2000:]
    sharded = launch(4, "limited.py", str(tmp_path / "four.json"), str(LIMIT_MB), json.dumps({"ep": 4}))
    assert sharded.returncode == 0, sharded.stderr[-4000:]
    assert_same(json.loads((tmp_path / "four.json").read_text()), train_losses(True, None, big_moe()))


@pytest.mark.parametrize("layout,world,model,message", [
    ({"tp": 2, "dp_shard": 2}, 2, False, "does not match the world size 2"),
    ({"tp": 3}, 4, False, "not divisible by dp_replicate 1 × tp 3"),
    ({"tp": 8}, 8, False, "n_heads 4 is not divisible by parallel.tp 8"),
    ({"tp": 4}, 4, False, "n_kv_heads 2 is not divisible by parallel.tp 4"),
    ({"ep": 3}, 3, True, "n_experts 4 is not divisible by parallel.ep 3"),
    ({"ep": 2}, 3, True, "ep 2 must divide dp_shard 3"),
    ({"ep": 2}, 2, False, "needs a Mixture-of-Experts model"),
])
def test_bad_layouts_fail_before_any_process_group(layout, world, model, message):
    with pytest.raises(MaiError, match=message):
        build_mesh(ParallelConfig(**layout), world, "cpu", tiny(model))
    assert not dist.is_initialized()


def test_unknown_layout_key_is_an_error():
    with pytest.raises(MaiError, match="unknown config key 'parallel.tp_size'"):
        from_dict(ParallelConfig, {"tp_size": 2}, "parallel")
    with pytest.raises(MaiError, match="activation_checkpointing"):
        from_dict(ParallelConfig, {"activation_checkpointing": "some"}, "parallel")


@pytest.mark.parametrize("override,message", [
    ("parallel.tp=2", "world size 1 is not divisible by dp_replicate 1 × tp 2"),
    ("parallel.tpp=2", "unknown config key 'parallel.tpp'"),
])
def test_mai_train_rejects_bad_layout_before_joining(tmp_path, override, message):
    cmd = [sys.executable, "-m", "mai.cli", "train", "model.preset=demo", f"train.out_dir={tmp_path}",
           override]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"error: {message}" in proc.stderr and "Traceback" not in proc.stderr


def test_a_global_batch_the_ranks_cannot_split_fails_before_any_process_group(monkeypatch):
    from mai.config import resolve
    from mai.train.config import RunConfig
    from mai.train.trainer import setup_runtime

    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = resolve(RunConfig, {}, ["parallel.tp=2", "train.batch_size=2", "train.global_batch=6"])
    with pytest.raises(MaiError, match="global_batch 6 is not divisible by train.batch_size 2 × 2 "
                                       "data-parallel ranks = 4"):
        setup_runtime(cfg)
    assert not dist.is_initialized()
    assert resolve(RunConfig, {}, ["train.batch_size=2", "train.global_batch=8"]).grad_accum(2) == 2
    with pytest.raises(MaiError, match="derives grad_accum"):
        resolve(RunConfig, {}, ["train.global_batch=8", "train.grad_accum=2"]).validate()
