"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every error carries a code (a client can branch on it without parsing messages), and bodies are rendered
as ASCII JSON so that no text a client sent, lone surrogates included, can make the error itself fail.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
          503: "server_overloaded"}
# the code of an error raised without one (Starlette's own 404/405, FastAPI's body parsing)
_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 408: "body_timeout",
          413: "body_too_large", 500: "internal_error", 503: "unavailable"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    """The body of every error response (for the OpenAPI document)."""

    error: ErrorDetail


class _AsciiJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_body(status: int, message: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code or _CODES.get(status, "error")}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return _AsciiJSON(error_body(status, message, code, param), status_code=status, headers=headers)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    """Malformed JSON, wrong types and out-of-range values: 400 naming the first bad field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON", "invalid_json")
    if first.get("type") == "missing" and not loc:
        return error_response(400, "the request needs a JSON body", "invalid_json")
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    return error_response(400, f"{param}: {msg}" if param else msg, "invalid_value", param)


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), None, None, getattr(exc, "headers", None))


async def unexpected_handler(_: Request, exc: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(exc).__name__}", "internal_error")
