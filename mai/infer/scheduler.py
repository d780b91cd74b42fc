"""What one engine step computes: every decoding row plus prefill chunks, under one token budget.

Each step first gives every running request that is decoding its one token (so a stream never waits
for someone else's prompt), then continues partially prefilled requests, then admits waiting ones, each
prefill cut to what is left of ``max_tokens`` (chunked prefill: a long prompt spreads over several
steps while the streams beside it keep decoding).

When the pool has no block for a running request, the newest running request is preempted by
recompute: its blocks are freed and it goes back to the front of the queue with its tokens so far
(prompt and generated), to be prefilled again later — through the prefix cache, often for free — and
continue where it stopped. Nothing is dropped; under greedy decoding the output is unchanged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mai.infer.blocks import BlockManager, block_hash, prefix_hashes


@dataclass(eq=False)
class SeqState:
    """The tokens of one request and where their keys and values are."""

    tokens: list[int]  # prompt + generated so far
    owner: Any = None  # the engine's per-request state
    blocks: list[int] = field(default_factory=list)  # block table
    hashes: list[bytes] = field(default_factory=list)  # of the full blocks registered in the cache
    computed: int = 0  # tokens whose keys/values are in ``blocks``
    drafts: list[int] = field(default_factory=list)  # speculative tokens to verify after ``tokens``
    salt: bytes = b""  # parent of the first block's hash: what besides the tokens makes its keys/values

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.computed


@dataclass
class Plan:
    """One step: (sequence, tokens to compute from ``sequence.computed``), one-token rows first. A
    decoding sequence with drafts computes its last token and the drafts."""

    chunks: list[tuple[SeqState, int]]
    preempted: list[SeqState]


class Scheduler:
    def __init__(self, blocks: BlockManager, max_batch: int, max_tokens: int, prefix_caching: bool = True):
        self.blocks, self.max_batch, self.max_tokens = blocks, max_batch, max_tokens
        self.prefix_caching = prefix_caching
        self.running: list[SeqState] = []  # admission order: the last is preempted first
        self.waiting: deque[SeqState] = deque()

    def schedule(self) -> Plan:
        budget = self.max_tokens
        decoding = [s for s in self.running if s.remaining == 1]
        prefilling = [s for s in self.running if s.remaining > 1]
        chunks: list[tuple[SeqState, int]] = []
        preempted: list[SeqState] = []
        for seq in decoding + prefilling:
            if seq in preempted:
                continue
            n = 1 + len(seq.drafts) if seq.remaining == 1 else min(seq.remaining, budget)
            if n <= 0:
                continue
            while not self._reserve(seq, n):
                victim = self.running[-1]
                self.preempt(victim)
                preempted.append(victim)
                chunks = [(s, k) for s, k in chunks if s is not victim]
                if victim is seq:
                    break
            else:
                chunks.append((seq, n))
                budget -= n
        while self.waiting and not preempted and budget > 0 and len(self.running) < self.max_batch:
            seq = self.waiting[0]
            if not seq.blocks and self.prefix_caching:
                self._share_prefix(seq)
            n = min(seq.remaining, budget)
            if not self._reserve(seq, n):
                self.release(seq)  # it waits without holding blocks
                break
            self.running.append(self.waiting.popleft())
            chunks.append((seq, n))
            budget -= n
        chunks.sort(key=lambda c: c[1] != 1)  # one-token rows first (a stable sort keeps their order)
        return Plan(chunks, preempted)

    def computed(self, seq: SeqState, n: int) -> None:
        """``n`` more tokens of ``seq`` have keys and values now; its newly full blocks become findable."""
        seq.computed += n
        if not self.prefix_caching:
            return
        size = self.blocks.block_size
        for b in range(len(seq.hashes), seq.computed // size):
            h = block_hash(seq.hashes[-1] if seq.hashes else seq.salt, seq.tokens[b * size : (b + 1) * size])
            self.blocks.register(seq.blocks[b], h)
            seq.hashes.append(h)

    def release(self, seq: SeqState) -> None:
        """Free the blocks of ``seq`` (finished, cancelled, failed, or preempted)."""
        self.blocks.free(seq.blocks)
        seq.blocks, seq.hashes, seq.computed, seq.drafts = [], [], 0, []

    def preempt(self, seq: SeqState) -> None:
        self.release(seq)
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def finish(self, seq: SeqState) -> None:
        self.release(seq)
        if seq in self.running:
            self.running.remove(seq)

    def _share_prefix(self, seq: SeqState) -> None:
        """Take the cached blocks of the prompt's longest cached prefix (one token is always left to
        compute: its logits are what the step needs)."""
        size = self.blocks.block_size
        hashes = prefix_hashes(seq.tokens, (len(seq.tokens) - 1) // size, size, seq.salt)
        seq.blocks = self.blocks.share_prefix(hashes)
        seq.hashes = hashes[: len(seq.blocks)]
        seq.computed = len(seq.blocks) * size

    def _reserve(self, seq: SeqState, n: int) -> bool:
        """Blocks for ``n`` more tokens of ``seq``; False (nothing taken) when the pool is short."""
        need = -(-(seq.computed + n) // self.blocks.block_size) - len(seq.blocks)
        if need <= 0:
            return True
        got = self.blocks.allocate(need)
        if got is None:
            return False
        seq.blocks += got
        return True
