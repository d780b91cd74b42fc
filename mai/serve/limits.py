"""API keys and per-key rate limits (requests and tokens per minute, sliding one-minute window)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from mai.serve.catalog import KeyEntry
from mai.serve.errors import ApiError

WINDOW = 60.0


class KeyRing:
    """Checks ``Authorization: Bearer KEY`` and keeps each key's recent requests and tokens."""

    def __init__(self, keys: list[KeyEntry]):
        self.keys = {k.key: k for k in keys}
        self._requests: dict[str, deque[float]] = {k: deque() for k in self.keys}
        self._tokens: dict[str, deque[tuple[float, int]]] = {k: deque() for k in self.keys}
        self._lock = threading.Lock()

    def authenticate(self, header: str | None) -> KeyEntry | None:
        """The caller's key entry (None when the server has no keys); 401 when missing or wrong."""
        if not self.keys:
            return None
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer YOUR_KEY'", "invalid_api_key")
        entry = self.keys.get(token.strip())
        if entry is None:
            raise ApiError(401, "incorrect API key provided", "invalid_api_key")
        return entry

    def admit(self, entry: KeyEntry | None) -> None:
        """Count one request; 429 with Retry-After when the key is over either limit."""
        if entry is None:
            return
        now = time.monotonic()
        with self._lock:
            reqs, toks = self._requests[entry.key], self._tokens[entry.key]
            while reqs and reqs[0] <= now - WINDOW:
                reqs.popleft()
            while toks and toks[0][0] <= now - WINDOW:
                toks.popleft()
            if entry.requests_per_minute and len(reqs) >= entry.requests_per_minute:
                self._reject("requests", reqs[0] + WINDOW - now)
            if entry.tokens_per_minute and sum(n for _, n in toks) >= entry.tokens_per_minute:
                self._reject("tokens", toks[0][0] + WINDOW - now)
            reqs.append(now)

    def charge(self, entry: KeyEntry | None, tokens: int) -> None:
        """Record the tokens (prompt + completion) a finished request used."""
        if entry is not None and tokens:
            with self._lock:
                self._tokens[entry.key].append((time.monotonic(), tokens))

    @staticmethod
    def _reject(what: str, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, f"rate limit reached for {what} per minute; retry in {seconds} s",
                       "rate_limit_exceeded", headers={"Retry-After": str(seconds)})
