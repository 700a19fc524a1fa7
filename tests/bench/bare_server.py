"""The baseline: a bare aiohttp handler that reads the body and answers 202.

Usage: bare_server.py PORT [guarded]; `guarded` serves it through ticketbridge's connection guard
(read deadlines and the connection cap) instead of aiohttp's plain runner. It runs on the event loop named
by BENCH_EVENT_LOOP (asyncio, the default as in ticketbridge's `server.event_loop`; uvloop; auto): a ratio
against a ticketbridge on the same loop compares handlers, not loops.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

from bridge.connections import ConnectionLimits, ConnectionStats, GuardedAppRunner
from bridge.eventloop import run


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"accepted": True}, status=202)


async def serve(app: web.Application, port: int, guarded: bool) -> None:
    runner = (GuardedAppRunner(app, limits=ConnectionLimits(), stats=ConnectionStats(), access_log=None) if guarded
              else web.AppRunner(app, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


def main() -> None:
    app = web.Application()
    app.router.add_post("/hooks/{source}", handle)
    app.router.add_get("/readyz", handle)
    loop = os.environ.get("BENCH_EVENT_LOOP", "asyncio")
    run(lambda: serve(app, int(sys.argv[1]), sys.argv[2:] == ["guarded"]), loop)


if __name__ == "__main__":
    main()
