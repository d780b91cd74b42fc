"""Precision and recall from counted outcomes: the content filter's and the PII rules' labelled sets both
report them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Score:
    """True positives, false positives and false negatives; a rate with nothing to count is 1.0."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
