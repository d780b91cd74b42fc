"""Speculative decoding: guess k tokens cheaply, check them all in one target-model step.

A proposer drafts up to k tokens after a decoding request's tokens: :class:`NgramProposer` copies what
followed the last earlier occurrence of the sequence's final n-gram (prompt lookup: summaries, code
edits and quotes repeat their context), :class:`DraftModelProposer` runs a smaller model with the same
tokenizer. The engine feeds the request's last token and the drafts as one chunk, gets the target's
logits at every position, and walks them with :func:`verify`: greedy requests keep a draft while it is
the target's most likely token, so their output is exactly the non-speculative output; sampled requests
keep draft x with probability min(1, p(x)/q(x)) and on rejection draw from max(0, p - q) renormalised
(Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding", Thm. 1), so every
token is distributed exactly as without drafts. The first rejected position, or the position after the
last draft, yields one more token from the target, so each step makes at least one token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from mai.errors import MaiError
from mai.infer.sampling import SamplingParams, apply_penalties, greedy_token, token_probs
from mai.model.transformer import KVCache, Transformer


class Proposer(Protocol):
    def propose(self, key: object, tokens: Sequence[int], k: int, params: SamplingParams,
                gen: torch.Generator) -> tuple[list[int], list[torch.Tensor] | None]:
        """Up to ``k`` draft tokens after ``tokens`` and, per draft, the distribution q it was drawn
        from (None: each draft was chosen deterministically, q a point mass). ``key`` names the request
        (a proposer may keep state per request)."""
        ...

    def forget(self, key: object) -> None:
        """The request ``key`` ended."""
        ...


def verify(logits: torch.Tensor, params: SamplingParams, draft: int | None, q: torch.Tensor | None,
           gen: torch.Generator) -> tuple[int, bool]:
    """The token at one verified position from the target's processed ``logits`` (penalties and
    constraint applied) and whether it is the ``draft`` (None: no draft here, plain sampling)."""
    p = token_probs(logits, params)
    if p is None:  # greedy: the target's choice; the draft survives only if it is that choice
        best = greedy_token(logits)
        return best, best == draft
    if draft is None:
        return int(torch.multinomial(p, 1, generator=gen)), False
    q_x = float(q[draft]) if q is not None else 1.0
    if q_x > 0 and float(torch.rand((), generator=gen)) * q_x < float(p[draft]):
        return draft, True
    if q is None:
        residual = p.clone()
        residual[draft] = 0.0
    else:
        residual = (p - q).clamp(min=0.0)
    if float(residual.sum()) <= 0.0:  # p equals q up to rounding: any draw from p is right
        residual = p
    return int(torch.multinomial(residual, 1, generator=gen)), False


class NgramProposer:
    """Prompt lookup: the tokens after the latest earlier match of the last n tokens (n from
    ``max_n`` down to ``min_n``)."""

    def __init__(self, k: int = 4, max_n: int = 3, min_n: int = 1):
        self.k, self.max_n, self.min_n = k, max_n, min_n

    def propose(self, key: object, tokens: Sequence[int], k: int, params: SamplingParams,
                gen: torch.Generator) -> tuple[list[int], list[torch.Tensor] | None]:
        k = min(k, self.k)
        t = torch.tensor(tokens)
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):
            windows = t.unfold(0, n, 1)[:-1]  # every earlier n-gram (the last one is the pattern)
            hits = (windows == t[-n:]).all(dim=1).nonzero()
            if len(hits):
                start = int(hits[-1]) + n
                return list(tokens[start : start + k]), None
        return [], None

    def forget(self, key: object) -> None:
        pass


class DraftModelProposer:
    """A smaller model with the same vocabulary drafts ``k`` tokens, drawn with the request's own
    penalties and temperature/top-k/top-p (greedy for greedy requests). Each request keeps a batch-1
    cache of the draft model, cut back to the tokens it still shares with the request after each
    verification."""

    def __init__(self, model: Transformer, k: int = 4):
        self.model, self.k = model, k
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.state: dict[object, tuple[KVCache, list[int]]] = {}

    def propose(self, key: object, tokens: Sequence[int], k: int, params: SamplingParams,
                gen: torch.Generator) -> tuple[list[int], list[torch.Tensor] | None]:
        k = min(k, self.k)
        cfg = self.model.cfg
        if k <= 0 or len(tokens) + k > cfg.max_seq_len:
            return [], None
        cache, seen = self.state.get(key) or (KVCache(cfg, 1, cfg.max_seq_len, self.device, self.dtype), [])
        common = 0
        for a, b in zip(seen, tokens, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # the last token is fed again: its logits are needed
        cache.length = common
        feed = list(tokens[common:])
        drafts: list[int] = []
        qs: list[torch.Tensor] = []
        for _ in range(k):
            fed = torch.tensor([feed], device=self.device)
            logits = self.model(fed, cache, last_only=True)[0, -1].float()
            logits = apply_penalties(logits, torch.tensor([*tokens, *drafts]), params)
            q = token_probs(logits, params)
            if q is None:  # greedy (or no usable distribution): the draft is certain
                token = greedy_token(logits)
                q = torch.nn.functional.one_hot(torch.tensor(token), logits.shape[-1]).float()
            else:
                token = int(torch.multinomial(q, 1, generator=gen))
            drafts.append(token)
            qs.append(q)
            feed = [token]
        self.state[key] = (cache, list(tokens) + drafts[:-1])
        return drafts, qs

    def forget(self, key: object) -> None:
        self.state.pop(key, None)


def make_proposer(method: str, draft: Transformer | None = None) -> Proposer | None:
    """The proposer a configuration names: ``off`` (None), ``ngram`` or ``draft`` (``draft`` the model)."""
    if method == "off":
        return None
    if method == "ngram":
        return NgramProposer()
    if method == "draft" and draft is not None:
        return DraftModelProposer(draft)
    raise MaiError(f"speculative method '{method}' needs " + ("a draft model" if method == "draft"
                                                              else "to be off, ngram or draft"))
