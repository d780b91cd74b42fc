"""A small real dataset (Wikipedia intros from the default corpus) and helpers to run `mai` for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mai.data.corpus import default_corpus
from mai.data.prepare import prepare
from mai.tokenizer import train_tokenizer

# A model small enough for CI but slow enough per step that a test can kill it mid-run.
TINY = ["model.preset=demo", "model.vocab_size=512", "model.d_model=128", "model.n_layers=2",
        "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=256", "model.max_seq_len=64",
        "data.seq_len=64", "train.batch_size=8", "optim.warmup_steps=3", "optim.lr=1e-3",
        "train.peak_tflops=1", "train.progress=false", "train.log_every=1", "train.threads=1"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = list(default_corpus(limit=800))
    root = tmp_path_factory.mktemp("data")
    tok = train_tokenizer(texts, 512, root / "tokenizer")
    src = root / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepare([src], tok, root, val_fraction=0.05, workers=1)
    return root


def mai(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `mai` command line in a subprocess and capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "mai.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"mai {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, f"data.sources=[{{path: {dataset}}}]", f"train.out_dir={out}", *extra]
