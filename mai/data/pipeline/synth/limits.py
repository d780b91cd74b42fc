"""Requests-per-minute and tokens-per-minute limits as two token buckets, for asyncio callers.

Each bucket refills continuously and holds at most one second of its rate (at least one request, and at
least the largest single request's tokens), so traffic stays smooth instead of bursting a minute's quota.
"""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    def __init__(self, rpm: float, tpm: float) -> None:
        self.rates = (rpm / 60.0, tpm / 60.0)  # per second
        self.levels = [max(1.0, self.rates[0]), self.rates[1]]
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self, tokens: float) -> None:
        now = time.monotonic()
        dt, self.last = now - self.last, now
        caps = (max(1.0, self.rates[0]), max(self.rates[1], tokens))
        self.levels = [min(cap, level + rate * dt) for cap, level, rate in zip(caps, self.levels, self.rates,
                                                                                 strict=True)]

    async def acquire(self, tokens: float) -> None:
        """Wait until one request of about ``tokens`` tokens fits under both limits, then take it."""
        async with self.lock:
            while True:
                self._refill(tokens)
                need = (1.0, tokens)
                if all(level >= n for level, n in zip(self.levels, need, strict=True)):
                    self.levels = [level - n for level, n in zip(self.levels, need, strict=True)]
                    return
                wait = max((n - level) / rate for level, n, rate in zip(self.levels, need, self.rates,
                                                                         strict=True) if level < n)
                await asyncio.sleep(min(wait, 5.0))

    def settle(self, estimated: float, actual: float) -> None:
        """Charge the difference once the real token count of a response is known."""
        self.levels[1] -= actual - estimated
