"""A Netgroot ISP CRM stand-in: getSubjects and CreateTicket with their documented answers (401
Unauthorized, 404 Subscriber not found, 400 Invalid request data), and a listing of what it received.

The API knows the subscriber from the bearer token, so `tokens` maps each token to its subscriber id;
a token mapped to None is a valid key whose subscriber no longer exists (the 404).
"""

from __future__ import annotations

import itertools
from typing import Any

from aiohttp import web

from bridge.simulators.base import VendorSimulator
from bridge.simulators.faults import Handler, apply_faults
from bridge.vendors.netgroot import CREATE_PATH, ID_FIELDS, SANDBOX_TOKEN, SUBJECTS_PATH

NO_SUBSCRIBER_TOKEN = "sandbox-no-subscriber"  # noqa: S105 - the simulator's demo key for the 404 case
SUBJECTS = {1: "Technical Support", 2: "Billing Issue", 3: "New Connection", 4: "Relocation"}
OUTAGE = {"success": False, "message": "simulated outage"}


def _answer(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "message": message}, status=status)


class NetgrootSimulator(VendorSimulator):
    def __init__(self, *, tokens: dict[str, int | None] | None = None,
                 subjects: dict[int, str] | None = None) -> None:
        super().__init__()
        self.tokens = tokens if tokens is not None else {SANDBOX_TOKEN: 1, NO_SUBSCRIBER_TOKEN: None}
        self.subjects = dict(SUBJECTS if subjects is None else subjects)
        self.subject_requests = 0
        self._ids = itertools.count(101)

    def _token(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token if scheme == "Bearer" and token in self.tokens else None

    async def get_subjects(self, request: web.Request) -> web.StreamResponse:
        self.subject_requests += 1
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        if self._token(request) is None:
            return _answer(401, "Unauthorized")
        return web.json_response({"success": True, "data": [{"subject_id": k, "name": v}
                                                             for k, v in sorted(self.subjects.items())]})

    def _valid(self, body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        ids = [body.get(k) for k in ("subject_id", *ID_FIELDS)]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ids):
            return False
        message = body.get("message")
        return isinstance(message, str) and bool(message.strip()) and body["subject_id"] in self.subjects

    async def create(self, request: web.Request) -> web.StreamResponse:
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        token = self._token(request)
        if token is None:
            return _answer(401, "Unauthorized")
        subscriber = self.tokens[token]
        if subscriber is None:
            return _answer(404, "Subscriber not found")
        try:
            body = await request.json()
        except ValueError:
            return _answer(400, "Invalid request data")
        if not self._valid(body):
            return _answer(400, "Invalid request data")
        ticket_id = next(self._ids)
        self.tickets.append({"ticket_id": ticket_id, "subscriber_id": subscriber, "status": "Open",
                             "subject": self.subjects[body["subject_id"]], **body})
        return web.json_response({"success": True, "message": "Ticket created successfully",
                                  "data": {"ticket_id": ticket_id, "status": "Open"}})

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [("GET", SUBJECTS_PATH, self.get_subjects), ("POST", CREATE_PATH, self.create)]
