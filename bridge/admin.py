"""The admin API: `GET /admin/mappings`, for the admin token or a read token (`admin.read_tokens`), off while
neither is set; and `refuse`, the admin token's check for what only it may do."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from bridge.appkeys import RUNTIME
from bridge.bearer import check_bearer
from bridge.console import add_console
from bridge.console.api import API_HEADERS, mapping_infos
from bridge.console.auth import api_on, identify


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def refuse(request: web.Request, token: str) -> web.Response | None:
    """The answer to a request without the admin token (404 while the API is off), or None to go on."""
    if not token:
        return web.json_response({"error": "the admin API is off: set admin.token in the config"}, status=404)
    if check_bearer(request.headers.get("Authorization", ""), token) != "ok":
        return web.json_response({"error": "this needs the admin token: Authorization: Bearer <admin.token>"},
                                 status=401, headers={"WWW-Authenticate": 'Bearer realm="ticketbridge admin"'})
    return None


async def mappings_status(request: web.Request) -> web.Response:
    """The mapping set in force (names, version hash, load time) and how hot reload is going; every answer with the
    admin API's headers (nosniff, no-store)."""
    rt = request.app[RUNTIME]
    admin = rt.config.admin
    if not api_on(admin):
        return web.json_response({"error": "the admin API is off: set admin.token (or admin.read_tokens) in the "
                                           "config"}, status=404, headers=API_HEADERS)
    if identify(request.headers.get("Authorization", ""), admin) is None:
        return web.json_response({"error": "this needs a token: Authorization: Bearer <admin.token or a read token>"},
                                 status=401, headers={**API_HEADERS,
                                                      "WWW-Authenticate": 'Bearer realm="ticketbridge admin"'})
    current = rt.mappings
    status = rt.mapping_status
    body: dict[str, Any] = {
        "version": current.version,
        "loaded_at": _iso(current.loaded_at),
        "folder": rt.config.shown_mappings_folder,
        # "folder", or "last_good": the folder did not load at start and the set kept in the store serves.
        "source": status.source,
        "degraded": status.source == "last_good",
        "folder_error": status.folder_error,
        "last_good": None if status.stored_version is None else {
            "version": status.stored_version, "saved_at": _iso(status.stored_at)},
        "config": {
            "file": str(rt.config.file) if rt.config.file is not None else None,
            "restart_needed": status.config_changed_at is not None,
            "changed_at": _iso(status.config_changed_at),
        },
        "mappings": msgspec.to_builtins(mapping_infos(current, rt.config)),
        "reload": {
            "watching": rt.reloader is not None,
            "reloads": status.reloads,
            "failures": status.failures,
            "last_attempt_at": _iso(status.last_attempt_at),
            "last_result": status.last_result,
            "last_error": status.last_error,
            "last_error_at": _iso(status.last_error_at),
        },
    }
    return web.json_response(body, headers=API_HEADERS)  # as the admin API's: customers' names, kept in no cache


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/mappings", mappings_status)
    add_console(app)
