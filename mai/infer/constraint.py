"""The interface between the engine's token step and an output constraint (JSON mode, a grammar, a tool
call's argument schema).

The engine knows only this protocol; which constraint a request gets is decided by a factory that the
caller (the server, the CLI) builds once per model from its tokenizer, so a grammar library's per-model
setup (token vocabulary, compiled tables) is done once and not in the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from mai.infer.json_mode import JsonConstraint
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
    """OpenAI's ``json_object`` mode from the text of every token id; no constraint otherwise."""

    def make(params: SamplingParams) -> Constraint | None:
        if params.json_object and token_texts is not None:
            return JsonConstraint(token_texts)
        return None

    return make
