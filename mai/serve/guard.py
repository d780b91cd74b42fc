"""What every request passes before a handler sees it: body size and read timeout, UTF-8 and JSON, the API
key, requests per minute, and refusal while the server drains.

A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware``: that one buffers the app's messages and
does not pass the client's ``http.disconnect`` on reliably, and a handler must hear it to cancel a
non-streamed generation whose client went away. The body is read here, chunk by chunk, under a size limit
and a deadline (a client that promises more bytes than it sends is answered 408 and its connection
closed, instead of holding it open forever), then replayed to the app; after the body, the app's
``receive`` is the server's own, so it reports the disconnect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from starlette.datastructures import Headers

from mai.serve import errors
from mai.serve.catalog import KeyEntry, Limits
from mai.serve.errors import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Gate(Protocol):
    """What the guard asks of the server."""

    limits: Limits
    draining: bool

    def authenticate(self, header: str | None) -> KeyEntry | None: ...

    def admit(self, key: KeyEntry | None) -> None: ...


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


class Guard:
    def __init__(self, app: App, gate: Gate):
        self.app, self.gate = app, gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._check(scope, receive)
        except ClientGone:
            return
        except ApiError as exc:
            response = errors.error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive) -> Receive:
        """The checks in order of cost (nothing is read from an unauthenticated client); returns the
        ``receive`` the app should use."""
        headers, api = Headers(scope=scope), scope["path"].startswith("/v1/")
        has_body = scope["method"] in ("POST", "PUT", "PATCH")
        limit = self.gate.limits.max_body_bytes
        declared = headers.get("content-length")
        if has_body and declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, f"the request body exceeds {limit} bytes", "body_too_large")
        if api:
            key = self.gate.authenticate(headers.get("authorization"))
            scope.setdefault("state", {})["key"] = key
            if has_body:
                if self.gate.draining:
                    raise ApiError(503, "the server is shutting down", "server_shutting_down")
                self.gate.admit(key)
        if not has_body:
            return receive
        body = await read_body(receive, limit, self.gate.limits.body_timeout_seconds)
        if not _is_json(headers.get("content-type")):
            raise ApiError(400, "the request body must be JSON (Content-Type: application/json)",
                           "invalid_content_type")
        check_json(body)
        return _replay(body, receive)


async def read_body(receive: Receive, limit: int, timeout: float) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond), within ``timeout`` seconds (408 after)."""

    async def collect() -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body exceeds {limit} bytes", "body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s",
                       "body_timeout") from None


def _is_json(content_type: str | None) -> bool:
    """A JSON content type, or none (FastAPI is told to parse those as JSON too)."""
    if not content_type:
        return True
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def check_json(body: bytes) -> None:
    """400 for a body that is not UTF-8 JSON. Parsing here first also catches what FastAPI's parser would
    turn into a bare "error parsing the body" (nesting too deep for the parser, UTF-16 guesses)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not valid UTF-8", "invalid_encoding") from None
    if not text:
        return  # no body: the handler says which fields are required
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc.msg} at character {exc.pos}",
                       "invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON: nested too deeply",
                       "invalid_json") from None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``body`` once, then the server's messages (the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
