"""The OpenAI-compatible HTTP API over one :class:`~mai.infer.engine.Engine` per catalog model.

Routes: POST /v1/chat/completions, /v1/completions, /v1/moderations; GET /v1/models, /health, /metrics,
and the playground page at GET / (``playground.html``).
Every /v1 route checks the API key and the key's rate limits; bodies, prompts and max_tokens are bounded;
prompts and completions pass the content filter; streams follow OpenAI's SSE chunk format and stop the
engine's work when the client goes away. Models load in a background thread (/health is 503 until then).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from mai.errors import MaiError
from mai.infer.engine import Engine, Event, token_texts
from mai.infer.engine import Request as EngineRequest
from mai.infer.quant import apply_quant
from mai.infer.sampling import SamplingParams
from mai.serve import errors
from mai.serve.catalog import Catalog, KeyEntry, ModelEntry
from mai.serve.errors import ApiError
from mai.serve.judge import Judge, openai_complete
from mai.serve.limits import KeyRing
from mai.serve.metrics import Metrics
from mai.serve.protocol import ChatRequest, CompletionRequest, ModerationRequest, usage
from mai.serve.safety import SafetyFilter, SafetyResult
from mai.tokenizer import MaiTokenizer

PLAYGROUND = Path(__file__).parent / "playground.html"


@dataclass
class Served:
    entry: ModelEntry
    engine: Engine
    tokenizer: MaiTokenizer
    created: int


class Server:
    """Shared state of one app: the catalog, loaded models, keys, filter and metrics."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.models: dict[str, Served] = {}
        self.keys = KeyRing(catalog.api_keys)
        self.safety = SafetyFilter()
        self.metrics = Metrics()
        self.judges: dict[str, Judge] = {}  # model name → its safety judge, where configured
        self.load_error: str | None = None
        self.ready = threading.Event()

    def load(self) -> None:
        from mai.interop import load_model

        try:
            for entry in self.catalog.models:
                loaded = load_model(entry.path, max_seq_len=entry.max_len)
                apply_quant(loaded.model, entry.quant)
                if loaded.tokenizer is None:
                    raise MaiError(f"model {entry.name} ({entry.path}) has no tokenizer to serve with")
                tok = loaded.tokenizer
                engine = Engine(loaded.model, tok.decode, tok.stop_ids, max_batch=entry.max_batch,
                                token_texts=token_texts(tok.decode, loaded.cfg.vocab_size))
                engine.start()
                self.models[entry.name] = Served(entry, engine, tok, int(time.time()))
                self.metrics.watch(entry.name, lambda e=engine: e.n_running, lambda e=engine: e.n_waiting)
            for entry in self.catalog.models:
                if entry.safety.judge_model:
                    self.judges[entry.name] = self._judge(entry.safety.judge_model)
        except MaiError as exc:
            self.load_error = str(exc)
        self.ready.set()

    def _judge(self, spec: str) -> Judge:
        """A served model answers in process; anything else is an OpenAI-compatible BASE_URL#MODEL."""
        served = self.models.get(spec)
        if served is None:
            return Judge(openai_complete(spec), spec)

        def complete(prompt: str) -> str:
            tok = served.tokenizer
            ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True))
            return served.engine.generate(ids, SamplingParams(max_tokens=16, temperature=0)).text

        return Judge(complete, spec)

    async def check(self, served: Served, text: str, level: str, role: str) -> SafetyResult:
        """The content filter, with the model's judge (off the event loop) where one is configured."""
        judge = self.judges.get(served.entry.name)
        if judge is None or level == "off":
            return self.safety.check(text, level)
        try:
            return await asyncio.to_thread(self.safety.check, text, level, judge, role)
        except Exception as exc:  # unreachable, timed out, prompt too long for it: fail closed
            raise ApiError(503, f"the safety judge {judge.name} is unavailable: {str(exc)[:200]}",
                           "judge_unavailable") from None

    def shutdown(self) -> None:
        for served in self.models.values():
            served.engine.shutdown()

    def model(self, name: str) -> Served:
        if not self.ready.is_set():
            raise ApiError(503, "models are still loading; retry shortly", "model_loading")
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, f"the model '{name}' does not exist; GET /v1/models lists the served models",
                           "model_not_found", "model")
        return served

    def safety_level(self, served: Served, key: KeyEntry | None, where: str) -> str:
        if key is not None and where in key.safety:
            return key.safety[where]
        return getattr(served.entry.safety, where)


def _sampling(body: ChatRequest | CompletionRequest, served: Served, prompt_len: int, server: Server,
              seed_offset: int, max_tokens: int | None, logprobs: bool, top_logprobs: int,
              json_object: bool) -> SamplingParams:
    limits = server.catalog.limits
    context = served.engine.max_len
    if prompt_len > limits.max_prompt_tokens:
        raise ApiError(400, f"the prompt has {prompt_len} tokens; the limit is {limits.max_prompt_tokens}",
                       "context_length_exceeded", "messages")
    room = context - prompt_len
    if room < 1:
        raise ApiError(400, f"this model's maximum context length is {context} tokens; the prompt has "
                       f"{prompt_len}", "context_length_exceeded", "messages")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} exceeds this server's limit {limits.max_tokens}",
                       "invalid_value", "max_tokens")
    if max_tokens is not None and max_tokens > room:
        raise ApiError(400, f"this model's maximum context length is {context} tokens; the prompt has "
                       f"{prompt_len} and max_tokens asks for {max_tokens}", "context_length_exceeded",
                       "max_tokens")
    return SamplingParams(
        max_tokens=max_tokens or min(room, limits.max_tokens),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        seed=None if body.seed is None else body.seed + seed_offset,
        stop=body.stop_list(), logprobs=logprobs, top_logprobs=top_logprobs, json_object=json_object)


class _Choice:
    """Bridges one engine request's events (engine thread) into an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.req: EngineRequest | None = None
        self.last = 0.0
        self.gaps: list[float] = []

    def on_event(self, req: EngineRequest, event: Event) -> None:
        now = time.perf_counter()
        if self.last:
            self.gaps.append(now - self.last)
        self.last = now
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _chat_logprobs(items) -> dict[str, Any]:
    return {"content": [{"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token.encode()),
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                          for t, v in lp.top]} for lp in items]}


def _completion_logprobs(items, offset: int) -> dict[str, Any]:
    offsets = []
    for lp in items:
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": [lp.token for lp in items], "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [dict(lp.top) for lp in items], "text_offset": offsets}


def create_app(catalog: Catalog, load_in_background: bool = True) -> FastAPI:
    server = Server(catalog)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if load_in_background:
            threading.Thread(target=server.load, name="mai-load", daemon=True).start()
        else:
            server.load()
        yield
        server.shutdown()

    app = FastAPI(title="mai", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.server = server
    app.add_exception_handler(ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_handler)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Body size limit and API keys for /v1 (before the body is parsed)."""
        limit = catalog.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return errors.error_response(413, f"the request body exceeds {limit} bytes", "body_too_large")
        if request.url.path.startswith("/v1/"):
            try:
                request.state.key = server.keys.authenticate(request.headers.get("authorization"))
                if request.method == "POST":
                    server.keys.admit(request.state.key)
            except ApiError as exc:
                return errors.error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)
            if request.method == "POST":
                body = await request.body()
                if len(body) > limit:
                    return errors.error_response(413, f"the request body exceeds {limit} bytes",
                                                 "body_too_large")
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError:
                    return errors.error_response(400, "the request body is not valid UTF-8",
                                                 "invalid_encoding")
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not server.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        if server.load_error:
            return JSONResponse({"status": "error", "error": server.load_error}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(server.models)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": s.created, "owned_by": "mai",
             "max_model_len": s.engine.max_len} for name, s in server.models.items()]}

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest) -> dict[str, Any]:
        results = []
        for text in body.inputs():
            r = server.safety.check(text, "medium")
            results.append({"flagged": r.flagged,
                            "categories": {c.replace("_", "-"): s >= 4 for c, s in r.severity.items()},
                            "category_scores": {c.replace("_", "-"): v for c, v in r.scores().items()}})
        return {"id": f"modr-{uuid.uuid4().hex}", "model": body.model or "mai-safety", "results": results}

    async def screen_prompt(served: Served, key: KeyEntry | None, text: str) -> SafetyResult:
        result = await server.check(served, text, server.safety_level(served, key, "prompt"), "User")
        if result.flagged:
            raise ApiError(400, "the prompt was filtered by the content policy "
                           f"({', '.join(result.blocked)})",
                           "content_filter", "messages")
        return result

    async def run(request: Request, body, served: Served, prompt_ids: list[int], chat: bool,
                  prompt_result: SafetyResult, params_for: Any, prefix: str = ""):
        key = request.state.key
        engine = served.engine
        if engine.n_waiting >= catalog.limits.max_waiting:
            raise ApiError(503, "the server is overloaded; retry shortly", "server_overloaded")
        loop = asyncio.get_running_loop()
        choices = [_Choice(loop) for _ in range(body.n)]
        try:
            for i, ch in enumerate(choices):
                ch.req = engine.submit(prompt_ids, params_for(i), ch.on_event)
        except MaiError as exc:
            raise ApiError(400, str(exc), "invalid_value") from None
        created, rid = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        kind = "chat.completion" if chat else "text_completion"
        level = server.safety_level(served, key, "completion")
        model_name = body.model

        def record() -> int:
            out = sum(len(c.req.token_ids) for c in choices)
            m = server.metrics
            m.prompt_tokens.labels(model_name).inc(len(prompt_ids) * len(choices))
            m.generation_tokens.labels(model_name).inc(out)
            for c in choices:
                r = c.req
                m.requests.labels(model_name, r.finish_reason or "none").inc()
                if r.scheduled:
                    m.queue.labels(model_name).observe(r.scheduled - r.arrived)
                if r.first_token:
                    m.ttft.labels(model_name).observe(r.first_token - r.arrived)
                if r.finished:
                    m.e2e.labels(model_name).observe(r.finished - r.arrived)
                for g in c.gaps:
                    m.itl.labels(model_name).observe(g)
            server.keys.charge(key, len(prompt_ids) * len(choices) + out)
            return out

        def cancel_all() -> None:
            for c in choices:
                if c.req is not None and not c.req.done.is_set():
                    engine.cancel(c.req)

        if not body.stream:
            texts: list[str] = [""] * len(choices)
            lps: list[list] = [[] for _ in choices]
            reasons: list[str | None] = [None] * len(choices)
            filters: list[SafetyResult | None] = [None] * len(choices)
            try:
                for i, c in enumerate(choices):
                    while reasons[i] is None:
                        try:
                            ev = await asyncio.wait_for(c.queue.get(), timeout=1.0)
                        except asyncio.TimeoutError:
                            if await request.is_disconnected():
                                cancel_all()
                                return Response(status_code=499)
                            continue
                        texts[i] += ev.text
                        lps[i] += ev.logprobs
                        reasons[i] = ev.finish_reason
                    res = await server.check(served, texts[i], level, "Agent")
                    filters[i] = res
                    if res.flagged:
                        texts[i], reasons[i] = "", "content_filter"
            finally:
                cancel_all()
            out = record()
            data_choices = []
            for i in range(len(choices)):
                item: dict[str, Any] = {"index": i, "finish_reason": reasons[i],
                                        "content_filter_results": filters[i].annotations()}
                if chat:
                    item["message"] = {"role": "assistant", "content": texts[i], "refusal": None}
                    item["logprobs"] = _chat_logprobs(lps[i]) if body.logprobs else None
                else:
                    item["text"] = prefix + texts[i]
                    wanted = body.logprobs is not None
                    item["logprobs"] = _completion_logprobs(lps[i], len(prefix)) if wanted else None
                data_choices.append(item)
            return {"id": rid, "object": kind, "created": created, "model": model_name,
                    "system_fingerprint": None, "choices": data_choices,
                    "usage": usage(len(prompt_ids) * len(choices), out),
                    "prompt_filter_results": [{"prompt_index": 0,
                                               "content_filter_results": prompt_result.annotations()}]}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> str:
            data = {"id": rid, "object": chunk_kind, "created": created, "model": model_name,
                    "system_fingerprint": None, "choices": [choice] if choice else [], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def piece(i: int, text: str | None, logprobs, reason: str | None,
                  role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                    ({"content": text} if text is not None else {})
                lp = _chat_logprobs(logprobs) if body.logprobs and logprobs else None
                return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
            lp = _completion_logprobs(logprobs, 0) if body.logprobs is not None and logprobs else None
            return {"index": i, "text": text or "", "logprobs": lp, "finish_reason": reason}

        async def stream() -> AsyncIterator[str]:
            try:
                for i in range(len(choices)):
                    if chat:
                        yield chunk(piece(i, None, None, None, role=True))
                    elif prefix:
                        yield chunk(piece(i, prefix, None, None))
                pending = {asyncio.ensure_future(c.queue.get()): i for i, c in enumerate(choices)}
                shown = [""] * len(choices)
                while pending:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        ev: Event = fut.result()
                        reason = ev.finish_reason
                        text = ev.text
                        if text and server.safety.flags(shown[i] + text, level):  # mid-stream check
                            cancel_all_one(i)
                            text, reason = "", "content_filter"
                        shown[i] += text
                        if text or ev.logprobs:
                            yield chunk(piece(i, text, ev.logprobs, None))
                        if reason is not None:
                            yield chunk(piece(i, None, None, reason))
                            if reason == "content_filter":
                                await drain(i)
                        else:
                            pending[asyncio.ensure_future(choices[i].queue.get())] = i
                out = record()
                if include_usage:
                    yield chunk(None, usage=usage(len(prompt_ids) * len(choices), out))
                yield "data: [DONE]\n\n"
            finally:
                cancel_all()  # a client that went away stops the engine's work

        def cancel_all_one(i: int) -> None:
            if not choices[i].req.done.is_set():
                engine.cancel(choices[i].req)

        async def drain(i: int) -> None:
            while not choices[i].req.done.is_set():
                await choices[i].queue.get()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest):
        served = server.model(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        prompt_result = await screen_prompt(served, request.state.key,
                                            "\n".join(m["content"] for m in messages))
        try:
            text = served.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except MaiError as exc:
            raise ApiError(400, str(exc), "invalid_value", "messages") from None
        ids = served.tokenizer.encode(text)
        if body.top_logprobs and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "invalid_value", "top_logprobs")
        max_tokens = body.max_completion_tokens or body.max_tokens
        json_object = body.response_format is not None and body.response_format.type == "json_object"

        def params(i: int) -> SamplingParams:
            return _sampling(body, served, len(ids), server, i, max_tokens, body.logprobs,
                             body.top_logprobs or 0, json_object)

        params(0)  # validate before anything starts
        return await run(request, body, served, ids, True, prompt_result, params)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        served = server.model(body.model)
        text = body.prompt_text()
        prompt_result = await screen_prompt(served, request.state.key, text)
        ids = served.tokenizer.encode(text, add_bos=served.tokenizer.bos_id is not None)
        if not ids:
            raise ApiError(400, "the prompt is empty", "invalid_value", "prompt")

        def params(i: int) -> SamplingParams:
            return _sampling(body, served, len(ids), server, i, body.max_tokens or 16,
                             body.logprobs is not None, body.logprobs or 0, False)

        params(0)
        return await run(request, body, served, ids, False, prompt_result, params,
                         prefix=text if body.echo else "")

    return app
