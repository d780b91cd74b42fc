"""Peak matmul throughput of the device, the denominator of model FLOP utilisation (MFU), and the check
that keeps an MFU above 100% from being printed as a fact.

GPUs use their published dense peak; a CPU has none worth quoting, so MAI measures the best square
matmul rate of this machine in the dtype the run computes in. The size grows from 256 while a call stays
short, so a slow bf16 path (0.17 GFLOP/s on AVX2-only CPUs) is measured in about a second instead
of the minutes a fixed 2048² product took there; the best rate seen is kept per machine (mai.precision).
"""

from __future__ import annotations

import time

import torch

from mai.precision import best_seconds, cached

# Dense (no sparsity) tensor-core peaks from the vendors' data sheets, FLOP/s.
GPU_PEAKS = {
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
}
MAX_N = 2048
CALL_BUDGET_S = 0.5  # grow the matmul while its next call (8× the work) should take less than this


def measure_matmul_flops(dtype: torch.dtype, device: str = "cpu", max_n: int = MAX_N) -> float:
    """Best observed FLOP/s of n×n @ n×n products, n = 256, 512, … up to ``max_n`` while the next size's
    call (8× the work) is predicted to stay under ``CALL_BUDGET_S`` (a peak is the best rate, so no
    median). On a slow path the measurement stops after a few short calls."""
    best_rate, n = 0.0, 256
    while n <= max_n:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)

        def call(a=a, b=b) -> None:
            torch.mm(a, b)
            if device != "cpu":
                torch.cuda.synchronize()

        start = time.perf_counter()
        call()  # warm-up, and a first timing
        first = time.perf_counter() - start
        if first > CALL_BUDGET_S:  # already slow: this call is the measurement
            return max(best_rate, 2 * n**3 / first)
        seconds = best_seconds(call, samples=3, min_sample_s=0.02, warmup=False)
        best_rate = max(best_rate, 2 * n**3 / seconds)
        if 8 * seconds > CALL_BUDGET_S:
            break
        n *= 2
    return best_rate


def peak_flops(device: torch.device, precision: str, refresh: bool = False) -> float:
    """FLOP/s that 100% MFU means on ``device`` for ``precision`` ("bf16" or "fp32")."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[precision]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # measured on every run (about a second) and the best rate ever seen kept: load from other jobs
    # only ever makes a measurement lower, and a low peak would inflate the MFU
    return cached(f"matmul_peak_{precision}_{device.type}",
                  lambda: measure_matmul_flops(dtype, device=device.type), refresh=refresh, keep_max=True)


class MfuMeter:
    """MFU against a peak that is re-measured once if a step ever exceeds it, and shown as unknown
    (NaN, printed ``mfu=?``) if it still does: an MFU above 100% means the peak is wrong, not the run."""

    def __init__(self, peak: float, remeasure, say) -> None:
        self.peak, self.remeasure, self.say = peak, remeasure, say
        self.trusted = True
        self.retried = False

    def __call__(self, flops_per_s: float) -> float:
        if not self.trusted:
            return float("nan")
        mfu = flops_per_s / self.peak
        if mfu <= 1.0:
            return mfu
        if not self.retried and self.remeasure is not None:
            self.retried = True
            old, self.peak = self.peak, self.remeasure()
            self.say(f"MFU {100 * mfu:.0f}% is above 100%: the peak of {old / 1e12:.3g} TFLOP/s was wrong; "
                     f"re-measured {self.peak / 1e12:.3g} TFLOP/s")
            return self(flops_per_s)
        self.trusted = False
        self.say(f"MFU {100 * mfu:.0f}% is above 100% of the peak {self.peak / 1e12:.3g} TFLOP/s: the peak "
                 f"is wrong (set train.peak_tflops); MFU is shown as unknown from here on")
        return float("nan")
