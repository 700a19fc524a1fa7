"""The LeadSquared adapter: the ticket envelope, the lead-field rule, and how answers are classified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge.config import RateLimit
from bridge.errors import MappingError
from bridge.vendors.base import Outcome
from bridge.vendors.files import parse_multipart
from bridge.vendors.leadsquared import (
    SANDBOX_ACCESS_KEY,
    SANDBOX_ORG,
    SANDBOX_SECRET_KEY,
    LeadSquaredAdapter,
    LeadSquaredOptions,
)
from bridge.vendors.registry import adapter_class, vendor_options
from bridge.yamlfile import KeyValueError
from handlers.attachments import attachment, save_attachments

BASE = "https://apigw.service-in.leadsquared.com"
FIELDS = {"LeadDetail.EmailAddress": "asha@example.com", "Title": "Router down", "Description": "No internet",
          "Priority": "High", "Channel": "Web"}
SUCCESS = {"Status": "Success", "ReasonForFailure": None, "Id": "34", "Message": None,
           "TicketId": "27e8259d-0681-4adb-b5e8-14f66a208dd4", "Key": "#034"}


def options(**kwargs: Any) -> LeadSquaredOptions:
    table = {"vendor": "leadsquared", "base_url": BASE, "org_id": "org-9", "access_key": "ak", "secret_key": "sk",
             **kwargs}
    return msgspec.convert(table, LeadSquaredOptions)


def adapter(**kwargs: Any) -> LeadSquaredAdapter:
    opts = options(**kwargs)
    return LeadSquaredAdapter("lsq", opts, opts.base_url or "http://sandbox")


def body_of(fields: dict[str, Any], mapping_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return json.loads(adapter(**kwargs).build_request("create_ticket", fields, mapping_options or {}).body)


def classify(status: int, body: Any, headers: dict[str, str] | None = None) -> Outcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return adapter().classify("create_ticket", status, headers or {}, raw)


# -- options ------------------------------------------------------------------------------------


def test_registry_knows_leadsquared() -> None:
    """`leadsquared` names this adapter and its options; it creates, updates and deletes tickets, adds activities
    and notes."""
    assert adapter_class("leadsquared") is LeadSquaredAdapter
    assert vendor_options("leadsquared") is LeadSquaredOptions
    assert LeadSquaredAdapter.actions == frozenset({"create_ticket", "update_ticket", "add_activity", "add_note",
                                                    "delete_ticket"})


def test_rate_limit_defaults_to_25_per_5_seconds() -> None:
    """Without a rate_limit, a LeadSquared destination takes the vendor's documented 25 requests per 5 s."""
    assert options().rate_limit == RateLimit(requests=25, per_seconds=5.0)
    assert options(rate_limit={"requests": 10, "per_seconds": 1}).rate_limit == RateLimit(requests=10, per_seconds=1)


def test_real_destinations_need_org_and_keys() -> None:
    """A destination that is not a sandbox must name the org and both keys; the error names each one missing."""
    with pytest.raises(msgspec.ValidationError, match="`org_id`, `secret_key` required"):
        msgspec.convert({"vendor": "leadsquared", "base_url": BASE, "access_key": "ak"}, LeadSquaredOptions)


def test_sandbox_needs_nothing_and_uses_the_simulator_credentials() -> None:
    """A sandbox destination works without org or keys, sending the simulator's well-known ones."""
    opts = msgspec.convert({"vendor": "leadsquared", "sandbox": True}, LeadSquaredOptions)
    request = LeadSquaredAdapter("lsq", opts, "http://127.0.0.1:1").build_request("create_ticket", FIELDS, {})
    assert request.url == f"http://127.0.0.1:1/api/tenants/{SANDBOX_ORG}/tickets"
    assert request.headers["X-LSQ-ACCESS-KEY"] == SANDBOX_ACCESS_KEY
    assert request.headers["X-LSQ-SECRET-KEY"] == SANDBOX_SECRET_KEY


# -- the request --------------------------------------------------------------------------------


def test_request_posts_to_the_tenant_tickets_url_with_both_keys() -> None:
    """create_ticket is a JSON POST to {base}/api/tenants/{org}/tickets with the access and secret key headers."""
    request = adapter().build_request("create_ticket", FIELDS, {})
    assert (request.method, request.url) == ("POST", BASE + "/api/tenants/org-9/tickets")
    assert request.headers == {"X-LSQ-ACCESS-KEY": "ak", "X-LSQ-SECRET-KEY": "sk",
                               "Content-Type": "application/json"}


def test_envelope_wraps_the_fields_in_mapping_order() -> None:
    """The body is the documented envelope, with one SchemaName/Value pair per field in the mapping's order."""
    body = body_of(FIELDS)
    assert body == {
        "TypeId": "1", "Id": None, "LeadId": None,
        "Fields": [{"SchemaName": k, "Value": v} for k, v in FIELDS.items()],
        "RelatedTicketTypeId": 1,
    }
    assert list(body) == ["TypeId", "Id", "LeadId", "Fields", "RelatedTicketTypeId"]


def test_lead_id_goes_in_the_envelope_not_in_fields() -> None:
    """A `LeadId` field fills the envelope's LeadId and is not repeated in Fields."""
    body = body_of({"Title": "t", "LeadId": "45b5fded-e696-45a6-9fbb-c6af6178229e"})
    assert body["LeadId"] == "45b5fded-e696-45a6-9fbb-c6af6178229e"
    assert body["Fields"] == [{"SchemaName": "Title", "Value": "t"}]


def test_type_ids_come_from_the_destination_then_the_mapping() -> None:
    """TypeId and RelatedTicketTypeId default to 1, may be set per destination, and per mapping over that."""
    assert (body_of(FIELDS)["TypeId"], body_of(FIELDS)["RelatedTicketTypeId"]) == ("1", 1)
    dest = body_of(FIELDS, type_id="3", related_ticket_type_id=3)
    assert (dest["TypeId"], dest["RelatedTicketTypeId"]) == ("3", 3)
    mapped = body_of(FIELDS, {"TypeId": 5, "RelatedTicketTypeId": 6}, type_id="3")
    assert (mapped["TypeId"], mapped["RelatedTicketTypeId"]) == ("5", 6)


@pytest.mark.parametrize("lead", [{"LeadDetail.Phone": "+919876543210"}, {"LeadId": "abc"},
                                  {"LeadDetail.EmailAddress": "a@b.io"}])
def test_any_one_lead_field_is_enough(lead: dict[str, Any]) -> None:
    """One of LeadId, LeadDetail.EmailAddress or LeadDetail.Phone with a value satisfies the rule."""
    assert body_of({"Title": "t", **lead})["Fields"][0] == {"SchemaName": "Title", "Value": "t"}


@pytest.mark.parametrize("fields", [{"Title": "t"}, {"Title": "t", "LeadDetail.EmailAddress": "", "LeadId": None},
                                    {"Title": "t", "LeadDetail.Phone": "  "}])
def test_without_a_lead_field_nothing_is_sent(fields: dict[str, Any]) -> None:
    """With no lead field holding a value the request is refused before sending, naming the three choices."""
    with pytest.raises(MappingError) as info:
        adapter().build_request("create_ticket", fields, {})
    assert str(info.value) == ("LeadDetail.EmailAddress: leadsquared needs one of LeadId, LeadDetail.EmailAddress, "
                               "LeadDetail.Phone with a value; all are missing or empty")


def test_unknown_action_is_refused() -> None:
    """An action LeadSquared does not have is refused, listing those it has."""
    with pytest.raises(MappingError, match="leadsquared has no action 'close_ticket'; it takes: create_ticket, "
                                           "update_ticket, add_activity, add_note"):
        adapter().build_request("close_ticket", FIELDS, {})


@pytest.mark.parametrize(("fields", "mapping_options", "problems"), [
    (["LeadDetail.EmailAddress", "Title"], {"TypeId": "2"}, []),
    (["Title"], {}, ["fields: leadsquared create_ticket needs one of LeadId, LeadDetail.EmailAddress, "
                     "LeadDetail.Phone"]),
    (["LeadId"], {"TypeID": 2}, ["options.TypeID: unknown LeadSquared option; known: TypeId, RelatedTicketTypeId"]),
])
def test_static_check(fields: list[str], mapping_options: dict[str, Any], problems: list[str]) -> None:
    """A mapping with no lead field, or an unknown option, is reported when the mappings load."""
    assert LeadSquaredAdapter.static_check("create_ticket", fields, mapping_options) == problems


# -- classification -----------------------------------------------------------------------------


def test_success_stores_ticket_id_key_and_uuid() -> None:
    """The documented success stores the numeric Id (what later calls take) as the ticket id, Key and the
    TicketId UUID beside it."""
    assert classify(200, SUCCESS) == Outcome(classification="success", ticket_id="34", ticket_key="#034",
                                             ticket_uuid="27e8259d-0681-4adb-b5e8-14f66a208dd4")


def test_success_without_id_falls_back_to_the_ticket_uuid() -> None:
    """A success that names only the TicketId UUID still records it."""
    assert classify(200, {"Status": "Success", "TicketId": "27e8259d"}).ticket_id == "27e8259d"


@pytest.mark.parametrize("status", [200, 500])
def test_status_error_is_never_a_success(status: int) -> None:
    """`"Status": "Error"` is a failure whatever the HTTP code; a validation error is permanent, even as 500."""
    body = {"Status": "Error", "ExceptionType": "MXInvalidInputException", "ExceptionMessage": "Title is mandatory"}
    assert classify(status, body) == Outcome(classification="permanent",
                                             error=f"leadsquared: HTTP {status}: MXInvalidInputException: "
                                                   "Title is mandatory")


def test_a_server_fault_without_an_exception_type_is_retried() -> None:
    """A 5xx that names no `MX…` exception (a system error, or not JSON) is retried."""
    assert classify(500, {"Status": "Error", "Message": "timeout"}).classification == "retry"
    assert classify(502, b"<html>Bad Gateway</html>").classification == "retry"


@pytest.mark.parametrize("status", [200, 400, 404, 500, 503])
@pytest.mark.parametrize("kind", ["MXUnknownException", "MXDatabaseException", "MXDuplicateEntryException",
                                  "mxInvalidInputException"])
def test_mx_exceptions_are_permanent_whatever_the_status(status: int, kind: str) -> None:
    """LeadSquared does not retry application errors (types starting with MX): neither does the bridge, even
    under a 5xx; the error keeps the type and message."""
    outcome = classify(status, {"Status": "Error", "ExceptionType": kind, "ExceptionMessage": "no"})
    assert outcome == Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: {kind}: no")


@pytest.mark.parametrize(("headers", "waited"), [({}, None), ({"Retry-After": "3"}, 5.0), ({"Retry-After": "9"}, 9.0)])
def test_rate_limited_waits_at_least_the_window(headers: dict[str, str], waited: float | None) -> None:
    """The documented 429 is a retry after the rate window at least: a shorter Retry-After is raised to it, and
    without one the delivery loop pauses the destination for its limiter's window (None here)."""
    body = {"Status": "Error", "ExceptionType": "MXAPIRateLimitExceededException",
            "ExceptionMessage": "API calls exceeded the limit of 25 in 5 second(s)"}
    assert classify(429, body, headers) == Outcome(
        classification="retry", error="leadsquared: HTTP 429: MXAPIRateLimitExceededException: API calls exceeded "
                                      "the limit of 25 in 5 second(s)", retry_after=waited, rate_limited=True)


def test_a_rate_limit_inside_a_200_is_said_to_be_one() -> None:
    """MXAPIRateLimitExceededException inside an HTTP 200 is read as a rate limit (`rate_limited`), so that the
    delivery loop pauses the destination, not only this delivery, though the status is no 429."""
    outcome = classify(200, {"Status": "Error", "ExceptionType": "MXAPIRateLimitExceededException"})
    assert outcome.classification == "retry" and outcome.rate_limited and outcome.retry_after == 5.0


def test_the_window_waited_is_the_destinations() -> None:
    """A destination on the Lite plan's preset waits its 5 s window; one with its own 1 s window waits 1 s."""
    body = json.dumps({"Status": "Error", "ExceptionType": "MXAPIRateLimitExceededException"}).encode()
    assert adapter(rate_limit="leadsquared-lite").classify("create_ticket", 200, {}, body).retry_after == 5.0
    made = adapter(rate_limit={"requests": 3, "per_seconds": 1})
    assert made.classify("create_ticket", 200, {}, body).retry_after == 1.0


@pytest.mark.parametrize("status", [401, 403])
def test_bad_keys_are_auth(status: int) -> None:
    """401 or 403 on the Service CRM gateway means the keys were refused or the API is not enabled: auth."""
    outcome = classify(status, {"Status": "Error", "ExceptionMessage": "Invalid AccessKey or SecretKey"})
    assert outcome.classification == "auth"
    assert outcome.error == (f"leadsquared: HTTP {status}: the access or secret key was refused (or the Service "
                             "CRM API is not enabled in the account: Settings > Service Cloud > API "
                             "Configurations): Invalid AccessKey or SecretKey")


@pytest.mark.parametrize("host", ["https://api-in21.leadsquared.com", "https://api.leadsquared.com",
                                  "https://api.service-in.leadsquared.com", "https://apigw.service-in.evil.com"])
def test_a_401_off_the_gateway_says_it_looks_like_the_core_host(host: str) -> None:
    """A 401 from a host that is not an `apigw.service-…` host names the likely cause: the core API host."""
    made = adapter(base_url=host)
    outcome = made.classify("create_ticket", 401, {}, b'{"Status": "Error"}')
    assert outcome.classification == "auth"
    assert outcome.error is not None and outcome.error.startswith(
        "leadsquared: HTTP 401: this looks like the core API host; tickets need the Service CRM gateway host, "
        "and the Service CRM API must be enabled in the account")


@pytest.mark.parametrize(("preset", "requests"), [("leadsquared-lite", 2), ("leadsquared-pro", 5),
                                                  ("leadsquared-super", 10), ("leadsquared-basic", 10),
                                                  ("LeadSquared-Standard", 15), ("leadsquared-enterprise", 25)])
def test_rate_limit_presets_by_plan(preset: str, requests: int) -> None:
    """`rate_limit: leadsquared-<plan>` is that plan's calls per 5 s."""
    assert options(rate_limit=preset).rate_limit == RateLimit(requests=requests, per_seconds=5.0)


def test_an_unknown_preset_is_refused_at_its_key() -> None:
    """A misspelt plan is refused at `rate_limit`, listing the presets and the nearest one."""
    with pytest.raises(msgspec.ValidationError, match=r"unknown LeadSquared plan 'leadsquared-stadnard'.*"
                                                      r"did you mean 'leadsquared-standard'") as info:
        options(rate_limit="leadsquared-stadnard")
    assert isinstance(info.value.__cause__, KeyValueError)
    assert info.value.__cause__.key == ("rate_limit",)


@pytest.mark.parametrize("status", [400, 404])
def test_bad_request_and_not_found_are_permanent(status: int) -> None:
    """400 (body not as the API says) and 404 (wrong org or path) are permanent, with the vendor's words."""
    outcome = classify(status, {"Status": "Error", "ExceptionMessage": "bad"})
    assert outcome == Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: bad")


def test_a_2xx_without_success_is_permanent() -> None:
    """A 200 whose Status is not Success is not a success."""
    assert classify(200, {"Status": "Pending"}).classification == "permanent"


@pytest.mark.parametrize("body", [b"OK", b"", b"[]", b"null"])
def test_a_2xx_whose_body_is_not_a_json_object_is_unknown(body: bytes) -> None:
    """A 200 whose body is not a JSON object names no ticket, but LeadSquared said it acted: in doubt (held, or
    looked up), never permanent, whose replay would make a second ticket."""
    assert classify(200, body) == Outcome(
        classification="unknown", error="leadsquared: HTTP 200 but the answer is not a JSON object, so no "
                                        f"ticket is named: {body.decode()}")


@pytest.mark.parametrize("body", [
    b'{"Status":"Success","Id":"1001","TicketId":"9d1c","Subject":"Router \\ud83d"}',
    b'{"Status":"Success","Id":"1001","TicketId":"9d1c","Subject":"Caf\xe9"}',
])
def test_a_success_msgspec_cannot_decode_is_read_leniently(body: bytes) -> None:
    """A success echoing a subject cut inside an emoji, or with a Latin-1 byte, still names its ticket."""
    assert classify(200, body) == classify(200, body.replace(b"\\ud83d", b"x").replace(b"\xe9", b"e"))
    assert classify(200, body).ticket_id == "1001"


# -- follow-ups and attachments ----------------------------------------------------------------------

TICKET = {"id": "143", "key": "#143", "destination": "lsq", "created_at": "2026-11-26T10:00:00Z", "messages": 1,
          "last_message_at": "2026-11-26T10:00:00Z"}


def parts_of(request: Any) -> list[Any]:
    return parse_multipart(request.body, request.headers["Content-Type"])


def test_create_answer_gives_the_numeric_id_and_key_the_follow_ups_need() -> None:
    """The create's numeric Id becomes the ticket id (what update, note and activity take), its Key the key."""
    answer = {**SUCCESS, "Id": "143", "Key": "#143", "Message": "Ticket has been created successfully"}
    outcome = classify(200, answer)
    assert (outcome.ticket_id, outcome.ticket_key) == ("143", "#143")


def test_activity_is_posted_on_the_tickets_portal_as_inbound() -> None:
    """add_activity posts {Text, Direction: INBOUND} to …/ticket/{Id}/portal/activity with the follow-up's Id."""
    request = adapter().build_request("add_activity", {"Text": "Still down"}, {}, ticket=TICKET)
    assert (request.method, request.url) == ("POST", f"{BASE}/api/tenants/org-9/ticket/143/portal/activity")
    assert request.headers["X-LSQ-ACCESS-KEY"] == "ak"
    assert json.loads(request.body) == {"Text": "Still down", "Direction": "INBOUND"}


def test_note_is_an_internal_note_related_to_the_numeric_id() -> None:
    """add_note posts the documented internal-note body, RelatedTicketId as a number."""
    request = adapter().build_request("add_note", {"TextPart": "Customer wrote again"}, {}, ticket=TICKET)
    assert (request.method, request.url) == ("POST", f"{BASE}/api/tenants/org-9/internalnote/upload")
    assert json.loads(request.body) == {"TextPart": "Customer wrote again", "ActivityType": "CreateInternalNote",
                                        "StorageType": "Permament", "RelatedTicketId": 143}


def test_update_is_the_documented_multipart_put_even_without_files() -> None:
    """update_ticket PUTs …/tickets/{Id}/update as multipart: one ticketDTO part with the Id and the fields."""
    request = adapter().build_request("update_ticket", {"Status": "Open"}, {}, ticket=TICKET)
    assert (request.method, request.url) == ("PUT", f"{BASE}/api/tenants/org-9/tickets/143/update")
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    (dto,) = parts_of(request)
    assert (dto.name, json.loads(dto.content)) == ("ticketDTO", {
        "TypeId": "1", "Id": "143", "LeadId": None, "Fields": [{"SchemaName": "Status", "Value": "Open"}],
        "RelatedTicketTypeId": 1})


def test_delete_puts_the_numeric_id_in_the_trash() -> None:
    """delete_ticket PUTs …/tickets/trash with the numeric Id (from `Id`, else the ticket) as text."""
    request = adapter().build_request("delete_ticket", {}, {}, ticket=TICKET)
    assert (request.method, request.url) == ("PUT", f"{BASE}/api/tenants/org-9/tickets/trash")
    assert json.loads(request.body) == {"TicketIds": ["143"]}
    assert json.loads(adapter().build_request("delete_ticket", {"Id": "#012"}, {}).body) == {"TicketIds": ["12"]}


@pytest.mark.parametrize(("body", "expected"), [
    ({"SuccessfulIds": [143], "FailedIds": []}, Outcome(classification="success", ticket_id="143")),
    ({"SuccessfulIds": [], "FailedIds": [143]}, Outcome(
        classification="permanent", error="leadsquared: HTTP 200: the ticket was not deleted (FailedIds [143]); "
                                          "deleting takes an admin user's keys")),
    ({"SuccessfulIds": [], "FailedIds": []}, Outcome(
        classification="permanent",
        error="leadsquared: HTTP 200: nothing was deleted: {'successfulids': [], 'failedids': []}")),
])
def test_delete_answers(body: dict[str, Any], expected: Outcome) -> None:
    """The trash answer can partly succeed: the one Id sent in FailedIds is a failure, in SuccessfulIds a
    success."""
    assert adapter().classify("delete_ticket", 200, {}, json.dumps(body).encode()) == expected


def test_delete_takes_no_other_fields() -> None:
    """A delete mapping with fields besides `Id` is refused when mappings load."""
    assert LeadSquaredAdapter.static_check("delete_ticket", ["Id", "Status"], {}) == [
        "fields: leadsquared delete_ticket takes only `Id` (else the follow-up's ticket); not Status"]
    assert LeadSquaredAdapter.static_check("delete_ticket", [], {}) == []


@pytest.mark.parametrize(("fields", "ticket", "url_id"), [
    ({"Id": "77"}, TICKET, "77"),  # a field naming the ticket wins over the follow-up's
    ({"Id": "#077"}, None, "77"),  # a Key is read as its number
    ({}, {**TICKET, "id": 143}, "143"),
])
def test_the_ticket_id_comes_from_a_field_or_the_follow_up(fields: dict[str, Any], ticket: Any, url_id: str) -> None:
    """The numeric Id is taken from an `Id` field first, else the follow-up's ticket."""
    request = adapter().build_request("add_activity", {"Text": "x", **fields}, {}, ticket=ticket)
    assert request.url.endswith(f"/ticket/{url_id}/portal/activity")
    assert "Id" not in json.loads(request.body)


def test_a_follow_up_without_a_ticket_or_with_the_uuid_is_refused() -> None:
    """No Id and no ticket, or the TicketId UUID instead of the number, is a mapping error naming `Id`."""
    with pytest.raises(MappingError, match="leadsquared needs the ticket to act on") as info:
        adapter().build_request("add_activity", {"Text": "x"}, {})
    assert info.value.path == "Id"
    with pytest.raises(MappingError, match="is not LeadSquared's numeric ticket Id"):
        adapter().build_request("add_note", {"TextPart": "x"}, {}, ticket={"id": "27e8259d-0681-4adb"})


def test_activity_needs_text_and_a_known_direction() -> None:
    """Empty text or a direction other than INBOUND/OUTBOUND is refused before sending."""
    with pytest.raises(MappingError, match="needs text") as info:
        adapter().build_request("add_activity", {"Text": " "}, {}, ticket=TICKET)
    assert info.value.path == "Text"
    with pytest.raises(MappingError, match="'SIDEWAYS' is not one of INBOUND, OUTBOUND"):
        adapter().build_request("add_activity", {"Text": "x", "Direction": "sideways"}, {}, ticket=TICKET)


@pytest.mark.parametrize(("action", "fields", "problems"), [
    ("add_activity", ["Direction"], ["Text: leadsquared add_activity needs a `Text` field"]),
    ("add_note", ["Text"], ["TextPart: leadsquared add_note needs a `TextPart` field"]),
    ("update_ticket", ["Id"], ["fields: leadsquared update_ticket needs at least one ticket field to change "
                               "(e.g. Status)"]),
    ("add_activity", ["Text"], []),
])
def test_static_check_of_the_follow_up_actions(action: str, fields: list[str], problems: list[str]) -> None:
    """Each follow-up action's required text field is checked when the mappings load."""
    assert LeadSquaredAdapter.static_check(action, fields, {}) == problems


@pytest.mark.parametrize(("action", "body", "expected"), [
    ("add_activity", {"Id": "1", "Status": "Success", "Message": None}, Outcome(classification="success")),
    ("add_note", {"Message": "Activity Created", "RelatedTicketId": "143", "RelatedOrgId": "22824"},
     Outcome(classification="success", ticket_id="143")),
    ("update_ticket", {"Status": "Success", "Id": "143", "Key": "#143", "TicketId": None,
                       "Message": "Ticket properties have been updated successfully"},
     Outcome(classification="success", ticket_id="143", ticket_key="#143")),
])
def test_follow_up_answers_are_successes(action: str, body: Any, expected: Outcome) -> None:
    """The documented answers of activity, note and update are successes; an activity's Id is not a ticket id."""
    assert adapter().classify(action, 200, {}, json.dumps(body).encode()) == expected


def test_a_rate_limit_exception_inside_http_200_is_retried_after_the_window() -> None:
    """MXAPIRateLimitExceededException is reported with HTTP 200 too: a retry after 5 s, not a success."""
    body = {"Status": "Error", "ExceptionType": "MXAPIRateLimitExceededException",
            "ExceptionMessage": "API calls exceeded the limit of 20 in 5 second(s)"}
    outcome = classify(200, body)
    assert (outcome.classification, outcome.retry_after) == ("retry", 5.0)


def _stored(folder: Path, name: str, content: bytes) -> dict[str, Any]:
    item = attachment(name, "application/pdf", content)
    save_attachments([item], folder, 10_000_000)
    return item.meta


async def test_create_with_files_is_multipart_with_a_ticketdto_and_files_parts(tmp_path: Path) -> None:
    """With files, the create is multipart: ticketDTO holds the envelope, each file a `files` part with its bytes."""
    made = LeadSquaredAdapter("lsq", options(), BASE, attachments_dir=tmp_path)
    metas = [_stored(tmp_path, "a.pdf", b"%PDF-a"), _stored(tmp_path, "b.pdf", b"%PDF-bb")]
    fields = await made.prepare("create_ticket", {**FIELDS, "files": metas}, no_fetch)
    request = made.build_request("create_ticket", fields, {})
    assert (request.method, request.url) == ("POST", f"{BASE}/api/tenants/org-9/tickets")
    dto, *files = parts_of(request)
    assert (dto.name, json.loads(dto.content)["Fields"][1]) == ("ticketDTO", {"SchemaName": "Title",
                                                                              "Value": "Router down"})
    assert [(f.name, f.filename, f.content_type, f.content) for f in files] == [
        ("files", "a.pdf", "application/pdf", b"%PDF-a"), ("files", "b.pdf", "application/pdf", b"%PDF-bb")]


async def test_files_over_the_cap_are_named_in_the_description(tmp_path: Path) -> None:
    """A file over the destination's cap is not sent but named in Description; with none left, the create is JSON."""
    made = LeadSquaredAdapter("lsq", options(attachments={"max_count": 0}), BASE, attachments_dir=tmp_path)
    fields = await made.prepare("create_ticket", {**FIELDS, "files": [_stored(tmp_path, "a.pdf", b"abc")]},
                                no_fetch)
    request = made.build_request("create_ticket", fields, {})
    assert request.headers["Content-Type"] == "application/json"
    description = {f["SchemaName"]: f["Value"] for f in json.loads(request.body)["Fields"]}["Description"]
    assert description == ("No internet\n\nAttachments not sent:\n- a.pdf (3 B): over this destination's cap "
                           "of 0 files")


async def test_add_activity_does_not_read_files(tmp_path: Path) -> None:
    """Only create and update send files; prepare leaves other actions' fields alone."""
    fields = {"Text": "x"}
    assert await LeadSquaredAdapter("lsq", options(), BASE, attachments_dir=tmp_path).prepare(
        "add_activity", fields, no_fetch) is fields


async def no_fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    raise AssertionError("no look-up expected")
