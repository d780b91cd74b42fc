"""One generation request (chat or completion) over a model's engine: its ``n`` choices submitted together,
their events bridged from the engine thread to asyncio, and the OpenAI response or SSE stream.

Accounting happens on the engine thread as each choice ends, whatever the HTTP side is doing (answering,
streaming, or gone because the client disconnected): Prometheus counters, and the key's token
reservation settled with what was really used. ``usage`` in the response is computed from the same
numbers, so usage and the counters always agree: ``prompt_tokens`` once per request (not × n),
``completion_tokens`` summed over the choices, streaming or not.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response, StreamingResponse

from mai.infer.engine import EngineStopped, Event, TokenLogprob
from mai.infer.engine import Request as EngineRequest
from mai.infer.sampling import SamplingParams
from mai.serve.catalog import KeyEntry
from mai.serve.errors import ApiError, error_body
from mai.serve.limits import Reservation
from mai.serve.metrics import Metrics
from mai.serve.protocol import ChatRequest, CompletionRequest, for_choice, usage
from mai.serve.safety import SafetyResult
from mai.serve.tools import ToolCallParser, offers_tools, tool_format

if TYPE_CHECKING:
    from mai.serve.app import Served, Server

SHUTTING_DOWN = "the server is shutting down; the request was cancelled"


class Ledger:
    """Usage and metrics of one request, closed when its last choice ends (on the engine thread)."""

    def __init__(self, metrics: Metrics, model: str, prompt_tokens: int, n: int, reservation: Reservation):
        self.metrics, self.model, self.prompt_tokens = metrics, model, prompt_tokens
        self.reservation, self.remaining, self.completion = reservation, n, 0
        self.ran = 0  # choices that reached the engine: without any, the prompt was never processed
        self._lock = threading.Lock()

    def finished(self, req: EngineRequest, gaps: list[float]) -> None:
        """One choice ended: its metrics now, the request's totals with the last choice."""
        m, name = self.metrics, self.model
        m.generation_tokens.labels(name).inc(len(req.token_ids))
        m.requests.labels(name, req.finish_reason or "none").inc()
        if req.scheduled:
            m.queue.labels(name).observe(req.scheduled - req.arrived)
        if req.first_token:
            m.ttft.labels(name).observe(req.first_token - req.arrived)
        if req.finished:
            m.e2e.labels(name).observe(req.finished - req.arrived)
        for g in gaps:
            m.itl.labels(name).observe(g)
        self._count(1, len(req.token_ids), ran=1)

    def skip(self, n: int) -> None:
        """``n`` choices were never submitted (the engine refused them)."""
        self._count(n, 0, ran=0)

    def _count(self, choices: int, tokens: int, ran: int) -> None:
        with self._lock:
            self.completion += tokens
            self.remaining -= choices
            self.ran += ran
            last = self.remaining == 0
        if last:
            prompt = self.prompt_tokens if self.ran else 0
            self.metrics.prompt_tokens.labels(self.model).inc(prompt)
            self.reservation.settle(prompt + self.completion)

    def usage(self) -> dict[str, Any]:
        return usage(self.prompt_tokens, self.completion)


class Choice:
    """Bridges one engine request's events (engine thread) into an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ledger: Ledger):
        self.loop, self.ledger = loop, ledger
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.req: EngineRequest | None = None
        self.last = 0.0
        self.gaps: list[float] = []

    def on_event(self, req: EngineRequest, event: Event) -> None:
        now = time.perf_counter()
        if self.last:
            self.gaps.append(now - self.last)
        self.last = now
        if event.finish_reason is not None:
            self.ledger.finished(req, self.gaps)  # before the event is seen: usage is complete by then
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token.encode()),
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                          for t, v in lp.top]} for lp in items]}


def completion_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for lp in items:
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": [lp.token for lp in items], "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [dict(lp.top) for lp in items], "text_offset": offsets}


def _failure(event: Event) -> ApiError | None:
    """The error a choice that ended this way answers with, if any."""
    if event.finish_reason == "error":
        return ApiError(500, f"generation failed: {event.error or 'unknown error'}", "generation_failed")
    if event.finish_reason == "cancelled":
        return ApiError(503, SHUTTING_DOWN, "server_shutting_down")
    return None


def _with_calls(reason: str) -> str:
    """OpenAI's finish_reason for an answer that holds tool calls: ``tool_calls`` unless it was cut."""
    return "tool_calls" if reason == "stop" else reason


async def until_disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Returns when the client has gone (after the body, the server's ``receive`` waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Generation:
    """One chat or completion request: submit its choices, then answer or stream."""

    def __init__(self, server: Server, served: Served, body: ChatRequest | CompletionRequest,
                 prompt_ids: list[int], params: SamplingParams, prompt_result: SafetyResult,
                 key: KeyEntry | None, prefix: str = ""):
        self.server, self.served, self.body, self.key = server, served, body, key
        self.prompt_ids, self.params, self.prefix = prompt_ids, params, prefix
        self.prompt_result = prompt_result
        self.chat = isinstance(body, ChatRequest)
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.level = server.safety_level(served, key, "completion")
        self.choices: list[Choice] = []
        # with tools offered, the output is parsed into content and tool_calls
        self.tools = tool_format(served.tokenizer.chat_template) if self.chat and offers_tools(body) else None

    def submit(self) -> None:
        """Reserve the worst case against the key's tokens per minute, then submit every choice."""
        engine, n = self.served.engine, self.body.n
        if engine.n_waiting >= self.server.catalog.limits.max_waiting:
            raise ApiError(503, "the server is overloaded; retry shortly", "server_overloaded")
        worst = len(self.prompt_ids) + self.params.max_tokens * n
        reservation = self.server.keys.reserve(self.key, worst)
        ledger = Ledger(self.server.metrics, self.body.model, len(self.prompt_ids), n, reservation)
        loop = asyncio.get_running_loop()
        for i in range(n):
            choice = Choice(loop, ledger)
            try:
                choice.req = self.served.engine.submit(self.prompt_ids, for_choice(self.params, i),
                                                       choice.on_event, self.served.adapter)
            except EngineStopped:
                ledger.skip(n - i)
                self.cancel_all()
                raise ApiError(503, "the model's engine has stopped", "engine_unavailable") from None
            self.choices.append(choice)
        self.ledger = ledger

    def cancel_all(self) -> None:
        for c in self.choices:
            self.cancel(c)

    def cancel(self, choice: Choice) -> None:
        if choice.req is not None and not choice.req.done.is_set():
            self.served.engine.cancel(choice.req)

    # --- non-streamed ----------------------------------------------------------------------------
    async def complete(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any] | Response:
        """The whole answer; a client that disconnects first cancels every choice at once (the engine
        retires them at its next step)."""
        gone = asyncio.ensure_future(until_disconnected(receive))
        answer = asyncio.ensure_future(self._collect())
        try:
            await asyncio.wait({gone, answer}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                return Response(status_code=499)  # nobody reads it: the client has gone
            return answer.result()
        finally:
            gone.cancel()
            self.cancel_all()

    async def _collect(self) -> dict[str, Any]:
        items = []
        for i, choice in enumerate(self.choices):
            text, lps, last = "", [], None
            while last is None or last.finish_reason is None:
                last = await choice.queue.get()
                text += last.text
                lps += last.logprobs
            failure = _failure(last)
            if failure is not None:
                raise failure
            result = await self.server.check(self.served, text, self.level, "Agent")
            reason = last.finish_reason
            if result.flagged:
                text, reason = "", "content_filter"
            items.append(self._choice_body(i, text, lps, reason, result))
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.body.model, "system_fingerprint": None,
                "choices": items, "usage": self.ledger.usage(),
                "prompt_filter_results": [{"prompt_index": 0,
                                           "content_filter_results": self.prompt_result.annotations()}]}

    def _choice_body(self, i: int, text: str, lps: list[TokenLogprob], reason: str,
                     result: SafetyResult) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i, "finish_reason": reason,
                                "content_filter_results": result.annotations()}
        wanted, _ = self.body.logprob_settings()
        if self.chat:
            item["message"] = {"role": "assistant", "content": text, "refusal": None}
            if self.tools is not None and reason != "content_filter":
                parser = ToolCallParser(self.tools)
                parser.feed(text)
                parser.finish()
                content, calls = parser.message()
                item["message"]["content"] = content
                if calls:
                    item["message"]["tool_calls"] = calls
                    item["finish_reason"] = _with_calls(reason)
            item["logprobs"] = chat_logprobs(lps) if wanted else None
        else:
            item["text"] = self.prefix + text
            item["logprobs"] = completion_logprobs(lps, len(self.prefix)) if wanted else None
        return item

    # --- streamed --------------------------------------------------------------------------------
    def stream(self) -> StreamingResponse:
        return StreamingResponse(self._events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _chunk(self, choice: dict[str, Any] | None, **extra: Any) -> str:
        data = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.body.model, "system_fingerprint": None,
                "choices": [choice] if choice else [], **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _piece(self, i: int, text: str | None, logprobs: list[TokenLogprob] | None, reason: str | None,
               role: bool = False) -> dict[str, Any]:
        wanted, _ = self.body.logprob_settings()
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                ({"content": text} if text is not None else {})
            lp = chat_logprobs(logprobs) if wanted and logprobs else None
            return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
        lp = completion_logprobs(logprobs, 0) if wanted and logprobs else None
        return {"index": i, "text": text or "", "logprobs": lp, "finish_reason": reason}

    def _tool_piece(self, i: int, delta: tuple, parser: ToolCallParser) -> dict[str, Any]:
        """One parser delta as OpenAI's chunk: content, a new call (id, name), or an arguments fragment."""
        if delta[0] == "content":
            body: dict[str, Any] = {"content": delta[1]}
        elif delta[0] == "call":
            call = parser.calls[delta[1]]
            body = {"tool_calls": [{"index": delta[1], "id": call.id, "type": "function",
                                    "function": {"name": call.name, "arguments": ""}}]}
        else:
            body = {"tool_calls": [{"index": delta[1], "function": {"arguments": delta[2]}}]}
        return {"index": i, "delta": body, "logprobs": None, "finish_reason": None}

    def _pieces(self, i: int, text: str, logprobs: list[TokenLogprob], parser: ToolCallParser | None,
                final: bool) -> list[dict[str, Any]]:
        """The chunks that new text (and its logprobs) make, through the tool-call parser if any."""
        if parser is None:
            return [self._piece(i, text, logprobs, None)] if text or logprobs else []
        deltas = parser.feed(text) + (parser.finish() if final else [])
        pieces = [self._tool_piece(i, d, parser) for d in deltas]
        if logprobs:
            pieces.append(self._piece(i, None, logprobs, None))
        return pieces

    async def _events(self) -> AsyncIterator[str]:
        try:
            for i in range(len(self.choices)):
                if self.chat:
                    yield self._chunk(self._piece(i, None, None, None, role=True))
                elif self.prefix:
                    yield self._chunk(self._piece(i, self.prefix, None, None))
            pending = {asyncio.ensure_future(c.queue.get()): i for i, c in enumerate(self.choices)}
            shown = [""] * len(self.choices)
            parsers = [ToolCallParser(self.tools) if self.tools else None for _ in self.choices]
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    ev: Event = fut.result()
                    failure = _failure(ev)
                    if failure is not None:  # OpenAI's in-stream error event; the stream ends here
                        for other in pending:
                            other.cancel()
                        error = error_body(failure.status, failure.message, failure.code)
                        yield f"data: {json.dumps(error)}\n\n"
                        return
                    reason, text = ev.finish_reason, ev.text
                    if text and self.server.safety.flags(shown[i] + text, self.level):  # mid-stream check
                        self.cancel(self.choices[i])
                        text, reason = "", "content_filter"
                    elif reason not in (None, "content_filter") and await self._flagged(shown[i] + text):
                        text, reason = "", "content_filter"
                    shown[i] += text
                    parser = parsers[i] if reason != "content_filter" else None
                    for piece in self._pieces(i, text, ev.logprobs, parser, final=reason is not None):
                        yield self._chunk(piece)
                    if reason is not None:
                        if parser is not None and parser.calls:
                            reason = _with_calls(reason)
                        yield self._chunk(self._piece(i, None, None, reason))
                        if reason == "content_filter":
                            await self._drain(self.choices[i])
                    else:
                        pending[asyncio.ensure_future(self.choices[i].queue.get())] = i
            if self.body.include_usage():
                yield self._chunk(None, usage=self.ledger.usage())
            yield "data: [DONE]\n\n"
        finally:
            self.cancel_all()  # a client that went away stops the engine's work

    async def _flagged(self, answer: str) -> bool:
        """The whole answer through the full filter (classifier, judge) at its end, as a non-streamed answer
        goes: a stream's finish reason is the one the same request gets without streaming."""
        return (await self.server.check(self.served, answer, self.level, "Agent")).flagged

    async def _drain(self, choice: Choice) -> None:
        while choice.req is not None and not choice.req.done.is_set():
            await choice.queue.get()
