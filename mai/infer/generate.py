"""Generation for one prompt: a KV cache, per-step sampling, stop tokens and stop strings, streamed text.

``Generation`` is an iterator of text deltas so a terminal (``mai generate``/``mai chat``) can print as
tokens arrive; after it is exhausted it holds the full text, the token ids and the finish reason
("stop" or "length"), the same whether or not the caller streamed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from mai.errors import MaiError
from mai.infer.compiled_decode import CompiledDecoder
from mai.infer.sampling import SamplingParams, apply_penalties, sample_row
from mai.infer.textstream import TextStream
from mai.model.transformer import KVCache, Transformer


def next_token_logits(model: Transformer, use_cache: bool) -> Callable[[list[int]], torch.Tensor]:
    """A function from the whole token list so far to the next-token logits (float32, 1-D).

    With the cache only the tokens not yet seen are fed; without it every step recomputes everything —
    slow, but the reference that the cached path must match token for token.
    """
    cache: KVCache | None = None
    param = next(model.parameters())

    def step(ids: list[int]) -> torch.Tensor:
        nonlocal cache
        if not use_cache:
            return model(torch.tensor([ids], device=param.device))[0, -1].float()
        if cache is None:
            cache = KVCache(model.cfg, 1, model.cfg.max_seq_len, param.device, param.dtype)
        new = torch.tensor([ids[cache.length :]], device=param.device)
        return model(new, cache, last_only=True)[0, -1].float()

    return step


class Generation:
    """Iterate for text deltas; ``text``, ``token_ids`` and ``finish_reason`` are final afterwards."""

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], prompt_ids: Sequence[int],
                 params: SamplingParams, stop_ids: Sequence[int] = (), use_cache: bool = True,
                 decoder: CompiledDecoder | None = None):
        if not prompt_ids:
            raise MaiError("the prompt is empty")
        room = model.cfg.max_seq_len - len(prompt_ids)
        if room < 1:
            raise MaiError(f"the prompt has {len(prompt_ids)} tokens; the model's context is "
                           f"{model.cfg.max_seq_len}")
        self.model, self.decode, self.params = model, decode, params
        self.prompt_ids = list(prompt_ids)
        self.stop_ids = set(stop_ids)
        self.budget = min(params.max_tokens, room)
        self.use_cache = use_cache
        self.decoder = decoder  # compiled batch-1 decoding of ``model`` (mai.infer.compiled_decode)
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        if self.decoder is not None:
            step = self.decoder.stepper(self.budget)
        else:
            step = next_token_logits(self.model, self.use_cache)
        gen = self.params.generator()
        ids = list(self.prompt_ids)
        stream = TextStream(self.decode, self.params.stop)
        with torch.inference_mode():
            while True:
                logits = apply_penalties(step(ids), torch.tensor(ids), self.params)
                token = sample_row(logits, self.params, gen)
                if token in self.stop_ids:
                    self.finish_reason = "stop"
                    break
                ids.append(token)
                delta = stream.push(token)
                self.token_ids, self.text = stream.token_ids, stream.text
                if stream.stopped:
                    self.finish_reason = "stop"
                elif len(self.token_ids) >= self.budget:
                    self.finish_reason = "length"
                if delta:
                    yield delta
                if self.finish_reason:
                    break
        if tail := stream.flush():
            yield tail

    def run(self) -> str:
        """Generate to the end without streaming; returns the text."""
        for _ in self:
            pass
        return self.text
