"""Bad input to `mai train` / `mai generate`: one `error: ...` line, exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import mai, train_args


def assert_clean_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_missing_data_directory(tmp_path):
    proc = mai(*train_args(tmp_path / "nowhere", tmp_path / "run"), check=False)
    assert_clean_error(proc, "nowhere")


def test_unknown_preset_and_unknown_key(dataset, tmp_path):
    assert_clean_error(mai(*train_args(dataset, tmp_path, "model.preset=gpt-9"), check=False), "gpt-9")
    assert_clean_error(mai(*train_args(dataset, tmp_path, "train.bogus=1"), check=False), "train.bogus")
    assert_clean_error(mai(*train_args(dataset, tmp_path, "model.n_layerz=1"), check=False), "n_layerz")
    assert_clean_error(mai("train", "--config", str(tmp_path / "none.yaml"), check=False), "none.yaml")


def test_checkpoint_from_another_config_and_corrupt_files(dataset, tmp_path):
    run = tmp_path / "run"
    mai(*train_args(dataset, run, "train.max_steps=2", "optim.warmup_steps=1"))
    other = mai(*train_args(dataset, run, "train.max_steps=4", "optim.warmup_steps=1", "model.n_layers=3"),
                check=False)
    assert_clean_error(other, "different model", "n_layers")

    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    shard = next(ckpt.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert_clean_error(mai(*train_args(dataset, run, "train.max_steps=4", "optim.warmup_steps=1"),
                           check=False), "damaged")


def test_corrupt_token_shard(dataset, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    shard = next(copy.glob("train_*.bin"))
    shard.write_bytes(shard.read_bytes()[:1001])
    assert_clean_error(mai(*train_args(copy, tmp_path / "run"), check=False), shard.name)


@pytest.mark.parametrize("what", ["missing", "empty", "not-a-model"])
def test_generate_with_bad_model_dir(tmp_path: Path, what: str):
    path = tmp_path / "m"
    if what != "missing":
        path.mkdir()
    if what == "not-a-model":
        (path / "config.json").write_text("{not json")
    assert_clean_error(mai("generate", "--model", str(path), "--prompt", "hi", check=False))


def test_a_bad_layout_under_torchrun_is_one_error_line(dataset, tmp_path):
    """Every rank meets the same bad layout before any process group exists; rank 0 alone prints it."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mai.cli", *train_args(dataset, tmp_path / "run", "parallel.pp=3")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0
    assert errors == ["error: world size 2 is not divisible by pp 3 × dp_replicate 1 × tp 1; launch a "
                      "multiple of 3 processes"], proc.stderr[-3000:]
