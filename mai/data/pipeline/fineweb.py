"""FineWeb's extra quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3).

Drop a document when at most 12% of its lines end in punctuation, when at least 10% of its characters
sit in duplicated lines (the paper's value; datatrove's code default is 0.01 — we follow the paper), or
when at least 67% of its lines are 30 characters or shorter.
"""

from __future__ import annotations

import dataclasses

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step
from mai.data.pipeline.textstats import TERMINAL_PUNCT, duplicates


@dataclasses.dataclass
class FineWebConfig:
    max_line_punct_ratio: float = 0.12  # drop when the fraction of lines ending in punctuation is <= this
    max_dup_line_chars: float = 0.1  # drop when the share of characters in duplicated lines is >= this
    short_line_length: int = 30
    max_short_lines: float = 0.67  # drop when the fraction of short lines is >= this


class FineWebFilter(Step):
    Config = FineWebConfig
    kind = "fineweb"

    def __call__(self, doc: Document) -> str | None:
        c: FineWebConfig = self.cfg
        lines = [ln.strip() for ln in doc.text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        if sum(ln.endswith(TERMINAL_PUNCT) for ln in lines) / len(lines) <= c.max_line_punct_ratio:
            return "line_punct_ratio"
        _, dup_chars = duplicates(lines)
        if dup_chars / max(sum(map(len, lines)), 1) >= c.max_dup_line_chars:
            return "dup_line_chars"
        if sum(len(ln) <= c.short_line_length for ln in lines) / len(lines) >= c.max_short_lines:
            return "short_lines"
        return None
