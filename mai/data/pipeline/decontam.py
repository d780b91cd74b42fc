"""Decontamination: drop training documents that share a word n-gram (13 by default; 8 suits short tasks)
with any evaluation example, after the same normalisation on both sides (lowercase, no punctuation).

Evaluation examples come from JSONL files (every string field of an object, and strings in lists, joined),
plain text files (one example per line) or inline ``texts``. Examples shorter than ``ngram`` words
cannot match (use a smaller ``ngram`` for short tasks). Not done yet: GPT-3's exemption of n-grams
that occur in more than 10 training documents (it needs a counting pass before the decisions).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mai.data.pipeline.document import Document
from mai.data.pipeline.readers import open_binary
from mai.data.pipeline.step import Step
from mai.data.pipeline.textstats import normalize
from mai.errors import MaiError


@dataclasses.dataclass
class DecontamConfig:
    files: list[str] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    ngram: int = 13


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def load_eval_texts(files: list[str]) -> list[str]:
    texts: list[str] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise MaiError(f"decontam: evaluation file not found: {path}")
        with open_binary(str(path)) as fh:
            for raw in fh:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                if ".json" in path.name:
                    try:
                        texts.append(" ".join(_strings(json.loads(line))))
                    except json.JSONDecodeError as exc:
                        raise MaiError(f"decontam: {path} has an invalid JSON line: {exc}") from None
                else:
                    texts.append(line)
    return texts


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """64-bit hashes of every word n-gram of the normalised text (process-local: Python's str hash)."""
    ws = normalize(text).split()
    if len(ws) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.array([hash(w) for w in ws], dtype=np.int64).view(np.uint64)
    m = len(ws) - n + 1
    out = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            out = out * np.uint64(0x100000001B3) + h[j:j + m]
    return out


class Decontaminate(Step):
    Config = DecontamConfig
    kind = "decontam"

    @cached_property
    def index(self) -> np.ndarray:
        """Sorted n-gram hashes of every evaluation example, built lazily in each worker process."""
        texts = list(self.cfg.texts) + load_eval_texts(self.cfg.files)
        if not texts:
            raise MaiError("decontam: no evaluation texts; set 'files' (JSONL/text) or 'texts'")
        parts = [ngram_hashes(t, self.cfg.ngram) for t in texts]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    def __call__(self, doc: Document) -> str | None:
        grams = ngram_hashes(doc.text, self.cfg.ngram)
        if grams.size and self.index.size:
            pos = np.searchsorted(self.index, grams).clip(max=self.index.size - 1)
            if bool((self.index[pos] == grams).any()):
                return f"eval_{self.cfg.ngram}gram_overlap"
        return None
