"""The ops console: the admin API (`/admin/api/…`), its OpenAPI spec and the web UI (`/admin/`)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bridge.console.api import add_api_routes
from bridge.console.openapi import openapi_json

STATIC = Path(__file__).parent / "static"


async def console_page(request: web.Request) -> web.StreamResponse:
    """The UI's one page; it holds no data (everything comes from the API, with the token signed in)."""
    return web.FileResponse(STATIC / "index.html", headers={
        "Cache-Control": "no-cache", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; "
                                   "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"})


async def console_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/")


def add_console(app: web.Application) -> None:
    add_api_routes(app)
    app.router.add_get("/admin/openapi.json", openapi_json)
    app.router.add_get("/admin", console_redirect)
    app.router.add_get("/admin/", console_page)
    app.router.add_static("/admin/static/", STATIC, append_version=False)
