"""What a simulator received: each vendor call's arrival time, method, path and the status it was
answered with, for tests and benchmarks to check (rate limits, retries) and for `GET /_received`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from aiohttp import web

from bridge.simulators.faults import Handler

ENTRY_KEY = web.RequestKey("received_entry", dict)
MAX_ENTRIES = 10_000
"""Arrivals kept, the oldest dropped first: a sandbox's calls come from deliveries of posts anyone may send.
The same bound (`max_entries`) holds what a simulator keeps of one kind of call for tests to read (Kapture's pulls
and gets, LeadSquared's trashed Ids)."""
T = TypeVar("T")


def keep_newest(items: list[T], added: Iterable[T], limit: int) -> None:
    """Add to `items`, then drop its oldest past `limit`."""
    items.extend(added)
    if len(items) > limit:
        del items[:len(items) - limit]


class RequestLog:
    """Arrivals in order, the last `max_entries` of them. `t` is the simulator's monotonic clock (for windows),
    `at` the wall clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: list[dict[str, Any]] = []
        self.max_entries = MAX_ENTRIES

    def recorded(self, handler: Handler) -> Handler:
        """`handler`, noting each request on arrival and its status once answered ("dropped" if none)."""

        async def run(request: web.Request) -> web.StreamResponse:
            entry: dict[str, Any] = {"t": self.clock(), "at": time.time(), "method": request.method,
                                     "path": request.path, "status": None}
            keep_newest(self.entries, [entry], self.max_entries)
            request[ENTRY_KEY] = entry
            response = await handler(request)
            closed = request.transport is None or request.transport.is_closing()
            entry["status"] = "dropped" if closed else response.status
            return response

        return run

    @staticmethod
    def note(request: web.Request, **details: Any) -> None:
        """Add what the handler read (a comment, the files of a multipart body) to this request's entry."""
        entry = request.get(ENTRY_KEY)
        if isinstance(entry, dict):
            entry.update(details)

    def times(self, path_suffix: str = "") -> list[float]:
        """Arrival times (monotonic) of the requests whose path ends with `path_suffix`."""
        return [e["t"] for e in self.entries if e["path"].endswith(path_suffix)]

    def routes(self) -> list[web.RouteDef]:
        """`GET /_received` lists the entries; `DELETE /_received` forgets them."""

        async def show(request: web.Request) -> web.Response:
            return web.json_response({"count": len(self.entries), "received": self.entries})

        async def clear(request: web.Request) -> web.Response:
            self.entries.clear()
            return web.json_response({"count": 0})

        return [web.get("/_received", show), web.delete("/_received", clear)]
