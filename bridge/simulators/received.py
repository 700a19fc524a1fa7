"""What a simulator received: each vendor call's arrival time, method, path and the status it was
answered with, for tests and benchmarks to check (rate limits, retries) and for `GET /_received`."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aiohttp import web

from bridge.simulators.faults import Handler
from bridge.simulators.weights import set_delta, weigh

MAX_ENTRIES = 10_000
"""Arrivals kept, the oldest dropped first: a sandbox's calls come from deliveries of posts anyone may send.
The same bounds (`max_entries`, `max_bytes`) hold each kind of call a simulator keeps for tests to read (Kapture's
pulls and gets, LeadSquared's trashed Ids: `Newest`)."""
MAX_BYTES = 16 * 1024 * 1024
"""Bytes the arrivals kept weigh in all, with what handlers noted of them (a comment, a text, the files'
names and hashes), each entry weighing its JSON encoding's length; the oldest dropped first. A noted comment or
text may be as large as intake's 1 MiB body, so 10,000 entries could be ~10 GiB. An entry without one weighs
~100 bytes (10,000 of them ~1 MiB): 16 MiB keeps every entry of ordinary traffic and 16 of full 1 MiB texts, and
the four simulators a server runs keep 64 MiB at most. The newest entry is kept however heavy. Each kind of call a
simulator keeps for tests (`Newest`) weighs at most as much again: a pull's body may be as large as a post."""


class _Weight:
    """An entry's weight, and whether the log still keeps it (a handler may note an entry already dropped)."""

    __slots__ = ("held", "value")

    def __init__(self, value: int) -> None:
        self.value = value
        self.held = True


ENTRY_KEY = web.RequestKey("received_entry", dict)
WEIGHT_KEY = web.RequestKey("received_weight", _Weight)
T = TypeVar("T")


class Newest(list[T]):
    """The newest items of one kind a simulator keeps for tests to read (a list, oldest first): at most
    `max_entries` of them, weighing at most `max_bytes` (each its JSON encoding's length; the newest kept however
    heavy), as its RequestLog's bounds say when items are added. Each item is weighed once, as it is added, and its
    weight kept for when it is dropped: a call never weighs what is already held."""

    def __init__(self) -> None:
        super().__init__()
        self._weights: deque[int] = deque()  # each item's, in the same order
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        """What the items kept weigh, kept as they change."""
        return self._bytes

    def keep(self, added: Iterable[T], max_entries: int, max_bytes: int) -> None:
        """Add `added` (oldest first), then drop the oldest past `max_entries` or while they weigh more than
        `max_bytes`."""
        for item in added:
            weight = weigh(item)
            self.append(item)
            self._weights.append(weight)
            self._bytes += weight
        count = max(len(self) - max_entries, 0)
        for weight in itertools.islice(self._weights, count):
            self._bytes -= weight
        while count < len(self) - 1 and self._bytes > max_bytes:
            self._bytes -= self._weights[count]
            count += 1
        if count:
            del self[:count]
            for _ in range(count):
                self._weights.popleft()

    def clear(self) -> None:
        super().clear()
        self._weights.clear()
        self._bytes = 0


class RequestLog:
    """Arrivals in order, the last `max_entries` of them, weighing at most `max_bytes` (MAX_BYTES) with what was
    noted of them. `t` is the simulator's monotonic clock (for windows), `at` the wall clock. Each entry is
    weighed as it arrives and each detail as it is noted (the value it replaces weighed again as it goes), the
    weights kept so that dropping the oldest weighs nothing again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: list[dict[str, Any]] = []
        self._weights: deque[_Weight] = deque()  # each entry's, in the same order
        self._bytes = 0
        self.max_entries = MAX_ENTRIES
        self.max_bytes = MAX_BYTES

    @property
    def held_bytes(self) -> int:
        """What the entries kept weigh, kept as they change."""
        return self._bytes

    def recorded(self, handler: Handler) -> Handler:
        """`handler`, noting each request on arrival and its status once answered ("dropped" if none)."""

        async def run(request: web.Request) -> web.StreamResponse:
            entry: dict[str, Any] = {"t": self.clock(), "at": time.time(), "method": request.method,
                                     "path": request.path, "status": None}
            weight = _Weight(weigh(entry))
            self.entries.append(entry)
            self._weights.append(weight)
            self._bytes += weight.value
            self._shrink()
            request[ENTRY_KEY] = entry
            request[WEIGHT_KEY] = weight
            response = await handler(request)
            closed = request.transport is None or request.transport.is_closing()
            self.note(request, status="dropped" if closed else response.status)
            return response

        return run

    def note(self, request: web.Request, **details: Any) -> None:
        """Add what the handler read (a comment, the files of a multipart body) to this request's entry."""
        entry = request.get(ENTRY_KEY)
        weight = request.get(WEIGHT_KEY)
        if not isinstance(entry, dict) or not isinstance(weight, _Weight):
            return
        for name, value in details.items():
            delta = set_delta(entry, name, value)
            entry[name] = value
            weight.value += delta
            if weight.held:
                self._bytes += delta
        self._shrink()

    def _shrink(self) -> None:
        """Drop the oldest entries past `max_entries`, or while they weigh more than `max_bytes` (the newest
        is kept)."""
        count = max(len(self.entries) - self.max_entries, 0)
        for weight in itertools.islice(self._weights, count):
            self._bytes -= weight.value
        while count < len(self._weights) - 1 and self._bytes > self.max_bytes:
            self._bytes -= self._weights[count].value
            count += 1
        if count:
            del self.entries[:count]
            for _ in range(count):
                self._weights.popleft().held = False

    def clear(self) -> None:
        """Forget the entries (those whose handlers still run are noted no more)."""
        self.entries.clear()
        for weight in self._weights:
            weight.held = False
        self._weights.clear()
        self._bytes = 0

    def times(self, path_suffix: str = "") -> list[float]:
        """Arrival times (monotonic) of the requests whose path ends with `path_suffix`."""
        return [e["t"] for e in self.entries if e["path"].endswith(path_suffix)]

    def routes(self) -> list[web.RouteDef]:
        """`GET /_received` lists the entries; `DELETE /_received` forgets them."""

        async def show(request: web.Request) -> web.Response:
            return web.json_response({"count": len(self.entries), "received": self.entries})

        async def forget(request: web.Request) -> web.Response:
            self.clear()
            return web.json_response({"count": 0})

        return [web.get("/_received", show), web.delete("/_received", forget)]
