"""The baseline: a bare aiohttp handler that reads the body and answers 202.

Usage: bare_server.py PORT [guarded]; `guarded` serves it through ticketbridge's connection guard
(read deadlines and the connection cap) instead of aiohttp's plain runner.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from bridge.connections import ConnectionLimits, ConnectionStats, GuardedAppRunner


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"accepted": True}, status=202)


async def serve_guarded(app: web.Application, port: int) -> None:
    runner = GuardedAppRunner(app, limits=ConnectionLimits(), stats=ConnectionStats(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


def main() -> None:
    app = web.Application()
    app.router.add_post("/hooks/{source}", handle)
    app.router.add_get("/readyz", handle)
    if sys.argv[2:] == ["guarded"]:
        asyncio.run(serve_guarded(app, int(sys.argv[1])))
    else:
        web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
