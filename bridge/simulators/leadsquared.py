"""A LeadSquared Service CRM stand-in: ticket creation with the documented envelope, answers and
rate limit (429 "API calls exceeded the limit of 25 in 5 second(s)"), and a listing of what it received.

LeadSquared publishes only the success body; failures use its core API's shape,
`{"Status": "Error", "ExceptionType": …, "ExceptionMessage": …}`, with the documented HTTP codes:
401 for bad keys, 404 for an unknown org, 400 for a body not shaped as the API says, 500 for a ticket
the account refuses (no lead field, a mandatory field missing). The rate window is configurable so tests
can show the same guarantee at 25 per 0.5 s that production needs at 25 per 5 s.

Beside the create (JSON, or multipart with a `ticketDTO` part and `files` parts), it serves the update
(`PUT …/tickets/{Id}/update`, multipart), the portal activity, the internal note and the delete
(`PUT …/tickets/trash`), all by the numeric `Id`; an unknown Id is a 404 `MXTicketNotFoundException`
(LeadSquared documents the 404 code, not its body). Each ticket keeps its `Files` (name, content_type,
size, sha256), `Updates`, `Activities` and `Notes`, and `/_received` shows each call's files and text.
`GET …/tickets/{Id}` answers a ticket's details (the look-up `ticketbridge doctor` makes).

Knobs (`/_knobs`) for what a real account does: `core_host` answers every call 401 as LeadSquared's core
API host does for ticket paths; `api_disabled` answers 401 as an account without the Service CRM API
switched on (both bodies are this simulator's wording: LeadSquared documents the code, not the body);
`exception` (e.g. `MXUnknownException`, or `MXAPIRateLimitExceededException` with `exception_status: 200`)
answers the next `exception_count` calls (-1: all) with that exception type and HTTP status.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from bridge.simulators.base import VendorSimulator, read_json_or_parts, received_file
from bridge.simulators.faults import Handler, apply_faults
from bridge.simulators.received import Newest
from bridge.simulators.weights import weigh
from bridge.vendors.leadsquared import (
    DEFAULT_PER_SECONDS,
    DEFAULT_REQUESTS,
    LEAD_FIELDS,
    SANDBOX_ACCESS_KEY,
    SANDBOX_ORG,
    SANDBOX_SECRET_KEY,
)

# A system error: no `MX…` exception type, so the bridge retries it (it never retries an MX… one).
OUTAGE = {"Status": "Error", "Message": "simulated outage"}
CORE_HOST_MESSAGE = ("The API host does not serve Service CRM calls: this is the core API host "
                     "(api-in21.leadsquared.com); use the Service CRM gateway host")
API_DISABLED_MESSAGE = "Service CRM APIs are not enabled for this account"
MAX_FIELDS = 1_000
"""Fields (distinct SchemaNames) a ticket holds. An account's ticket type has a set of fields; the simulator takes
any name, so without a bound each update naming new ones would grow its ticket without end."""


class LeadSquaredKnobs(msgspec.Struct, forbid_unknown_fields=True):
    core_host: bool = False
    api_disabled: bool = False
    exception: str | None = None
    exception_status: int = 500
    exception_count: int = -1


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"Status": "Error", "ExceptionType": kind, "ExceptionMessage": message}, status=status)


def _too_many_fields(count: int) -> str:
    return f"a ticket holds at most {MAX_FIELDS:,} fields (distinct SchemaNames); this one would hold {count:,}"


def _merged(held: list[dict[str, Any]], changes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """`held` with `changes` (by SchemaName, the last of a name kept, in the place of its first), and how many
    bytes the merged list weighs more than `held`: only the fields added and those they replace are weighed."""
    current: dict[str, dict[str, Any]] = {}
    weighed = 0  # the items added, less those dropped
    for item in held:
        gone = current.get(item["SchemaName"])
        if gone is not None:  # a name the list holds twice (as a create may send it): the last is kept
            weighed -= weigh(gone)
        current[item["SchemaName"]] = item
    for item in changes:
        gone = current.get(item["SchemaName"])
        weighed += weigh(item) - (weigh(gone) if gone is not None else 0)
        current[item["SchemaName"]] = item
    return list(current.values()), weighed + max(len(current) - 1, 0) - max(len(held) - 1, 0)


class LeadSquaredSimulator(VendorSimulator):
    Knobs = LeadSquaredKnobs
    vendor = "leadsquared"
    key = "Id"
    histories = ("Files", "Updates", "Activities", "Notes")

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
        # The newest Ids moved to the trash, for tests: as many and as heavy as the calls `received` keeps.
        self.deleted: Newest[str] = Newest()
        self._ids = itertools.count(1)
        self._activity_ids = itertools.count(1)

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

    async def _gate(self, request: web.Request) -> web.StreamResponse | None:
        """The answer that refuses a call before its body is read (a fault, the rate limit, bad keys, an
        unknown org), or None."""
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        knobs: LeadSquaredKnobs = self.knobs
        if knobs.core_host:
            return _error(401, "MXUnAuthorizedAccessException", CORE_HOST_MESSAGE)
        if knobs.exception and knobs.exception_count != 0:
            if knobs.exception_count > 0:
                knobs.exception_count -= 1
            return _error(knobs.exception_status, knobs.exception, "simulated exception")
        if self._over_limit():
            return _error(429, "MXAPIRateLimitExceededException",
                          f"API calls exceeded the limit of {self.limit} in {self.window_seconds:g} second(s)")
        access = request.headers.get("X-LSQ-ACCESS-KEY", "")
        if access not in self.keys or self.keys[access] != request.headers.get("X-LSQ-SECRET-KEY"):
            return _error(401, "MXUnAuthorizedAccessException", "Invalid AccessKey or SecretKey")
        if knobs.api_disabled:
            return _error(401, "MXUnAuthorizedAccessException", API_DISABLED_MESSAGE)
        if request.match_info["org"] not in self.orgs:
            return _error(404, "MXNotFoundException", "The API could not be found")
        return None

    async def _read(self, request: web.Request, *, multipart: bool | None) -> tuple[Any, list[dict[str, Any]]] | str:
        """The JSON body (from the `ticketDTO` part of a multipart one) and the files received, or why the
        body cannot be read. `multipart` True requires a multipart body, None takes either."""
        if multipart and request.content_type != "multipart/form-data":
            return "this call takes multipart/form-data with a ticketDTO part"
        read = await read_json_or_parts(request, "The request body is not valid JSON")
        if isinstance(read, str):
            return read
        body, parts = read
        if parts is None:
            return body, []
        dto = [p for p in parts if p.name == "ticketDTO" and p.filename is None]
        if len(dto) != 1:
            return "the multipart body needs exactly one ticketDTO part"
        files = [received_file(p) for p in parts if p.name == "files"]
        try:
            return json.loads(dto[0].content), files
        except ValueError:
            return "the ticketDTO part is not valid JSON"

    async def _accept(self, request: web.Request, *,
                      multipart: bool | None) -> web.StreamResponse | tuple[Any, list[dict[str, Any]]]:
        """The gate's refusal, a 400 for a body that cannot be read, or the body and files `_read` found."""
        refused = await self._gate(request)
        if refused is not None:
            return refused
        read = await self._read(request, multipart=multipart)
        if isinstance(read, str):
            return _error(400, "MXInvalidInputException", read)
        return read

    def _ticket(self, ticket_id: str) -> dict[str, Any] | web.Response:
        """The ticket with this numeric Id, or the 404 LeadSquared answers for an unknown one."""
        found = self.ticket(ticket_id)
        if found is None:
            return _error(404, "MXTicketNotFoundException", f"Ticket {ticket_id!r} was not found")
        return found

    async def create(self, request: web.Request) -> web.StreamResponse:
        read = await self._accept(request, multipart=None)
        if isinstance(read, web.StreamResponse):
            return read
        body, files = read
        self.received.note(request, files=files)
        problem = self._problem(body)
        if problem is not None:
            return _error(400, "MXInvalidInputException", problem)
        values = {f["SchemaName"]: f["Value"] for f in body["Fields"]}
        has_lead = body.get("LeadId") not in (None, "") or any(values.get(n) not in (None, "") for n in LEAD_FIELDS)
        if not has_lead:
            return _error(500, "MXInvalidInputException",
                          f"One of {', '.join(LEAD_FIELDS)} is required to create a ticket")
        if len(values) > MAX_FIELDS:
            return _error(400, "MXInvalidInputException", _too_many_fields(len(values)))
        missing = [n for n in self.mandatory_fields if values.get(n) in (None, "")]
        if missing:
            return _error(500, "MXInvalidInputException", f"Mandatory field(s) missing: {', '.join(missing)}")
        number = next(self._ids)
        answer = {"Status": "Success", "ReasonForFailure": None, "Id": str(number),
                  "Message": "Ticket has been created successfully", "TicketId": str(uuid.uuid4()),
                  "Key": f"#{number:03d}"}
        self.hold({**answer, "TypeId": body["TypeId"], "LeadId": body.get("LeadId"),
                    "RelatedTicketTypeId": body["RelatedTicketTypeId"], "Fields": body["Fields"],
                    "Files": list(files), "Updates": [], "Activities": [], "Notes": []})  # the noted list stays as sent
        return web.json_response(answer)

    async def update(self, request: web.Request) -> web.StreamResponse:
        """`PUT …/tickets/{Id}/update`, multipart: the fields of `ticketDTO` replace the ticket's, files add."""
        read = await self._accept(request, multipart=True)
        if isinstance(read, web.StreamResponse):
            return read
        body, files = read
        self.received.note(request, files=files)
        ticket = self._ticket(request.match_info["id"])
        if isinstance(ticket, web.Response):
            return ticket
        problem = self._problem(body)
        if problem is not None:
            return _error(400, "MXInvalidInputException", problem)
        if str(body.get("Id")) != ticket["Id"]:
            return _error(400, "MXInvalidInputException", "Id in ticketDTO does not match the ticket in the URL")
        merged, grown = _merged(ticket["Fields"], body["Fields"])
        if len(merged) > MAX_FIELDS:
            return _error(400, "MXInvalidInputException", _too_many_fields(len(merged)))
        self.change_by(ticket, "Fields", merged, grown)
        self.add_history(ticket, "Files", files)
        self.add_history(ticket, "Updates", [{"Fields": body["Fields"], "Files": files}])
        return web.json_response({"Status": "Success", "ReasonForFailure": None, "Id": ticket["Id"],
                                  "Message": "Ticket properties have been updated successfully",
                                  "Key": ticket["Key"], "TicketId": None})

    async def activity(self, request: web.Request) -> web.StreamResponse:
        """`POST …/ticket/{Id}/portal/activity` with `{Text, Direction}`."""
        read = await self._accept(request, multipart=False)
        if isinstance(read, web.StreamResponse):
            return read
        body, _ = read
        ticket = self._ticket(request.match_info["id"])
        if isinstance(ticket, web.Response):
            return ticket
        if not isinstance(body, dict) or not isinstance(body.get("Text"), str) or not body["Text"].strip() \
                or body.get("Direction") not in ("INBOUND", "OUTBOUND"):
            return _error(400, "MXInvalidInputException", "Text and Direction (INBOUND or OUTBOUND) are required")
        self.received.note(request, text=body["Text"])
        self.add_history(ticket, "Activities", [{"Text": body["Text"], "Direction": body["Direction"]}])
        # Numbered apart from the ticket's list, which drops its oldest entries: an Id is never given twice.
        return web.json_response({"Id": str(next(self._activity_ids)), "Status": "Success", "Message": None})

    async def note(self, request: web.Request) -> web.StreamResponse:
        """`POST …/internalnote/upload` with `{TextPart, ActivityType, StorageType, RelatedTicketId}`."""
        read = await self._accept(request, multipart=False)
        if isinstance(read, web.StreamResponse):
            return read
        body, _ = read
        if not isinstance(body, dict) or not isinstance(body.get("TextPart"), str) or not body["TextPart"].strip() \
                or body.get("ActivityType") != "CreateInternalNote":
            return _error(400, "MXInvalidInputException", "TextPart and ActivityType CreateInternalNote are required")
        ticket = self._ticket(str(body.get("RelatedTicketId")))
        if isinstance(ticket, web.Response):
            return ticket
        self.received.note(request, text=body["TextPart"])
        self.add_history(ticket, "Notes", [body["TextPart"]])
        org = request.match_info["org"]
        return web.json_response({"Message": "Activity Created", "RelatedTicketId": ticket["Id"],
                                  "RelatedOrgId": org, "RelatedChannelMonitoringRequestId": 0})

    async def details(self, request: web.Request) -> web.StreamResponse:
        """`GET …/tickets/{Id}`: `{Id, TicketId, LeadId, Fields}`, or the 404 of an unknown Id."""
        refused = await self._gate(request)
        if refused is not None:
            return refused
        ticket = self._ticket(request.match_info["id"])
        if isinstance(ticket, web.Response):
            return ticket
        return web.json_response({k: ticket[k] for k in ("Id", "TicketId", "LeadId", "Fields")})

    async def trash(self, request: web.Request) -> web.StreamResponse:
        """`PUT …/tickets/trash` with `{"TicketIds": ["160"]}`: known Ids are deleted, the rest listed as failed."""
        read = await self._accept(request, multipart=False)
        if isinstance(read, web.StreamResponse):
            return read
        body, _ = read
        ids = body.get("TicketIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids:
            return _error(400, "MXInvalidInputException", "TicketIds must be a non-empty list")
        return web.json_response(self.delete(ids))

    def delete(self, ids: list[Any]) -> dict[str, list[Any]]:
        """Delete the held tickets among `ids` (an Id given twice is done twice): the trash call's answer.
        Linear in `ids`, which a body can make long."""
        done = [str(i) for i in ids if self.ticket(str(i)) is not None]
        removed = set(done)
        for ticket_id in removed:
            self.drop(ticket_id)
        self.deleted.keep(done, self.received.max_entries, self.received.max_bytes)
        return {"SuccessfulIds": [int(i) for i in done], "FailedIds": [i for i in ids if str(i) not in removed]}

    def clear(self) -> None:
        super().clear()
        self._accepted.clear()

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/api/tenants/{org}/tickets", self.create),
                ("GET", "/api/tenants/{org}/tickets/{id}", self.details),
                ("PUT", "/api/tenants/{org}/tickets/trash", self.trash),
                ("PUT", "/api/tenants/{org}/tickets/{id}/update", self.update),
                ("POST", "/api/tenants/{org}/ticket/{id}/portal/activity", self.activity),
                ("POST", "/api/tenants/{org}/internalnote/upload", self.note)]
