"""What a simulator received: each call's entry with what its handler noted, bounded in entries and in bytes."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import msgspec
from aiohttp import web

from bridge.simulators import received
from bridge.simulators.received import Newest, RequestLog


class FakeRequest(dict[Any, Any]):
    """What the log reads of a request: its method and path, its keys, and no transport (closed)."""

    transport = None

    def __init__(self, path: str) -> None:
        super().__init__()
        self.method, self.path = "POST", path


def request(path: str) -> web.Request:
    return cast(web.Request, FakeRequest(path))


def entries_json(log: RequestLog) -> int:
    """What the entries kept weigh, each encoded afresh."""
    return sum(len(msgspec.json.encode(e)) for e in log.entries)


async def arrive(log: RequestLog, path: str, **details: Any) -> None:
    """One call to `path` whose handler notes `details`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        log.note(request, **details)
        return web.Response()

    await log.recorded(handler)(request(path))


async def test_past_max_bytes_the_oldest_entries_are_dropped() -> None:
    """Entries weighing more than `max_bytes` with their noted texts drop the oldest first; the newest is kept
    however heavy."""
    log = RequestLog(clock=lambda: 1.0)
    await arrive(log, "/a", text="x" * 100)
    one = entries_json(log)
    log.max_bytes = 2 * one + 10
    for path in ("/b", "/c"):
        await arrive(log, path, text="x" * 100)
    assert ([e["path"] for e in log.entries], log.held_bytes) == (["/b", "/c"], entries_json(log))
    await arrive(log, "/heavy", text="x" * 1000)
    assert ([e["path"] for e in log.entries], log.held_bytes) == (["/heavy"], entries_json(log))


async def test_past_max_entries_the_oldest_entries_are_dropped() -> None:
    log = RequestLog()
    log.max_entries = 2
    for path in ("/a", "/b", "/c"):
        await arrive(log, path)
    assert ([e["path"] for e in log.entries], log.held_bytes) == (["/b", "/c"], entries_json(log))


async def test_a_call_answered_after_its_entry_is_dropped_or_cleared_weighs_nothing() -> None:
    """A handler still running when its entry is dropped (or the log cleared) notes it without counting it."""
    log = RequestLog()
    log.max_entries = 1
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        log.note(request, text="late" * 50)
        return web.Response()

    for drop in ("pushed out", "cleared"):
        pending = asyncio.ensure_future(log.recorded(slow)(request("/slow")))
        while not log.entries or log.entries[-1]["path"] != "/slow":
            await asyncio.sleep(0)
        if drop == "cleared":
            log.clear()
        else:
            await arrive(log, "/next")
        release.set()
        await pending
        release.clear()
        assert ([e["path"] for e in log.entries], log.held_bytes) == (
            (["/next"], entries_json(log)) if drop == "pushed out" else ([], 0))


async def test_the_weight_kept_is_the_entries_weighed_afresh_after_any_calls() -> None:
    """A seeded random run of calls noting texts of any size (some twice), and clears, under small bounds:
    the weight kept always equals the entries encoded afresh, within both bounds."""
    rng = random.Random(20240419)
    log = RequestLog()
    log.max_entries, log.max_bytes = 8, 1_200
    for step in range(2_000):
        if step % 97 == 96:
            log.clear()
        details: dict[str, Any] = {rng.choice(["text", "comment", "files"]): "é" * rng.randrange(300)
                                   for _ in range(rng.randrange(3))}
        await arrive(log, f"/p{rng.randrange(1000)}", **details)
        assert log.held_bytes == entries_json(log)
        assert len(log.entries) <= log.max_entries
        assert len(log.entries) == 1 or log.held_bytes <= log.max_bytes


def test_newest_keeps_its_bounds_weighing_each_item_once(monkeypatch: Any) -> None:
    """A seeded random run of additions (one or several items of any size) and clears under small bounds: what
    `Newest` holds always weighs what it says (each item encoded afresh), within both bounds (the newest kept
    however heavy); and each addition weighs only the items it brings, never those already held."""
    weighed: list[Any] = []

    def counting(value: Any) -> int:
        weighed.append(value)
        return len(msgspec.json.encode(value))

    monkeypatch.setattr(received, "weigh", counting)
    rng = random.Random(20240420)
    kept: Newest[dict[str, Any]] = Newest()
    for step in range(2_000):
        if step % 89 == 88:
            kept.clear()
        added = [{"n": step, "text": "é" * rng.randrange(400)} for _ in range(rng.randrange(1, 4))]
        weighed.clear()
        kept.keep(added, 6, 1_000)
        assert weighed == added
        assert kept.held_bytes == sum(len(msgspec.json.encode(item)) for item in kept)
        assert len(kept) <= 6 and (len(kept) == 1 or kept.held_bytes <= 1_000)
        assert kept[-1] is added[-1]
    kept.clear()
    assert (kept, kept.held_bytes) == ([], 0)
