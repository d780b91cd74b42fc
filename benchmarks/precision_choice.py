"""What ``precision: auto`` picks on this machine, the measured bf16 ÷ fp32 factor per workload, the MFU
peak in each dtype, and how long each decision takes (with an empty cache, then from the cache).

    python benchmarks/precision_choice.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/precision_choice.py  # no AVX-512
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

os.environ["MAI_CACHE_DIR"] = tempfile.mkdtemp(prefix="mai-cache-")  # measure, do not read a cache

from mai.precision import DECODE_ROWS, SERVE_ROWS, TRAIN_ROWS, bench_tag, choose_precision  # noqa: E402
from mai.train.peak import peak_flops  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ISA switches: "
          f"{ {k: os.environ[k] for k in ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA') if k in os.environ} }")
    for label, rows in (("training / scoring", TRAIN_ROWS), ("serving batch", SERVE_ROWS),
                        ("batch-1 decode", DECODE_ROWS)):
        choice, seconds = timed(lambda rows=rows: choose_precision("auto", "cpu", rows))
        print(f"{bench_tag(choice.name)} {label} ({rows} rows): {choice.line()}, decided in {seconds:.2f} s")
    for name in ("fp32", "bf16"):
        peak, first = timed(lambda name=name: peak_flops(torch.device("cpu"), name))
        _, again = timed(lambda name=name: peak_flops(torch.device("cpu"), name))
        print(f"{bench_tag(name)} matmul peak {peak / 1e9:.1f} GFLOP/s, measured in {first:.2f} s, "
              f"from the cache in {1e3 * again:.1f} ms")


if __name__ == "__main__":
    main()
