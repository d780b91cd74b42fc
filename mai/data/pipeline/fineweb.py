"""FineWeb's extra quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3).

Drop a document when at most 12% of its lines end in punctuation, when at least 10% of its characters
sit in duplicated lines (the paper's value; datatrove's code default is 0.01 — we follow the paper), when
at least 67% of its lines are 30 characters or shorter, or — the list-ratio rule of datatrove's
``FineWebQualityFilter`` (``new_line_ratio``) — when it has more than 0.3 line breaks per word (menus,
link lists, tag clouds: one or two words a line).
"""

from __future__ import annotations

import dataclasses

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step
from mai.data.pipeline.textstats import TERMINAL_PUNCT, duplicates, words


@dataclasses.dataclass
class FineWebConfig:
    max_line_punct_ratio: float = 0.12  # drop when the fraction of lines ending in punctuation is <= this
    max_dup_line_chars: float = 0.1  # drop when the share of characters in duplicated lines is >= this
    short_line_length: int = 30
    max_short_lines: float = 0.67  # drop when the fraction of short lines is >= this
    max_newlines_per_word: float | None = 0.3  # list ratio: drop above this (None: off)


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
        if (c.max_newlines_per_word is not None
                and doc.text.count("\n") / max(len(words(doc.text)), 1) > c.max_newlines_per_word):
            return "list_ratio"
        return None
