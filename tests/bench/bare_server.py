"""The baseline: a bare aiohttp handler that reads the body and answers 202."""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"accepted": True}, status=202)


def main() -> None:
    app = web.Application()
    app.router.add_post("/hooks/{source}", handle)
    app.router.add_get("/readyz", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
