"""Exact resume: a `mai train` process killed with SIGKILL and started again gives the same losses as a
run that never stopped, and a kill in the middle of writing a checkpoint never damages the last good one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from mai.config import resolve
from mai.model.transformer import Transformer
from mai.train.checkpoint import list_checkpoints, load_checkpoint
from mai.train.config import RunConfig
from mai.train.logger import read_metrics
from mai.train.trainer import build_optimizer

from .conftest import TINY, mai, train_args

STEPS = 24


def losses(out: Path) -> dict[int, float]:
    if not (out / "metrics.jsonl").exists():  # the run has not logged its first step yet
        return {}
    return {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mai.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240, may_finish: bool = False) -> bool:
    """SIGKILL ``proc`` once ``ready()``; True if killed, False if it finished first (when allowed)."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            if may_finish:
                return False
            pytest.fail(f"training ended before it could be killed:\n{proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the kill point")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("uninterrupted")
    mai(*train_args(dataset, out, f"train.max_steps={STEPS}", "train.ckpt_every=6"))
    result = losses(out)
    assert sorted(result) == list(range(1, STEPS + 1))
    return result


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(dataset, reference, tmp_path):
    args = train_args(dataset, tmp_path, f"train.max_steps={STEPS}", "train.ckpt_every=6")
    proc = start(args)
    # kill once step 6 is safely checkpointed and training has gone on past it
    kill_when(proc, lambda: (tmp_path / "checkpoints" / "step_00000006").is_dir()
              and len(losses(tmp_path)) >= 8)
    assert proc.returncode == -signal.SIGKILL
    assert max(losses(tmp_path)) < STEPS
    resumed = mai(*args)
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert losses(tmp_path) == reference  # bit-for-bit the same losses at every step


@pytest.mark.slow
def test_kills_while_checkpointing_never_damage_the_last_good_one(dataset, reference, tmp_path):
    args = train_args(dataset, tmp_path, f"train.max_steps={STEPS}", "train.ckpt_every=1",
                      "train.keep_checkpoints=2")
    cfg = resolve(RunConfig, {}, TINY)
    # Every step writes a checkpoint, so most of a step's time is checkpoint writing: killing at staggered
    # delays after the run has made progress lands inside writes (and sometimes between them).
    for kills, delay in enumerate((0.0, 0.003, 0.007, 0.013, 0.021)):
        reached = max(losses(tmp_path), default=0) + 2
        proc = start(args)

        def ready(reached=reached, delay=delay):
            if max(losses(tmp_path), default=0) < reached:
                return False
            time.sleep(delay)
            return True

        if not kill_when(proc, ready, may_finish=kills > 0):
            break
        newest = list_checkpoints(tmp_path / "checkpoints")[-1]
        model = Transformer(cfg.model_config())
        run_state, _ = load_checkpoint(newest, model, build_optimizer(model, cfg), asdict(cfg.model_config()))
        assert run_state["step"] == int(newest.name.split("_")[1])
    mai(*args)  # finishes from whatever survived
    assert losses(tmp_path) == reference
    assert not list((tmp_path / "checkpoints").glob("*.partial"))


@pytest.mark.slow
def test_async_checkpoints_resume_exactly(dataset, reference, tmp_path):
    """Background-written checkpoints hold the same state: a run resumed from one matches the reference."""
    first = train_args(dataset, tmp_path, f"train.max_steps={STEPS}", "train.ckpt_every=6",
                       "train.async_checkpoint=true")
    mai(*first)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000018", "step_00000024"]
    # drop the last checkpoint and the tail of the metrics, then resume from the async step-18 checkpoint
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step_00000024")
    resumed = mai(*first)
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert losses(tmp_path) == reference


@pytest.mark.slow
def test_sigusr1_checkpoints_and_exits_cleanly_then_resumes_exactly(dataset, reference, tmp_path):
    """What Slurm's ``--signal=USR1@300`` does before a preemption: the run saves where it is and exits 0."""
    args = train_args(dataset, tmp_path, f"train.max_steps={STEPS}", "train.ckpt_every=100")
    proc = start(args)
    deadline = time.time() + 240
    while len(losses(tmp_path)) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    saved = list_checkpoints(tmp_path / "checkpoints")
    at = int(saved[-1].name.split("_")[1])
    assert len(saved) == 1 and 3 <= at < STEPS and max(losses(tmp_path)) == at
    resumed = mai(*args)
    assert f"resumed from {saved[-1]}" in resumed.stdout + resumed.stderr
    assert losses(tmp_path) == reference
