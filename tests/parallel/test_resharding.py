"""DCP resharding through the real `mai train`: an MoE run saved on 2 ranks (FSDP + expert parallel 2)
resumes on 1 process and on 4 ranks (expert parallel 4) with the same loss curve as the run that never
stopped; `mai checkpoint export` turns the sharded checkpoint into the same single file the trainer
exports. Global batch stays 4 sequences (batch_size × ranks); validation batches are global too, each
rank evaluating its share, so the validation loss is the same on 1, 2 and 4 ranks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mai.train.logger import read_metrics
from tests.train.conftest import dataset, mai  # noqa: F401  (dataset is a fixture)

ARGS = ["model.preset=moe-demo", "model.vocab_size=512", "model.d_model=64", "model.n_layers=2",
        "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128", "model.expert_ffn_dim=32",
        "model.max_seq_len=32", "model.moe_bias_update_rate=0.001", "data.seq_len=32", "data.val_batches=2",
        "optim.warmup_steps=2", "optim.lr=1e-3", "train.peak_tflops=1", "train.progress=false",
        "train.log_every=1", "train.threads=1", "train.precision=fp32", "train.eval_every=100",
        "train.ckpt_every=3", "train.max_steps=6", "train.keep_checkpoints=5"]


def train(data: Path, out: Path, nproc: int, *extra: str) -> None:
    args = ["train", *ARGS, f"data.sources=[{{path: {data}}}]", f"train.out_dir={out}",
            f"train.batch_size={4 // nproc}", *extra]
    if nproc == 1:
        mai(*args)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "mai.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]


def final_val_loss(out: Path) -> float:
    return [r["val_loss"] for r in read_metrics(out) if "val_loss" in r][-1]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


@pytest.mark.slow
def test_saved_on_two_ranks_resumes_on_one_and_four(dataset, tmp_path):  # noqa: F811
    full = tmp_path / "two"
    train(dataset, full, 2, "parallel.ep=2")
    reference = losses(full)
    assert len(reference) == 6
    assert any("expert_load" in r for r in read_metrics(full))  # per-expert load is logged
    for nproc, extra in ((1, []), (4, ["parallel.ep=4"])):
        run = tmp_path / f"resumed_{nproc}"
        shutil.copytree(full, run)
        shutil.rmtree(run / "checkpoints" / "step_00000006")  # as if killed after the step-3 checkpoint
        train(dataset, run, nproc, *extra)
        assert losses(run) == pytest.approx(reference, abs=1e-5), nproc
        # validation: the same global windows, split over the ranks (some get none) → the same loss
        assert final_val_loss(run) == pytest.approx(final_val_loss(full), abs=1e-5), nproc

    exported = tmp_path / "export"
    out = mai("checkpoint", "export", str(full), str(exported)).stdout
    assert "step_00000006" in out
    mine = load_file(str(exported / "model.safetensors"))
    trainers = load_file(str(full / "model" / "model.safetensors"))
    assert mine.keys() == trainers.keys()
    assert all((mine[k] == trainers[k]).all() for k in mine)
    missing = mai("checkpoint", "export", str(tmp_path / "nothing"), str(exported), check=False)
    assert missing.returncode == 2 and "no complete DCP checkpoint" in missing.stderr
