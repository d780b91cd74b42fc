"""Compile a kernel's C source on first use, for this very CPU, and load it with ctypes.

A C file needs no torch headers, so it compiles in about a second (a torch C++ extension takes a minute on
two cores) and ``-march=native`` picks the instructions this CPU has. The shared library is cached in the
user cache directory (mai.precision.cache_dir), named by a hash of the source, the flags and the CPU
model, so a changed file or another machine compiles again. OpenMP comes from the libgomp torch has
already loaded (same soname), so kernel threads and torch's threads are one pool. Where no compiler
works the caller falls back to pure torch; the reason is reported once.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

from mai.fileio import atomic_path
from mai.precision import cache_dir, cpu_model, report_once

FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else cc or gcc on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


@cache
def load_kernel(name: str) -> ctypes.CDLL | None:
    """The library built from ``mai/infer/kernels/<name>.c`` for this CPU, or None (reported once) where
    it cannot be built."""
    source = Path(__file__).with_name(f"{name}.c")
    cc = compiler()
    if cc is None or not source.is_file():
        report_once(f"kernels: {name} unavailable ({'no C compiler' if cc is None else 'no source'}); "
                    "using pure torch")
        return None
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join((cc, *FLAGS, cpu_model())).encode()).hexdigest()[:16]
    lib = cache_dir() / "kernels" / f"{name}-{digest}.so"
    if not lib.is_file():
        try:
            with atomic_path(lib) as tmp:
                subprocess.run([cc, *FLAGS, str(source), "-o", str(tmp)], check=True, capture_output=True,
                               text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            report_once(f"kernels: compiling {name} failed ({detail.strip().splitlines()[-1:]}); "
                        "using pure torch")
            return None
    return ctypes.CDLL(str(lib))
