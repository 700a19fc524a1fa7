"""The Kapture adapter: the create-ticket request, and how each kind of answer is classified."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from bridge.errors import MappingError
from bridge.vendors.base import Outcome
from bridge.vendors.kapture import (
    CREATE_PATH,
    SANDBOX_TOKEN,
    UPDATE_PATH,
    KaptureAdapter,
    KaptureOptions,
    read_answer,
    ticket_id_of,
)
from bridge.vendors.registry import adapter_class, vendor_options

BASE = "https://acme.kapturecrm.com"

# The documented success answer, trimmed to the parts the adapter may read.
SUCCESS: dict[str, Any] = {
    "ticket": {"id": 530348198, "ticketId": "713516551148", "status": "P", "taskTitle": "TEST 1"},
    "Additional_details": {},
    "title": "TEST 1",
    "customer_id": 0,
    "ticket_id": "713516551148",
    "Ticket Id": "713516551148",
    "ticket_url": "https://devapi.kapturecrm.com/employee/view-task-detail.html?detail=5/530348198/713516551148",
    "status": "success",
}


def adapter(token: str = "s3cret", base_url: str = BASE, sandbox: bool = False) -> KaptureAdapter:
    options = KaptureOptions(vendor="kapture", base_url=None if sandbox else base_url, token=token, sandbox=sandbox)
    return KaptureAdapter("kapture-support", options, base_url)


def classify(status: int, body: Any, headers: dict[str, str] | None = None) -> Outcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return adapter().classify("create_ticket", status, headers or {}, raw)


# -- the request --------------------------------------------------------------------------------


def test_request_posts_to_the_create_ticket_url() -> None:
    """A create_ticket request is a POST to the documented path under the base URL."""
    request = adapter().build_request("create_ticket", {"title": "Router down"}, {})
    assert request.method == "POST"
    assert request.url == "https://acme.kapturecrm.com/add-ticket-from-other-source.html/v.2.0"
    assert request.url == BASE + CREATE_PATH


def test_request_url_ignores_a_trailing_slash_on_the_base_url() -> None:
    """A base URL written with a trailing slash does not make a double slash."""
    request = adapter(base_url=BASE + "/").build_request("create_ticket", {"title": "t"}, {})
    assert request.url == BASE + CREATE_PATH


def test_request_headers_carry_basic_token_and_json() -> None:
    """The token goes in `Authorization: Basic <token>` and the body is declared JSON."""
    request = adapter(token="abc123").build_request("create_ticket", {"title": "t"}, {})
    assert request.headers == {"Authorization": "Basic abc123", "Content-Type": "application/json"}


def test_request_body_is_an_array_of_one_object_with_the_fields_in_order() -> None:
    """The body is a JSON array holding one object: the rendered fields, in their order, unicode intact."""
    fields = {"title": "Réseau en panne", "ticket_details": "No internet", "due_date": "", "email_id": "a@b.io",
              "extra": {"n": 1}}
    body = adapter().build_request("create_ticket", fields, {}).body
    assert isinstance(body, bytes)
    decoded = json.loads(body)
    assert decoded == [fields]
    assert list(decoded[0]) == list(fields)
    assert "Réseau".encode() in body


def test_request_does_not_change_the_fields() -> None:
    """Building the request leaves the rendered fields as they were."""
    fields = {"title": "t", "email_id": "a@b.io"}
    adapter().build_request("create_ticket", fields, {})
    assert fields == {"title": "t", "email_id": "a@b.io"}


@pytest.mark.parametrize("fields", [{}, {"title": None}, {"title": ""}, {"title": "   "}, {"ticket_details": "x"}])
def test_missing_title_is_a_mapping_error(fields: dict[str, Any]) -> None:
    """Kapture needs a non-empty title, so a body without one is refused before sending, naming `title`."""
    with pytest.raises(MappingError) as info:
        adapter().build_request("create_ticket", fields, {})
    assert info.value.path == "title"
    assert str(info.value) == "title: kapture create_ticket needs a non-empty `title`"


def test_unknown_action_is_a_mapping_error() -> None:
    """An action Kapture does not have is refused."""
    with pytest.raises(MappingError, match="kapture has no action 'close_ticket'; it takes: create_ticket, "
                                           "update_ticket"):
        adapter().build_request("close_ticket", {"title": "t"}, {})


def test_sandbox_uses_the_simulator_token() -> None:
    """A sandbox destination without a token sends the built-in simulator's key."""
    sandboxed = adapter(token="", base_url="http://127.0.0.1:8080/sandbox/kapture", sandbox=True)
    request = sandboxed.build_request("create_ticket", {"title": "t"}, {})
    assert request.headers["Authorization"] == f"Basic {SANDBOX_TOKEN}"
    assert request.url == "http://127.0.0.1:8080/sandbox/kapture" + CREATE_PATH


@pytest.mark.parametrize("options", [{"token": "real-key"}, {"tokens": {"add": "real-key"}}])
def test_a_sandbox_with_a_token_is_refused(options: dict[str, Any]) -> None:
    """A sandbox sends only the simulator's key: a token beside `sandbox: true` (a real config with the flag
    added) is refused, naming the key and what to do, never quoting the token."""
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert({"vendor": "kapture", "sandbox": True, "base_url": "http://sandbox:9090/kapture"} | options,
                        KaptureOptions)
    assert "remove `" in str(caught.value) and "drop `sandbox: true`" in str(caught.value)
    assert "real-key" not in str(caught.value)


def test_a_sandbox_naming_the_demo_token_sends_the_demo_token() -> None:
    """The simulator's own demo key may be written out; every operation sends it."""
    sandboxed = adapter(token=SANDBOX_TOKEN, sandbox=True)
    assert {sandboxed.token_for(op) for op in ("add", "update", "pull", "get")} == {SANDBOX_TOKEN}


def test_options_require_a_token_unless_sandbox() -> None:
    """A real Kapture destination must have a token; a sandbox need not."""
    with pytest.raises(msgspec.ValidationError, match="`token` is required"):
        msgspec.convert({"vendor": "kapture", "base_url": BASE}, KaptureOptions)
    assert msgspec.convert({"vendor": "kapture", "sandbox": True}, KaptureOptions).token == ""


def test_options_refuse_unknown_keys() -> None:
    """A misspelt Kapture option is an error."""
    with pytest.raises(msgspec.ValidationError, match="unknown field `tokn`"):
        msgspec.convert({"vendor": "kapture", "base_url": BASE, "token": "t", "tokn": "x"}, KaptureOptions)


def test_registry_knows_kapture() -> None:
    """The registry maps `kapture` to this adapter, its options and its two actions."""
    assert adapter_class("kapture") is KaptureAdapter
    assert vendor_options("kapture") is KaptureOptions
    assert KaptureAdapter.actions == frozenset({"create_ticket", "update_ticket"})
    with pytest.raises(KeyError, match="unknown vendor 'zendesk'; known vendors: http, kapture, leadsquared, "
                                       "netgroot"):
        adapter_class("zendesk")


# -- classification -----------------------------------------------------------------------------


def test_success_carries_the_ticket_id() -> None:
    """The documented success answer is a success with its `ticket_id`."""
    assert classify(200, SUCCESS) == Outcome(classification="success", ticket_id="713516551148")


@pytest.mark.parametrize("status", [200, 201])
def test_minimal_success(status: int) -> None:
    """Any 2xx with `status: success` is a success, even without a ticket id."""
    assert classify(status, {"status": "success"}) == Outcome(classification="success", ticket_id=None)


def test_success_inside_a_one_item_array() -> None:
    """An answer wrapped in a one-item array is read like the bare object."""
    assert classify(200, [SUCCESS]) == Outcome(classification="success", ticket_id="713516551148")


@pytest.mark.parametrize(
    "body",
    [
        {"Status": "Success", "ticket_id": "42"},
        {"STATUS": "SUCCESS", "ticket_id": "42"},
        {"status": "success", "ticket_id": 42},
    ],
)
def test_status_key_and_value_are_case_insensitive(body: dict[str, Any]) -> None:
    """`status`/`Status` and `success`/`Success` are read case-insensitively; a numeric id becomes text."""
    assert classify(200, body) == Outcome(classification="success", ticket_id="42")


def test_failed_body_with_http_200_is_permanent() -> None:
    """`status: failed` is a failure whatever the HTTP code, carrying Kapture's message."""
    outcome = classify(200, {"message": "title is missing", "status": "failed"})
    assert outcome == Outcome(classification="permanent", error="kapture: HTTP 200: title is missing")


def test_capitalised_failed_body_is_permanent() -> None:
    """Older pages' capitalised `Status`/`Message` keys are read too."""
    outcome = classify(200, {"Message": "No Data found/ticket_id is missing", "Status": "failed"})
    assert outcome == Outcome(classification="permanent",
                              error="kapture: HTTP 200: No Data found/ticket_id is missing")


@pytest.mark.parametrize(
    ("body", "reason"),
    [({"status": "pending"}, "status 'pending'"), ({"result": "ok"}, "status None"), ({}, "status None")],
)
def test_anything_but_success_is_permanent(body: dict[str, Any], reason: str) -> None:
    """A body whose status is anything but success (or absent) is a failure."""
    assert classify(200, body) == Outcome(classification="permanent", error=f"kapture: HTTP 200: {reason}")


@pytest.mark.parametrize(("status", "classification"), [(400, "permanent"), (404, "permanent"),
                                                        (422, "permanent"), (301, "retry")])
def test_success_body_with_a_non_2xx_status_is_not_a_success(status: int, classification: str) -> None:
    """A success body under a non-2xx status is not trusted as a success (a redirect: the destination's URL is
    wrong, a retry that counts against it)."""
    assert classify(status, {"status": "success", "ticket_id": "1"}).classification == classification


@pytest.mark.parametrize("status", [200, 400, 401, 500])
@pytest.mark.parametrize(
    "body",
    [
        {"message": "Invalid Auth Key", "status": "failed"},
        {"Message": "Invalid Auth Key", "Status": "failed"},
        {"message": "invalid auth key"},
        [{"message": "Invalid Auth Key", "status": "failed"}],
    ],
)
def test_invalid_auth_key_is_auth_whatever_the_status(status: int, body: Any) -> None:
    """Kapture's "Invalid Auth Key" is an auth failure even under HTTP 200 or 5xx, keeping its message."""
    outcome = classify(status, body)
    assert outcome.classification == "auth"
    assert outcome.error is not None
    assert outcome.error.lower() == "kapture: invalid auth key"


@pytest.mark.parametrize("status", [200, 401])
@pytest.mark.parametrize("body", [
    {"Message": "Auth Key Expired", "Status": "Fail"},
    {"message": "auth key expired", "status": "fail"},
    [{"Message": "AUTH KEY EXPIRED", "Status": "FAIL"}],
])
def test_an_expired_key_is_auth_not_permanent(status: int, body: Any) -> None:
    """The legacy pages' `"Status": "Fail"` / "Auth Key Expired", in any case, is auth (the destination
    pauses), not a permanent rejection of the ticket."""
    outcome = classify(status, body)
    assert outcome.classification == "auth"
    assert outcome.error is not None and outcome.error.lower() == "kapture: auth key expired"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_server_errors_and_throttling_are_retried(status: int) -> None:
    """5xx, 429 and 408 are retried."""
    outcome = classify(status, b"<html>busy</html>")
    assert outcome == Outcome(classification="retry", error=f"HTTP {status}", retry_after=None,
                              rate_limited=status == 429)


def test_retry_keeps_kapture_message() -> None:
    """A retried answer with a Kapture message carries it in the error."""
    outcome = classify(503, {"status": "failed", "message": "try later"})
    assert outcome == Outcome(classification="retry", error="HTTP 503: try later", retry_after=None)


def test_retry_after_seconds_is_honoured() -> None:
    """A Retry-After in seconds is passed on."""
    assert classify(429, b"", {"Retry-After": "30"}).retry_after == 30.0


def test_retry_after_http_date_is_honoured() -> None:
    """A Retry-After HTTP date far ahead is turned into a large positive number of seconds."""
    retry_after = classify(503, b"", {"Retry-After": "Fri, 31 Dec 2100 23:59:59 GMT"}).retry_after
    assert retry_after is not None
    assert retry_after > 365 * 24 * 3600


@pytest.mark.parametrize("status", [401, 403])
def test_auth_statuses(status: int) -> None:
    """401 and 403 are auth failures even with a body that is not JSON."""
    assert classify(status, b"Unauthorized") == Outcome(
        classification="auth", error=f"HTTP {status}: the vendor refused the credentials")


@pytest.mark.parametrize("body", [b"OK", b"", b"<html>ok</html>", b"[1, 2]", b"[]", b'"success"', b"null"])
def test_non_json_object_under_200_is_unknown(body: bytes) -> None:
    """A 200 whose body is not a JSON object names no ticket, but Kapture said it acted: the outcome is in doubt
    (held, or looked up), never a permanent failure whose replay would make a second ticket."""
    outcome = classify(200, body)
    assert outcome.classification == "unknown"
    assert outcome.error is not None
    assert outcome.error.startswith("kapture: HTTP 200 but the answer is not a JSON object, so no ticket "
                                    "is named: ")
    assert outcome.error.endswith(body.decode())


@pytest.mark.parametrize("status", [400, 404, 422])
def test_non_json_object_under_a_4xx_is_permanent(status: int) -> None:
    """A refusal whose body is not a JSON object is a failure, naming the body."""
    outcome = classify(status, b"<html>bad</html>")
    assert outcome == Outcome(classification="permanent",
                              error=f"kapture: HTTP {status} with a body that is not a JSON object: <html>bad</html>")


@pytest.mark.parametrize(("body", "title"), [
    # a title cut inside an emoji: an escaped lone surrogate, which msgspec refuses
    (b'{"status":"success","message":"Ticket created","ticket_id":"713516551148","title":"Router \\ud83d"}',
     "Router \\ud83d"),
    # one Latin-1 byte: not UTF-8
    (b'{"status":"success","ticket_id":"713516551148","title":"Caf\xe9"}', "Caf\\xe9"),
])
def test_a_success_msgspec_cannot_decode_is_read_leniently(body: bytes, title: str) -> None:
    """A success echoing text that is not valid JSON text (a lone surrogate, a byte that is not UTF-8) still made
    the ticket: its id is read, the text written out as the store keeps it."""
    assert classify(200, body) == Outcome(classification="success", ticket_id="713516551148")
    _, parsed = read_answer(200, {}, body)
    assert parsed["title"] == title


def test_permanent_error_excerpt_is_bounded() -> None:
    """A huge non-JSON body appears in the error only as a bounded excerpt."""
    outcome = classify(200, b"x" * 10_000)
    assert outcome.error is not None
    assert len(outcome.error) < 300
    assert outcome.error.endswith("…")


# -- ticket ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (SUCCESS, "713516551148"),
        ({"ticket_id": "1", "Ticket Id": "2", "ticket": {"ticketId": "3"}}, "1"),
        ({"Ticket Id": "2", "ticket": {"ticketId": "3"}}, "2"),
        ({"ticket": {"ticketId": "3", "id": 9}}, "3"),
        ({"ticket_id": "", "Ticket Id": None, "ticket": {"ticketId": "3"}}, "3"),
        ({"ticket_id": 713516551148}, "713516551148"),
        ({"ticket": {"id": 530348198}}, None),
        ({"ticket": {"ticketId": ""}}, None),
        ({"ticket": "713"}, None),
        ({}, None),
    ],
)
def test_ticket_id_fallbacks(body: dict[str, Any], expected: str | None) -> None:
    """The id is `ticket_id`, else `Ticket Id`, else `ticket.ticketId`; the numeric task id is not used."""
    assert ticket_id_of(body).text == expected


# -- update_ticket ------------------------------------------------------------------------------

UPDATE = {"comment": "Replaced the router", "ticket_id": "713516551148", "callback_time": "2024-04-22 14:31:33",
          "sub_status": "PS", "queue": "L2", "disposition": "Resolved"}


def test_update_posts_an_array_of_one_object_to_the_update_url() -> None:
    """update_ticket is a POST of the fields, in order, as a one-item array to the documented update path."""
    request = adapter(token="abc").build_request("update_ticket", UPDATE, {})
    assert request.method == "POST"
    assert request.url == BASE + UPDATE_PATH
    assert request.headers == {"Authorization": "Basic abc", "Content-Type": "application/json"}
    decoded = json.loads(request.body)
    assert decoded == [UPDATE]
    assert list(decoded[0]) == list(UPDATE)


def test_update_sends_a_numeric_ticket_id_as_text() -> None:
    """Kapture documents ticket_id as a string, so a number rendered from a payload is sent as text."""
    body = adapter().build_request("update_ticket", {"ticket_id": 713516551148, "sub_status": "CL"}, {}).body
    assert json.loads(body) == [{"ticket_id": "713516551148", "sub_status": "CL"}]


@pytest.mark.parametrize("value", [None, "", "  ", "absent"])
def test_update_needs_sub_status(value: Any) -> None:
    """Without a sub_status the update is refused before sending, naming the field."""
    fields = {k: v for k, v in UPDATE.items() if k != "sub_status"}
    if value != "absent":
        fields["sub_status"] = value
    with pytest.raises(MappingError) as info:
        adapter().build_request("update_ticket", fields, {})
    assert info.value.path == "sub_status"
    assert str(info.value) == "sub_status: kapture update_ticket needs a non-empty `sub_status`"


@pytest.mark.parametrize("value", [None, "", "  ", "absent"])
def test_update_without_ticket_id_or_ticket_is_refused(value: Any) -> None:
    """An update with no ticket_id field and no follow-up ticket is refused, naming ticket_id and the way out."""
    fields = {k: v for k, v in UPDATE.items() if k != "ticket_id"}
    if value != "absent":
        fields["ticket_id"] = value
    with pytest.raises(MappingError) as info:
        adapter().build_request("update_ticket", fields, {})
    assert info.value.path == "ticket_id"
    assert "set `ticket_id` (e.g. \"{{ ticket.id }}\") or send this as a follow-up" in str(info.value)


@pytest.mark.parametrize("value", ["19/04/2024 14:19", "2024-04-22", "2024-04-22T14:31:33", "2024-13-01 00:00:00",
                                   "2024-04-22 14:31", 1713516551, "tomorrow"])
def test_update_refuses_a_callback_time_in_another_format(value: Any) -> None:
    """A callback_time not in yyyy-MM-dd HH:mm:ss is a mapping error naming the value and the right format."""
    with pytest.raises(MappingError) as info:
        adapter().build_request("update_ticket", {**UPDATE, "callback_time": value}, {})
    assert info.value.path == "callback_time"
    assert str(info.value) == (f"callback_time: {value!r} is not a date and time in Kapture's format "
                               "yyyy-MM-dd HH:mm:ss (e.g. '2024-04-19 14:19:11')")


@pytest.mark.parametrize("value", ["", None, "2024-02-29 23:59:59"])
def test_update_takes_an_empty_or_well_formed_callback_time(value: Any) -> None:
    """An empty callback_time (the documented "no callback") or a correct one is sent as given."""
    body = adapter().build_request("update_ticket", {**UPDATE, "callback_time": value}, {}).body
    assert json.loads(body)[0]["callback_time"] == value


def test_update_success_carries_the_ticket_id_from_the_ticket() -> None:
    """The documented update answer has no top-level ticket_id; the id is read from `ticket.ticketId`."""
    body = {"ticket": {"id": 530348198, "ticketId": "713516551148", "substatus": "PS"}, "Additional_details": {},
            "message": "Status and Comment have been updated.\n", "status": "success"}
    outcome = adapter().classify("update_ticket", 200, {}, json.dumps(body).encode())
    assert outcome == Outcome(classification="success", ticket_id="713516551148")


@pytest.mark.parametrize(("message", "classification"), [
    ("No Data found/ticket_id is missing", "permanent"),
    ("Invalid Format.callback_date should be yyyy-MM-dd hh:mm:ss.", "permanent"),
    ("Invalid Auth Key", "auth"),
])
def test_update_failures(message: str, classification: str) -> None:
    """The update page's documented failures, inside HTTP 200, are permanent (or auth for the key)."""
    outcome = adapter().classify("update_ticket", 200, {}, json.dumps({"message": message, "status": "failed"})
                                 .encode())
    assert outcome.classification == classification
    assert outcome.error is not None
    assert message in outcome.error


def test_a_ticket_titled_like_an_auth_failure_is_not_one() -> None:
    """Only a text `message` is read for "Invalid Auth Key"; a list of tickets that mentions it is a success."""
    body = {"message": [{"taskTitle": "Invalid Auth Key"}], "status": "success"}
    assert adapter().classify("update_ticket", 200, {}, json.dumps(body).encode()).classification == "success"


@pytest.mark.parametrize(("action", "fields", "problems"), [
    ("create_ticket", ["title", "email_id"], []),
    ("create_ticket", ["email_id"], ["title: kapture create_ticket needs a `title` field"]),
    ("update_ticket", ["ticket_id", "sub_status", "comment"], []),
    ("update_ticket", ["comment"], ["sub_status: kapture update_ticket needs a `sub_status` field"]),
])
def test_static_check_names_the_fields_an_action_always_needs(action: str, fields: list[str],
                                                                problems: list[str]) -> None:
    """A mapping without a field its action always needs is reported before any event, naming the field."""
    assert KaptureAdapter.static_check(action, fields, {}) == problems


def test_pull_end_date_option_takes_two_readings_only() -> None:
    """`pull_end_date` is `same_day` by default, may be `next_day`, and refuses anything else."""
    assert KaptureOptions(vendor="kapture", sandbox=True).pull_end_date == "same_day"
    assert msgspec.convert({"vendor": "kapture", "sandbox": True, "pull_end_date": "next_day"},
                           KaptureOptions).pull_end_date == "next_day"
    with pytest.raises(msgspec.ValidationError, match="pull_end_date"):
        msgspec.convert({"vendor": "kapture", "sandbox": True, "pull_end_date": "inclusive"}, KaptureOptions)


# -- follow-ups and attachments ----------------------------------------------------------------------

TICKET = {"id": "713516551148", "key": None, "destination": "kapture-support", "created_at": "2026-11-26T10:00:00Z",
          "messages": 1, "last_message_at": "2026-11-26T10:00:00Z"}
FILES = [{"name": "router.jpg", "content_type": "image/jpeg", "size": 12_600, "sha256": "a" * 64, "stored": True},
         {"name": "log.txt", "content_type": "text/plain", "size": 300, "sha256": "b" * 64, "stored": True}]


def test_follow_up_update_takes_the_ticket_id_from_the_ticket() -> None:
    """A follow-up's update without a ticket_id field addresses the conversation's ticket, its reply as comment."""
    request = adapter().build_request("update_ticket", {"sub_status": "P", "comment": "Still down"}, {},
                                      ticket=TICKET)
    assert request.url == BASE + "/update-ticket-from-other-source.html/v.2.0"
    assert json.loads(request.body) == [{"sub_status": "P", "comment": "Still down", "ticket_id": "713516551148"}]


def test_a_ticket_id_field_wins_over_the_follow_ups_ticket() -> None:
    """A mapping that names the ticket (e.g. a partner's status change) keeps its own ticket_id."""
    body = adapter().build_request("update_ticket", {"ticket_id": "999", "sub_status": "CL"}, {}, ticket=TICKET).body
    assert json.loads(body)[0]["ticket_id"] == "999"


def test_files_are_listed_in_the_ticket_details_of_a_create() -> None:
    """Kapture has no file endpoint: a `files` field becomes the names and sizes under ticket_details."""
    body = adapter().build_request("create_ticket", {"title": "t", "ticket_details": "No internet",
                                                     "files": FILES}, {}).body
    assert json.loads(body) == [{"title": "t", "ticket_details": "No internet\n\nAttachments:\n- router.jpg "
                                                                 "(12.3 KB)\n- log.txt (300 B)"}]


def test_files_are_listed_in_the_comment_of_an_update() -> None:
    """On an update the list goes to the comment; with no comment it is the comment."""
    body = adapter().build_request("update_ticket", {"sub_status": "P", "files": FILES[:1]}, {}, ticket=TICKET).body
    assert json.loads(body)[0]["comment"] == "Attachments:\n- router.jpg (12.3 KB)"
