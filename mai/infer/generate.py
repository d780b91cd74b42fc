"""Generation for one prompt, for a terminal (``mai generate``/``mai chat``): the engine, stepped here.

``Generation`` is an iterator of text deltas so a terminal can print as tokens arrive; after it is
exhausted it holds the full text, the token ids and the finish reason ("stop" or "length"), the same
whether or not the caller streamed. It owns a one-request :class:`~mai.infer.engine.Engine` and steps it
on the calling thread, so single-prompt generation runs the same token step (penalties, sampling, stop
strings, budget) as the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from mai.errors import MaiError
from mai.infer.engine import Engine, Event, Request
from mai.infer.runner import ModelRunner
from mai.infer.sampling import SamplingParams
from mai.model.transformer import Transformer


class Generation:
    """Iterate for text deltas; ``text``, ``token_ids`` and ``finish_reason`` are final afterwards.

    ``use_cache=False`` recomputes the whole sequence at every step (the reference that the cached path
    must match token for token); ``decoder`` is the engine's model runner (a
    :class:`mai.infer.compiled_decode.CompiledDecoder` for compiled decoding)."""

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], prompt_ids: Sequence[int],
                 params: SamplingParams, stop_ids: Sequence[int] = (), use_cache: bool = True,
                 decoder: ModelRunner | None = None):
        self.engine = Engine(model, decode, stop_ids, max_batch=1, runner=decoder, recompute=not use_cache)
        self._deltas: list[str] = []
        self.request = self.engine.submit(prompt_ids, params, self._on_event)
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None

    def _on_event(self, req: Request, event: Event) -> None:
        if event.text:
            self._deltas.append(event.text)

    def __iter__(self) -> Iterator[str]:
        req = self.request
        while True:
            deltas, self._deltas = self._deltas, []
            self.token_ids, self.text = req.token_ids, req.text
            yield from deltas
            if req.done.is_set():
                break
            self.engine.step()
        if req.finish_reason == "error":
            raise MaiError(f"generation failed: {req.error}")
        self.finish_reason = req.finish_reason

    def run(self) -> str:
        """Generate to the end without streaming; returns the text."""
        for _ in self:
            pass
        return self.text
