"""`mai train` → `mai generate` / `mai chat` on real text, and what a run leaves on disk."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from mai.train.logger import read_metrics

from .conftest import mai, train_args


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = mai(*train_args(dataset, out, "train.max_steps=150", "train.eval_every=50",
                           "train.ckpt_every=75", "train.batch_size=16", "optim.lr=3e-3",
                           "optim.warmup_steps=10", "train.threads=0"))
    return out, proc


def test_run_directory_and_learning(trained):
    out, proc = trained
    rows = read_metrics(out)
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    entropy = float(proc.stdout.split("unigram entropy")[1].split()[0])
    assert len(val) == 3 and val[-1] < val[0] and val[-1] < entropy - 0.3  # it learns beyond unigram counts
    steps = [r for r in rows if "loss" in r]
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in steps)
    assert (out / "config.yaml").is_file() and (out / "loss.png").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000075", "step_00000150"]
    assert json.loads((out / "model" / "config.json").read_text())["format"] == "mai-native-v1"
    assert "unigram entropy" in proc.stdout and "validation loss" in proc.stdout


def test_generate_streams_text(trained):
    out, _ = trained
    proc = mai("generate", "--model", str(out / "model"), "--prompt", "The city of", "--max-tokens", "20",
               "--seed", "1", "--stop", "zzzz")
    assert proc.stdout.startswith("The city of") and len(proc.stdout) > len("The city of")
    assert "finish_reason=" in proc.stderr
    again = mai("generate", "--model", str(out / "model"), "--prompt", "The city of", "--max-tokens", "20",
                "--seed", "1", "--stop", "zzzz")
    assert again.stdout == proc.stdout  # a seed reproduces the sample


def test_chat_reads_turns_from_stdin(trained):
    out, _ = trained
    proc = subprocess.run([sys.executable, "-m", "mai.cli", "chat", "--model", str(out / "model"),
                           "--max-tokens", "8", "--seed", "0"], input="Hello there\nAnd again\n",
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("assistant: ") == 2


@pytest.mark.slow
def test_compiled_training_matches_eager(dataset, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    common = ("train.max_steps=3", "optim.warmup_steps=1", "train.precision=fp32")
    mai(*train_args(dataset, eager, *common))
    mai(*train_args(dataset, compiled, *common, "train.compile=true"), timeout=600)
    a = [r["loss"] for r in read_metrics(eager) if "loss" in r]
    b = [r["loss"] for r in read_metrics(compiled) if "loss" in r]
    assert len(a) == len(b) == 3
    assert all(abs(x - y) < 1e-3 for x, y in zip(a, b, strict=True)), (a, b)
