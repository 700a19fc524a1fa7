"""Per-destination rate limits that are never exceeded, not even in a burst after a backlog.

A sliding log of the last N send times: a send is allowed once the N-th most recent one is a full
window (plus a small safety margin for network jitter) behind it. Unlike a token bucket or GCRA,
this caps every window of `per_seconds`, which is how vendors count ("25 in 5 seconds").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from bridge.config import RateLimit


class Limiter(Protocol):
    """What the delivery loop needs; a limiter shared between processes implements the same."""

    def reserve(self) -> float:
        """Take the next send slot; returns how many seconds to wait before using it."""

    def pause(self, seconds: float) -> None:
        """Allow no send for `seconds` (after a 429)."""

    @property
    def window(self) -> float: ...


class Unlimited:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._paused_until = 0.0

    def reserve(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def window(self) -> float:
        return 1.0


class SlidingWindowLimiter:
    def __init__(self, requests: int, per_seconds: float, *, margin: float = 0.02,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per_seconds > 0")
        self.requests = requests
        self.per_seconds = per_seconds
        self._window = per_seconds * (1 + margin)
        self._clock = clock
        self._sends: deque[float] = deque(maxlen=requests)
        self._paused_until = 0.0

    @property
    def window(self) -> float:
        return self._window

    def reserve(self) -> float:
        now = self._clock()
        at = max(now, self._paused_until)
        if len(self._sends) == self.requests:
            at = max(at, self._sends[0] + self._window)
        if self._sends and at < self._sends[-1]:
            at = self._sends[-1]
        self._sends.append(at)
        return at - now

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)


def make_limiter(rate: RateLimit | None) -> Limiter:
    if rate is None:
        return Unlimited()
    return SlidingWindowLimiter(rate.requests, rate.per_seconds)


async def acquire(limiter: Limiter) -> None:
    delay = limiter.reserve()
    if delay > 0:
        await asyncio.sleep(delay)
