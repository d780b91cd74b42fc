"""API keys and per-key rate limits (requests and tokens per minute, sliding one-minute window).

Requests per minute count each POST when it arrives. Tokens per minute are reserved at admission for the
request's worst case (prompt tokens + max_tokens × n) and settled when it ends with the tokens really
used (prompt + completion), which then stay in the window for a minute. A request is admitted while the
key's settled tokens plus its outstanding reservations are below the limit, so concurrent requests can
overrun a limit by at most one reservation (charging only at the end let 8 concurrent requests use 3.4×
a 100-token limit).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from mai.serve.catalog import KeyEntry
from mai.serve.errors import ApiError

WINDOW = 60.0


class KeyRing:
    """Checks ``Authorization: Bearer KEY`` and keeps each key's recent requests and tokens."""

    def __init__(self, keys: list[KeyEntry]):
        self.keys = {k.key: k for k in keys}
        self._requests: dict[str, deque[float]] = {k: deque() for k in self.keys}
        self._tokens: dict[str, deque[tuple[float, int]]] = {k: deque() for k in self.keys}
        self._reserved: dict[str, int] = dict.fromkeys(self.keys, 0)
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
        """Count one request; 429 with Retry-After when the key is over its requests per minute."""
        if entry is None:
            return
        now = time.monotonic()
        with self._lock:
            reqs = self._requests[entry.key]
            while reqs and reqs[0] <= now - WINDOW:
                reqs.popleft()
            if entry.requests_per_minute and len(reqs) >= entry.requests_per_minute:
                self._reject("requests", reqs[0] + WINDOW - now)
            reqs.append(now)

    def reserve(self, entry: KeyEntry | None, tokens: int) -> Reservation:
        """Reserve ``tokens`` (the request's worst case) against the key's tokens per minute; 429 with
        Retry-After while settled plus reserved tokens have reached the limit."""
        reservation = Reservation(self, entry.key if entry is not None else None, tokens)
        if entry is None or not entry.tokens_per_minute:
            return reservation
        now = time.monotonic()
        with self._lock:
            toks = self._tokens[entry.key]
            while toks and toks[0][0] <= now - WINDOW:
                toks.popleft()
            if sum(n for _, n in toks) + self._reserved[entry.key] >= entry.tokens_per_minute:
                # settled tokens leave the window a minute after they were used; reservations settle
                # when their requests end, so retry soon if nothing is settled yet
                self._reject("tokens", toks[0][0] + WINDOW - now if toks else 1.0)
            self._reserved[entry.key] += tokens
        return reservation

    def used(self, entry: KeyEntry) -> int:
        """Tokens settled in the window plus those reserved now (for tests and metrics)."""
        with self._lock:
            return sum(n for _, n in self._tokens[entry.key]) + self._reserved[entry.key]

    def _settle(self, reservation: Reservation, tokens: int) -> None:
        if reservation.key is None or reservation.key not in self._reserved:
            return
        with self._lock:
            self._reserved[reservation.key] -= reservation.tokens
            if tokens:
                self._tokens[reservation.key].append((time.monotonic(), tokens))

    @staticmethod
    def _reject(what: str, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, f"rate limit reached for {what} per minute; retry in {seconds} s",
                       "rate_limit_exceeded", headers={"Retry-After": str(seconds)})


@dataclass
class Reservation:
    """Tokens held for one admitted request until :meth:`settle` records what it really used."""

    ring: KeyRing
    key: str | None
    tokens: int
    settled: bool = False

    def settle(self, tokens: int) -> None:
        """Replace the reservation by the ``tokens`` used; later calls do nothing."""
        if not self.settled:
            self.settled = True
            self.ring._settle(self, tokens)
