"""Quantized matrix products on the CPU through the VNNI kernel of ``qmatmul.c``, for any number of rows.

:class:`PackedWeight` holds a weight [N, K] as 32-wide blocks of 4- or 8-bit codes with a float32 scale
per block (and for Q4_1 a minimum), repacked once into the kernel's layout (described in qmatmul.c).
Its product quantizes each 32-value block of the activations to int8, as llama.cpp does, so the result
differs from the float product of the dequantized weight by that rounding (about 0.5% of a typical
output; tests/infer/test_quant_kernels.py bounds it). :func:`kernel_available` says whether this CPU
and compiler give the kernel; callers keep a pure-torch path for when it does not.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from mai.infer.kernels.build import load_kernel
from mai.precision import alternating_best, cached, report_once

BLOCK = 32  # weights per block along K
TILE = 16  # outputs per vector of the kernel
ROW_BUCKETS = (1, 8, 64, 512)  # a call's rows are timed as the first bucket at least as large
Product = Callable[[torch.Tensor], torch.Tensor]
# (kind, out, in, dtype, row bucket) → whether the kernel is faster, for this process (layers of one shape
# share it; the measurement itself is cached per machine)
_VERDICTS: dict[tuple, bool] = {}


@cache
def _lib() -> ctypes.CDLL | None:
    lib = load_kernel("qmatmul")
    if lib is None or not lib.mai_qmm_supported():
        return None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.mai_qmm.argtypes = [p, i64, i64, p, p, p, i32, i32, p, i64, i32]
    lib.mai_qmm.restype = i32
    return lib


def kernel_available() -> bool:
    """Whether the compiled VNNI kernel runs on this machine (AVX-512 VNNI CPU and a C compiler)."""
    return _lib() is not None


def fits(out_features: int, in_features: int) -> bool:
    """Shapes the kernel takes: whole tiles of outputs and whole blocks of inputs."""
    return out_features % TILE == 0 and in_features % BLOCK == 0


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [N, G, 32] (4-bit: 0..15) → [N/16, G, vectors, 64]: byte n·4 + j of vector t holds
    output n's code at k = 4t + j; for 4-bit codes vector t pairs quad t (low nibble) with t + 4."""
    n, groups, _ = codes.shape
    quads = codes.reshape(n // TILE, TILE, groups, 8, 4).permute(0, 2, 3, 1, 4)  # [T, G, quad, 16, 4]
    if bits == 4:
        quads = quads[:, :, :4] | (quads[:, :, 4:] << 4)
    return quads.reshape(n // TILE, groups, -1, TILE * 4).contiguous()


def _pack_scales(s: torch.Tensor) -> torch.Tensor:
    """float [N, G] → float32 [N/16, G, 16]."""
    n, groups = s.shape
    return s.float().reshape(n // TILE, TILE, groups).transpose(1, 2).contiguous()


class PackedWeight(nn.Module):
    """A [N, K] weight w = d·(q − offset) (+ m, one minimum per block, where ``minimum`` is given) in the
    kernel's layout; ``codes`` are uint8 [N, K/32, 32], 0..15 for 4 bits, 0..255 for 8."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None, bits: int,
                 offset: int):
        super().__init__()
        self.bits, self.offset = bits, offset
        self.out_features, groups = scale.shape
        self.in_features = groups * BLOCK
        self.register_buffer("packed", _pack_codes(codes, bits))
        # float32 scales kept as their int32 bit patterns, so casting the model (model.to(bfloat16))
        # leaves the kernel's operands as they are
        self.register_buffer("d_bits", _pack_scales(scale).view(torch.int32))
        self.register_buffer("m_bits", None if minimum is None else _pack_scales(minimum).view(torch.int32))

    def chosen_for(self, x: torch.Tensor, torch_path: Product, kind: str) -> bool:
        """Whether ``x`` goes through the kernel: it can (float on the CPU, no autograd) and it beats
        ``torch_path`` (the layer's pure-torch product) for inputs like ``x``. Timings run eagerly; a
        graph being compiled follows the eager verdict for its rows (the kernel, an opaque op to the
        compiler, where none was timed yet), so compiled and eager steps compute alike."""
        floats = (torch.float32, torch.bfloat16)
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype not in floats:
            return False
        rows = x.shape[:-1].numel()
        key = (kind, self.out_features, self.in_features, x.dtype,
               next((b for b in ROW_BUCKETS if rows <= b), ROW_BUCKETS[-1]))
        if torch.compiler.is_compiling():
            return _VERDICTS.get(key, True)
        if key not in _VERDICTS:
            _VERDICTS[key] = self._measure(key, torch_path)
        return _VERDICTS[key]

    def _measure(self, key: tuple, torch_path: Product) -> bool:
        """Kernel against torch for ``key``'s rows: timed once per machine, shape, dtype and bucket of
        rows (mai.precision's cache), the two in alternating samples."""
        kind, _, _, dtype, bucket = key
        probe = torch.randn(bucket, self.in_features, dtype=dtype)

        def measure() -> float:
            plain, kernel = alternating_best(lambda: torch_path(probe), lambda: self(probe), 3)
            return plain / kernel

        name = f"qmatmul_{kind}_{self.out_features}x{self.in_features}_{str(dtype).removeprefix('torch.')}"
        factor = cached(f"{name}_rows{bucket}", measure)
        report_once(f"kernels: {kind} {self.out_features}×{self.in_features}, ≤{bucket} rows of {dtype}: "
                    f"{'VNNI kernel' if factor > 1 else 'torch'} (kernel {factor:.2f}× torch)")
        return factor > 1.0

    def codes(self) -> torch.Tensor:
        """The uint8 codes [N, K/32, 32] this weight was packed from (a new tensor)."""
        tiles, groups = self.packed.shape[:2]
        vectors = self.packed.reshape(tiles, groups, -1, TILE, 4)
        if self.bits == 4:
            vectors = torch.cat([vectors & 15, vectors >> 4], dim=2)
        return vectors.permute(0, 3, 1, 2, 4).reshape(tiles * TILE, groups, BLOCK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] float (computed in float32) on the CPU → [..., N] in x's dtype."""
        flat = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        args = (flat, self.packed, self.d_bits, self.m_bits, self.bits, self.offset, self.out_features)
        # eagerly the call goes straight to the library (the dispatcher would add microseconds per layer)
        y = torch.ops.mai_kernels.qmm(*args) if torch.compiler.is_compiling() else _qmm(*args)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def _qmm(x: torch.Tensor, packed: torch.Tensor, d_bits: torch.Tensor, m_bits: torch.Tensor | None, bits: int,
         offset: int, out_features: int) -> torch.Tensor:
    """The kernel on a contiguous float32 [rows, K] → [rows, N] float32."""
    lib = _lib()
    assert lib is not None, "PackedWeight needs the compiled kernel (check kernel_available())"
    y = torch.empty(x.shape[0], out_features)
    rc = lib.mai_qmm(x.data_ptr(), x.shape[0], x.shape[1], packed.data_ptr(), d_bits.data_ptr(),
                     0 if m_bits is None else m_bits.data_ptr(), bits, offset, y.data_ptr(), out_features,
                     torch.get_num_threads())
    if rc != 0:
        raise MemoryError("qmatmul kernel could not allocate its activation buffers")
    return y


# The same product as an op torch.compile can place in a graph (fullgraph decoding, mai.infer.compiled_decode)
_ops = torch.library.Library("mai_kernels", "DEF")
_ops.define("qmm(Tensor x, Tensor packed, Tensor d_bits, Tensor? m_bits, int bits, int offset, "
            "int out_features) -> Tensor")
_ops.impl("qmm", _qmm, "CPU")


@torch.library.register_fake("mai_kernels::qmm")
def _qmm_shape(x: torch.Tensor, packed: torch.Tensor, d_bits: torch.Tensor, m_bits: torch.Tensor | None,
               bits: int, offset: int, out_features: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)
