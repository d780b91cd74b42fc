"""Run a GGUF model on its own quantized weights: Q4_0, Q4_1 and Q8_0 linears kept as blocks.

Loading a GGUF dequantizes every tensor to float32 (``mai.interop.gguf_io``), the weights transformers
also computes from the file. Batch-1 decoding reads every weight once per token, so reading float32
copies of 4-bit weights moves ~7x the bytes the file holds. :func:`apply_gguf_quant` swaps each linear
whose GGUF tensor is block-quantized for a :class:`BlockQuantLinear` that keeps the file's blocks — 32
weights, one float16 scale ``d`` (and for Q4_1 a minimum ``m``), 4- or 8-bit codes — and checks that its
dequantized weight equals the loaded float32 weight bit for bit: the same weights, fewer bytes. With
``use_kernel`` (quant mode ``gguf``), on a CPU with AVX-512 VNNI, the product runs in the compiled block
kernel (:mod:`mai.infer.kernels.qmatmul`, llama.cpp's method: activations quantized to int8 per block),
for any number of rows, eagerly wherever a timing on this machine shows it faster than the torch path,
and in ``torch.compile`` graphs as the eager timing decided. Elsewhere, under ``torch.compile`` a one-row
input is a reduction that decodes the blocks on the fly (the compiler fuses the unpacking, the scaling
and the dot product into one pass over the codes); other inputs dequantize the matrix once per call and
use the float matmul. A tied output head (SmolLM2) gets its own quantized copy from the embedding tensor;
the embedding lookup stays float.
Block layouts: ggml's ``block_q4_0`` {d, qs[16]}, ``block_q4_1`` {d, m, qs[16]} (weight j is the low
nibble of qs[j], weight 16 + j its high nibble), ``block_q8_0`` {d, qs[32] int8}.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mai.errors import MaiError
from mai.infer.kernels.qmatmul import PackedWeight, fits, kernel_available
from mai.infer.quant import compiled_one_row
from mai.interop.gguf_io import gguf_to_hf_name, rotary_heads, unpermute_rotary
from mai.interop.hf_names import hf_to_mai_name

BLOCK = 32
# type name → (bytes per block, has a minimum, bits per code)
LAYOUTS = {"Q4_0": (18, False, 4), "Q4_1": (20, True, 4), "Q8_0": (34, False, 8)}


class BlockQuantLinear(nn.Module):
    """A linear layer (no bias) whose weight [out, in] is stored as ggml Q4_0 / Q4_1 / Q8_0 blocks."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, bits: int):
        super().__init__()
        self.bits = bits
        self.out_features, groups = scale.shape
        self.in_features = groups * BLOCK
        self.register_buffer("codes", codes)  # int8 [out, groups, 32]: q (Q4_1, Q8_0) or q − 8 (Q4_0)
        self.register_buffer("scale", scale)  # float32 [out, groups]
        self.register_buffer("offset", offset)  # float32 [out, groups] or None
        self.kernel: PackedWeight | None = None

    def use_kernel(self) -> BlockQuantLinear:
        """Run this layer's inference products through the VNNI kernel where this machine has it."""
        if kernel_available() and fits(self.out_features, self.in_features):
            self.kernel = self._packed()
        return self

    def _packed(self) -> PackedWeight:
        """The blocks as the kernel takes them: unsigned codes less an offset (plus a minimum). Q4_1's
        d·q + m becomes d·(q − 8) + (m + 8d): the centred codes keep the int8 rounding of the activations
        small beside the result (the two terms of d·q + m nearly cancel), measured 2× more accurate."""
        if self.bits == 8:
            return PackedWeight((self.codes.to(torch.int16) + 128).to(torch.uint8), self.scale, None, 8, 128)
        if self.offset is None:  # Q4_0: codes hold q − 8
            return PackedWeight((self.codes + 8).to(torch.uint8), self.scale, None, 4, 8)
        return PackedWeight(self.codes.to(torch.uint8), self.scale, self.offset + 8 * self.scale, 4, 8)

    @property
    def kind(self) -> str:
        return f"q{self.bits}" + ("_1" if self.offset is not None else "_0")

    def _weight(self, dtype: torch.dtype) -> torch.Tensor:
        """[out, groups, 32] weights in ``dtype``: d·q (+ m)."""
        w = self.codes.to(dtype) * self.scale.to(dtype)[..., None]
        return w if self.offset is None else w + self.offset.to(dtype)[..., None]

    def dequantized(self) -> torch.Tensor:
        return self._weight(torch.float32).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None and self.kernel.chosen_for(x, self._dequantized_product, self.kind):
            return self.kernel(x)
        if compiled_one_row(x):
            return self._row(x.reshape(-1, BLOCK)).reshape(*x.shape[:-1], -1)
        return self._dequantized_product(x)

    def _dequantized_product(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._weight(x.dtype).reshape(self.out_features, self.in_features))

    def _row(self, x: torch.Tensor) -> torch.Tensor:
        """One input row [groups, 32] → [out]: one reduction over the whole row, each weight decoded
        as it is read (a two-level sum, block then row, measured 2x slower on this CPU)."""
        return (x * self._weight(x.dtype)).sum((-1, -2))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, ggml {self.kind} blocks"


def blocks_of(raw: np.ndarray, type_name: str, rows: int) -> BlockQuantLinear:
    """Split a GGUF tensor's raw bytes (``rows`` rows of blocks) into codes, scales and offsets."""
    size, has_min, bits = LAYOUTS[type_name]
    data = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1, size)
    scale = torch.from_numpy(data[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    offset = None
    if has_min:
        offset = torch.from_numpy(data[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    body = data[..., 4:] if has_min else data[..., 2:]
    if bits == 8:
        codes = body.copy().view(np.int8)
    else:  # two codes per byte: weight j in the low nibble of byte j, weight 16 + j in its high nibble
        codes = np.concatenate([body & 15, body >> 4], axis=-1).astype(np.int8)
        if not has_min:
            codes -= 8
    codes = torch.from_numpy(codes)
    return BlockQuantLinear(codes, scale, offset, bits)


def _permuted(layer: BlockQuantLinear, n_heads: int) -> BlockQuantLinear:
    """Apply llama.cpp's rotary un-permutation to the rows of a quantized Q or K projection."""
    return BlockQuantLinear(unpermute_rotary(layer.codes, n_heads), unpermute_rotary(layer.scale, n_heads),
                            None if layer.offset is None else unpermute_rotary(layer.offset, n_heads),
                            layer.bits)


def apply_gguf_quant(model: nn.Module, path: str | Path, kernel: bool = False) -> int:
    """Replace every linear of ``model`` (loaded from the GGUF at ``path``) whose tensor is Q4_0, Q4_1 or
    Q8_0 by its :class:`BlockQuantLinear`; returns how many were replaced. Raises if a replacement's
    weight differs from the float weight in the model by a single bit. With ``kernel`` the layers compute
    through the VNNI kernel where the machine has it (fast, activations rounded to int8); without it they
    compute with the float weights, bit for bit the float model's products."""
    from mai.interop.gguf_io import open_gguf

    reader, _ = open_gguf(Path(path))
    arch = reader.fields["general.architecture"].contents()
    cfg = model.cfg  # type: ignore[attr-defined]
    modules = dict(model.named_modules())
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    replaced = 0
    for t in reader.tensors:
        kind = t.tensor_type.name
        hf = gguf_to_hf_name(t.name)
        if kind not in LAYOUTS or hf is None:
            continue
        name = hf_to_mai_name(hf)
        if name == "tok_embeddings.weight" and not has_output:
            name = "output.weight"  # tied head: the embedding tensor is also the output projection
        target = name.removesuffix(".weight") if name else None
        if target not in modules or not isinstance(modules[target], nn.Linear):
            continue
        linear = modules[target]
        layer = blocks_of(np.asarray(t.data), kind, linear.out_features)
        heads = rotary_heads(arch, hf, cfg.n_heads, cfg.n_kv_heads)
        if heads is not None:
            layer = _permuted(layer, heads)
        if not torch.equal(layer.dequantized(), linear.weight.detach().float()):
            raise MaiError(f"{path}: the {kind} blocks of {t.name} do not reproduce its loaded weights")
        if kernel:
            layer.use_kernel()
        parent_name, _, child = target.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, layer)
        replaced += 1
    return replaced
