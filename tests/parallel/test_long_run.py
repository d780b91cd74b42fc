"""A long run survives, through the real `mai train` under torchrun on CPU (gloo): asynchronous
checkpoints on 2 and 4 ranks, a SIGTERM to torchrun (as Slurm or a preemption sends it) that ends every
rank cleanly after a checkpoint, and a resume of that checkpoint on 4 ranks. ``train.global_batch`` fixes
the step at 4 sequences (2 ranks × 2 micro-batches, then 4 ranks × 1), so the resumed run sees the same
tokens in the same order with the same schedule: its loss curve is the uninterrupted 2-rank run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mai.train.checkpoint import list_checkpoints
from mai.train.logger import read_metrics
from tests.train.conftest import dataset  # noqa: F401  (a fixture)

ARGS = ["model.preset=demo", "model.vocab_size=512", "model.d_model=64", "model.n_layers=2",
        "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128", "model.max_seq_len=32",
        "data.seq_len=32", "data.val_batches=2", "optim.schedule=constant", "optim.warmup_steps=2",
        "optim.lr=1e-3", "train.batch_size=1", "train.global_batch=4", "train.async_checkpoint=true",
        "train.ckpt_every=3", "train.keep_checkpoints=5", "train.log_every=1", "train.progress=false",
        "train.threads=1", "train.precision=fp32", "train.peak_tflops=1"]
STEPS = 12


def start(data: Path, out: Path, nproc: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "mai.cli", "train", *ARGS, f"data.sources=[{{path: {data}}}]", f"train.out_dir={out}",
           *extra]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}_{nproc}.log", "w")  # noqa: SIM115 (the child writes to it)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def finish(proc: subprocess.Popen, out: Path, nproc: int) -> str:
    proc.wait(timeout=600)
    return (out.parent / f"{out.name}_{nproc}.log").read_text()


def curve(out: Path) -> dict[int, tuple[float, int]]:
    return {r["step"]: (r["loss"], r["tokens"]) for r in read_metrics(out) if "loss" in r}


@pytest.mark.slow
def test_sigterm_then_resume_on_four_ranks_sees_the_same_tokens(dataset, tmp_path):  # noqa: F811
    reference = tmp_path / "reference"
    log = finish(start(dataset, reference, 2, f"train.max_steps={STEPS}"), reference, 2)
    assert "model " in log, log[-3000:]
    want = curve(reference)
    # async checkpoints completed on 2 ranks (the background save has its own gloo group)
    assert [p.name for p in list_checkpoints(reference / "checkpoints")] == [
        f"step_{s:08d}" for s in (3, 6, 9, 12)]

    run = tmp_path / "run"
    proc = start(dataset, run, 2, "train.max_steps=1000", "train.ckpt_every=1000")
    deadline = time.time() + 300
    while not ((run / "metrics.jsonl").exists() and len(curve(run)) >= 2):
        assert proc.poll() is None and time.time() < deadline, finish(proc, run, 2)[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to both ranks
    log = finish(proc, run, 2)
    stopped = list_checkpoints(run / "checkpoints")
    assert stopped, log[-3000:]
    at = int(stopped[-1].name.split("_")[1])
    assert f"stopping at step {at} on SIGTERM: checkpoint saved" in log
    assert 2 <= at < STEPS
    assert "[rank0]: Traceback" not in log and "[rank1]: Traceback" not in log  # the ranks ended cleanly

    log = finish(start(dataset, run, 4, f"train.max_steps={STEPS}"), run, 4)
    assert f"resumed from {stopped[-1]}" in log, log[-3000:]
    got = curve(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, (loss, tokens) in want.items():
        assert tokens == got[step][1] and loss == pytest.approx(got[step][0], abs=1e-5), (step, want, got)
