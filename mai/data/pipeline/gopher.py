"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A).

Thresholds are the paper's as listed in REFERENCES §4; every one is a config field. Words are whitespace
tokens that are not pure punctuation.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step
from mai.data.pipeline.textstats import duplicates, words

BULLETS = ("•", "-", "*", "‣", "◦", "⁃", "▪", "●")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher's required stop words


@dataclasses.dataclass
class GopherQualityConfig:
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # ('#' + ellipses) per word
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = dataclasses.field(default_factory=lambda: list(STOP_WORDS))


class GopherQuality(Step):
    Config = GopherQualityConfig
    kind = "gopher_quality"

    def __call__(self, doc: Document) -> str | None:
        c: GopherQualityConfig = self.cfg
        text = doc.text
        ws = words(text)
        n = len(ws)
        if n < c.min_words:
            return "too_few_words"
        if n > c.max_words:
            return "too_many_words"
        mean = sum(map(len, ws)) / n
        if mean < c.min_mean_word_length:
            return "mean_word_length_low"
        if mean > c.max_mean_word_length:
            return "mean_word_length_high"
        if (text.count("#") + text.count("...") + text.count("…")) / n > c.max_symbol_word_ratio:
            return "symbol_ratio"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines and sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines) > c.max_bullet_lines:
            return "bullet_lines"
        ellipsis = sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
        if lines and ellipsis / len(lines) > c.max_ellipsis_lines:
            return "ellipsis_lines"
        if sum(any(ch.isalpha() for ch in w) for w in ws) / n < c.min_alpha_words:
            return "alpha_words"
        stop = set(c.stop_words)
        if sum(w.lower() in stop for w in ws) < c.min_stop_words:
            return "stop_words"
        return None


def _default_top_ngrams() -> dict[int, float]:
    return {2: 0.20, 3: 0.18, 4: 0.16}


def _default_dup_ngrams() -> dict[int, float]:
    return {n: round(0.15 - 0.01 * (n - 5), 2) for n in range(5, 11)}  # 0.15 for 5-grams … 0.10 for 10-grams


@dataclasses.dataclass
class GopherRepetitionConfig:
    max_dup_line_fraction: float = 0.30
    max_dup_paragraph_fraction: float = 0.30
    max_dup_line_chars: float = 0.20
    max_dup_paragraph_chars: float = 0.20
    top_ngram_chars: dict[int, float] = dataclasses.field(default_factory=_default_top_ngrams)
    dup_ngram_chars: dict[int, float] = dataclasses.field(default_factory=_default_dup_ngrams)


_PARA_RE = re.compile(r"\n\s*\n")


def top_ngram_share(ws: list[str], n: int, size: int) -> float:
    """Characters in all occurrences of the most frequent word n-gram, over the text's characters."""
    if len(ws) < n or size == 0:
        return 0.0
    counts = Counter(zip(*(ws[i:] for i in range(n)), strict=False))
    gram, count = counts.most_common(1)[0]
    return 0.0 if count < 2 else count * sum(map(len, gram)) / size


def dup_ngram_share(ws: list[str], n: int, size: int) -> float:
    """Characters in word n-grams that repeat an earlier n-gram (scanning on past each repeat, so overlapping
    repeats count once), over the text's characters."""
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i <= len(ws) - n:
        gram = tuple(ws[i:i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars / size if size else 0.0


class GopherRepetition(Step):
    Config = GopherRepetitionConfig
    kind = "gopher_repetition"

    def __call__(self, doc: Document) -> str | None:
        c: GopherRepetitionConfig = self.cfg
        text = doc.text
        size = max(len(text), 1)
        paragraphs = [p.strip() for p in _PARA_RE.split(text) if p.strip()]
        n_dup, chars = duplicates(paragraphs)
        if paragraphs and n_dup / len(paragraphs) > c.max_dup_paragraph_fraction:
            return "dup_paragraph_fraction"
        if chars / size > c.max_dup_paragraph_chars:
            return "dup_paragraph_chars"
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        n_dup, chars = duplicates(lines)
        if lines and n_dup / len(lines) > c.max_dup_line_fraction:
            return "dup_line_fraction"
        if chars / size > c.max_dup_line_chars:
            return "dup_line_chars"
        ws = words(text)
        for n, limit in sorted(c.top_ngram_chars.items()):
            if top_ngram_share(ws, n, size) > limit:
                return f"top_{n}gram"
        for n, limit in sorted(c.dup_ngram_chars.items()):
            share = dup_ngram_share(ws, n, size)
            if share > limit:
                return f"dup_{n}gram"
            if share == 0.0:  # no repeated n-gram means no repeated longer one either
                break
        return None
