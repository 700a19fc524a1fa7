"""Per-destination rate limits that are never exceeded, not even in a burst after a backlog.

A sliding log of the last N send times: a send is allowed once the N-th most recent one is a full
window (plus a safety margin for network jitter) behind it. Unlike a token bucket or GCRA, this caps
every window of `per_seconds`, which is how vendors count ("25 in 5 seconds").

The log holds when sends really started, not when they were planned: a send that starts late (a busy
event loop, or the 25th of a burst of 25 leaving after the other 24) would otherwise let the next
window's sends reach the vendor less than a window after it. A send's time moves once more when its request
is written (`slot_of_request`, from the delivery session's request class): between the slot and the write lie
the wait for a connection, a connect, and whatever else holds the loop (a collection of a large heap took
170 ms on a loaded machine), all of which the vendor never sees.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol

from bridge.config import RateLimit


class Limiter(Protocol):
    """An in-process limiter, as a destination's gate (bridge.delivery.coordination) uses it."""

    def reserve(self) -> float:
        """Take the next send slot; returns how many seconds to wait before using it."""

    def sent(self) -> int | None:
        """A reserved slot is being used now: the request starts (call it just before sending). Returns a handle on
        the slot for `unsend` (None: the limiter keeps nothing to give back)."""

    def pause(self, seconds: float) -> None:
        """Allow no send for `seconds` (after a 429)."""

    def next_delay(self) -> float:
        """How many seconds until a slot is free, without taking it (0: one is free now)."""

    def start_delay(self) -> float:
        """How many seconds until the oldest reserved slot may be used (`sent`) without a window counting more than
        its limit (0: now). A slot is free when it is reserved, but requests reserved after it may start first (a
        look-up's, made while an admitted send is prepared) and take the window's room."""

    def unreserve(self) -> None:
        """Give back the newest reserved slot whose send has not started."""

    def unsend(self, handle: int) -> None:
        """Give back the slot `sent` returned `handle` for, whose request did not go out after all (a breaker's probe
        given up for its lease): that slot, not another request's reservation."""

    def written(self, handle: int) -> None:
        """The request of the slot `sent` returned `handle` for is written now: the slot counts from now, if later."""

    @property
    def window(self) -> float: ...


class Unlimited:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._paused_until = 0.0

    def reserve(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def sent(self) -> None:
        return None

    def next_delay(self) -> float:
        return self.reserve()

    def start_delay(self) -> float:
        return 0.0

    def unreserve(self) -> None:
        pass

    def unsend(self, handle: int) -> None:
        pass

    def written(self, handle: int) -> None:
        pass

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def window(self) -> float:
        return 1.0


MARGIN_SHARE = 0.05
"""The margin added to a limit's window, as a share of it: a vendor counts arrivals, and a request that left on
time can arrive late by a busy loop's or the network's delay while the next window's first arrives at once
(2 % of LeadSquared's 5 s, 100 ms, was overrun by a 122 ms stall on a loaded machine, and one 429 pauses the
whole lane for a window)."""


class SlidingWindowLimiter:
    """`margin` is a share of the window, `min_margin_s` its floor: jitter is seconds, not a share."""

    def __init__(self, requests: int, per_seconds: float, *, margin: float = MARGIN_SHARE, min_margin_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per_seconds > 0")
        self.requests = requests
        self.per_seconds = per_seconds
        self._window = per_seconds + max(per_seconds * margin, min_margin_s)
        self._clock = clock
        # The last `requests` send times, and after them the reserved slots not yet used (`_pending`); `_ids` numbers
        # each entry (`sent` hands the number out, for `unsend`).
        self._sends: deque[float] = deque()
        self._ids: deque[int] = deque()
        self._next_id = 0
        self._pending = 0  # the newest `_pending` entries are reserved slots whose send has not started
        self._paused_until = 0.0

    @property
    def window(self) -> float:
        return self._window

    def _next_at(self, now: float) -> float:
        at = max(now, self._paused_until)
        if len(self._sends) >= self.requests:
            at = max(at, self._sends[-self.requests] + self._window)
        if self._sends and at < self._sends[-1]:
            at = self._sends[-1]
        return at

    def next_delay(self) -> float:
        now = self._clock()
        return self._next_at(now) - now

    def start_delay(self) -> float:
        # The oldest reserved slot is the first not started; the send `requests` before it must be a window back.
        first = len(self._sends) - self._pending
        if not self._pending or first < self.requests:
            return 0.0
        return max(0.0, self._sends[first - self.requests] + self._window - self._clock())

    def reserve(self) -> float:
        now = self._clock()
        at = self._next_at(now)
        self._sends.append(at)
        self._ids.append(self._next_id)
        self._next_id += 1
        self._pending += 1
        while len(self._sends) > self.requests + self._pending:
            self._sends.popleft()
            self._ids.popleft()
        return at - now

    def unreserve(self) -> None:
        if self._pending:
            self._sends.pop()
            self._ids.pop()
            self._pending -= 1

    def sent(self) -> int | None:
        if not self._pending:
            return None
        now = self._clock()
        first = len(self._sends) - self._pending
        self._reserved_not_before(now)
        self._pending -= 1
        return self._ids[first]

    def unsend(self, handle: int) -> None:
        # Among the sends (not the reservations after them); gone from the log already, it counts no more.
        for i in range(len(self._sends) - self._pending - 1, -1, -1):
            if self._ids[i] == handle:
                del self._sends[i]
                del self._ids[i]
                return

    def _reserved_not_before(self, now: float) -> None:
        """Every reserved slot not yet used starts `now` at the earliest: a send counted from `now` (started, or
        written) is newer than every other send, and the log stays in time order."""
        for i in range(len(self._sends) - self._pending, len(self._sends)):
            self._sends[i] = max(self._sends[i], now)

    def written(self, handle: int) -> None:
        # Among the sends, as `unsend`; moved to its place in time order (the newest send, unless one was marked
        # before its planned slot), and the reservations after the sends no earlier (`_reserved_not_before`).
        first = len(self._sends) - self._pending
        for i in range(first - 1, -1, -1):
            if self._ids[i] == handle:
                now = self._clock()
                if self._sends[i] >= now:
                    return
                del self._sends[i]
                del self._ids[i]
                at = first - 1
                while at > 0 and self._sends[at - 1] > now:
                    at -= 1
                self._sends.insert(at, now)
                self._ids.insert(at, handle)
                self._reserved_not_before(now)
                return

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def used(self) -> int:
        """How many requests the current window (`per_seconds` back from now) counts; reserves nothing."""
        now = self._clock()
        since = now - self.per_seconds
        return sum(1 for t in self._sends if since <= t <= now)


def make_limiter(rate: RateLimit | None) -> Limiter:
    if rate is None:
        return Unlimited()
    return SlidingWindowLimiter(rate.requests, rate.per_seconds)


async def acquire(limiter: Limiter) -> None:
    """Wait for the next slot and mark it used: for callers that send as soon as it returns. Cancelled while it
    waits (a reconciliation's deadline, a stop), it gives its reservation back: kept, it would count as one more
    request in every window from then on."""
    delay = limiter.reserve()
    if delay > 0:
        try:
            await asyncio.sleep(delay)
        except BaseException:
            limiter.unreserve()
            raise
    await use_slot(limiter)


_TAKEN: ContextVar[tuple[asyncio.Task[object] | None, Callable[[], None]] | None] = ContextVar(
    "ticketbridge_slot_taken", default=None)
"""The slot this task last took (`use_slot`, a shared gate's `start`) whose request is not yet written: the task, and
what counts the slot from when it is called. A request is made and written in the task that took its slot (aiohttp
writes a request's head in the task that asked for it); a task started from it inherits the variable, not the
slot."""


def note_slot(written: Callable[[], None]) -> None:
    """This task took a slot for its next request: `written` is called once that request is written
    (`slot_of_request`), to count the slot from then."""
    _TAKEN.set((asyncio.current_task(), written))


async def use_slot(limiter: Limiter) -> int | None:
    """Mark the oldest reserved slot used (`sent`, whose handle it returns) once the window has room for it
    (`start_delay`): at once for a request that starts on time, later for one that requests reserved after it
    passed. Cancelled while it waits, it gives a reservation back (as `acquire`). The slot is this task's to be
    moved to when its request is written (`slot_of_request`)."""
    try:
        while True:  # a timed wait: the window frees up by the clock, not on an event
            delay = limiter.start_delay()
            if delay <= 0:
                handle = limiter.sent()
                if handle is not None:  # None: nothing to count (unlimited), and nothing set on the way
                    note_slot(functools.partial(limiter.written, handle))
                return handle
            await asyncio.sleep(delay)
    except BaseException:
        limiter.unreserve()
        raise


def slot_of_request() -> Callable[[], None] | None:
    """The slot this task last took, for the request about to be written (once): a function that counts the slot
    from when it is called (`Limiter.written`, a shared gate's move), to be called once the request is written. None
    when this task took no slot since its last request (a request that takes none, a slot taken in another task)."""
    taken = _TAKEN.get()
    if taken is None or taken[0] is not asyncio.current_task():
        return None
    _TAKEN.set(None)
    return taken[1]
