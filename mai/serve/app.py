"""The OpenAI-compatible HTTP API over one :class:`~mai.infer.engine.Engine` per catalog model.

Routes: POST /v1/chat/completions, /v1/completions, /v1/embeddings (:mod:`mai.serve.embeddings`),
/v1/moderations; GET /v1/models, /health, /metrics, and the playground page at GET / (``playground.html``).
Every /v1 route checks the API key and the key's rate limits (:mod:`mai.serve.guard`); bodies, prompts
and max_tokens are bounded; prompts and completions pass the content filter; a generation
(:mod:`mai.serve.serving`) stops the engine's work when its client goes away, streamed or not. Models
load in a background thread. /health is 503 whenever a model cannot be served: loading, a load error, an
engine that cannot step or has stopped, and while draining. SIGTERM (or SIGINT) drains: new requests get
503, running ones may finish for ``limits.drain_seconds``, then are cancelled; uvicorn then exits.
The OpenAPI document (/openapi.json) states the statuses, content types and bodies as served.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import uuid
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from mai.errors import MaiError
from mai.infer.compiled_decode import CompiledDecoder
from mai.infer.engine import Engine, token_texts
from mai.infer.grammar import GrammarConstraints
from mai.infer.lora_serving import AdapterBank
from mai.infer.speculative import make_proposer
from mai.precision import SERVE_ROWS
from mai.serve import errors
from mai.serve.catalog import Catalog, KeyEntry, ModelEntry
from mai.serve.embeddings import Embedder, EmbeddingList, EmbeddingRequest
from mai.serve.errors import ApiError, ErrorResponse
from mai.serve.guard import Guard
from mai.serve.judge import Judge, engine_complete, openai_complete
from mai.serve.limits import KeyRing
from mai.serve.metrics import Metrics
from mai.serve.protocol import (
    ChatCompletion,
    ChatRequest,
    Completion,
    CompletionRequest,
    Health,
    ModelContext,
    ModelList,
    Moderation,
    ModerationRequest,
)
from mai.serve.safety import SafetyFilter, SafetyResult
from mai.serve.safety_classifier import BoundClassifier, bind
from mai.serve.serving import Generation
from mai.serve.tools import chat_messages
from mai.tokenizer import MaiTokenizer

PLAYGROUND = Path(__file__).parent / "playground.html"
log = logging.getLogger("mai.serve")


@dataclass
class Served:
    """A name clients send as `model`: a catalog entry's base, or one of its LoRA adapters (``adapter``
    its id in the base engine's bank, ``parent`` the base's name)."""

    entry: ModelEntry
    engine: Engine
    tokenizer: MaiTokenizer
    created: int
    adapter: int = 0
    parent: str | None = None

    def adapter_applied(self) -> AbstractContextManager[None]:
        """Forward passes on the calling thread go through this name's adapter (none for a base)."""
        bank = self.engine.runner.adapters
        return bank.step(self.adapter) if bank is not None else nullcontext()


class Server:
    """Shared state of one app: the catalog, loaded models, keys, filter and metrics."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.models: dict[str, Served] = {}
        self.keys = KeyRing(catalog.api_keys)
        self.safety = SafetyFilter()
        self.metrics = Metrics()
        self.judges: dict[str, Judge] = {}  # model name → its safety judge, where configured
        self.classifiers: dict[str, BoundClassifier] = {}  # model name → its hidden-state classifier
        self.load_error: str | None = None
        self.ready = threading.Event()
        self.limits = catalog.limits
        self.draining = False
        self._drain_task: asyncio.Task | None = None  # held: the loop keeps only a weak reference

    def load(self) -> None:
        from mai.infer.load import load_for_inference

        try:
            models = {entry.name: load_for_inference(entry.path, entry.quant, entry.precision,
                                                     rows=min(entry.max_batch, SERVE_ROWS),
                                                     max_seq_len=entry.max_seq_len)[0]
                      for entry in self.catalog.models}
            for entry in self.catalog.models:
                loaded = models[entry.name]
                tok = loaded.tokenizer
                spec = entry.speculative
                bank = None
                if entry.adapters:
                    bank = AdapterBank(loaded.model)
                    for adapter in entry.adapters:
                        bank.add(adapter.name, adapter.path, f"model {entry.name} ({entry.path})")
                engine = Engine(loaded.model, tok.decode, tok.stop_ids, max_batch=entry.max_batch,
                                token_texts=token_texts(tok.decode, loaded.cfg.vocab_size),
                                constraints=GrammarConstraints.for_tokenizer(tok, loaded.cfg.vocab_size),
                                speculative=make_proposer(spec.method, models[spec.draft_model].model
                                                          if spec.draft_model else None),
                                num_speculative_tokens=spec.tokens, adapters=bank,
                                runner=CompiledDecoder(loaded.model) if entry.compile else None)
                engine.start()
                created = int(time.time())
                self.models[entry.name] = Served(entry, engine, tok, created)
                for adapter_id, adapter in enumerate(entry.adapters, 1):
                    self.models[adapter.name] = Served(entry, engine, tok, created, adapter_id, entry.name)
                self.metrics.watch(entry.name, lambda e=engine: e.n_running, lambda e=engine: e.n_waiting)
                self.metrics.watch_engine(entry.name, engine.stats)
            for entry in self.catalog.models:
                served = self.models[entry.name]
                bound = bind(entry.safety.classifier, served.engine.model, served.tokenizer.encode,
                             entry.name)
                if bound is not None:
                    self.classifiers[entry.name] = bound
                if entry.safety.judge_model:
                    self.judges[entry.name] = self._judge(entry.safety.judge_model)
        except MaiError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # a broken file, an unsupported model: /health must say so, not "loading"
            log.exception("loading the catalog failed")
            self.load_error = f"loading failed: {type(exc).__name__}: {exc}"
        self.ready.set()

    def _judge(self, spec: str) -> Judge:
        """A served model answers in process; anything else is an OpenAI-compatible BASE_URL#MODEL."""
        served = self.models.get(spec)
        if served is None:
            return Judge(openai_complete(spec), spec)
        return Judge(engine_complete(served.engine, served.tokenizer), spec)

    async def check(self, served: Served, text: str, level: str, role: str) -> SafetyResult:
        """The content filter, with the model's classifier and judge (off the event loop) where configured."""
        judge = self.judges.get(served.entry.name)
        classifier = self.classifiers.get(served.entry.name)
        if level == "off" or (judge is None and classifier is None):
            return self.safety.check(text, level)
        if judge is None:
            return await asyncio.to_thread(self.safety.check, text, level, None, role, classifier)
        try:
            return await asyncio.to_thread(self.safety.check, text, level, judge, role, classifier)
        except Exception as exc:  # unreachable, timed out, prompt too long for it: fail closed
            raise ApiError(503, f"the safety judge {judge.name} is unavailable: {str(exc)[:200]}",
                           "judge_unavailable") from None

    def shutdown(self) -> None:
        for served in self.models.values():
            served.engine.shutdown()

    # --- what the guard asks ---------------------------------------------------------------------
    def authenticate(self, header: str | None) -> KeyEntry | None:
        return self.keys.authenticate(header)

    def admit(self, key: KeyEntry | None) -> None:
        self.keys.admit(key)

    # --- health and draining ---------------------------------------------------------------------
    def health(self) -> tuple[int, dict[str, Any]]:
        """(status, body) of /health: 200 only while every model can be served."""
        if not self.ready.is_set():
            return 503, {"status": "loading"}
        if self.load_error:
            return 503, {"status": "error", "error": self.load_error}
        if self.draining:
            return 503, {"status": "draining", "models": list(self.models)}
        for name, served in self.models.items():
            state = served.engine.state
            if state != "ok":
                why = served.engine.error or "the engine thread has ended"
                return 503, {"status": state, "models": list(self.models), "error": f"{name}: {why}"}
        return 200, {"status": "ok", "models": list(self.models)}

    def begin_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop admitting; running requests may finish for ``drain_seconds``, the rest are cancelled."""
        if not self.draining:
            self.draining = True
            log.warning("mai serve: draining (up to %g s)", self.limits.drain_seconds)
            loop.call_soon_threadsafe(self._start_drain, loop)

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain_task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.limits.drain_seconds
        while time.monotonic() < deadline and any(s.engine.n_running or s.engine.n_waiting
                                                  for s in self.models.values()):
            await asyncio.sleep(0.05)
        for served in self.models.values():
            served.engine.cancel_all()

    def install_drain_on_signals(self) -> None:
        """Make SIGTERM and SIGINT drain before uvicorn's own handler (kept, and called) shuts down.
        Only the main thread can set handlers; a server run in another thread (tests) keeps uvicorn's."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                self.begin_drain(loop)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def model(self, name: str) -> Served:
        """The served model called ``name``: 404 when unknown, 503 while it cannot take requests."""
        if self.draining:
            raise ApiError(503, "the server is shutting down", "server_shutting_down")
        if not self.ready.is_set():
            raise ApiError(503, "models are still loading; retry shortly", "model_loading")
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, f"the model '{name}' does not exist; GET /v1/models lists the served models",
                           "model_not_found", "model")
        if served.engine.state != "ok":
            raise ApiError(503, f"the model '{name}' cannot generate now: "
                           f"{served.engine.error or 'its engine has stopped'}", "engine_unavailable")
        return served

    def moderation_classifier(self, model: str | None) -> BoundClassifier | None:
        """/v1/moderations reads out the named model's classifier, else the first served one's."""
        if model in self.classifiers:
            return self.classifiers[model]
        return next(iter(self.classifiers.values()), None)

    def safety_level(self, served: Served, key: KeyEntry | None, where: str) -> str:
        if key is not None and where in key.safety:
            return key.safety[where]
        return getattr(served.entry.safety, where)


_WHY = {400: "bad parameters, a body that is not UTF-8 JSON, a prompt too long or filtered",
        401: "a missing or wrong API key", 404: "no such model", 408: "the body did not arrive in time",
        413: "the body is too large", 429: "over the key's requests or tokens per minute (Retry-After)",
        500: "the generation failed on the server",
        503: "loading, overloaded, shutting down, or the model's engine cannot step"}
# each server-sent event: a JSON chunk, an in-stream error {"error": {...}}, or [DONE] at the end
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _WHY[s]} for s in statuses}


def _generation_docs(model: type) -> dict[int | str, dict[str, Any]]:
    ok = {"model": model, "content": _SSE, "description": "the answer, or with stream: true an SSE stream"}
    return {200: ok, **_errors(400, 401, 404, 408, 413, 429, 500, 503)}


def _served_limits(schemas: dict[str, Any], catalog: Catalog) -> None:
    """This server's own bounds in the request schemas: the served model names (as examples) and the
    max_tokens limit, so that a client (or a fuzzer) reading the document can send what is served."""
    names = [n for m in catalog.models for n in m.served_names()]
    for name in ("ChatRequest", "CompletionRequest", "EmbeddingRequest"):
        props = schemas.get(name, {}).get("properties", {})
        if "model" in props:
            props["model"]["examples"] = names
        for field in ("max_tokens", "max_completion_tokens"):
            for option in props.get(field, {}).get("anyOf", []):
                if option.get("type") == "integer":
                    option["maximum"] = catalog.limits.max_tokens


def _openapi(app: FastAPI, catalog: Catalog) -> None:
    """The document as served: no 422 (validation errors are 400s), a bearer scheme when keys exist,
    the served models and limits."""
    from fastapi.openapi.utils import get_openapi

    secured = bool(catalog.api_keys)

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path, item in schema["paths"].items():
                for op in item.values():
                    op["responses"].pop("422", None)
                    if secured and path.startswith("/v1/"):
                        op["security"] = [{"bearer": []}]
            components = schema.setdefault("components", {})
            _served_limits(components.get("schemas", {}), catalog)
            for unused in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(unused, None)
            if secured:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def create_app(catalog: Catalog, load_in_background: bool = True) -> FastAPI:
    server = Server(catalog)
    embedder = Embedder(server)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        server.install_drain_on_signals()
        if load_in_background:
            threading.Thread(target=server.load, name="mai-load", daemon=True).start()
        else:
            server.load()
        yield
        server.shutdown()
        embedder.close()

    app = FastAPI(title="mai", docs_url=None, redoc_url=None, lifespan=lifespan, strict_content_type=False)
    app.state.server = server
    app.add_exception_handler(ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_handler)
    app.add_middleware(Guard, gate=server)
    _openapi(app, catalog)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    @app.get("/health", response_model=None, responses={200: {"model": Health}, 503: {"model": Health}})
    async def health() -> JSONResponse:
        status, body = server.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format"}})
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(server.metrics.registry),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=None, responses={200: {"model": ModelList}, **_errors(401)})
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": s.created, "owned_by": "mai",
             "root": s.entry.adapters[s.adapter - 1].path if s.adapter else s.entry.path, "parent": s.parent,
             "max_model_len": s.engine.max_seq_len} for name, s in server.models.items()]}

    @app.post("/v1/moderations", response_model=None,
              responses={200: {"model": Moderation}, **_errors(400, 401, 408, 413, 429, 503)})
    async def moderations(body: ModerationRequest) -> dict[str, Any]:
        results = []
        for text in body.inputs():
            r = await asyncio.to_thread(server.safety.check, text, "medium", None, "User",
                                        server.moderation_classifier(body.model))
            results.append({"flagged": r.flagged,
                            "categories": {c.replace("_", "-"): s >= 4 for c, s in r.severity.items()},
                            "category_scores": {c.replace("_", "-"): v for c, v in r.scores().items()}})
        return {"id": f"modr-{uuid.uuid4().hex}", "model": body.model or "mai-safety", "results": results}

    @app.post("/v1/embeddings", response_model=None,
              responses={200: {"model": EmbeddingList}, **_errors(400, 401, 404, 408, 413, 429, 500, 503)})
    async def embeddings(request: Request, body: EmbeddingRequest) -> dict[str, Any]:
        return await embedder.create(body, request.state.key)

    async def screen_prompt(served: Served, key: KeyEntry | None, text: str) -> SafetyResult:
        result = await server.check(served, text, server.safety_level(served, key, "prompt"), "User")
        if result.flagged:
            raise ApiError(400, "the prompt was filtered by the content policy "
                           f"({', '.join(result.blocked)})",
                           "content_filter", "messages")
        return result

    async def generate(request: Request, served: Served, body: ChatRequest | CompletionRequest,
                       ids: list[int], prompt_result: SafetyResult, prefix: str = "") -> Any:
        ctx = ModelContext(len(ids), served.engine.max_seq_len, served.engine.model.cfg.vocab_size,
                           served.engine.constraints, served.tokenizer.chat_template)
        params = body.to_sampling_params(server.limits, ctx)
        gen = Generation(server, served, body, ids, params, prompt_result, request.state.key, prefix)
        gen.submit()
        return gen.stream() if body.stream else await gen.complete(request.receive)

    @app.post("/v1/chat/completions", response_model=None, responses=_generation_docs(ChatCompletion))
    async def chat_completions(request: Request, body: ChatRequest) -> Any:
        served = server.model(body.model)
        messages, tools = chat_messages(body, served.tokenizer.chat_template)
        prompt_result = await screen_prompt(served, request.state.key,
                                            "\n".join(m["content"] for m in messages))
        try:
            text = served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
        except MaiError as exc:
            raise ApiError(400, str(exc), "invalid_value", "messages") from None
        return await generate(request, served, body, served.tokenizer.encode(text), prompt_result)

    @app.post("/v1/completions", response_model=None, responses=_generation_docs(Completion))
    async def completions(request: Request, body: CompletionRequest) -> Any:
        served = server.model(body.model)
        text = body.prompt_text()
        prompt_result = await screen_prompt(served, request.state.key, text)
        ids = served.tokenizer.encode(text, add_bos=served.tokenizer.bos_id is not None)
        if not ids:
            raise ApiError(400, "the prompt is empty", "invalid_value", "prompt")
        return await generate(request, served, body, ids, prompt_result, prefix=text if body.echo else "")

    return app
