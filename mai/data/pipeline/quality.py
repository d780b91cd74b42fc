"""A model-based quality filter, DCLM / FineWeb-Edu style: a teacher model rates documents over an
OpenAI-compatible API, a fastText classifier learns its labels, and the ``quality`` step keeps what the
classifier scores as good.

``mai data quality train CONFIG.yaml`` asks the teacher for a 0-5 educational score per document
(FineWeb-Edu's annotation prompt, shortened; the threshold 3 is FineWeb-Edu's), with the synth client's
cache, rate limits and retries. The labels train the supervised model of fastText (Joulin et al. 2016,
"Bag of Tricks"; DCLM's filter is one): hashed word unigrams and bigrams, their embeddings averaged, a
linear softmax, SGD with a linearly decaying rate. It is implemented here in numpy because the registry's
trainable fastText builds install the same ``fasttext`` module as fasttext-predict, which the language-ID
model needs. A held-out share of the labelled documents (chosen by a hash of the text) measures the
classifier's agreement with the teacher; that accuracy, with the majority-class baseline, goes into
``OUT/quality.json`` and into the report of every run that uses the model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from mai.config import from_dict, load_yaml, merge, parse_override
from mai.data.compressed import open_compressed
from mai.data.pipeline.document import Document
from mai.data.pipeline.files import write_json
from mai.data.pipeline.step import Step
from mai.data.pipeline.synth.cache import ResponseCache
from mai.data.pipeline.synth.config import TeacherConfig
from mai.data.pipeline.synth.teacher import Teacher
from mai.data.pipeline.tokenize import text_hash64
from mai.errors import MaiError
from mai.fileio import atomic_path

PROMPT = ("Below is an extract from a web page. Evaluate whether the page has a high educational value and "
          "could be useful in an educational setting for teaching from primary school to grade school "
          "levels, using an additive 5-point scoring system (0 = no educational value, 5 = outstanding "
          "educational value). After examining the extract, conclude with the score using the format: "
          "\"Educational score: <points>\".\n\nThe extract:\n{text}")
_SCORE = re.compile(r"score:?\s*\**\s*([0-5])\b", re.I)
_WORD = re.compile(r"\w+")


@dataclasses.dataclass
class QualityTrainConfig:
    """``mai data quality train``: documents → teacher labels → classifier in ``out_dir``."""

    inputs: list[str]  # JSONL files (.gz/.zst): pipeline outputs, synth outputs, raw dumps
    out_dir: str
    teacher: TeacherConfig = dataclasses.field(default_factory=lambda: TeacherConfig(temperature=0.0,
                                                                                      max_tokens=64))
    text_key: str = "text"
    limit: int | None = None  # first N documents only
    prompt_chars: int = 2000  # the document is cut to this many characters in the prompt
    threshold: int = 3  # a teacher score >= 3 is "good" (FineWeb-Edu)
    held_out: float = 0.2
    dim: int = 16
    buckets: int = 1 << 20  # hashed unigram + bigram features
    epochs: int = 10
    lr: float = 0.5
    seed: int = 0


def load_quality_config(path: str | Path, overrides: list[str] | None = None) -> QualityTrainConfig:
    data = load_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        merge(data, keys, value)
    return from_dict(QualityTrainConfig, data, "quality")


# -- the classifier ------------------------------------------------------------------------------------

def features(text: str, buckets: int) -> np.ndarray:
    """Hashed lowercase word unigrams and bigrams (fastText's ``-wordNgrams 2``)."""
    ws = _WORD.findall(text.lower())
    grams = ws + [f"{a} {b}" for a, b in zip(ws, ws[1:], strict=False)]
    if not grams:
        return np.zeros(0, dtype=np.int64)
    hashes = (xxhash.xxh64_intdigest(g.encode("utf-8", "surrogatepass")) % buckets for g in grams)
    return np.fromiter(hashes, dtype=np.int64, count=len(grams))


@dataclasses.dataclass
class FastTextModel:
    """fastText's supervised model with two labels (0 = low, 1 = high quality); only trained rows kept."""

    rows: np.ndarray  # sorted feature ids that have an embedding
    vectors: np.ndarray  # (len(rows), dim)
    output: np.ndarray  # (2, dim)
    buckets: int

    def _hidden(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.rows, ids).clip(max=max(len(self.rows) - 1, 0))
        known = pos[self.rows[pos] == ids] if len(self.rows) else pos[:0]
        if not ids.size:
            return np.zeros(self.output.shape[1], dtype=np.float32)
        return self.vectors[known].sum(axis=0) / ids.size

    def score(self, text: str) -> float:
        """P(high quality)."""
        logits = self.output @ self._hidden(features(text, self.buckets))
        e = np.exp(logits - logits.max())
        return float(e[1] / e.sum())

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, rows=self.rows, vectors=self.vectors, output=self.output, buckets=self.buckets)

    @classmethod
    def load(cls, path: Path) -> FastTextModel:
        if not path.is_file():
            raise MaiError(f"quality model not found: {path} (train one with `mai data quality train`)")
        z = np.load(path)
        return cls(z["rows"], z["vectors"], z["output"], int(z["buckets"]))


def train_fasttext(texts: list[str], labels: list[int], cfg: QualityTrainConfig) -> FastTextModel:
    """SGD over (document, label) pairs: averaged input vectors, softmax output, linear lr decay."""
    rng = np.random.default_rng(cfg.seed)
    targets = [int(y) for y in labels]  # a bool would index p as a mask
    docs = [features(t, cfg.buckets) for t in texts]
    rows = np.unique(np.concatenate(docs)) if docs else np.zeros(0, np.int64)
    index = [np.searchsorted(rows, d) for d in docs]
    vectors = rng.uniform(-1 / cfg.dim, 1 / cfg.dim, (len(rows), cfg.dim)).astype(np.float32)
    output = np.zeros((2, cfg.dim), dtype=np.float32)
    steps, step = cfg.epochs * len(docs), 0
    for _ in range(cfg.epochs):
        for i in rng.permutation(len(docs)):
            lr = cfg.lr * (1 - step / max(steps, 1))
            step += 1
            if not index[i].size:
                continue
            hidden = vectors[index[i]].mean(axis=0)
            logits = output @ hidden
            p = np.exp(logits - logits.max())
            p /= p.sum()
            p[targets[i]] -= 1.0  # d loss / d logits
            grad_hidden = output.T @ p
            output -= lr * np.outer(p, hidden)
            np.add.at(vectors, index[i], -lr * grad_hidden / index[i].size)
    return FastTextModel(rows, vectors, output, cfg.buckets)


# -- teacher labels and training ------------------------------------------------------------------------

def read_texts(paths: list[str], key: str, limit: int | None) -> list[str]:
    texts: list[str] = []
    for name in paths:
        if not Path(name).is_file():
            raise MaiError(f"quality: input not found: {name}")
        with open_compressed(name) as fh:
            for n, line in enumerate(fh, 1):
                if limit is not None and len(texts) >= limit:
                    return texts
                if not line.strip():
                    continue
                try:
                    text = json.loads(line).get(key)
                except (json.JSONDecodeError, AttributeError):
                    raise MaiError(f"{name}:{n}: not a JSON object") from None
                if isinstance(text, str) and text.strip():
                    texts.append(text)
    if not texts:
        raise MaiError(f"quality: no documents with a '{key}' field in {', '.join(paths)}")
    return texts


def parse_score(reply: str) -> int | None:
    m = _SCORE.search(reply)
    return int(m.group(1)) if m else None


def teacher_scores(texts: list[str], cfg: QualityTrainConfig, cache_path: Path) -> list[int | None]:
    """The teacher's 0-5 score per document (None: no usable reply after the retries)."""
    cache = ResponseCache(cache_path)
    try:
        teacher = Teacher(cfg.teacher, cache)
        bodies = [teacher.request([{"role": "user", "content": PROMPT.format(text=t[:cfg.prompt_chars])}], 0)
                  for t in texts]
        outcomes = asyncio.run(teacher.generate_all(bodies))
    finally:
        cache.close()
    return [parse_score(o.response["text"]) if o.response else None for o in outcomes]


def _held_out(text: str, fraction: float) -> bool:
    """The same text always lands on the same side (the rule that splits train and val tokens)."""
    return text_hash64(text) < fraction * 2**64


def train_quality(cfg: QualityTrainConfig) -> dict[str, Any]:
    """Label, train, evaluate on the held-out documents; writes OUT/model.npz and OUT/quality.json."""
    out = Path(cfg.out_dir)
    texts = read_texts(cfg.inputs, cfg.text_key, cfg.limit)
    scores = teacher_scores(texts, cfg, out / "teacher_cache.sqlite")
    pairs = [(t, int(s >= cfg.threshold)) for t, s in zip(texts, scores, strict=True) if s is not None]
    train = [p for p in pairs if not _held_out(p[0], cfg.held_out)]
    test = [p for p in pairs if _held_out(p[0], cfg.held_out)]
    if len({label for _, label in train}) < 2 or not test:
        raise MaiError(f"quality: the teacher's labels cannot train a classifier ({len(pairs)} labelled, "
                       f"{sum(label for _, label in pairs)} good; need both kinds and held-out documents)")
    model = train_fasttext([t for t, _ in train], [label for _, label in train], cfg)
    model.save(out / "model.npz")
    correct = sum((model.score(t) >= 0.5) == bool(label) for t, label in test)
    majority = max(sum(label for _, label in test), sum(1 - label for _, label in test))
    report = {"documents": len(texts), "labelled": len(pairs), "unlabelled": len(texts) - len(pairs),
              "good": sum(label for _, label in pairs), "threshold": cfg.threshold,
              "train": len(train), "held_out": len(test),
              "held_out_accuracy": round(correct / len(test), 4),
              "majority_baseline": round(majority / len(test), 4),
              "teacher": {"base_url": cfg.teacher.base_url, "model": cfg.teacher.model},
              "score_histogram": {str(k): scores.count(k) for k in range(6)}}
    write_json(out / "quality.json", report)
    return report


# -- the pipeline step ----------------------------------------------------------------------------------

@dataclasses.dataclass
class QualityConfig:
    model: str  # the out_dir of `mai data quality train` (model.npz + quality.json)
    min_score: float = 0.5  # keep documents with P(good) >= this


class QualityFilter(Step):
    Config = QualityConfig
    kind = "quality"

    def __init__(self, cfg: QualityConfig, label: str | None = None) -> None:
        super().__init__(cfg, label)
        if not (Path(cfg.model) / "model.npz").is_file():
            raise MaiError(f"quality.model: no model.npz in {cfg.model} "
                           "(train one with `mai data quality train`)")

    @cached_property
    def classifier(self) -> FastTextModel:
        return FastTextModel.load(Path(self.cfg.model) / "model.npz")

    def __call__(self, doc: Document) -> str | None:
        score = self.classifier.score(doc.text)
        doc.metadata["quality_score"] = round(score, 4)
        return "low_quality" if score < self.cfg.min_score else None

    def describe(self) -> dict[str, Any]:
        path = Path(self.cfg.model) / "quality.json"
        trained = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return {"model": self.cfg.model, "min_score": self.cfg.min_score,
                "held_out_accuracy": trained.get("held_out_accuracy"),
                "majority_baseline": trained.get("majority_baseline")}
