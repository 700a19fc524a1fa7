"""Kapture's pull-by-date protocol: day windows, each call's request, and how answers are read."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from bridge.vendors.base import Outcome
from bridge.vendors.kapture import PULL_PATH, KaptureAdapter, KaptureOptions
from bridge.vendors.kapture_pull import (
    PullPage,
    day_windows,
    parse_day,
    parse_pull,
    pull_request,
    refuses_array,
    ticket_day,
    ticket_key,
)

BASE = "https://acme.kapturecrm.com"
# The documented answer, one ticket trimmed to the parts read here.
TICKET = {"date": "19-04-2024 14:19", "status": "Pending", "taskId": 530348198, "ticketId": "713516551148",
          "taskTitle": "TEST 1", "substatusKey": "PS"}


def adapter(end: str = "same_day") -> KaptureAdapter:
    options = KaptureOptions(vendor="kapture", base_url=BASE, token="tok", pull_end_date=end)  # type: ignore[arg-type]
    return KaptureAdapter("kapture", options, BASE)


def parse(body: Any, status: int = 200) -> PullPage:
    return parse_pull(status, {}, json.dumps(body).encode())


def test_three_days_are_three_windows() -> None:
    """A range from the 19th to the 21st, both included, is the three days in order."""
    assert day_windows(date(2024, 4, 19), date(2024, 4, 21)) == [date(2024, 4, 19), date(2024, 4, 20),
                                                                  date(2024, 4, 21)]


def test_one_day_is_one_window_and_months_roll_over() -> None:
    """A single day is one window, and a range across a month end counts every day."""
    assert day_windows(date(2024, 4, 19), date(2024, 4, 19)) == [date(2024, 4, 19)]
    assert len(day_windows(date(2024, 2, 28), date(2024, 3, 1))) == 3


def test_a_range_that_ends_before_it_starts_is_refused() -> None:
    """--to before --from is an error naming both dates."""
    with pytest.raises(ValueError, match="--to 2024-04-18 is before --from 2024-04-19"):
        day_windows(date(2024, 4, 19), date(2024, 4, 18))


@pytest.mark.parametrize("text", ["19-04-2024", "2024/04/19", "2024-4-31", "yesterday", ""])
def test_parse_day_names_the_option_and_the_right_form(text: str) -> None:
    """A date not in YYYY-MM-DD is refused with the option, the value and an example."""
    with pytest.raises(ValueError) as info:
        parse_day(text, "--from")
    assert str(info.value) == f"--from {text!r} is not a date: write YYYY-MM-DD (e.g. 2024-04-19)"


def test_request_for_one_day_is_the_documented_array_with_start_equal_to_end() -> None:
    """By default a day is asked as start_date = end_date, in a one-item array, with the Basic token."""
    request = pull_request(adapter(), date(2024, 4, 22))
    assert (request.method, request.url) == ("POST", BASE + PULL_PATH)
    assert request.headers == {"Authorization": "Basic tok", "Content-Type": "application/json"}
    assert json.loads(request.body) == [{"start_date": "2024-04-22", "end_date": "2024-04-22"}]


def test_request_with_next_day_end_date() -> None:
    """With `pull_end_date: next_day` the end date is the day after, as in the documented curl."""
    request = pull_request(adapter("next_day"), date(2024, 4, 30))
    assert json.loads(request.body) == [{"start_date": "2024-04-30", "end_date": "2024-05-01"}]


def test_request_with_a_page_carries_limit_first() -> None:
    """A paged call numbers its page in `limit`, placed as in the documented body."""
    request = pull_request(adapter(), date(2024, 4, 22), page=3)
    assert request.body == b'[{"limit":3,"start_date":"2024-04-22","end_date":"2024-04-22"}]'


def test_documented_answer_gives_its_tickets() -> None:
    """The documented success answer gives the tickets in `message` and no total."""
    page = parse({"totalCount": None, "message": [TICKET], "status": "success"})
    assert page == PullPage(outcome=Outcome(classification="success"), tickets=[TICKET], total=None)


def test_total_count_is_read_when_a_number() -> None:
    """A numeric totalCount (pagination on) is kept; `Status`/`Message` capitalised are read too."""
    page = parse({"TotalCount": 120, "Message": [TICKET], "Status": "Success"})
    assert (page.outcome.classification, page.total, page.tickets) == ("success", 120, [TICKET])


@pytest.mark.parametrize("body", [{"message": "No Data found", "status": "failed"},
                                  {"message": [], "status": "success"},
                                  {"status": "success"}])
def test_an_empty_day_is_a_success_without_tickets(body: dict[str, Any]) -> None:
    """A day without tickets (an empty list, no list, or "No Data found") is read as empty, not as an error."""
    page = parse(body)
    assert page == PullPage(outcome=Outcome(classification="success"), tickets=[], total=None)


@pytest.mark.parametrize(("body", "status", "classification", "error"), [
    ({"message": "Invalid Auth Key", "status": "failed"}, 200, "auth", "kapture: Invalid Auth Key"),
    ({"message": "Invalid Json.", "status": "failed"}, 200, "permanent", "kapture: HTTP 200: Invalid Json."),
    ({"message": "At one hit we can pull a data of max 24 hours.", "status": "failed"}, 200, "permanent",
     "kapture: HTTP 200: At one hit we can pull a data of max 24 hours."),
    ({"message": "busy"}, 503, "retry", "HTTP 503: busy"),
    ({"message": 42, "status": "success"}, 200, "permanent",
     "kapture: the answer's `message` is not a list of tickets: int"),
    ({"message": ["x"], "status": "success"}, 200, "permanent",
     "kapture: the answer's `message` is not a list of tickets: list"),
])
def test_failures_are_classified(body: dict[str, Any], status: int, classification: str, error: str) -> None:
    """Each failure gives its classification and the vendor's message, and no tickets."""
    page = parse(body, status)
    assert page.outcome.classification == classification
    assert page.outcome.error == error
    assert page.tickets == []


def test_ticket_key_prefers_the_ticket_id() -> None:
    """A pulled ticket is known by its ticketId, else by its task id (kept apart from ticket ids)."""
    assert ticket_key(TICKET) == "713516551148"
    assert ticket_key({"ticket_id": 42}) == "42"
    assert ticket_key({"taskId": 530348198}) == "taskId:530348198"
    assert ticket_key({"ticketId": "", "taskTitle": "x"}) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("19-04-2024 14:19", date(2024, 4, 19)),
    ("19-04-2024 14:19:11", date(2024, 4, 19)),
    ("2024-04-19 14:19:11", date(2024, 4, 19)),
    (" 2024-04-19 14:19 ", date(2024, 4, 19)),
    ("04/19/2024", None),
    (None, None),
])
def test_ticket_day_reads_the_answers_date_forms(text: str | None, expected: date | None) -> None:
    """The creation day is read from the pull answer's dd-MM-yyyy HH:mm (or the create answer's form)."""
    assert ticket_day({"date": text}) == expected


def test_an_outcome_refusing_the_array_body_switches_the_adapter_to_an_object_once() -> None:
    """A permanent failure saying the body must be an object ("Invalid Json … should be in object format") asks
    again, the adapter sending an object from then on; any other outcome, or a second such one, does not."""
    a = adapter()
    refused = Outcome(classification="permanent", error="kapture: HTTP 200: Invalid Json, should be in object format")
    assert not refuses_array(a, Outcome(classification="permanent", error="kapture: HTTP 200: No Data found"))
    assert not refuses_array(a, Outcome(classification="retry", error=refused.error))
    assert a.pull_as_object is False
    assert refuses_array(a, refused)
    assert a.pull_as_object is True
    assert not refuses_array(a, refused)
