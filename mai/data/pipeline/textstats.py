"""Small text measurements shared by the quality filters (lines, words, duplicates, punctuation)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

# C4 (Raffel et al. 2020) keeps lines ending in one of these; FineWeb's line-punctuation rule uses them too.
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", "…")
_PUNCT = set(string.punctuation) | {"…", "“", "”", "‘", "’", "–", "—", "•"}
_NORM_RE = re.compile(r"[^\w\s]+")
_SPACE_RE = re.compile(r"\s+")


def words(text: str) -> list[str]:
    """Whitespace words without tokens made only of punctuation (the Gopher rules count these)."""
    return [w for w in text.split() if not all(c in _PUNCT for c in w)]


def normalize(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: the form dedup and decontamination compare."""
    return _SPACE_RE.sub(" ", _NORM_RE.sub(" ", text.lower())).strip()


def duplicates(items: Sequence[str]) -> tuple[int, int]:
    """(number of items equal to an earlier one, characters in those repeated items)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for item in items:
        if item in seen:
            n_dup += 1
            chars += len(item)
        else:
            seen.add(item)
    return n_dup, chars
