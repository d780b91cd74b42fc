"""Batch-1 decoding through ``torch.compile``: one fixed-shape graph per token step.

Decoding one token is hundreds of small ops, each reading its weights once. Eager PyTorch runs them one
by one; compiled, the int8 weight cast fuses into the matrix-vector product that uses it (no float copy
of the weight is written), and the elementwise ops between fuse too. A compiled graph needs fixed
shapes, so the cache here is static: keys and values for ``capacity`` positions (the prompt plus the
token budget, rounded up to a multiple of 256 so one compiled graph serves many requests), written at
the step's position with ``index_copy_`` and read whole under a mask that hides the positions not yet
written. The prompt runs eagerly through the same cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mai.model.config import ModelConfig
from mai.model.transformer import Transformer

CAPACITY_STEP = 256


class StaticKVCache:
    """Keys/values for ``capacity`` positions of one sequence; ``pos`` holds the positions being fed."""

    def __init__(self, cfg: ModelConfig, capacity: int, device=None, dtype=torch.float32):
        shape = (1, cfg.n_kv_heads, capacity, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.slots = torch.arange(capacity, device=device)
        self.step_pos = torch.zeros(1, dtype=torch.long, device=device)  # a decode step's position
        self.pos = self.step_pos
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.pos, k)
        self.v[layer].index_copy_(2, self.pos, v)
        return self.k[layer], self.v[layer]

    def attn_mask(self, t: int) -> torch.Tensor:
        """Token at position p sees positions ≤ p (the unwritten rest of the cache is hidden)."""
        return self.slots[None, :] <= self.pos[:, None]

    def advance(self, t: int) -> None:
        pass  # the caller moves ``pos`` and ``length``: nothing here may change inside the compiled graph


class CompiledDecoder:
    """``step(ids)`` → next-token logits for the whole token list so far, like the eager cached path."""

    def __init__(self, model: Transformer):
        self.model = model
        self.param = next(model.parameters())
        self.graph = torch.compile(self._decode_one, fullgraph=True, dynamic=False)
        self.caches: dict[int, StaticKVCache] = {}
        self.cache: StaticKVCache | None = None  # the running sequence's

    def _decode_one(self, token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(token, self.cache, positions=positions)[0, -1].float()  # type: ignore[arg-type]

    def _start(self, ids: list[int], budget: int) -> torch.Tensor:
        need = len(ids) + budget
        capacity = min(-(-need // CAPACITY_STEP) * CAPACITY_STEP, self.model.cfg.max_seq_len)
        if capacity not in self.caches:  # a new capacity compiles a new graph; kept, so it compiles once
            self.caches[capacity] = StaticKVCache(self.model.cfg, capacity, self.param.device,
                                                  self.param.dtype)
        cache = self.caches[capacity]
        for k, v in zip(cache.k, cache.v, strict=True):
            k.zero_()
            v.zero_()
        self.cache = cache
        cache.pos = torch.arange(len(ids), device=self.param.device)
        positions = cache.pos[None]
        logits = self.model(torch.tensor([ids], device=self.param.device), cache,  # type: ignore[arg-type]
                            positions=positions, last_only=True)[0, -1].float()
        cache.length = len(ids)
        return logits

    def stepper(self, budget: int) -> Callable[[list[int]], torch.Tensor]:
        """A fresh sequence: the first call prefills ``ids``, each later call feeds the one new token."""
        started = False

        def step(ids: list[int]) -> torch.Tensor:
            nonlocal started
            if not started:
                started = True
                return self._start(ids, budget)
            cache = self.cache
            assert cache is not None and len(ids) == cache.length + 1
            cache.pos = cache.step_pos
            cache.pos.fill_(cache.length)
            logits = self.graph(torch.tensor([ids[-1:]], device=self.param.device), cache.pos[None])
            cache.length += 1
            return logits

        return step
