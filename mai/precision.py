"""Which number format this machine computes fast: measured, never assumed.

CPUs of one cloud machine kind differ. With AVX-512 bf16 (or AMX) a bf16 matmul runs 2-5× faster than
fp32; with AVX2 only, torch falls back to a scalar bf16 path that is ~85× slower (0.17 against
14.5 GFLOP/s, measured on such a CPU). So ``precision: auto`` takes bf16 on an x86 CPU only when both
hold: its flags name bf16 matmul hardware that torch and oneDNN are allowed to use, and a short timing of
the workload's matmul shape (single-threaded, the two dtypes alternating, so other jobs on a shared
machine skew both alike) shows bf16 ahead by ``BF16_MARGIN``. Elsewhere the timing alone decides. On CUDA
bf16 is the data-sheet answer where the GPU supports it.

Measurements are cached per machine in the user cache directory (``$MAI_CACHE_DIR``, else
``$XDG_CACHE_HOME/mai``, else ``~/.cache/mai``), keyed by CPU model, torch version, thread count and
the ISA switches (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``) that change which kernels run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mai.errors import MaiError
from mai.fileio import atomic_write_text

PRECISIONS = ("auto", "bf16", "fp32")
# bf16 must beat fp32 by this factor to be chosen: autocast's casts and a coarser format are a cost the
# matmul alone does not show (the demo trains 1.7× faster where its matmuls are ~2.5× faster).
BF16_MARGIN = 1.25
TRAIN_ROWS = 256  # rows of the timed matmul for training and many-row inference (prefill, evaluation)
DECODE_ROWS = 1  # batch-1 decoding: a matrix-vector product, bound by memory traffic
SERVE_ROWS = 8  # a typical batch of a serving engine's decode step (at most its max_batch)
WIDTH = 512  # inner and output width of the timed matmul

METHOD = 2  # how the measurements are taken; a new method ignores the cache entries of the old one
Measure = Callable[[int], float]  # rows -> bf16 speed ÷ fp32 speed


@dataclass(frozen=True)
class Precision:
    """A resolved precision with the reason for it, printed once per process."""

    name: str  # "bf16" or "fp32"
    reason: str
    bf16_factor: float | None = None  # measured bf16 speed ÷ fp32 speed on this CPU; None where not measured

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def line(self) -> str:
        return f"precision {self.name}: {self.reason}"


def cache_dir() -> Path:
    root = os.environ.get("MAI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mai")
    return Path(root)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """What a cached measurement depends on; a change of any part measures again."""
    isa = ",".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                   if k in os.environ)
    return (f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
            f"{torch.backends.cpu.get_cpu_capability()} | {isa or 'default ISA'} | method {METHOD}")


def cached(name: str, compute: Callable[[], float], refresh: bool = False, keep_max: bool = False) -> float:
    """``compute()`` once per machine key, kept in ``cache_dir()/hardware.json`` (best effort: an
    unwritable cache only costs a new measurement next time). With ``keep_max`` every call measures
    again and the best value seen is kept: right for a peak rate, which other jobs on the machine can
    only make look lower."""
    path = cache_dir() / "hardware.json"
    key = machine_key()
    table: dict = {}
    with contextlib.suppress(OSError, ValueError):
        table = json.loads(path.read_text())
    entry = table.get(key, {})
    known = entry.get(name) if isinstance(entry.get(name), (int, float)) else None
    if known is not None and not refresh and not keep_max:
        return float(known)
    value = compute()
    if keep_max and known is not None:
        value = max(value, float(known))
    table[key] = {**entry, name: value}
    with contextlib.suppress(OSError):
        atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True))
    return value


def best_seconds(fn: Callable[[], object], samples: int = 3, min_sample_s: float = 0.005,
                 warmup: bool = True) -> float:
    """Best per-call time of ``fn``: each sample repeats the call until ``min_sample_s`` has passed, so a
    fast call is not lost in timer noise and a slow one is run once."""
    if warmup:
        fn()  # thread pool, kernel selection, first-touch pages
    best = float("inf")
    for _ in range(samples):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_sample_s:
                break
        best = min(best, elapsed / calls)
    return best


def alternating_best(first: Callable[[], object], second: Callable[[], object],
                     rounds: int) -> tuple[float, float]:
    """Best per-call seconds of two calls timed in alternating samples, so load from other jobs on the
    machine hits both alike (a speed ratio of two calls is only as good as this)."""
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, fn in enumerate((first, second)):
            best[i] = min(best[i], best_seconds(fn, samples=1))
    return best[0], best[1]


def measure_bf16_factor(rows: int, rounds: int = 7) -> float:
    """bf16 matmul speed ÷ fp32 speed for a [rows, WIDTH] @ [WIDTH, WIDTH] product on one thread of this
    CPU (one thread: a multi-threaded product stalls whenever another job takes one of its cores). The
    dtypes are timed in alternating samples, best of each; a bf16 path that is clearly slower is judged
    from one call, so the slow case costs tens of milliseconds."""
    a = torch.randn(rows, WIDTH)
    b = torch.randn(WIDTH, WIDTH)
    a16, b16 = a.bfloat16(), b.bfloat16()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32 = best_seconds(lambda: torch.mm(a, b), samples=1)
        torch.mm(a16, b16)  # warm-up
        start = time.perf_counter()
        torch.mm(a16, b16)
        bf16 = time.perf_counter() - start
        if bf16 > 4 * fp32:
            return fp32 / bf16
        fp32_best, bf16_best = alternating_best(lambda: torch.mm(a, b), lambda: torch.mm(a16, b16), rounds)
        return min(fp32, fp32_best) / min(bf16, bf16_best)
    finally:
        torch.set_num_threads(threads)


def x86_bf16_hardware() -> bool | None:
    """On x86: whether the CPU has bf16 matmul units (AVX-512 BF16 or AMX) that torch and oneDNN may use
    (``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` can hide them). None off x86: no flags to read."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    onednn_may = isa in ("ALL", "DEFAULT") or any(k in isa for k in ("BF16", "AMX", "AVX10"))
    return bool(units and onednn_may and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


def bf16_factor(rows: int) -> float:
    return cached(f"bf16_factor_rows{rows}", lambda: measure_bf16_factor(rows))


_reported: set[str] = set()


def report_once(text: str) -> None:
    """Print ``text`` to stderr the first time this process says it."""
    if text not in _reported:
        _reported.add(text)
        print(text, file=sys.stderr, flush=True)


def choose_precision(requested: str, device: torch.device | str = "cpu", rows: int = TRAIN_ROWS,
                     measure: Measure | None = None, cuda_bf16: bool | None = None,
                     hardware: bool | None | str = "detect") -> Precision:
    """Resolve ``requested`` ("auto", "bf16" or "fp32") for ``device`` and a workload whose matmuls have
    about ``rows`` rows. ``measure``, ``cuda_bf16`` and ``hardware`` (the x86 flags' verdict, None where
    there are none) replace the hardware for tests."""
    if requested not in PRECISIONS:
        raise MaiError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if requested == "fp32":
            return Precision("fp32", "as requested")
        if supported:
            return Precision("bf16", "CUDA" if requested == "auto" else "as requested")
        if requested == "bf16":
            raise MaiError("precision bf16 was requested, but this GPU has no bf16 support: use fp32")
        return Precision("fp32", "this GPU has no bf16 support")
    if requested == "fp32":
        return Precision("fp32", "as requested")
    factor = (measure or bf16_factor)(rows)
    hardware = x86_bf16_hardware() if hardware == "detect" else hardware
    if requested == "bf16":
        if factor < BF16_MARGIN or hardware is False:
            report_once(f"warning: precision bf16 was requested, but bf16 matmul runs at {factor:.2g}× the "
                        f"speed of fp32 on this CPU; precision auto would pick fp32")
        return Precision("bf16", f"as requested ({factor:.2g}× fp32 on this CPU)", factor)
    if hardware is False:
        return Precision("fp32", f"this CPU has no fast bf16 path (no usable AVX-512 BF16 or AMX units; "
                                 f"bf16 matmul {factor:.2g}× fp32)", factor)
    if factor >= BF16_MARGIN:
        return Precision("bf16", f"{factor:.1f}× fp32 on this CPU", factor)
    return Precision("fp32", f"bf16 is not faster for this work here (bf16 matmul {factor:.2g}× fp32)",
                     factor)


def resolve(requested: str, device: torch.device | str = "cpu", rows: int = TRAIN_ROWS) -> Precision:
    """:func:`choose_precision` on the real hardware, its line printed once."""
    choice = choose_precision(requested, device, rows)
    report_once(choice.line())
    return choice


def bench_tag(precision: str) -> str:
    """What every benchmark output line carries, so a figure never travels without the ISA torch used
    and the dtype it was computed in: ``[cpu AVX512, bf16]``."""
    return f"[cpu {torch.backends.cpu.get_cpu_capability()}, {precision}]"
