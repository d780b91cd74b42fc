"""C4's clean-up rules (Raffel et al. 2020, section 2.2): drop boilerplate lines, then whole documents
that look like code, placeholder text, or too little prose.

Line rules: no terminal punctuation (on by default as in C4; FineWeb turns it off because it removed
~30% of tokens), fewer than 3 words, a word over 1000 characters, 'javascript', cookie/privacy notices;
Wikipedia-style citation marks ("[1]", "[edit]", "[citation needed]") are cut from every line first.
Document rules: 'lorem ipsum', a curly bracket, fewer than 5 sentences left.

``c4_badwords`` is C4's other filter: drop a page containing any word of a bad-words list. C4 used the
LDNOOBW list, which datatrove downloads at run time. Here ``words_file`` must be chosen: a file (one word
or phrase per line) or ``better-profanity``, the 916-entry English list inside that wheel (read offline).
There is no silent default because any such list removes good prose: better-profanity's removes 736 of the
10,033 Wikipedia intros of the default corpus ("murder", "oral", "slave", "nude", "Pollock" …), which is
what C4's rule does too. Words match whole, case-insensitively ("Scunthorpe" is not a match).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step
from mai.data.pipeline.textstats import TERMINAL_PUNCT
from mai.errors import MaiError

POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")
_SENTENCE_END = re.compile(r"[.!?…]+(?=[\"'”’)]*(\s|$))")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.I)  # as datatrove's C4QualityFilter
BAD_WORDS_PACKAGE, BAD_WORDS_FILE = "better_profanity", "profanity_wordlist.txt"


@dataclasses.dataclass
class C4Config:
    drop_lines_without_terminal_punct: bool = True
    remove_citations: bool = True
    min_words_per_line: int = 3
    max_word_length: int = 1000
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = True
    drop_lorem_ipsum: bool = True
    drop_curly_bracket: bool = True
    min_sentences: int = 5


class C4Filter(Step):
    """Removes boilerplate lines (rewriting the text), then drops documents that fail a document rule."""

    Config = C4Config
    kind = "c4"

    def __call__(self, doc: Document) -> str | None:
        c: C4Config = self.cfg
        lower = doc.text.lower()
        if c.drop_lorem_ipsum and "lorem ipsum" in lower:
            return "lorem_ipsum"
        if c.drop_curly_bracket and "{" in doc.text:
            return "curly_bracket"
        kept = []
        text = _CITATION.sub("", doc.text) if c.remove_citations else doc.text
        for line in text.split("\n"):
            line = line.strip()
            if not line:
                continue
            ws = line.split()
            low = line.lower()
            if (len(ws) < c.min_words_per_line
                    or (c.drop_lines_without_terminal_punct and not line.endswith(TERMINAL_PUNCT))
                    or any(len(w) > c.max_word_length for w in ws)
                    or (c.drop_javascript_lines and "javascript" in low)
                    or (c.drop_policy_lines and any(p in low for p in POLICY_PHRASES))):
                continue
            kept.append(line)
        if not kept:
            return "no_lines_left"
        text = "\n".join(kept)
        if len(_SENTENCE_END.findall(text)) < c.min_sentences:
            return "too_few_sentences"
        doc.text = text
        return None


@dataclasses.dataclass
class BadWordsConfig:
    words_file: str | None = None  # one word or phrase per line, or "better-profanity" (its bundled list)
    min_matches: int = 1  # drop a page with at least this many matches (C4: 1)


def default_bad_words() -> Path:
    """better-profanity's English word list, found without importing the package."""
    spec = importlib.util.find_spec(BAD_WORDS_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / BAD_WORDS_FILE
        if path.is_file():
            return path
    raise MaiError("c4_badwords: words_file 'better-profanity' needs that package: "
                   "pip install better-profanity (or 'mai[data]')")


class C4BadWords(Step):
    Config = BadWordsConfig
    kind = "c4_badwords"

    def __init__(self, cfg: BadWordsConfig, label: str | None = None) -> None:
        super().__init__(cfg, label)
        if not cfg.words_file:
            raise MaiError("c4_badwords: set words_file to a word list (one per line) or to "
                           "'better-profanity' (its 916 words remove ~7% of Wikipedia intros: docs/data.md)")
        self.path = default_bad_words() if cfg.words_file == BAD_WORDS_PACKAGE.replace("_", "-") \
            else Path(cfg.words_file)
        if not self.path.is_file():
            raise MaiError(f"c4_badwords.words_file not found: {self.path}")

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """One alternation of every entry, longest first, matched between non-word characters."""
        entries = {ln.strip().lower() for ln in self.path.read_text(encoding="utf-8").splitlines()}
        alternatives = "|".join(re.escape(w) for w in sorted(entries - {""}, key=lambda w: (-len(w), w)))
        return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")

    def __call__(self, doc: Document) -> str | None:
        found = self.pattern.findall(doc.text.lower())
        return "bad_words" if len(found) >= self.cfg.min_matches else None

    def describe(self) -> dict[str, Any]:
        return {"words_file": str(self.path)}
