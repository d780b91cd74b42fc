"""precision auto on a CPU without fast bf16, as PyTorch and oneDNN see one when their documented ISA
switches hide AVX-512 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2): the demo model's first steps
report their choice, and the chosen dtype is the one that trains faster under the same switches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import mai, train_args

ISA_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PROBE = """
import time, torch
model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512))
x = torch.randn(256, 512)
def seconds(bf16):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x).square().mean().backward()
    step()
    start = time.perf_counter(); step(); return time.perf_counter() - start
print(torch.backends.cpu.get_cpu_capability(), seconds(False) / seconds(True))
"""


@pytest.mark.slow
def test_demo_steps_without_avx512_land_on_the_faster_dtype(dataset, tmp_path, monkeypatch):
    for key, value in {**ISA_AVX2, "MAI_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                           timeout=300, env=dict(os.environ))
    capability, speedup = probe.stdout.split()
    assert capability != "AVX512"  # the switch is honoured by this torch
    faster = "bf16" if float(speedup) > 1 else "fp32"
    proc = mai(*train_args(dataset, tmp_path / "run", "train.max_steps=3", "optim.warmup_steps=1",
                           "model.preset=demo"))
    print(capability, f"bf16 training-step speed-up {float(speedup):.3f};", proc.stderr.splitlines()[:2])
    assert f"precision {faster}:" in proc.stderr
    assert f"in {faster}, MFU" in proc.stdout
