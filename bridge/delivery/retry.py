"""The retry policy as a value: given an attempt's outcome, retry when, or give up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bridge.config import RetryConfig
from bridge.durations import parse_duration


@dataclass(frozen=True)
class RetryDecision:
    action: Literal["retry", "dead"]
    delay_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """`delays[i]` is the wait after the (i+1)-th failed try; jitter spreads it by ±jitter."""

    delays: tuple[float, ...]
    jitter: float = 0.2
    max_retry_after: float = 3600.0

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> RetryPolicy:
        return cls(tuple(cfg.delays()), cfg.jitter, parse_duration(cfg.max_retry_after))

    def decide(
        self, tries: int, classification: str, retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> RetryDecision:
        """`tries` counts the attempts made since the delivery was created or replayed, this one included."""
        if classification in ("permanent", "auth"):
            return RetryDecision("dead", reason=f"{classification} failure: not retried")
        if classification != "retry":
            raise ValueError(f"no retry decision for a {classification!r} outcome")
        if tries > len(self.delays):
            return RetryDecision("dead", reason=f"gave up after {tries} attempts (the retry schedule is spent)")
        delay = self.delays[tries - 1]
        delay *= 1 + self.jitter * (2 * rand() - 1)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return RetryDecision("retry", max(0.0, delay))
