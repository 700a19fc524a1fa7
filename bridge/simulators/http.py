"""A stand-in for the generic `http` vendor: any JSON POST, PUT or PATCH under any path is stored and
answered `201 {"success": true, "data": {"id": "T-<n>"}}`, so `sandbox: true` http destinations (with
`ticket_id_path: data.id`) can be tried before the customer's API is reachable."""

from __future__ import annotations

import itertools
from typing import Any

from aiohttp import web

from bridge.simulators.faults import Faults, apply_faults, fault_routes
from bridge.simulators.received import RequestLog

OUTAGE = {"success": False, "error": "simulated outage"}


class HttpSimulator:
    def __init__(self) -> None:
        self.tickets: list[dict[str, Any]] = []
        self.faults = Faults()
        self.received = RequestLog()
        self._ids = itertools.count(1)

    async def accept(self, request: web.Request) -> web.StreamResponse:
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"success": False, "error": "the body is not JSON"}, status=400)
        ticket_id = f"T-{next(self._ids)}"
        self.tickets.append({"id": ticket_id, "method": request.method, "path": request.path, "body": body})
        return web.json_response({"success": True, "data": {"id": ticket_id}}, status=201)

    async def listing(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.tickets), "tickets": self.tickets})

    def _set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def app(self) -> web.Application:
        app = web.Application()
        accept = self.received.recorded(self.accept)
        app.add_routes([
            web.get("/tickets", self.listing),
            web.get("/", self.listing),
            *self.received.routes(),
            *fault_routes(lambda: self.faults, self._set_faults),
            *(web.route(method, "/{tail:.*}", accept) for method in ("POST", "PUT", "PATCH")),
        ])
        return app
