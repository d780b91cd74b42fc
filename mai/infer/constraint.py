"""The interface between the engine's token step and an output constraint (JSON mode, a JSON schema, a
tool call), all grammars of :mod:`mai.infer.grammar`.

The engine knows only this protocol; which constraint a request gets is decided by a factory that the
caller (the server, the CLI) builds once per model from its tokenizer, so a grammar library's per-model
setup (token vocabulary, compiled tables) is done once and not in the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from mai.infer.sampling import SamplingParams


class Constraint(Protocol):
    """Per-request state of a constrained output."""

    @property
    def complete(self) -> bool:
        """The text so far is a whole, valid output (end of text may come now)."""
        ...

    def mask(self, logits: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
        """``logits`` with every token that cannot come next set to -inf (stop ids only when complete)."""
        ...

    def advance(self, token: int) -> None:
        """``token`` was chosen."""
        ...

    def closing(self) -> str:
        """The shortest text that completes the output (used when the token budget runs out)."""
        ...


ConstraintFactory = Callable[[SamplingParams], Constraint | None]


def json_mode_factory(token_texts: list[str] | None) -> ConstraintFactory:
    """OpenAI's ``json_object`` mode for an engine given only the text of every token id (the engine's
    default, for callers without a tokenizer-aware factory such as ``mai generate``); the grammar tables
    are built on the first such request. The server builds its factory from the tokenizer instead
    (:meth:`mai.infer.grammar.GrammarConstraints.for_tokenizer`), which also knows the bytes of tokens
    that are only part of a UTF-8 character (here they read as U+FFFD, so are allowed in strings only)."""
    built: list[ConstraintFactory] = []

    def make(params: SamplingParams) -> Constraint | None:
        if token_texts is None or not (params.json_object or params.grammar is not None):
            return None
        if not built:
            from mai.infer.grammar import GrammarConstraints, raw_tokenizer_info

            built.append(GrammarConstraints(raw_tokenizer_info(token_texts)))
        return built[0](params)

    return make
