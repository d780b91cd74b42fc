"""Which KV blocks belong to whom: a pool of fixed-size blocks, reference counts, and the prefix cache.

The engine's keys and values live in one preallocated pool per layer, cut into blocks of
``BLOCK_SIZE`` token positions (:mod:`mai.infer.kv_cache`); a request holds a list of block ids, its
block table. This module only counts: it never touches a tensor.

Automatic prefix caching (the vLLM V1 rule): a block whose 16 tokens are all computed gets a hash of
(its parent block's hash, its tokens), so equal hashes mean equal keys and values — the whole prefix up to
and including the block is the same. The first block's parent is the request's salt: its LoRA adapter's,
whose keys and values differ from the base's for the same tokens (empty for the base model). A new
request looks its full prompt blocks up and shares the ones found, copy-free, by taking a reference. A
block whose last reference goes keeps its contents and its hash in an LRU list; it is handed out again
only when no never-used block is left, oldest first, and until then a later request with the same prefix
picks it up.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

BLOCK_SIZE = 16  # token positions per block (vLLM's default)


def block_hash(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The identity of a full block: SHA-256 of its parent's hash and its token ids (a cryptographic hash,
    so two different prefixes never share keys and values by a collision)."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


def prefix_hashes(tokens: Sequence[int], n_blocks: int, block_size: int = BLOCK_SIZE,
                  salt: bytes = b"") -> list[bytes]:
    """Hashes of the first ``n_blocks`` full blocks of ``tokens``, each chained to the one before (the
    first to ``salt``)."""
    out: list[bytes] = []
    parent = salt
    for i in range(n_blocks):
        parent = block_hash(parent, tokens[i * block_size : (i + 1) * block_size])
        out.append(parent)
    return out


class BlockManager:
    """Allocate and free blocks by reference count; find and keep cached prefix blocks.

    Block 0 is reserved: a zeroed scratch block that padded rows write to and read from, so no real
    block is ever touched by padding."""

    def __init__(self, num_blocks: int, block_size: int = BLOCK_SIZE):
        if num_blocks < 2:
            raise ValueError("a block pool needs at least 2 blocks (one is the reserved scratch block)")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refs = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.by_hash: dict[bytes, int] = {}
        self.unused: list[int] = list(range(num_blocks - 1, 0, -1))  # a stack: reuse warm memory first
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first
        self.queried_tokens = 0
        self.hit_tokens = 0

    @property
    def num_free(self) -> int:
        return len(self.unused) + len(self.evictable)

    def allocate(self, n: int) -> list[int] | None:
        """``n`` fresh blocks (reference 1 each), evicting cached ones if needed; None if too few free."""
        if n > self.num_free:
            return None
        out = []
        for _ in range(n):
            if self.unused:
                block = self.unused.pop()
            else:
                block, _ = self.evictable.popitem(last=False)
                del self.by_hash[self.hash_of[block]]  # type: ignore[arg-type]
                self.hash_of[block] = None
            self.refs[block] = 1
            out.append(block)
        return out

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block. The last blocks of a sequence are released first, so they
        are the first evicted: a shorter shared prefix outlives a longer one."""
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if self.hash_of[block] is not None:
                    self.evictable[block] = None
                else:
                    self.unused.append(block)

    def share_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks of the longest run of ``hashes`` found, each with one more reference."""
        out = []
        for h in hashes:
            block = self.by_hash.get(h)
            if block is None:
                break
            if self.refs[block] == 0:
                del self.evictable[block]
            self.refs[block] += 1
            out.append(block)
        self.queried_tokens += len(hashes) * self.block_size
        self.hit_tokens += len(out) * self.block_size
        return out

    def register(self, block: int, h: bytes) -> None:
        """``block`` now holds the full block ``h``; it becomes findable unless an equal block already is."""
        if h not in self.by_hash and self.hash_of[block] is None:
            self.by_hash[h] = block
            self.hash_of[block] = h
