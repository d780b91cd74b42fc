"""Requests- and tokens-per-minute limits hold: a limiter can only make calls later, so these tests check
lower bounds on elapsed time (never upper bounds, which depend on the machine)."""

from __future__ import annotations

import asyncio
import time

from mai.data.pipeline.synth.cache import ResponseCache, request_key
from mai.data.pipeline.synth.limits import RateLimiter


def _elapsed(limiter: RateLimiter, tokens: list[float]) -> float:
    async def go() -> None:
        await asyncio.gather(*(limiter.acquire(t) for t in tokens))

    start = time.monotonic()
    asyncio.run(go())
    return time.monotonic() - start


def test_requests_per_minute() -> None:
    # 120 rpm = 2 per second with a 2-request burst: 6 requests need at least 2 seconds
    assert _elapsed(RateLimiter(rpm=120, tpm=1e9), [1] * 6) >= 1.9


def test_tokens_per_minute() -> None:
    # 300 tpm = 5 tokens per second: three 5-token requests need at least 2 seconds
    assert _elapsed(RateLimiter(rpm=1e6, tpm=300), [5, 5, 5]) >= 1.9


def test_cache_keys_and_persistence(tmp_path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.6}
    assert request_key(body) == request_key(dict(reversed(list(body.items()))))  # key order does not matter
    assert request_key(body) != request_key({**body, "temperature": 0.7})
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put(request_key(body), body, {"text": "hello"})
    cache.close()
    again = ResponseCache(tmp_path / "c.sqlite")
    assert again.get(request_key(body)) == {"text": "hello"} and len(again) == 1
    again.close()
