"""Kapture's pull-tickets-by-date API as plain code: the day windows a range splits into, each call's
request, and what an answer holds. The CLI (`ticketbridge kapture pull`) does the I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

import msgspec

from bridge.vendors.base import Outcome, VendorRequest, lower_keys
from bridge.vendors.kapture import PULL_PATH, KaptureAdapter, read_answer

DATE_FORMAT = "%Y-%m-%d"  # the API's YYYY-MM-DD
# How the pull answer writes a ticket's creation time ("19-04-2024 14:19"); the create answer's form too.
TICKET_DATE_FORMATS = ("%d-%m-%Y %H:%M", "%d-%m-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")
NO_DATA = "no data found"


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
    """The call for one day (`page` numbers the `limit` pages when pagination is on; None leaves it off)."""
    end = day if adapter.options.pull_end_date == "same_day" else day + timedelta(days=1)
    item: dict[str, Any] = {}
    if page is not None:
        item["limit"] = page
    item["start_date"] = day.strftime(DATE_FORMAT)
    item["end_date"] = end.strftime(DATE_FORMAT)
    return VendorRequest(method="POST", url=adapter.base_url + PULL_PATH, headers=adapter.headers,
                         body=msgspec.json.encode([item]))


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
    if listed is None:
        listed = []
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
