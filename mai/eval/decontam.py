"""Decontamination report: how many evaluation examples share a word 13-gram with a training shard set.

The n-grams are those of the data pipeline's decontamination step (:func:`mai.data.pipeline.decontam.
ngram_hashes`: normalised words, 64-bit hashes), so the report and the filter agree. Training documents
are decoded from the token shards with the tokenizer stored beside them; an example's text is its
contexts plus its choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mai.data.pipeline.decontam import ngram_hashes
from mai.data.shards import TokenDataset
from mai.errors import MaiError
from mai.eval.tasks import Example, get_task
from mai.tokenizer import load_tokenizer


def training_ngrams(shard_dirs: Sequence[str | Path], n: int = 13, split: str = "train") -> np.ndarray:
    """Sorted unique n-gram hashes of every document of the given token-shard directories."""
    parts = []
    for d in map(Path, shard_dirs):
        if not (d / "tokenizer" / "tokenizer.json").is_file():
            raise MaiError(f"{d} has no tokenizer/ folder: cannot decode its shards to text")
        tok, ds = load_tokenizer(d / "tokenizer"), TokenDataset(d, split)
        for i in range(len(ds.doc_ends)):
            parts.append(ngram_hashes(tok.decode(ds.document(i).tolist()), n))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def example_text(ex: Example) -> str:
    return " ".join(dict.fromkeys([c for c, _ in ex.requests] + [k for _, k in ex.requests]))


def contamination(tasks: Sequence[str], shard_dirs: Sequence[str | Path], n: int = 13,
                  limit: int | None = None) -> dict[str, dict[str, Any]]:
    """Per task: examples checked, examples sharing at least one n-gram with the training shards."""
    train = training_ngrams(shard_dirs, n)
    report = {}
    for name in tasks:
        examples = get_task(name).load(limit)
        hits = sum(bool(np.isin(ngram_hashes(example_text(ex), n), train).any()) for ex in examples)
        report[name] = {"examples": len(examples), "contaminated": hits,
                        "percent": 100.0 * hits / max(1, len(examples)), "ngram": n}
    return report
