"""Calls to the teacher through the official ``openai`` client: bounded concurrency, rate limits, retries
with exponential backoff (and the server's Retry-After) on 429, 5xx, timeouts, dropped connections and
malformed replies; any other error (400, 401, 404 …) fails the request at once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
from typing import Any

from mai.data.pipeline.synth.cache import ResponseCache, request_key
from mai.data.pipeline.synth.config import TeacherConfig
from mai.data.pipeline.synth.limits import RateLimiter
from mai.errors import MaiError


@dataclasses.dataclass
class Outcome:
    key: str
    response: dict[str, Any] | None  # {"text", "finish_reason", "usage", "model"}
    error: str | None = None
    attempts: int = 0
    cached: bool = False


class GarbageReply(Exception):
    """The server answered 200 with something that is not a chat completion."""


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Teacher:
    def __init__(self, cfg: TeacherConfig, cache: ResponseCache) -> None:
        import openai

        self.cfg, self.cache, self.openai = cfg, cache, openai
        key = cfg.api_key or os.environ.get(cfg.api_key_env) or "none"
        self.client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_s,
                                         max_retries=0)
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.slots = asyncio.Semaphore(cfg.concurrency)
        self.retryable = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                          openai.APIConnectionError, GarbageReply)

    def request(self, messages: list[dict[str, str]], sample: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": messages,
                                "temperature": self.cfg.temperature, "top_p": self.cfg.top_p,
                                "max_tokens": self.cfg.max_tokens}
        if sample:
            body["seed"] = sample
        return body

    async def _call(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = await self.client.chat.completions.create(**body)
        except self.openai.APIResponseValidationError as exc:
            raise GarbageReply(str(exc)) from exc
        choices = getattr(reply, "choices", None)
        if not choices or not isinstance(getattr(choices[0].message, "content", None), str):
            raise GarbageReply(f"no message content in the reply: {str(reply)[:200]}")
        usage = reply.usage.model_dump() if getattr(reply, "usage", None) else {}
        return {"text": choices[0].message.content, "finish_reason": choices[0].finish_reason,
                "usage": usage, "model": reply.model}

    async def generate(self, body: dict[str, Any]) -> Outcome:
        key = request_key(body)
        hit = self.cache.get(key)
        if hit is not None:
            return Outcome(key, hit, cached=True)
        estimate = sum(len(m["content"]) for m in body["messages"]) / 4 + body["max_tokens"]
        error = ""
        async with self.slots:
            for attempt in range(1, self.cfg.max_retries + 2):
                await self.limiter.acquire(estimate)
                try:
                    result = await self._call(body)
                except self.retryable as exc:
                    error = f"{type(exc).__name__}: {str(exc)[:300]}"
                    if attempt > self.cfg.max_retries:
                        return Outcome(key, None, f"gave up after {attempt} attempts: {error}", attempt)
                    delay = _retry_after(exc) or self.cfg.backoff_s * 2 ** (attempt - 1)
                    await asyncio.sleep(min(60.0, delay) * random.uniform(1.0, 1.25))
                    continue
                except self.openai.AuthenticationError as exc:
                    raise MaiError(f"the teacher at {self.cfg.base_url} refused the API key: {exc}") from None
                except self.openai.APIStatusError as exc:
                    return Outcome(key, None, f"{type(exc).__name__}: {str(exc)[:300]}", attempt)
                total = result["usage"].get("total_tokens")
                if total:
                    self.limiter.settle(estimate, float(total))
                self.cache.put(key, body, result)
                return Outcome(key, result, attempts=attempt)
        return Outcome(key, None, error or "no attempt made")

    async def generate_all(self, bodies: list[dict[str, Any]]) -> list[Outcome]:
        try:
            return list(await asyncio.gather(*(self.generate(b) for b in bodies)))
        finally:
            await self.client.close()
