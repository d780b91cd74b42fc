"""The engine's paged KV cache: one preallocated pool of token slots per layer, addressed by block tables.

Slot ``b * block_size + i`` holds position ``i`` of block ``b`` (blocks are handed out by
:class:`mai.infer.blocks.BlockManager`). One engine step feeds a flat batch — a single row of N tokens:
first one token of each decoding request, then the prefill chunks — so the model's linear layers see
every token of the step in one matrix product. Attention is where sequences differ, and the cache does it
(the model's :class:`~mai.model.transformer.AttentionCache` protocol): it writes the step's keys and
values to their slots, then

* the one-token rows attend together: their slots are gathered into a padded [rows, width] table, one
  SDPA call with a padding mask;
* each multi-token chunk attends alone, causally, over its earlier slots and its own new keys (a chunk
  from position 0 skips the gather and uses its fresh keys directly).

Padding reads the reserved zeroed block 0, never a stale slot (whose values could be anything).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mai.model.config import ModelConfig
from mai.model.transformer import masked_attention


@dataclass
class Chunk:
    """A multi-token piece of one sequence in the flat batch: tokens [start, end) at positions
    [past, past + end - start), which see ``slots`` (positions 0 .. past + end - start - 1)."""

    start: int
    end: int
    past: int
    slots: torch.Tensor


@dataclass
class StepLayout:
    """Where this step's tokens are written and what each sees; built by :func:`layout`."""

    write: torch.Tensor  # [N] slot of every token of the flat batch
    rows: int  # the first ``rows`` tokens are one-token rows (decoding requests)
    row_slots: torch.Tensor  # [rows, width] their key slots, padded with slot 0
    row_mask: torch.Tensor  # [rows, 1, 1, width] which of those are real
    chunks: list[Chunk] = field(default_factory=list)


def block_slots(blocks: Sequence[int], n: int, block_size: int) -> torch.Tensor:
    """Slots [n] of positions 0 .. n-1 of a sequence whose block table is ``blocks``."""
    table = torch.tensor(blocks[: -(-n // block_size)], dtype=torch.long)
    return (table[:, None] * block_size + torch.arange(block_size)).reshape(-1)[:n]


def layout(rows: Sequence[tuple[Sequence[int], int]], chunks: Sequence[tuple[Sequence[int], int, int]],
           block_size: int, device=None, width: int | None = None) -> StepLayout:
    """The layout of a step. ``rows``: (block table, context length including the fed token) of each
    one-token row; ``chunks``: (block table, past, new tokens) of each multi-token piece. ``width`` pads
    the rows' table to a fixed size (static shapes for a compiled step); rows of length 0 are padding
    and use slot 0 only."""
    n_rows = len(rows)
    lengths = torch.tensor([n for _, n in rows], dtype=torch.long)
    cols = max((len(b) for b, _ in rows), default=1)
    if width is not None:
        cols = -(-width // block_size)
    table = torch.zeros(n_rows, cols, dtype=torch.long)
    for i, (blocks, _) in enumerate(rows):
        table[i, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
    slots = (table[:, :, None] * block_size + torch.arange(block_size)).reshape(n_rows, cols * block_size)
    valid = torch.arange(cols * block_size)[None, :] < lengths.clamp(min=1)[:, None]
    slots = torch.where(valid, slots, 0)
    write = [slots[torch.arange(n_rows), (lengths - 1).clamp(min=0)]]
    pieces, start = [], n_rows
    for blocks, past, t in chunks:
        seen = block_slots(blocks, past + t, block_size)
        write.append(seen[past:])
        pieces.append(Chunk(start, start + t, past, seen.to(device)))
        start += t
    return StepLayout(torch.cat(write).to(device), n_rows, slots.to(device),
                      valid[:, None, None, :].to(device), pieces)


def gather(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``pool[slots]`` (slots of any shape), through ``index_select``: the same copy, ~4x faster on CPU than
    advanced indexing, which dominated a decode step with many rows over a long context."""
    return pool.index_select(0, slots.reshape(-1)).view(*slots.shape, *pool.shape[1:])


class PagedKVCache:
    """Keys and values of every layer in ``num_blocks`` blocks of ``block_size`` slots; the engine sets
    :attr:`layout` before each step."""

    length = 0  # the engine always passes explicit positions

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, device=None,
                 dtype=torch.float32):
        shape = (num_blocks * block_size, cfg.n_kv_heads, cfg.head_dim)
        # empty, not zeros: untouched pages of a large pool cost no memory; block 0 is zeroed for padding
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        for pool in self.k + self.v:
            pool[:block_size].zero_()
        self.block_size = block_size
        self.layout: StepLayout | None = None

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q``/``k``/``v`` are [1, heads, N, hd] for the N tokens of the flat batch."""
        lay = self.layout
        assert lay is not None, "the engine sets the step's layout before running the model"
        k_pool, v_pool = self.k[layer], self.v[layer]
        k_pool.index_copy_(0, lay.write, k[0].transpose(0, 1))
        v_pool.index_copy_(0, lay.write, v[0].transpose(0, 1))
        out = []
        if lay.rows:
            rows_q = q[0, :, : lay.rows].transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, hd]
            keys = gather(k_pool, lay.row_slots).transpose(1, 2)  # [rows, kv heads, width, hd]
            values = gather(v_pool, lay.row_slots).transpose(1, 2)
            y = masked_attention(rows_q, keys, values, lay.row_mask)
            out.append(y.squeeze(2).transpose(0, 1).unsqueeze(0))  # [1, heads, rows, hd]
        for c in lay.chunks:
            cq = q[:, :, c.start : c.end]
            if c.past == 0:
                out.append(masked_attention(cq, k[:, :, c.start : c.end], v[:, :, c.start : c.end], None))
                continue
            keys = gather(k_pool, c.slots).transpose(0, 1).unsqueeze(0)  # [1, kv heads, past + t, hd]
            values = gather(v_pool, c.slots).transpose(0, 1).unsqueeze(0)
            t = c.end - c.start
            mask = torch.ones(t, c.past + t, dtype=torch.bool, device=q.device).tril(c.past)
            out.append(masked_attention(cq, keys, values, mask))
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)

    def advance(self, t: int) -> None:
        pass  # positions and lengths are the engine's bookkeeping
