"""A Kapture CRM stand-in: the documented create-ticket successes and failures, and a listing of what
it created. Serves `sandbox: true` destinations in-process, and tests and benchmarks standalone."""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

from bridge.simulators.faults import Faults, apply_faults, fault_routes
from bridge.vendors.kapture import CREATE_PATH, SANDBOX_TOKEN


class KaptureSimulator:
    def __init__(self, tokens: set[str] | None = None, failure_http_status: int = 200) -> None:
        self.tokens = tokens if tokens is not None else {SANDBOX_TOKEN}
        self.failure_http_status = failure_http_status
        self.tickets: list[dict[str, Any]] = []
        self.requests = 0
        self.faults = Faults()
        self._ids = itertools.count(530348198)

    def _failed(self, message: str) -> web.Response:
        return web.json_response({"message": message, "status": "failed"}, status=self.failure_http_status)

    async def create(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        faulted = await apply_faults(self.faults, request)
        if faulted is not None:
            return faulted
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme != "Basic" or token not in self.tokens:
            return self._failed("Invalid Auth Key")
        try:
            body = await request.json()
        except ValueError:
            return self._failed("Invalid Json.")
        if not isinstance(body, list) or not body or not all(isinstance(item, dict) for item in body):
            return self._failed("Invalid Json.")
        item = body[0]
        title = item.get("title")
        if not isinstance(title, str) or not title.strip():
            return self._failed("title is missing")
        task_id = next(self._ids)
        ticket_id = str(713516551148 + task_id - 530348198)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        record = {"id": task_id, "ticketId": ticket_id, "taskTitle": title, "detail": item.get("ticket_details", ""),
                  "email": item.get("email_id", ""), "date": stamp, "status": "P", "substatus": "US",
                  "fields": item}
        self.tickets.append(record)
        return web.json_response({
            "ticket": {"id": task_id, "ticketId": ticket_id, "taskTitle": title, "status": "P",
                       "statusName": "Pending", "substatus": "US", "substatusName": "Unattended", "date": stamp,
                       "ticketURL": f"/employee/view-task-detail.html?detail=5/{task_id}/{ticket_id}"},
            "Additional_details": {}, "due_date": item.get("due_date", ""), "title": title, "customer_id": 0,
            "ticket_id": ticket_id, "Ticket Id": ticket_id, "status": "success",
        })

    async def listing(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.tickets), "requests": self.requests, "tickets": self.tickets})

    async def reset(self, request: web.Request) -> web.Response:
        self.tickets.clear()
        self.requests = 0
        return web.json_response({"count": 0})

    def _set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.post(CREATE_PATH, self.create),
            web.get("/tickets", self.listing),
            web.get("/", self.listing),
            web.delete("/tickets", self.reset),
            *fault_routes(lambda: self.faults, self._set_faults),
        ])
        return app
