"""Kapture's pull-tickets-by-date API as plain code: the day windows a range splits into, each call's
request, and what an answer holds. The CLI (`ticketbridge kapture pull`) does the I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import msgspec

from bridge.offload import read_answer_off_loop
from bridge.vendors.base import (
    Call,
    CannotReconcile,
    Found,
    Outcome,
    SearchStopped,
    VendorAuthFailed,
    VendorRequest,
    VendorUnavailable,
    decode_json,
    first_id,
    lower_keys,
)
from bridge.vendors.json_steps import decode_lookup, release
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
    return keys_show_a_size(adapter, page, [ticket_key(t) for t in tickets], seen)


def keys_show_a_size(adapter: KaptureAdapter, page: int | None, keys: list[str | None], seen: set[str]) -> bool:
    """`limit_is_a_size`, from the page's ticket keys (`ticket_key`)."""
    if adapter.limit_is_size or page is None or page < 2:
        return False
    if not any(k in seen for k in keys if k is not None) or all(k in seen for k in keys if k is not None):
        return False
    adapter.limit_is_size = True
    return True


def refuses_array(adapter: KaptureAdapter, outcome: Outcome) -> bool:
    """Whether an answer of this `outcome` refuses the documented array body ("Invalid Json … should be in object
    format", as the pull page's own error table says): the adapter then sends an object from now on; True means
    ask again."""
    error = (outcome.error or "").lower()
    if adapter.pull_as_object or outcome.classification != "permanent" or not any(
            sign in error for sign in REFUSES_ARRAY):
        return False
    adapter.pull_as_object = True
    return True


def parse_pull(status: int, headers: Mapping[str, str], body: bytes,
               decode: Callable[[bytes], Any] = decode_json) -> PullPage:
    """The tickets of one answer (decoded by `decode`: `read_answer`). A "No Data found" failure is read as an
    empty day, not an error."""
    outcome, parsed = read_answer(status, headers, body, decode)
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
    (Kapture groups custom fields as `"section": [{"field": …}]`, or nests them as objects). Walked without
    recursion, in the order the ticket holds them: lists within lists, however deeply a vendor nests them, cost
    a step each, never the stack."""
    found: list[str] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        here, depth = stack.pop()
        if isinstance(here, list):
            stack.extend((item, depth) for item in reversed(here))
        elif depth == len(path):
            if here is not None and not isinstance(here, dict):
                found.append(str(here))
        elif isinstance(here, dict):
            stack.append((here.get(path[depth]), depth + 1))
    return found


def _day_of(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000).date()


@dataclass
class Searched:
    """What a reconciliation has pulled so far: the days it means to pull and, for each one started, the pages
    and tickets it read and whether it reached the day's end; said in the error when the search stops."""

    looking_for: str
    days: list[date]
    pulled: dict[date, tuple[int, int, bool]] = field(default_factory=dict)

    def said(self) -> str:
        done = [f"{day.isoformat()} ({pages} {'page' if pages == 1 else 'pages'}, {tickets} "
                f"{'ticket' if tickets == 1 else 'tickets'}{'' if whole else ', not to its end'})"
                for day, (pages, tickets, whole) in self.pulled.items()]
        text = f"looked for {self.looking_for} in the tickets of {', '.join(done) if done else 'no day yet'}"
        rest = [day for day in self.days if day not in self.pulled]
        if rest:
            text += f"; not pulled: {rest[0].isoformat()}" + (f" to {rest[-1].isoformat()}" if len(rest) > 1 else "")
        return text


@dataclass
class _Page:
    """What one pull answer leaves once read: its outcome, the ticket that matched, each ticket's key."""

    outcome: Outcome
    found: Found | None = None
    keys: list[str | None] = field(default_factory=list)
    total: int | None = None
    again: bool = False  # the account refused the array body: the same page is asked again, as an object
    restart: bool = False  # the account reads `limit` as a page size: the day is pulled again, by offset


def _scan_page(body: bytes, status: int, day: date, match: Callable[[dict[str, Any], date], Found | None]) -> _Page:
    """One pull answer read: its outcome, the ticket `match` finds in it, each ticket's key and the total. Plain
    code, run where `read_answer_off_loop` puts it (the look-up thread for an answer that is not small); the
    tickets it decodes go when it returns. SearchStopped for an answer holding more objects than a look-up reads
    (`too_many_containers`), before it is decoded."""
    what = f"the pull answer for {day.isoformat()}"
    # A large answer in steps: the loop runs between them.
    answer = parse_pull(status, {}, body, lambda raw: decode_lookup(raw, what, SearchStopped))
    if answer.outcome.classification != "success":
        return _Page(outcome=answer.outcome)
    found = next((f for ticket in answer.tickets if (f := match(ticket, day)) is not None), None)
    keys = [ticket_key(t) for t in answer.tickets]
    tickets, answer.tickets = answer.tickets, []
    release(tickets)  # freed a slice at a time here, not all at once when this returns
    return _Page(outcome=answer.outcome, found=found, keys=keys, total=answer.total)


async def _read_page(adapter: KaptureAdapter, day: date, page: int | None, call: Call, *, previous: set[str],
                     match: Callable[[dict[str, Any], date], Found | None]) -> _Page:
    """Pull one page of `day` and look for the match in it, off the loop when the answer is not small
    (`read_answer_off_loop`); the answer itself goes when this returns."""
    status, body = await call(pull_request(adapter, day, page))
    read = await read_answer_off_loop(_scan_page, body, status, day, match)
    del body
    if refuses_array(adapter, read.outcome):
        return _Page(outcome=read.outcome, again=True)
    if read.outcome.classification != "success":
        return read
    if read.found is None and keys_show_a_size(adapter, page, read.keys, previous):
        return _Page(outcome=read.outcome, restart=True)
    return read


async def _search_day(adapter: KaptureAdapter, day: date, call: Call,
                      match: Callable[[dict[str, Any], date], Found | None], searched: Searched) -> Found | None:
    """The ticket of `day` that `match` finds, page by page (`limit` numbering pages for an account that asks for
    it, which is then remembered on the adapter), holding one page at a time and the keys of the one before (a
    page that repeats it ends the day); None when the day has no match. Raises for an answer that is not a
    success, SearchStopped past RECONCILE_MAX_PAGES."""
    page = 1 if adapter.pull_paged else None
    previous: set[str] = set()
    pages = tickets = 0
    searched.pulled[day] = (0, 0, False)
    while True:
        read = await _read_page(adapter, day, page, call, previous=previous, match=match)
        if read.found is not None:
            return read.found
        if read.again:
            continue
        outcome = read.outcome
        if outcome.classification == "permanent" and page is None and "limit" in (outcome.error or "").lower():
            adapter.pull_paged = True
            page = 1
            continue
        if outcome.classification == "auth":
            raise VendorAuthFailed(f"the pull for {day.isoformat()} was refused: {outcome.error}")
        if outcome.classification != "success":
            raise VendorUnavailable(f"the pull for {day.isoformat()} failed: {outcome.error}")
        if read.restart:
            previous, pages, tickets, page = set(), 0, 0, 1
            searched.pulled[day] = (0, 0, False)
            continue
        new = sum(1 for k in read.keys if k is None or k not in previous)
        pages, tickets = pages + 1, tickets + new
        done = page is None or not new or (read.total is not None and tickets >= read.total)
        searched.pulled[day] = (pages, tickets, done)
        if page is None or done:
            return None
        if page >= RECONCILE_MAX_PAGES:
            raise SearchStopped(f"the pull for {day.isoformat()} still had tickets after {page} pages, the most a "
                                "reconciliation pulls a day")
        previous = {k for k in read.keys if k is not None}
        page += 1


async def find_created(adapter: KaptureAdapter, fields: dict[str, Any], since_ms: int, call: Call,
                       now_ms: int | None = None) -> Found | None:
    """The ticket a create of `fields` (sent at or after `since_ms`) made, found by pulling each day from the
    day before the send (the account's day may start earlier than ours) to today, at most RECONCILE_MAX_DAYS,
    and matching the body's `reference_field` value against each ticket's `additional_info` (else its own keys),
    one page at a time; None when no ticket carries it. Its id is read by `answer_id` (`ticketId`, else
    `ticket_id`; neither given, its task id). CannotReconcile when the body holds no reference to match on, or
    the ticket carrying it holds what is no id where its id goes (held: it names a ticket); SearchStopped, saying
    what was pulled, when the search ends before it can tell: `call` stopped it (the reconciliation's deadline),
    a day has more than RECONCILE_MAX_PAGES pages, or the send is older than the days pulled and no ticket
    matched."""
    field_name = adapter.options.reference_field
    if not field_name:
        raise CannotReconcile("kapture: no `reference_field` is configured to match on")
    path = field_name.split(".")
    wanted = reference_at(fields, path)
    if not wanted or not wanted[0].strip():
        raise CannotReconcile(f"kapture: the ticket body has no `{field_name}` (the destination's reference_field) "
                              "to find it by; the mapping must fill it (e.g. with \"{{ event.id }}\")")
    reference = wanted[0]
    today = _day_of(now_ms if now_ms is not None else int(datetime.now().timestamp() * 1000))
    start = min(_day_of(since_ms) - timedelta(days=1), today)
    first = max(start, today - timedelta(days=RECONCILE_MAX_DAYS - 1))
    searched = Searched(looking_for=f"{field_name} = {reference!r}", days=day_windows(first, today))

    def match(ticket: dict[str, Any], day: date) -> Found | None:
        info = ticket.get("additional_info")
        if reference not in reference_at(info, path) and reference not in reference_at(ticket, path):
            return None
        detail = f"{field_name} = {reference!r}, pulled for {day.isoformat()}"
        # Its id read as a create's answer is (`answer_id`): `true` or 12.5 is no id, not "True" or "12.5".
        ticket_id = first_id((("ticketId", ticket.get("ticketId")), ("ticket_id", ticket.get("ticket_id"))))
        if ticket_id.text is not None:
            return Found(ticket_id=ticket_id.text, detail=detail)
        if ticket_id.problem is not None:
            # It names the ticket, by something that is no id: not "none found", which would send it again.
            raise CannotReconcile(f"kapture: the ticket pulled for {day.isoformat()} carrying {field_name} = "
                                  f"{reference!r} has no usable id: {ticket_id.problem}")
        found = ticket_key(ticket)  # no ticket id at all: its task id
        return None if found is None else Found(ticket_id=found, detail=detail)

    try:
        for day in searched.days:
            found = await _search_day(adapter, day, call, match, searched)
            if found is not None:
                return found
    except SearchStopped as exc:
        raise SearchStopped(f"{exc}; {searched.said()}") from None
    if start < first:
        raise SearchStopped(f"the send may have made its ticket on {start.isoformat()}, before the "
                            f"{RECONCILE_MAX_DAYS} days a reconciliation pulls; {searched.said()}")
    return None
