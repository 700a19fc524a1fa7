"""The ops console: the admin API (`/admin/api/…`), its OpenAPI spec and the web UI (`/admin/`)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bridge.console.api import add_api_routes
from bridge.console.openapi import openapi_json
from bridge.errors import named

STATIC = Path(__file__).parent / "static"
FILES = {"console.js": "text/javascript", "console.css": "text/css", "index.html": "text/html"}
"""What `/admin/static/` serves, by name: nothing else under the folder, and no path is ever joined from a request."""

PAGE_HEADERS = {
    "Cache-Control": "no-cache", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}
"""On every file the console is made of: no other site may frame it (clickjacking), nothing but its own files
runs in it, and no browser guesses another type for a file."""


async def console_page(request: web.Request) -> web.StreamResponse:
    """The UI's one page; it holds no data (everything comes from the API, with the token signed in)."""
    return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def console_file(request: web.Request) -> web.StreamResponse:
    """One of the console's own files, with the page's headers."""
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound(text=f"no console file {named(name)}; there are {', '.join(sorted(FILES))}",
                               headers={"X-Content-Type-Options": "nosniff"})
    return web.FileResponse(STATIC / name, headers={**PAGE_HEADERS, "Content-Type": FILES[name]})


async def console_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/admin/")


def add_console(app: web.Application) -> None:
    add_api_routes(app)
    app.router.add_get("/admin/openapi.json", openapi_json)
    app.router.add_get("/admin", console_redirect)
    app.router.add_get("/admin/", console_page)
    app.router.add_get("/admin/static/{name}", console_file)
