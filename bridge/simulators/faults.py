"""Fault knobs shared by the simulators: latency, failing statuses, hangs and dropped connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
S = TypeVar("S", bound=msgspec.Struct)


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the next requests suffer. Counts go down as requests use them; -1 means every request.
    The first `after` requests are served normally (a failure in the middle of a run)."""

    after: int = 0
    latency_ms: float = 0
    fail_count: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    hang_count: int = 0
    hang_seconds: float = 120
    drop_count: int = 0
    hang_after_count: int = 0
    """Serve the request (a create makes its ticket), then hold the answer `hang_seconds`: the client times out
    with the ticket made, an unknown outcome. Where a simulator applies it (Kapture's create); not delayed by
    `after`."""

    @staticmethod
    def _take(count: int) -> tuple[bool, int]:
        if count == 0:
            return False, 0
        return True, count if count < 0 else count - 1


OUTAGE_BODY = {"status": "failed", "message": "simulated outage"}


async def apply_faults(faults: Faults, request: web.Request,
                       body: object = OUTAGE_BODY) -> web.StreamResponse | None:
    """A fault response to answer with (`body`, in the vendor's shape, with the failing status), or a
    dropped connection, or None to serve normally."""
    if faults.after > 0:
        faults.after -= 1
        return None
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    hit, faults.drop_count = Faults._take(faults.drop_count)
    if hit:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)
    hit, faults.hang_count = Faults._take(faults.hang_count)
    if hit:
        await asyncio.sleep(faults.hang_seconds)
    hit, faults.fail_count = Faults._take(faults.fail_count)
    if hit:
        headers = {"Retry-After": faults.retry_after} if faults.retry_after else None
        return web.json_response(body, status=faults.fail_status, headers=headers)
    return None


async def hang_after(faults: Faults) -> None:
    """Hold an answer already made (`hang_after_count`), as a vendor that acted on a request but whose answer
    never arrives in time."""
    hit, faults.hang_after_count = Faults._take(faults.hang_after_count)
    if hit:
        await asyncio.sleep(faults.hang_seconds)


def fault_routes(get: Callable[[], Faults], put: Callable[[Faults], None]) -> list[web.RouteDef]:
    """`GET|PUT|DELETE /_faults`: read, set or clear the knobs."""
    return knob_routes("/_faults", Faults, get, put)


def knob_routes(path: str, typ: type[S], get: Callable[[], S], put: Callable[[S], None]) -> list[web.RouteDef]:
    """`GET|PUT|DELETE path`: read, set (the whole struct, as JSON) or reset a simulator's knobs `typ`."""

    async def show(request: web.Request) -> web.Response:
        return web.json_response(msgspec.to_builtins(get()))

    async def change(request: web.Request) -> web.Response:
        try:
            knobs = msgspec.json.decode(await request.read(), type=typ)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        put(knobs)
        return web.json_response(msgspec.to_builtins(knobs))

    async def clear(request: web.Request) -> web.Response:
        put(typ())
        return web.json_response(msgspec.to_builtins(get()))

    return [web.get(path, show), web.put(path, change), web.delete(path, clear)]
