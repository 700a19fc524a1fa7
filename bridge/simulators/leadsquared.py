"""A LeadSquared Service CRM stand-in: ticket creation with the documented envelope, answers and
rate limit (429 "API calls exceeded the limit of 25 in 5 second(s)"), and a listing of what it received.

LeadSquared publishes only the success body; failures use its core API's shape,
`{"Status": "Error", "ExceptionType": …, "ExceptionMessage": …}`, with the documented HTTP codes:
401 for bad keys, 404 for an unknown org, 400 for a body not shaped as the API says, 500 for a ticket
the account refuses (no lead field, a mandatory field missing). The rate window is configurable so tests
can show the same guarantee at 25 per 0.5 s that production needs at 25 per 5 s.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridge.simulators.base import VendorSimulator
from bridge.simulators.faults import Handler, apply_faults
from bridge.vendors.leadsquared import (
    DEFAULT_PER_SECONDS,
    DEFAULT_REQUESTS,
    LEAD_FIELDS,
    SANDBOX_ACCESS_KEY,
    SANDBOX_ORG,
    SANDBOX_SECRET_KEY,
)

OUTAGE = {"Status": "Error", "ExceptionType": "MXServerException", "ExceptionMessage": "simulated outage"}


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"Status": "Error", "ExceptionType": kind, "ExceptionMessage": message}, status=status)


class LeadSquaredSimulator(VendorSimulator):
    def __init__(self, *, orgs: set[str] | None = None, keys: dict[str, str] | None = None,
                 limit: int = DEFAULT_REQUESTS, window_seconds: float = DEFAULT_PER_SECONDS,
                 mandatory_fields: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.orgs = orgs if orgs is not None else {SANDBOX_ORG}
        self.keys = keys if keys is not None else {SANDBOX_ACCESS_KEY: SANDBOX_SECRET_KEY}
        self.limit = limit
        self.window_seconds = window_seconds
        self.mandatory_fields = mandatory_fields
        self.clock = clock
        self._accepted: deque[float] = deque()
        self._ids = itertools.count(1)

    def _over_limit(self) -> bool:
        """Whether this call is one too many for the window; calls refused with 429 do not count."""
        now = self.clock()
        while self._accepted and self._accepted[0] <= now - self.window_seconds:
            self._accepted.popleft()
        if len(self._accepted) >= self.limit:
            return True
        self._accepted.append(now)
        return False

    @staticmethod
    def _problem(body: Any) -> str | None:
        """Why a body is not shaped as the API says (400), or None."""
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        fields = body.get("Fields")
        if not isinstance(fields, list) or not all(
                isinstance(f, dict) and isinstance(f.get("SchemaName"), str) and "Value" in f for f in fields):
            return "Fields must be a list of {SchemaName, Value}"
        if "TypeId" not in body or "RelatedTicketTypeId" not in body:
            return "TypeId and RelatedTicketTypeId are required"
        return None

    async def create(self, request: web.Request) -> web.StreamResponse:
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        if self._over_limit():
            return _error(429, "MXAPIRateLimitExceededException",
                          f"API calls exceeded the limit of {self.limit} in {self.window_seconds:g} second(s)")
        access = request.headers.get("X-LSQ-ACCESS-KEY", "")
        if access not in self.keys or self.keys[access] != request.headers.get("X-LSQ-SECRET-KEY"):
            return _error(401, "MXUnAuthorizedAccessException", "Invalid AccessKey or SecretKey")
        if request.match_info["org"] not in self.orgs:
            return _error(404, "MXNotFoundException", "The API could not be found")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "MXInvalidInputException", "The request body is not valid JSON")
        problem = self._problem(body)
        if problem is not None:
            return _error(400, "MXInvalidInputException", problem)
        values = {f["SchemaName"]: f["Value"] for f in body["Fields"]}
        has_lead = body.get("LeadId") not in (None, "") or any(values.get(n) not in (None, "") for n in LEAD_FIELDS)
        if not has_lead:
            return _error(500, "MXInvalidInputException",
                          f"One of {', '.join(LEAD_FIELDS)} is required to create a ticket")
        missing = [n for n in self.mandatory_fields if values.get(n) in (None, "")]
        if missing:
            return _error(500, "MXInvalidInputException", f"Mandatory field(s) missing: {', '.join(missing)}")
        number = next(self._ids)
        answer = {"Status": "Success", "ReasonForFailure": None, "Id": str(number), "Message": None,
                  "TicketId": str(uuid.uuid4()), "Key": f"#{number:03d}"}
        self.tickets.append({**answer, "TypeId": body["TypeId"], "LeadId": body.get("LeadId"),
                             "RelatedTicketTypeId": body["RelatedTicketTypeId"], "Fields": body["Fields"]})
        return web.json_response(answer)

    def clear(self) -> None:
        super().clear()
        self._accepted.clear()

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/api/tenants/{org}/tickets", self.create)]
