"""Precision, recall and benign false positives of each safety layer, and of the layers combined.

Labelled files (``mai/serve/data/safety/``) hold one JSON object per line:
``{"text": ..., "kind": "prompt" | "completion", "category": "hate" | "sexual" | "violence" | "self_harm" |
"benign", "note": ...}``. ``train.jsonl`` is for fitting; ``heldout.jsonl`` was written separately and is
only ever measured on. A category counts as predicted when a layer's severity reaches the blocking level;
precision counts a flag of the wrong category (or on benign text) against that category.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mai.counts import Score
from mai.errors import MaiError
from mai.fileio import read_jsonl_records
from mai.serve.safety import CATEGORIES, LEVELS

DATA = Path(__file__).parent / "data" / "safety"
LABELS = (*CATEGORIES, "benign")
KINDS = ("prompt", "completion")
FIELDS = ("text", "kind", "category", "note")


@dataclass
class Example:
    text: str
    kind: str
    category: str
    note: str

    @property
    def role(self) -> str:
        """The Llama Guard role: prompts are the User's, completions the Agent's."""
        return "User" if self.kind == "prompt" else "Agent"


def load_examples(path: str | Path) -> list[Example]:
    """Every line of a labelled file; a missing field or unknown value is one error naming the line."""
    out = []
    for record, where in read_jsonl_records(path):
        if not isinstance(record, dict):
            raise MaiError(f"{where}: expected an object with fields {', '.join(FIELDS)}")
        missing = [f for f in FIELDS if not isinstance(record.get(f), str)]
        if missing:
            raise MaiError(f"{where}: missing or non-text field(s) {', '.join(missing)} "
                           f"(each line needs {', '.join(FIELDS)})")
        if record["kind"] not in KINDS:
            raise MaiError(f"{where}: kind '{record['kind']}' is not prompt or completion")
        if record["category"] not in LABELS:
            raise MaiError(f"{where}: category '{record['category']}' is not one of {', '.join(LABELS)}")
        out.append(Example(*(record[f] for f in FIELDS)))
    if not out:
        raise MaiError(f"{path} holds no examples")
    return out


Severities = dict[str, int]


def combine(*layers: list[Severities]) -> list[Severities]:
    """Per text and category, the highest severity any layer gives (the filter's own rule)."""
    return [{c: max(layer[i].get(c, 0) for layer in layers) for c in CATEGORIES}
            for i in range(len(layers[0]))]


@dataclass
class LayerScore:
    per_category: dict[str, Score]
    benign_fpr: float  # share of benign texts with any category at or above the level
    n_benign: int


def measure(examples: list[Example], predicted: list[Severities], level: str) -> LayerScore:
    limit = LEVELS[level]
    scores = {c: Score() for c in CATEGORIES}
    benign_hits = n_benign = 0
    for ex, sev in zip(examples, predicted, strict=True):
        flagged = {c for c in CATEGORIES if sev.get(c, 0) >= limit}
        for c in CATEGORIES:
            scores[c].tp += c in flagged and ex.category == c
            scores[c].fp += c in flagged and ex.category != c
            scores[c].fn += c not in flagged and ex.category == c
        if ex.category == "benign":
            n_benign += 1
            benign_hits += bool(flagged)
    return LayerScore(scores, benign_hits / n_benign if n_benign else 0.0, n_benign)


def table(results: dict[str, LayerScore]) -> str:
    """Markdown: one row per layer, precision/recall per category and the benign false-positive rate."""
    head = " | ".join(f"{c} P / R" for c in CATEGORIES)
    lines = [f"| layer | {head} | benign FPR |", "|---|" + "---|" * (len(CATEGORIES) + 1)]
    for name, r in results.items():
        cells = " | ".join(f"{s.precision:.2f} / {s.recall:.2f}" for s in r.per_category.values())
        hits = round(r.benign_fpr * r.n_benign)
        lines.append(f"| {name} | {cells} | {r.benign_fpr:.3f} ({hits}/{r.n_benign}) |")
    return "\n".join(lines)


def timed(score: Callable[[Example], Severities], examples: list[Example]) -> tuple[list[Severities], float]:
    """Each example scored alone, as a request would be; returns the severities and mean milliseconds."""
    start = time.perf_counter()
    out = [score(ex) for ex in examples]
    return out, 1000 * (time.perf_counter() - start) / max(len(examples), 1)
