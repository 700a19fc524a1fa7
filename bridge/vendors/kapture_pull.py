"""Kapture's pull-tickets-by-date API as plain code: the day windows a range splits into, each call's
request, and what an answer holds. The CLI (`ticketbridge kapture pull`) does the I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

import msgspec

from bridge.vendors.base import (
    Call,
    CannotReconcile,
    Found,
    Outcome,
    VendorAuthFailed,
    VendorRequest,
    VendorUnavailable,
    lower_keys,
    text_or_none,
)
from bridge.vendors.kapture import PULL_PATH, REFUSES_ARRAY, KaptureAdapter, read_answer

DATE_FORMAT = "%Y-%m-%d"  # the API's YYYY-MM-DD
# How the pull answer writes a ticket's creation time ("19-04-2024 14:19"); the create answer's form too.
TICKET_DATE_FORMATS = ("%d-%m-%Y %H:%M", "%d-%m-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")
NO_DATA = "no data found"
SIZE_PAGE = 100  # tickets per call once an account shows `limit` is a page size


class PullPage(msgspec.Struct, kw_only=True):
    """One answer: its classification, the tickets it holds, and the total the API reports (if any)."""

    outcome: Outcome
    tickets: list[dict[str, Any]] = []
    total: int | None = None


def parse_day(text: str, what: str) -> date:
    """A `YYYY-MM-DD` date; a ValueError naming `what`, the value and the right form otherwise."""
    try:
        return datetime.strptime(text, DATE_FORMAT).date()
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a date: write YYYY-MM-DD (e.g. 2024-04-19)") from None


def day_windows(start: date, end: date) -> list[date]:
    """Every day from `start` to `end`, both included: one API call (24 hours) each."""
    if end < start:
        raise ValueError(f"--to {end.isoformat()} is before --from {start.isoformat()}")
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def pull_request(adapter: KaptureAdapter, day: date, page: int | None = None) -> VendorRequest:
    """The call for one day (`page` numbers the pages when pagination is on; None leaves it off). `limit` is a
    page number, unless the account showed it is a page size (`adapter.limit_is_size`): then page n asks for
    `offset` (n-1) x SIZE_PAGE and `limit` SIZE_PAGE, as a third-party client pages."""
    end = day if adapter.options.pull_end_date == "same_day" else day + timedelta(days=1)
    item: dict[str, Any] = {}
    if page is not None and adapter.limit_is_size:
        item["offset"] = (page - 1) * SIZE_PAGE
        item["limit"] = SIZE_PAGE
    elif page is not None:
        item["limit"] = page
    item["start_date"] = day.strftime(DATE_FORMAT)
    item["end_date"] = end.strftime(DATE_FORMAT)
    return VendorRequest(method="POST", url=adapter.base_url + PULL_PATH, headers=adapter.headers_for("pull"),
                         body=msgspec.json.encode(item if adapter.pull_as_object else [item]))


def limit_is_a_size(adapter: KaptureAdapter, page: int | None, tickets: list[dict[str, Any]],
                    seen: set[str]) -> bool:
    """Whether a page's answer shows the account reads `limit` as a page size, not a page number: asked for
    page 2 or later, it repeats tickets an earlier page gave *and* adds some (a size of n gives the first n
    again, growing; an account that ignores `limit` repeats the same page, adding none, and paging just
    stops). The adapter then pages by `offset` and `limit` from now on; True means start the day again."""
    if adapter.limit_is_size or page is None or page < 2:
        return False
    keys = [ticket_key(t) for t in tickets]
    if not any(k in seen for k in keys if k is not None) or all(k in seen for k in keys if k is not None):
        return False
    adapter.limit_is_size = True
    return True


def refuses_array(adapter: KaptureAdapter, page: PullPage) -> bool:
    """Whether this answer refuses the documented array body ("Invalid Json … should be in object format", as
    the pull page's own error table says): the adapter then sends an object from now on; True means ask again."""
    error = (page.outcome.error or "").lower()
    if adapter.pull_as_object or page.outcome.classification != "permanent" or not any(
            sign in error for sign in REFUSES_ARRAY):
        return False
    adapter.pull_as_object = True
    return True


def parse_pull(status: int, headers: Mapping[str, str], body: bytes) -> PullPage:
    """The tickets of one answer. A "No Data found" failure is read as an empty day, not an error."""
    outcome, parsed = read_answer(status, headers, body)
    if outcome.classification == "permanent" and NO_DATA in (outcome.error or "").lower():
        return PullPage(outcome=Outcome(classification="success"))
    if outcome.classification != "success":
        return PullPage(outcome=outcome)
    assert isinstance(parsed, dict)
    data = lower_keys(parsed)
    listed = data.get("message")
    # The answer's `message` is a list of tickets, one ticket alone, or a text when nothing matches [3rd].
    if listed is None or isinstance(listed, str):
        listed = []
    elif isinstance(listed, dict):
        listed = [listed]
    if not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
        return PullPage(outcome=Outcome(classification="permanent",
                                        error=f"kapture: the answer's `message` is not a list of tickets: "
                                              f"{type(listed).__name__}"))
    total = data.get("totalcount")
    return PullPage(outcome=outcome, tickets=listed,
                    total=total if isinstance(total, int) and not isinstance(total, bool) else None)


def ticket_key(ticket: Mapping[str, Any]) -> str | None:
    """What makes a pulled ticket unique: its `ticketId`, else its task id."""
    for key in ("ticketId", "ticket_id", "taskId", "id"):
        value = ticket.get(key)
        if value not in (None, ""):
            return f"{key}:{value}" if key in ("taskId", "id") else str(value)
    return None


def ticket_day(ticket: Mapping[str, Any]) -> date | None:
    """The day a pulled ticket was created, or None when its `date` is absent or unreadable."""
    text = ticket.get("date")
    if not isinstance(text, str):
        return None
    for fmt in TICKET_DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    return None


RECONCILE_MAX_DAYS = 8  # how far back a reconciliation pulls, at most (one call per day, and per page)
RECONCILE_MAX_PAGES = 100  # per day, a guard against endless paging


def reference_at(value: Any, path: list[str]) -> list[str]:
    """The texts found at the dotted `path` under `value`, through objects and any lists on the way
    (Kapture groups custom fields as `"section": [{"field": …}]`, or nests them as objects)."""
    if isinstance(value, list):
        return [found for item in value for found in reference_at(item, path)]
    if not path:
        return [] if value is None or isinstance(value, dict) else [str(value)]
    if not isinstance(value, dict):
        return []
    return reference_at(value.get(path[0]), path[1:])


def _day_of(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000).date()


async def _pull_day(adapter: KaptureAdapter, day: date, call: Call) -> list[dict[str, Any]]:
    """Every ticket of `day`: one call, or page by page (`limit` numbering pages) for an account that asks for
    `limit`, which is then remembered on the adapter. Raises for an answer that is not a success."""
    tickets: list[dict[str, Any]] = []
    page = 1 if adapter.pull_paged else None
    seen: set[str] = set()
    while True:
        status, body = await call(pull_request(adapter, day, page))
        answer = parse_pull(status, {}, body)
        if refuses_array(adapter, answer):
            continue
        outcome = answer.outcome
        if outcome.classification == "permanent" and page is None and "limit" in (outcome.error or "").lower():
            adapter.pull_paged = True
            page = 1
            continue
        if outcome.classification == "auth":
            raise VendorAuthFailed(f"the pull for {day.isoformat()} was refused: {outcome.error}")
        if outcome.classification != "success":
            raise VendorUnavailable(f"the pull for {day.isoformat()} failed: {outcome.error}")
        if limit_is_a_size(adapter, page, answer.tickets, seen):
            tickets, seen, page = [], set(), 1
            continue
        new = [t for t in answer.tickets if (k := ticket_key(t)) is None or k not in seen]
        seen.update(k for t in new if (k := ticket_key(t)) is not None)
        tickets.extend(new)
        if page is None or not new or (answer.total is not None and len(tickets) >= answer.total):
            return tickets
        if page >= RECONCILE_MAX_PAGES:
            raise VendorUnavailable(f"the pull for {day.isoformat()} still had tickets after {page} pages")
        page += 1


async def find_created(adapter: KaptureAdapter, fields: dict[str, Any], since_ms: int, call: Call,
                       now_ms: int | None = None) -> Found | None:
    """The ticket a create of `fields` (sent at or after `since_ms`) made, found by pulling each day from the
    day before the send (the account's day may start earlier than ours) to today, and matching the body's
    `reference_field` value against each ticket's `additional_info` (else its own keys); None when no ticket
    carries it. CannotReconcile when the body holds no reference to match on."""
    field = adapter.options.reference_field
    if not field:
        raise CannotReconcile("kapture: no `reference_field` is configured to match on")
    path = field.split(".")
    wanted = reference_at(fields, path)
    if not wanted or not wanted[0].strip():
        raise CannotReconcile(f"kapture: the ticket body has no `{field}` (the destination's reference_field) "
                              "to find it by; the mapping must fill it (e.g. with \"{{ event.id }}\")")
    reference = wanted[0]
    today = _day_of(now_ms if now_ms is not None else int(datetime.now().timestamp() * 1000))
    first = max(_day_of(since_ms) - timedelta(days=1), today - timedelta(days=RECONCILE_MAX_DAYS - 1))
    for day in day_windows(min(first, today), today):
        for ticket in await _pull_day(adapter, day, call):
            info = ticket.get("additional_info")
            if reference in reference_at(info, path) or reference in reference_at(ticket, path):
                found = ticket_key(ticket)
                ticket_id = text_or_none(ticket.get("ticketId") or ticket.get("ticket_id"))
                if ticket_id is None and found is None:
                    continue
                return Found(ticket_id=ticket_id or str(found),
                             detail=f"{field} = {reference!r}, pulled for {day.isoformat()}")
    return None
