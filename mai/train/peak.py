"""Peak matmul throughput of the device, the denominator of model FLOP utilisation (MFU).

GPUs use their published dense peak; a CPU has none worth quoting, so MAI measures the best square
matmul rate of this machine in the asked dtype (a ceiling the training step can approach).
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) tensor-core peaks from the vendors' data sheets, FLOP/s.
GPU_PEAKS = {
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
}


def measure_matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best observed FLOP/s of an n×n @ n×n matmul (median would hide the attainable peak)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm up (thread pool, kernels)
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device, precision: str) -> float:
    """FLOP/s that 100% MFU means on ``device`` for ``precision`` ("bf16" or "fp32")."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[precision]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measure_matmul_flops(dtype, device=device.type)
