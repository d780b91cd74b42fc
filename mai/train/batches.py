"""Batches on their way to the device: read one ahead, pinned and copied without blocking on CUDA.

While the GPU runs micro-batch ``i``, the host already reads micro-batch ``i + 1`` from the memmapped
shards and pins it, so its copy (``non_blocking``) overlaps compute instead of stalling the next forward.
The sampler state saved in a checkpoint is the one from *before* the batch read ahead, so a resumed run
draws that batch again and the data stream stays exact.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class DeviceBatches:
    """``next_batch()`` → tuple of tensors on ``device``; ``state_dict`` / ``load_state_dict`` as the
    wrapped sampler's."""

    def __init__(self, sampler: Any, device: torch.device):
        self.sampler, self.device = sampler, device
        self.pin = device.type == "cuda"
        self._ahead: tuple[dict[str, Any], tuple[torch.Tensor, ...]] | None = None

    def _read(self) -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
        state = copy.deepcopy(self.sampler.state_dict())
        batch = tuple(self.sampler.next_batch())
        return state, tuple(t.pin_memory() if self.pin else t for t in batch)

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        _, host = self._ahead if self._ahead is not None else self._read()
        on_device = tuple(t.to(self.device, non_blocking=self.pin) for t in host)
        self._ahead = self._read()  # host work while the device computes on ``on_device``
        return on_device

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands for the consumer: the read-ahead batch is not consumed yet."""
        return self._ahead[0] if self._ahead is not None else self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._ahead = None
