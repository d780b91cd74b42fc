"""Deliberately slow steps, so that a test can kill a real pipeline run in the middle of a stage."""

from __future__ import annotations

import dataclasses
import time

from mai.data.pipeline.dedup import ExactDedup
from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step


@dataclasses.dataclass
class SlowConfig:
    seconds: float = 0.01


class SlowStep(Step):
    Config = SlowConfig
    kind = "slow"

    def __call__(self, doc: Document) -> str | None:
        time.sleep(self.cfg.seconds)
        return None


@dataclasses.dataclass
class SlowDedupConfig:
    seconds: float = 0.01
    normalize_whitespace: bool = True


class SlowExactDedup(ExactDedup):
    Config = SlowDedupConfig
    kind = "slow_exact_dedup"

    def __call__(self, doc: Document) -> str | None:
        time.sleep(self.cfg.seconds)
        return super().__call__(doc)
