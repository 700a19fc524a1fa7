"""A stand-in for the generic `http` vendor: any JSON (or multipart/form-data) POST, PUT or PATCH under any
path is stored and answered `201 {"success": true, "data": {"id": "T-<n>"}}`, so `sandbox: true` http
destinations (with `ticket_id_path: data.id`) can be tried before the customer's API is reachable.

A multipart body's JSON part (the one that is not a file) is its body; its file parts are kept as
`files` (name, content_type, size, sha256). A request whose path names a ticket it made (e.g.
`/tickets/T-1/comments`) is also added to that ticket's `updates`, so follow-ups show on their ticket."""

from __future__ import annotations

import itertools
import json
from typing import Any

from aiohttp import web

from bridge.simulators.base import VendorSimulator, read_json_or_parts, received_file
from bridge.simulators.faults import Handler, apply_faults

OUTAGE = {"success": False, "error": "simulated outage"}


class HttpSimulator(VendorSimulator):
    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)

    @staticmethod
    async def _read(request: web.Request) -> tuple[Any, list[dict[str, Any]]] | str:
        read = await read_json_or_parts(request, "the body is not JSON")
        if isinstance(read, str):
            return read
        body, parts = read
        if parts is None:
            return body, []
        data = [p for p in parts if p.filename is None]
        files = [{"part": p.name, **received_file(p)} for p in parts if p.filename is not None]
        if len(data) != 1:
            return "the multipart body needs exactly one part that is not a file (the JSON fields)"
        try:
            return json.loads(data[0].content), files
        except ValueError:
            return f"the {data[0].name!r} part is not JSON"

    async def accept(self, request: web.Request) -> web.StreamResponse:
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        read = await self._read(request)
        if isinstance(read, str):
            return web.json_response({"success": False, "error": read}, status=400)
        body, files = read
        self.received.note(request, files=files)
        segments = set(request.path.split("/"))
        for ticket in self.tickets:
            if ticket["id"] in segments:
                ticket["updates"].append({"method": request.method, "path": request.path, "body": body,
                                          "files": files})
        ticket_id = f"T-{next(self._ids)}"
        self.tickets.append({"id": ticket_id, "method": request.method, "path": request.path, "body": body,
                             "files": files, "updates": []})
        return web.json_response({"success": True, "data": {"id": ticket_id}}, status=201)

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [(method, "/{tail:.*}", self.accept) for method in ("POST", "PUT", "PATCH")]
