"""Compiled decoding: the engine's decode-only steps as ``torch.compile`` graphs with static shapes.

Decoding a token is hundreds of small ops, each reading its weights once. Eager PyTorch runs them one
by one; compiled, the int8 weight cast fuses into the matrix-vector product that uses it (no float copy
of the weight is written), and the elementwise ops between fuse too. A compiled graph needs fixed
shapes, so a step's rows are padded up to a bucket (1, 2, 4, 8, 16 or 32 rows; padding rows write and
read the pool's reserved scratch block) and every row's key table to a width bucket (a power of two of
at least 256 positions, hidden by the padding mask). Each (rows, width) pair compiles once; torch keeps
``torch._dynamo.config.recompile_limit`` (8 by default) graphs, beyond which it runs the step eagerly.
Steps with prefill chunks, or more rows than the largest bucket, run eagerly (:class:`ModelRunner`).
"""

from __future__ import annotations

import torch

from mai.infer.kv_cache import PagedKVCache, layout
from mai.infer.runner import ModelRunner, StepBatch
from mai.model.transformer import Transformer

ROW_BUCKETS = (1, 2, 4, 8, 16, 32)
MIN_WIDTH = 256


def width_bucket(context: int, block_size: int, max_seq_len: int) -> int:
    """Key positions a compiled step reads for rows whose longest context is ``context``."""
    cap = -(-max_seq_len // block_size) * block_size
    return max(context, min(cap, max(MIN_WIDTH, 1 << (context - 1).bit_length())))


class CompiledDecoder(ModelRunner):
    """A model runner whose decode-only steps are compiled; pass it to the engine as ``runner``."""

    def __init__(self, model: Transformer):
        super().__init__(model)
        self.graph = torch.compile(self._decode, fullgraph=True, dynamic=False)
        self._cache: PagedKVCache | None = None

    def make_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        """One pool kept across engines of the same size (``mai chat`` builds one per turn), so the
        compiled graphs, which read the pool, stay valid."""
        cache = self._cache
        if cache is None or cache.k[0].shape[0] != num_blocks * block_size or cache.block_size != block_size:
            cache = self._cache = super().make_cache(num_blocks, block_size)
        return cache

    def _decode(self, cache: PagedKVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, cache, positions=positions)[0].float()

    def run(self, cache: PagedKVCache, batch: StepBatch) -> torch.Tensor:
        n = len(batch.rows)
        if batch.chunks or n > ROW_BUCKETS[-1]:
            return super().run(cache, batch)
        rows = next(b for b in ROW_BUCKETS if b >= n)
        width = width_bucket(max(ctx for _, ctx in batch.rows), cache.block_size, self.model.cfg.max_seq_len)
        pad = rows - n
        cache.layout = layout(batch.rows + [((), 0)] * pad, [], cache.block_size, self.device, width)
        tokens = torch.tensor([batch.tokens + [0] * pad], device=self.device)
        positions = torch.tensor([batch.positions + [0] * pad], device=self.device)
        logits = self.graph(cache, tokens, positions)
        self.compiled_steps += 1
        return logits[torch.tensor(batch.logits_at, dtype=torch.long, device=self.device)]
