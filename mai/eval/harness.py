"""Run benchmark tasks on a model: build the requests, score them in one batched call, compute metrics.

The metrics are lm-evaluation-harness's: ``acc`` (argmax of log-likelihood), ``acc_norm`` (argmax of
log-likelihood divided by the choice's character count), LAMBADA ``acc`` (greedy last word) and
``perplexity`` (exp of the mean negative log-likelihood). MMLU reports the mean over all questions of all
subjects (lm-eval's size-weighted group mean). ``stderr`` is the sample standard error of the mean.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mai.eval.scoring import LoglikScorer
from mai.eval.tasks import Example, Task


@dataclass
class TaskResult:
    task: str
    n: int
    metrics: dict[str, float]
    seconds: float
    per_example: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "n": self.n, "seconds": self.seconds, **self.metrics}


def example_metrics(ex: Example, scored: list[tuple[float, bool]],
                    metrics: tuple[str, ...]) -> dict[str, float]:
    lls = np.array([s[0] for s in scored])
    out: dict[str, float] = {}
    if "perplexity" in metrics:  # LAMBADA: one continuation; acc = it is the greedy output
        out["acc"] = float(scored[0][1])
        out["loglik"] = float(lls[0])
        return out
    out["acc"] = float(int(np.argmax(lls)) == ex.gold)
    if "acc_norm" in metrics:
        lengths = np.array([float(len(c)) for c in ex.choices])
        out["acc_norm"] = float(int(np.argmax(lls / lengths)) == ex.gold)
    return out


def run_task(scorer: LoglikScorer, task: Task, limit: int | None, skip: int = 0) -> TaskResult:
    """Score ``limit`` examples (all if None) after the first ``skip`` (a long run done in pieces)."""
    start = time.perf_counter()
    examples = task.examples(limit, skip)
    pairs = [r for ex in examples for r in ex.requests]
    scored = scorer.score(pairs)
    per_example, at = [], 0
    for ex in examples:
        per_example.append(example_metrics(ex, scored[at:at + len(ex.requests)], task.metrics))
        at += len(ex.requests)
    n = len(per_example)
    metrics: dict[str, float] = {}
    for name in ("acc", "acc_norm"):
        if name in task.metrics:
            values = np.array([p[name] for p in per_example])
            metrics[name] = float(values.mean())
            metrics[f"{name}_stderr"] = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if "perplexity" in task.metrics:
        metrics["perplexity"] = math.exp(-float(np.mean([p["loglik"] for p in per_example])))
    return TaskResult(task.name, n, metrics, time.perf_counter() - start, per_example)
