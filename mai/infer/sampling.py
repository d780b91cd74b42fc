"""Turning next-token logits into a token: penalties, temperature, top-k, top-p, seeded draws.

Works on a batch of rows at once so that the single-request generator and the batched engine share it;
each row has its own parameters and its own ``torch.Generator`` so a seed reproduces a request's output
whatever else runs beside it.

Sampling is numerically safe for every value the parameters allow (a temperature of 1e-300, a top_p of
1e-50, penalties and biases at the ends of their ranges, NaN or infinite logits from the model): one row's
odd settings must never raise inside the shared engine step, where they would fail every other request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mai.errors import MaiError


@dataclass
class SamplingParams:
    """Per-request decoding settings. ``temperature`` 0 means greedy."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the context (CTRL paper's rule)
    presence_penalty: float = 0.0  # OpenAI's additive penalties
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False  # report the chosen token's log-probability (OpenAI's logprobs)
    top_logprobs: int = 0  # and this many most likely alternatives (0..20)
    json_object: bool = False  # constrain the output to one JSON object (OpenAI's response_format)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id → added to its logit (OpenAI's)
    # a compiled grammar (``xgrammar.CompiledGrammar``, mai.infer.grammar) the output must follow: a JSON
    # schema or a tool call; compiled by the caller, so that a bad schema is the caller's error
    grammar: Any = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise MaiError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise MaiError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise MaiError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise MaiError(f"top_k must be ≥ 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise MaiError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not 0 <= self.top_logprobs <= 20:
            raise MaiError(f"top_logprobs must be between 0 and 20, got {self.top_logprobs}")

    def generator(self) -> torch.Generator:
        """A generator seeded with ``seed`` taken modulo 2**64 (torch's range), so any integer seed works:
        the server derives one seed per choice as ``seed + index``, which may leave the int64 range."""
        g = torch.Generator()
        g.manual_seed(self.seed % 2**64 if self.seed is not None else int(torch.seed() % 2**63))
        return g


def apply_penalties(logits: torch.Tensor, history: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Penalise tokens of ``history`` (1-D ids seen so far) in one row of ``logits`` (1-D, float) and add
    the request's ``logit_bias``."""
    penalised = history.numel() > 0 and (
        p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0)
    if not penalised and not p.logit_bias:
        return logits
    logits = logits.clone()
    if penalised and p.repetition_penalty != 1.0:
        seen = history.unique()
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if penalised and (p.presence_penalty or p.frequency_penalty):
        counts = torch.bincount(history, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
        logits[ids] += torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
    return logits


def token_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor | None:
    """The distribution a token is drawn from (after temperature, top-k and top-p), from a 1-D float32
    logits row with penalties applied; None when the choice is the most likely token (greedy, or a
    distribution that cannot be used).

    NaN logits count as impossible and +inf as the largest float; the logits are shifted so that their
    maximum is 0 before dividing by the temperature (a tiny temperature then gives -inf, never NaN); the
    most likely token always survives top-k and top-p.
    """
    logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
    best = int(logits.argmax())
    if p.temperature == 0 or not torch.isfinite(logits[best]):
        return None
    logits = (logits - logits[best]) / p.temperature
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept: in float32
        # a top_p below ~1e-45 compares as 0, which would otherwise drop every token)
        drop = sorted_probs.cumsum(0) - sorted_probs >= p.top_p
        drop[0] = False
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0.0:
        return None
    return probs


def greedy_token(logits: torch.Tensor) -> int:
    return int(torch.nan_to_num(logits, nan=float("-inf")).argmax())


def sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
    """One token id from a 1-D float32 logits row (penalties already applied): a draw from
    :func:`token_probs`, or the most likely token rather than raising when there is no distribution."""
    probs = token_probs(logits, p)
    if probs is None:
        return greedy_token(logits)
    return int(torch.multinomial(probs, 1, generator=gen))
