"""A circuit breaker per destination: stop sending to a vendor that is down, and probe until it is back.

Without one, a down vendor with a backlog is sent every due delivery, each failing in turn: the bridge
spends its CPU on refused connections, and each delivery burns its retries (or, on bad credentials,
goes dead) for a fault that is the destination's, not the delivery's. After `threshold` consecutive
destination-level failures the breaker opens: the lane claims nothing for a cooldown that doubles on
each failed probe (up to `max_cooldown`), then sends a single probe. The probe's answer, and only
it, ends the half-open state: a success or a permanent failure (the vendor is up and answered; that
delivery's body was the problem) closes it; a retry, a timeout or an auth failure opens it again for a
longer cooldown. An answer to a request that went out before the breaker opened, coming in while it
is open or half-open, tells nothing of the vendor now and settles nothing: it neither closes nor opens
the breaker, nor ends the probe's wait (the probe is still out). Deliveries held back meanwhile keep
their schedule and their tries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]
# Failures that say the destination is unwell, rather than that one delivery's body is wrong.
DESTINATION_FAILURES = frozenset({"retry", "auth"})


@dataclass
class Breaker:
    threshold: int = 5
    base_cooldown: float = 1.0
    max_cooldown: float = 60.0
    clock: Callable[[], float] = time.monotonic
    state: State = "closed"
    failures: int = 0
    opened: int = 0
    until: float = 0.0
    probing: bool = field(default=False)

    def allowance(self) -> tuple[float, int | None]:
        """(seconds to wait before claiming, or 0; how many to claim: None for any, 1 for a probe)."""
        if self.state == "closed":
            return 0.0, None
        now = self.clock()
        if self.state == "open" and now < self.until:
            return self.until - now, None
        self.state = "half_open"
        if self.probing:
            return max(self.base_cooldown / 10, 0.05), None  # a probe is out: wait for its answer
        return 0.0, 1

    def probe_sent(self) -> None:
        if self.state == "half_open":
            self.probing = True

    def record(self, classification: str, *, probe: bool = False) -> Literal["opened", "closed", None]:
        """Feed an attempt's classification (`probe`: the attempt was the breaker's probe); says when the breaker
        opened or closed. Open or half-open, only the probe's answer counts: any other is a request's that went out
        before the breaker opened, answered late, and changes nothing (its probe, if out, stays out)."""
        if self.state != "closed" and not (probe and self.state == "half_open"):
            return None
        if classification == "success":
            was_open = self.state != "closed"
            self._close()
            return "closed" if was_open else None
        if classification not in DESTINATION_FAILURES:
            # The vendor answered; this delivery's body was the problem. While half-open this is the probe's
            # answer: the vendor is up, so the breaker closes (else the lane waits forever).
            if self.state != "half_open":
                return None
            self._close()
            return "closed"
        self.failures += 1
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            self.opened += 1
            cooldown = min(self.base_cooldown * 2 ** (self.opened - 1), self.max_cooldown)
            self.state, self.until, self.probing = "open", self.clock() + cooldown, False
            return "opened"
        return None

    def _close(self) -> None:
        self.state, self.failures, self.opened, self.probing = "closed", 0, 0, False

    @property
    def cooldown(self) -> float:
        return max(0.0, self.until - self.clock())
