"""A stand-in for the generic `http` vendor: any JSON POST, PUT or PATCH under any path is stored and
answered `201 {"success": true, "data": {"id": "T-<n>"}}`, so `sandbox: true` http destinations (with
`ticket_id_path: data.id`) can be tried before the customer's API is reachable."""

from __future__ import annotations

import itertools

from aiohttp import web

from bridge.simulators.base import VendorSimulator
from bridge.simulators.faults import Handler, apply_faults

OUTAGE = {"success": False, "error": "simulated outage"}


class HttpSimulator(VendorSimulator):
    def __init__(self) -> None:
        super().__init__()
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

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [(method, "/{tail:.*}", self.accept) for method in ("POST", "PUT", "PATCH")]
