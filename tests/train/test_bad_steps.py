"""A long run survives bad batches, in process with a synthetic batch source: a non-finite loss or a loss
spike skips the step on the device (the weights, Adam moments and step count stay as they were), and
``train.max_bad_steps`` bad steps in a row reload the last checkpoint and carry on with the data after
the offending batches. Each run is compared with a run whose stream simply lacks those batches: the
losses must be the same. Also: the training step never waits for the device, and a run directory
already in use is refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mai.config import resolve
from mai.errors import MaiError
from mai.train.checkpoint import RunLock
from mai.train.config import RunConfig
from mai.train.logger import read_metrics
from mai.train.trainer import BatchSource, lm_loss, train

VOCAB, SEQ, ROWS = 64, 16, 2
POISON = {"nan": math.nan, "spike": 50.0}


class Stream:
    """Batches ``(x, y, factor)``; batch i is a pure function of i; ``skip`` removes indices from the
    stream and ``poison`` multiplies the loss of some (NaN, or a spike)."""

    def __init__(self, poison: dict[int, str], skip: set[int]):
        self.poison, self.skip, self.i = poison, skip, 0

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        while self.i in self.skip:
            self.i += 1
        g = torch.Generator().manual_seed(self.i)
        tokens = torch.randint(0, VOCAB, (ROWS, SEQ + 1), generator=g)
        factor = torch.tensor(POISON[self.poison[self.i]] if self.i in self.poison else 1.0)
        self.i += 1
        return tokens[:, :-1], tokens[:, 1:], factor

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def poisoned_loss(model_fn, batch):
    x, y, factor = batch
    loss, extras = lm_loss(model_fn, (x, y))
    return loss * factor, extras


def run(out: Path, steps: int, poison: dict[int, str] | None = None, skip: set[int] = frozenset(),
        *extra: str) -> dict[int, float]:
    cfg = resolve(RunConfig, {}, [
        "model.preset=demo", f"model.vocab_size={VOCAB}", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "model.n_kv_heads=1", "model.ffn_dim=64", f"model.max_seq_len={SEQ}",
        f"data.seq_len={SEQ}", f"data.sources=[{{path: {out}/none}}]", f"train.out_dir={out}",
        f"train.max_steps={steps}", f"train.batch_size={ROWS}", "train.log_every=1", "train.eval_every=1000",
        "train.ckpt_every=4", "train.keep_checkpoints=3", "train.progress=false", "train.precision=fp32",
        "train.peak_tflops=1", "optim.schedule=constant", "optim.warmup_steps=0", "optim.lr=1e-2", *extra])
    val = [Stream({}, set()).next_batch()]
    source = BatchSource(lambda seed, rank, world, batch: Stream(poison or {}, set(skip)), val, poisoned_loss)
    train(cfg, source)
    return {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}


def test_nan_and_spike_steps_are_skipped_and_logged(tmp_path):
    got = run(tmp_path / "bad", 8, {3: "nan", 5: "spike"}, set(), "train.loss_spike=3")
    want = run(tmp_path / "clean", 6, None, {3, 5})
    assert math.isnan(got[4]) and got[6] > 3 * want[3]  # step 4 is batch 3, step 6 is batch 5
    good = [got[s] for s in sorted(got) if s not in (4, 6)]
    assert good == pytest.approx(list(want.values()), abs=1e-6)  # as if the bad batches never were
    skipped = [r["skipped_steps"] for r in read_metrics(tmp_path / "bad") if "skipped_steps" in r]
    assert skipped == [[4], [6]]


def test_bad_steps_in_a_row_reload_the_last_checkpoint_and_move_past_the_batches(tmp_path):
    got = run(tmp_path / "bad", 8, {5: "nan", 6: "nan", 7: "nan"}, set(), "train.max_bad_steps=3")
    # steps 6-8 are bad: back to the step-4 checkpoint, whose next batch (4) is gone with the rest
    want = run(tmp_path / "clean", 8, None, {4, 5, 6, 7})
    assert got == pytest.approx(want, abs=1e-6)
    reloaded = [r for r in read_metrics(tmp_path / "bad") if "reloaded" in r]
    assert len(reloaded) == 1 and "reloaded step_00000004" in reloaded[0]["reloaded"]


def test_bad_steps_without_a_checkpoint_are_an_error(tmp_path):
    with pytest.raises(MaiError, match="2 bad steps in a row .* up to step 2, and there is no checkpoint"):
        run(tmp_path, 8, {0: "nan", 1: "nan"}, set(), "train.max_bad_steps=2")


def test_resuming_with_another_global_batch_is_refused(tmp_path):
    run(tmp_path, 2)
    with pytest.raises(MaiError, match="trained with 2 sequences per step, this run has 1 .* "
                                       "set train.global_batch=2"):
        run(tmp_path, 4, None, set(), "train.batch_size=1")


def test_a_run_directory_in_use_is_refused(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    try:
        with pytest.raises(MaiError, match=f"{tmp_path} is in use by another training job \\(pid "):
            run(tmp_path, 2)
    finally:
        lock.release()
    assert run(tmp_path, 2)  # free again
