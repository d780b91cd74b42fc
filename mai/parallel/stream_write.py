"""Write a ``.safetensors`` file one tensor at a time, so an export never holds the whole model.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the raw bytes. Every shape and dtype is known before any value (from the model
built on meta), so the header goes first and the tensors follow in its order, each written and freed
in turn. Tensors are laid out by name, as ``safetensors.torch.save_file`` lays out tensors of one dtype.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
          torch.int32: "I32"}


class SafetensorsStream:
    """``with SafetensorsStream(path, {name: (dtype, shape)}, metadata) as out: out.write(name, t)``, the
    tensors in :attr:`order`; the file is complete (and checked) when the block ends without error."""

    def __init__(self, path: Path, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path, self.layout = Path(path), layout
        self.order = sorted(layout)
        header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        for name in self.order:
            dtype, shape = layout[name]
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        self._header = raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self._next = 0

    def __enter__(self) -> SafetensorsStream:
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in __exit__)
        self._file.write(struct.pack("<Q", len(self._header)) + self._header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The next tensor, which must be ``order[i]`` with the announced dtype and shape."""
        want = self.order[self._next]
        dtype, shape = self.layout[want]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"expected {want} {dtype} {tuple(shape)}, got {name} {tensor.dtype} "
                             f"{tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous()
        self._file.write(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._next += 1

    def __exit__(self, kind, value, tb) -> None:
        self._file.close()
        if kind is None and self._next != len(self.order):
            raise ValueError(f"{self.path}: {len(self.order) - self._next} tensors were never written")
