"""The batched engine's KV cache: one row per running sequence, each at its own length.

Rows are kept compact (running sequences occupy rows 0..n-1), so a decode step reads plain slices and
never gathers. A sequence joins by copying in the keys/values of its own prefill, and leaves by moving
the last row into its place. Storage grows (doubling) in rows and positions as needed.
It offers the ``update`` / ``attn_mask`` / ``advance`` methods the model calls on a cache.
"""

from __future__ import annotations

import torch

from mai.model.config import ModelConfig
from mai.model.transformer import KVCache


class RowKVCache:
    def __init__(self, cfg: ModelConfig, max_len: int, device=None, dtype=torch.float32,
                 rows: int = 4, positions: int = 256):
        self.cfg, self.max_len, self.device, self.dtype = cfg, max_len, device, dtype
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.lengths = torch.zeros(0, dtype=torch.long, device=device)
        self._mask: torch.Tensor | None = None
        self._alloc(rows, min(positions, max_len))

    @property
    def n_rows(self) -> int:
        return self.lengths.shape[0]

    def _alloc(self, rows: int, positions: int) -> None:
        shape = (rows, self.cfg.n_kv_heads, positions, self.cfg.head_dim)
        new_k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.cfg.n_layers)]
        new_v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.cfg.n_layers)]
        for old, new in zip(self.k + self.v, new_k + new_v, strict=False):  # nothing to copy at first
            new[: old.shape[0], :, : old.shape[2]] = old
        self.k, self.v = new_k, new_v

    def _ensure(self, rows: int, positions: int) -> None:
        cap_rows, cap_pos = self.k[0].shape[0], self.k[0].shape[2]
        if rows > cap_rows or positions > cap_pos:
            self._alloc(max(rows, 2 * cap_rows) if rows > cap_rows else cap_rows,
                        min(max(positions, 2 * cap_pos), self.max_len) if positions > cap_pos else cap_pos)

    def add_row(self, prefill: KVCache) -> int:
        """Append a sequence whose prompt was run through ``prefill`` (one row); returns its row."""
        row, n = self.n_rows, prefill.length
        self._ensure(row + 1, n + 1)
        for layer in range(self.cfg.n_layers):
            self.k[layer][row, :, :n] = prefill.k[layer][0, :, :n]
            self.v[layer][row, :, :n] = prefill.v[layer][0, :, :n]
        self.lengths = torch.cat([self.lengths, torch.tensor([n], device=self.device)])
        return row

    def remove_row(self, row: int) -> int | None:
        """Drop ``row``; the last row moves into its place. Returns the moved row's old index (or None)."""
        last = self.n_rows - 1
        if row != last:
            n = int(self.lengths[last])
            for layer in range(self.cfg.n_layers):
                self.k[layer][row, :, :n] = self.k[layer][last, :, :n]
                self.v[layer][row, :, :n] = self.v[layer][last, :, :n]
            self.lengths[row] = self.lengths[last]
        self.lengths = self.lengths[:last].clone()
        return last if row != last else None

    def positions(self, t: int) -> torch.Tensor:
        """Positions [rows, t] of the next ``t`` tokens of every row."""
        return self.lengths[:, None] + torch.arange(t, device=self.device)

    # --- the cache protocol the model uses -------------------------------------------------------
    def attn_mask(self, t: int) -> torch.Tensor:
        """[rows, 1, t, L]: each new token sees its row's past and the new tokens up to itself."""
        end = int(self.lengths.max()) + t
        self._ensure(self.n_rows, end)
        key_pos = torch.arange(end, device=self.device)
        self._mask = key_pos[None, None, None, :] <= self.positions(t)[:, None, :, None]
        return self._mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(self.n_rows, device=self.device)[:, None]
        pos = self.positions(k.shape[2])
        self.k[layer][rows, :, pos] = k.transpose(1, 2)
        self.v[layer][rows, :, pos] = v.transpose(1, 2)
        end = self._mask.shape[-1] if self._mask is not None else int(pos.max()) + 1
        return self.k[layer][: self.n_rows, :, :end], self.v[layer][: self.n_rows, :, :end]

    def advance(self, t: int) -> None:
        self.lengths += t
        self._mask = None
