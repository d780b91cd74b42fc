"""benchmarks/gpu_mfu.sh stays runnable without a GPU: its CPU dry-run trains both models for real and
reports tokens/s and MFU; without --dry-run and without CUDA it refuses clearly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_mfu.sh"


@pytest.mark.slow
def test_dry_run_measures_both_models(tmp_path):
    out = tmp_path / "mfu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["model"] for r in results] == ["dense-1b", "moe-small"]
    for r in results:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["device"] == "cpu"
    assert "| dense-1b |" in proc.stdout and "| moe-small |" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_without_gpu_it_refuses():
    proc = subprocess.run([sys.executable, str(SCRIPT.with_suffix(".py"))], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr
