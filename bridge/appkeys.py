"""The typed keys the assembled application (bridge/app.py) holds its shared resources under.

Apart from app.py so that the request handlers it mounts (intake, admin, metrics) can reach them
without importing the assembly.
"""

from __future__ import annotations

from aiohttp import web

from bridge.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
# What a /hooks request stored (event ids, delivery ids), kept on the request for its trace span.
STORED_IDS = web.RequestKey("stored_ids", tuple[list[str], list[str]])
