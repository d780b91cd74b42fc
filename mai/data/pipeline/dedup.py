"""Deduplication across the whole run: exact (content hash) and near (MinHash LSH).

The first document of a group, in run order (shards in declaration order, documents in file order), is
kept; later ones are removed. Each finished shard saves the keys it added as ``STATE/LABEL/SHARD.npy``,
so a resumed run rebuilds exactly the state it had and never keeps or drops a document differently.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import xxhash

from mai.data.pipeline.document import Document
from mai.data.pipeline.minhash import MinHasher
from mai.data.pipeline.step import GlobalStep
from mai.fileio import atomic_path


class _KeySetStep(GlobalStep):
    """Shared state handling: a set of 64-bit keys, saved per shard as the keys that shard added."""

    meta_key: str

    def __init__(self, cfg: object, label: str | None = None) -> None:
        super().__init__(cfg, label)
        self.seen: set[int] = set()
        self.added: list[int] = []

    def keys(self, doc: Document) -> list[int]:
        if self.meta_key not in doc.metadata:
            self.prepare(doc)
        return doc.metadata.pop(self.meta_key)

    def check(self, doc: Document, reason: str) -> str | None:
        keys = self.keys(doc)
        if any(k in self.seen for k in keys):
            return reason
        self.seen.update(keys)
        self.added += keys
        return None

    def load_state(self, state_dir: Path, finished: list[str]) -> None:
        self.seen, self.added = set(), []
        for key in finished:
            self.seen.update(np.load(state_dir / self.label / f"{key}.npy").tolist())

    def save_state(self, state_dir: Path, shard_key: str) -> None:
        with atomic_path(state_dir / self.label / f"{shard_key}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.array(self.added, dtype=np.uint64))
        self.added = []


@dataclasses.dataclass
class ExactDedupConfig:
    normalize_whitespace: bool = True  # hash the text with runs of whitespace collapsed


class ExactDedup(_KeySetStep):
    Config = ExactDedupConfig
    kind = "exact_dedup"
    meta_key = "_content_hash"

    def prepare(self, doc: Document) -> None:
        text = " ".join(doc.text.split()) if self.cfg.normalize_whitespace else doc.text
        doc.metadata[self.meta_key] = [xxhash.xxh64_intdigest(text.encode("utf-8", "surrogatepass"))]

    def __call__(self, doc: Document) -> str | None:
        return self.check(doc, "exact_duplicate")


@dataclasses.dataclass
class MinHashConfig:
    bands: int = 14
    rows: int = 8
    shingle_words: int = 5
    seed: int = 1


class MinHashDedup(_KeySetStep):
    Config = MinHashConfig
    kind = "minhash_dedup"
    meta_key = "_minhash_bands"

    def __init__(self, cfg: MinHashConfig, label: str | None = None) -> None:
        super().__init__(cfg, label)
        self.hasher = MinHasher(cfg.bands, cfg.rows, cfg.shingle_words, cfg.seed)

    def prepare(self, doc: Document) -> None:
        doc.metadata[self.meta_key] = self.hasher.band_keys(doc.text)

    def __call__(self, doc: Document) -> str | None:
        return self.check(doc, "near_duplicate")
