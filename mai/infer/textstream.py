"""Token ids → text deltas for streaming: stop strings, and no half-made characters or stop prefixes.

Shared by single-prompt generation and the batched engine so both cut text at stop strings the same
way and stream exactly the characters of the final answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """Feed tokens one by one; each ``push`` returns the text that is safe to show now."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1  # a tail that may still become a stop
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False  # a stop string appeared; ``text`` is cut before it

    def push(self, token: int) -> str:
        self.token_ids.append(token)
        self.text = self.decode(self.token_ids)
        cut = min((i for s in self.stop if (i := self.text.find(s, self.emitted)) >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self.flush()
        safe = len(self.text.rstrip("\ufffd")) - self.hold  # also hold back a broken UTF-8 character
        if safe <= self.emitted:
            return ""
        delta, self.emitted = self.text[self.emitted : safe], safe
        return delta

    def flush(self) -> str:
        """The rest of the text, at the end of generation."""
        delta, self.emitted = self.text[self.emitted :], len(self.text)
        return delta
