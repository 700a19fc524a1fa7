"""The `Server` header of every answer ticketbridge's servers write: `ticketbridge`, without a version (neither
its own, aiohttp's nor Python's, which would tell a scanner which known flaws to try)."""

from __future__ import annotations

from aiohttp import web_response

SERVER = "ticketbridge"


def name_the_server() -> None:
    """Have aiohttp write `Server: ticketbridge` on every answer prepared in this process: the handlers', and
    those aiohttp makes itself (400 for a request it cannot parse, 404, 405, 413, 500), which no middleware or
    signal sees. aiohttp reads the value from this module name each time it prepares an answer's headers and
    offers no setting for it; an answer that sets its own `Server` keeps it."""
    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]  # its import of aiohttp.http's name
