"""A Kapture CRM stand-in: the documented create, update and pull-by-date successes and failures, and a
listing of what it holds. Serves `sandbox: true` destinations in-process, and tests and benchmarks standalone.

Custom fields sent with a create (keys beyond the documented ones) come back in the pull answer's
`additional_info`. The fault knob `hang_after_count` makes a create (or applies an update and its comment),
then holds its answer (a timeout after the ticket, or the comment, exists). Failures come as
`{"message": …, "status": "failed"}` with HTTP 200 (`failure_http_status` changes that), with the documented
messages where Kapture documents one. Pull reads `end_date` as inclusive (one day is start_date = end_date,
the documented body) unless `end_date_inclusive=False` (the curl example's reading); a range over 24 hours
fails. With `pagination_enabled`, `limit` numbers pages of `page_size` tickets.
With the knob `auth_key_expired: true` (`/_knobs`) every call answers the legacy pages' expired key,
`{"Message": "Auth Key Expired", "Status": "Fail"}`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, Literal

import msgspec
from aiohttp import web

from bridge.simulators.base import VendorSimulator
from bridge.simulators.faults import Handler, apply_faults, hang_after
from bridge.simulators.received import Newest
from bridge.vendors.kapture import CALLBACK_FORMAT, CREATE_PATH, GET_PATH, PULL_PATH, SANDBOX_TOKEN, UPDATE_PATH

STAMP = "%Y-%m-%d %H:%M:%S"  # how tickets keep their creation time (as the create answer writes it)
PULL_STAMP = "%d-%m-%Y %H:%M"  # how the pull answer writes times
SUB_STATUS_NAMES = {"US": "Unattended", "P": "Pending", "PS": "Pending", "CL": "Closed", "RS": "Resolved"}
# The create body's documented fields; any other key is the account's own (a custom field), which the pull
# answer gives back under `additional_info`.
DOCUMENTED_FIELDS = frozenset({"title", "ticket_details", "due_date", "email_id"})
# Messages Kapture documents; the others below are this simulator's own wording.
INVALID_AUTH = "Invalid Auth Key"
AUTH_KEY_EXPIRED = "Auth Key Expired"  # the legacy pages' answer, with "Status": "Fail"
INVALID_JSON = "Invalid Json."
TITLE_MISSING = "title is missing"
NO_TICKET = "No Data found/ticket_id is missing"
BAD_CALLBACK = "Invalid Format.callback_date should be yyyy-MM-dd hh:mm:ss."
BAD_DATE = "Date should be in YYYY-MM-DD format."
ARRAY_REFUSED = "Invalid Json. Request body should be in object format."
OVER_24_HOURS = "At one hit we can pull a data of max 24 hours."


class KaptureKnobs(msgspec.Struct, forbid_unknown_fields=True):
    """`auth_key_expired`: every call is refused as the legacy pages answer an expired key."""

    auth_key_expired: bool = False


class KaptureSimulator(VendorSimulator):
    Knobs = KaptureKnobs
    vendor = "kapture"
    key = "ticketId"
    histories = ("comments",)

    def __init__(self, tokens: set[str] | None = None, failure_http_status: int = 200, *,
                 end_date_inclusive: bool = True, pagination_enabled: bool = False, page_size: int = 50,
                 clock: Callable[[], datetime] = datetime.now, operation_tokens: dict[str, set[str]] | None = None,
                 pull_refuses_array: bool = False, limit_semantics: Literal["page", "size"] = "page") -> None:
        super().__init__()
        self.tokens = tokens if tokens is not None else {SANDBOX_TOKEN}
        # An account whose APIs each have their own Auth Key: operation ("add", "update", "pull") -> its keys.
        self.operation_tokens = operation_tokens or {}
        # An account whose pull takes only an object, answering the documented array with "Invalid Json".
        self.pull_refuses_array = pull_refuses_array
        # With pagination: `limit` numbers pages of `page_size` ("page"), or is how many tickets to give from
        # `offset` ("size"), as a third-party client reads it.
        self.limit_semantics = limit_semantics
        self.failure_http_status = failure_http_status
        self.end_date_inclusive = end_date_inclusive
        self.pagination_enabled = pagination_enabled
        self.page_size = page_size
        self.clock = clock
        # The newest pulls and gets asked, for tests: as many and as heavy as the calls `received` keeps.
        self.pulls: Newest[dict[str, Any]] = Newest()
        self.gets: Newest[list[str]] = Newest()
        self.requests = 0
        self._ids = itertools.count(530348198)

    def _failed(self, message: str) -> web.Response:
        return web.json_response({"message": message, "status": "failed"}, status=self.failure_http_status)

    async def _open(self, request: web.Request, operation: str,
                    object_only: bool = False) -> web.StreamResponse | dict[str, Any]:
        """The request's one object, or the answer that refuses it (a fault, a bad key, bad JSON, an array where
        `object_only`)."""
        self.requests += 1
        faulted = await apply_faults(self.faults, request)
        if faulted is not None:
            return faulted
        if self.knobs.auth_key_expired:
            return web.json_response({"Message": AUTH_KEY_EXPIRED, "Status": "Fail"}, status=self.failure_http_status)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Basic" or token not in self.operation_tokens.get(operation, self.tokens):
            return self._failed(INVALID_AUTH)
        try:
            body = await request.json()
        except ValueError:
            return self._failed(INVALID_JSON)
        if object_only and isinstance(body, list):
            return self._failed(ARRAY_REFUSED)
        if isinstance(body, dict):
            body = [body]
        if not isinstance(body, list) or not body or not all(isinstance(item, dict) for item in body):
            return self._failed(INVALID_JSON)
        item: dict[str, Any] = body[0]
        return item

    def seed(self, title: str, created: datetime, **fields: Any) -> dict[str, Any]:
        """Add a ticket as if created at `created` (for pull tests and demos)."""
        task_id = next(self._ids)
        ticket_id = str(713516551148 + task_id - 530348198)
        record = {"id": task_id, "ticketId": ticket_id, "taskTitle": title, "detail": fields.get("ticket_details", ""),
                  "email": fields.get("email_id", ""), "date": created.strftime(STAMP), "status": "P",
                  "substatus": "US", "fields": {"title": title, **fields}, "comments": []}
        self.hold(record)
        return record

    def _ticket_json(self, t: dict[str, Any]) -> dict[str, Any]:
        return {"id": t["id"], "ticketId": t["ticketId"], "taskTitle": t["taskTitle"], "status": t["status"],
                "statusName": "Pending", "substatus": t["substatus"],
                "substatusName": SUB_STATUS_NAMES.get(t["substatus"], t["substatus"]), "date": t["date"],
                "queueKey": t.get("queue", ""), "ticketURL": f"/employee/view-task-detail.html?detail=5/{t['id']}/"
                                                            f"{t['ticketId']}"}

    async def create(self, request: web.Request) -> web.StreamResponse:
        item = await self._open(request, "add")
        if not isinstance(item, dict):
            return item
        title = item.get("title")
        if not isinstance(title, str) or not title.strip():
            return self._failed(TITLE_MISSING)
        record = self.seed(title, self.clock(), **{k: v for k, v in item.items() if k != "title"})
        self.received.note(request, ticket_id=record["ticketId"])
        await hang_after(self.faults)
        return web.json_response({
            "ticket": self._ticket_json(record), "Additional_details": {}, "due_date": item.get("due_date", ""),
            "title": title, "customer_id": 0, "ticket_id": record["ticketId"], "Ticket Id": record["ticketId"],
            "status": "success",
        })

    async def update(self, request: web.Request) -> web.StreamResponse:
        item = await self._open(request, "update")
        if not isinstance(item, dict):
            return item
        ticket_id = str(item.get("ticket_id") or "")
        found = self.ticket(ticket_id)
        if found is None:
            return self._failed(NO_TICKET)
        # The page names the field `callback_time` in its body and `callback_date` in its error text: both are read.
        callback = item.get("callback_time") or item.get("callback_date") or ""
        try:
            if callback:
                datetime.strptime(str(callback), CALLBACK_FORMAT)
        except ValueError:
            return self._failed(BAD_CALLBACK)
        sub_status = item.get("sub_status")
        if not isinstance(sub_status, str) or not sub_status.strip():
            return self._failed("sub_status is missing")
        changes = {"substatus": sub_status, **{key: item[key] for key in ("queue", "disposition") if item.get(key)}}
        if callback:
            changes["callback_time"] = callback
        self.change(found, **changes)
        if item.get("comment"):
            self.add_history(found, "comments", [item["comment"]])
            self.received.note(request, ticket_id=ticket_id, comment=item["comment"])
        await hang_after(self.faults)  # the comment is on the ticket; its answer may be held (a follow-up in doubt)
        return web.json_response({"ticket": self._ticket_json(found), "Additional_details": {},
                                  "message": "Status and Comment have been updated.\n", "status": "success"})

    def _range(self, item: dict[str, Any]) -> tuple[date, date] | str:
        """The days a pull covers (start, end inclusive), or the failure message."""
        try:
            start = datetime.strptime(str(item.get("start_date")), "%Y-%m-%d").date()
            end = datetime.strptime(str(item.get("end_date")), "%Y-%m-%d").date()
        except ValueError:
            return BAD_DATE
        if end < start:
            return "end_date is before start_date."
        span = (end - start).days + (1 if self.end_date_inclusive else 0)
        if span > 1:
            return OVER_24_HOURS
        return start, start + timedelta(days=span - 1)  # an empty range when span is 0

    def _pull_json(self, t: dict[str, Any]) -> dict[str, Any]:
        stamp = datetime.strptime(t["date"], STAMP).strftime(PULL_STAMP)
        return {"date": stamp, "status": "Pending", "taskId": t["id"], "ticketId": t["ticketId"],
                "taskTitle": t["taskTitle"], "detail": t["detail"], "substatusKey": t["substatus"],
                "substatus": SUB_STATUS_NAMES.get(t["substatus"], t["substatus"]), "email": t["email"],
                "phone": "", "queueKey": t.get("queue", ""), "disposition": t.get("disposition", ""),
                "callBack": t.get("callback_time", ""), "attachments": [],
                "additional_info": {k: v for k, v in t["fields"].items() if k not in DOCUMENTED_FIELDS}}

    async def pull(self, request: web.Request) -> web.StreamResponse:
        item = await self._open(request, "pull", object_only=self.pull_refuses_array)
        if not isinstance(item, dict):
            return item
        self.pulls.keep([dict(item)], self.received.max_entries, self.received.max_bytes)
        days = self._range(item)
        if isinstance(days, str):
            return self._failed(days)
        start, last = days
        found = [t for t in self.tickets if start <= datetime.strptime(t["date"], STAMP).date() <= last]
        total: int | None = None
        if self.pagination_enabled:
            page = item.get("limit")
            if not isinstance(page, int) or isinstance(page, bool) or page < 1:
                return self._failed("limit is missing.")
            total = len(found)
            if self.limit_semantics == "size":
                offset = item.get("offset", 0)
                skip = offset if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 else 0
                found = found[skip: skip + page]
            else:
                found = found[(page - 1) * self.page_size: page * self.page_size]
        return web.json_response({"totalCount": total, "message": [self._pull_json(t) for t in found],
                                  "status": "success"})

    async def get(self, request: web.Request) -> web.StreamResponse:
        """Get by ticket id: an object with `ticket_ids` comma-separated; a top-level array of
        `{additional_info, history, task_details}`, empty when none matches."""
        item = await self._open(request, "get", object_only=True)
        if not isinstance(item, dict):
            return item
        wanted = {i.strip() for i in str(item.get("ticket_ids") or "").split(",") if i.strip()}
        if not wanted:
            return self._failed("ticket_ids is missing")
        self.gets.keep([sorted(wanted)], self.received.max_entries, self.received.max_bytes)
        found = sorted((t for t in map(self.ticket, wanted) if t is not None), key=lambda t: int(t["id"]))
        return web.json_response([
            {"additional_info": self._pull_json(t)["additional_info"], "history": {},
             "task_details": {**self._ticket_json(t), "ticket_id": t["ticketId"], "title": t["taskTitle"]}}
            for t in found])

    def listed(self) -> dict[str, Any]:
        return {**super().listed(), "requests": self.requests}

    def clear(self) -> None:
        super().clear()
        self.pulls.clear()
        self.gets.clear()
        self.requests = 0

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", CREATE_PATH, self.create), ("POST", UPDATE_PATH, self.update),
                ("POST", PULL_PATH, self.pull), ("POST", GET_PATH, self.get)]
