"""The model runner: one engine step's flat batch through the model, logits where the step needs them.

The engine describes a step as a :class:`StepBatch` (which tokens, at which positions, in which blocks);
the runner lays it out for the paged cache, runs the model's blocks over all tokens at once and the
output head only on the positions whose next token is sampled, with each token's LoRA adapter where the
runner serves an :class:`~mai.infer.lora_serving.AdapterBank`. :class:`ModelRunner` is plain eager
PyTorch; :class:`mai.infer.compiled_decode.CompiledDecoder` runs decode-only steps as compiled graphs and
everything else through this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from mai.infer.kv_cache import PagedKVCache, layout
from mai.infer.lora_serving import AdapterBank
from mai.model.transformer import Transformer


@dataclass
class StepBatch:
    """One step: one-token rows first, then multi-token chunks, as a single row of tokens."""

    tokens: list[int]
    positions: list[int]
    rows: list[tuple[Sequence[int], int]]  # (block table, context length with the fed token)
    chunks: list[tuple[Sequence[int], int, int]]  # (block table, past tokens, new tokens)
    logits_at: list[int]  # indices into ``tokens`` whose next-token logits are wanted
    adapters: list[int] = field(default_factory=list)  # each token's LoRA adapter id (0: none); [] = none


class ModelRunner:
    """Eager execution of a step (with ``adapters``: each token through its own LoRA adapter)."""

    def __init__(self, model: Transformer, adapters: AdapterBank | None = None):
        self.model, self.adapters = model, adapters
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.compiled_steps = 0  # steps run as a compiled graph (CompiledDecoder counts them)

    def make_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        return PagedKVCache(self.model.cfg, num_blocks, block_size, self.device, self.dtype)

    def run(self, cache: PagedKVCache, batch: StepBatch) -> torch.Tensor:
        """Float32 logits [len(batch.logits_at), vocab]."""
        cache.layout = layout(batch.rows, batch.chunks, cache.block_size, self.device)
        tokens = torch.tensor([batch.tokens], device=self.device)
        positions = torch.tensor([batch.positions], device=self.device)
        wanted = torch.tensor(batch.logits_at, dtype=torch.long, device=self.device)
        with (self.adapters.step(batch.adapters, self.device) if self.adapters and any(batch.adapters)
              else nullcontext()):
            return self.model(tokens, cache, positions=positions, logits_at=wanted)[0].float()
