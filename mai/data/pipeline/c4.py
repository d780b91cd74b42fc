"""C4's clean-up rules (Raffel et al. 2020, section 2.2): drop boilerplate lines, then whole documents
that look like code, placeholder text, or too little prose.

Line rules: no terminal punctuation (on by default as in C4; FineWeb turns it off because it removed
~30% of tokens), fewer than 3 words, a word over 1000 characters, 'javascript', cookie/privacy notices.
Document rules: 'lorem ipsum', a curly bracket, fewer than 5 sentences left.
"""

from __future__ import annotations

import dataclasses
import re

from mai.data.pipeline.document import Document
from mai.data.pipeline.step import Step
from mai.data.pipeline.textstats import TERMINAL_PUNCT

POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")
_SENTENCE_END = re.compile(r"[.!?…]+(?=[\"'”’)]*(\s|$))")


@dataclasses.dataclass
class C4Config:
    drop_lines_without_terminal_punct: bool = True
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
        for line in doc.text.split("\n"):
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
