"""The LeadSquared adapter: the ticket envelope, the lead-field rule, and how answers are classified."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from bridge.config import RateLimit
from bridge.errors import MappingError
from bridge.vendors.base import Outcome
from bridge.vendors.leadsquared import (
    SANDBOX_ACCESS_KEY,
    SANDBOX_ORG,
    SANDBOX_SECRET_KEY,
    LeadSquaredAdapter,
    LeadSquaredOptions,
)
from bridge.vendors.registry import adapter_class, vendor_options

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
    """`leadsquared` names this adapter and its options; it creates and updates tickets, adds activities and notes."""
    assert adapter_class("leadsquared") is LeadSquaredAdapter
    assert vendor_options("leadsquared") is LeadSquaredOptions
    assert LeadSquaredAdapter.actions == frozenset({"create_ticket", "update_ticket", "add_activity", "add_note"})


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


def test_success_stores_ticket_id_and_key() -> None:
    """The documented success stores the numeric Id (what later calls take) as the ticket id, Key beside it."""
    assert classify(200, SUCCESS) == Outcome(classification="success", ticket_id="34", ticket_key="#034")


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


def test_a_server_fault_is_retried() -> None:
    """A 500 whose exception does not say the request is wrong is retried."""
    body = {"Status": "Error", "ExceptionType": "MXDatabaseException", "ExceptionMessage": "timeout"}
    assert classify(500, body).classification == "retry"
    assert classify(502, b"<html>Bad Gateway</html>").classification == "retry"


def test_rate_limited_is_a_retry_without_retry_after() -> None:
    """The documented 429 is a retry; with no Retry-After the dispatcher backs off by the limiter's window."""
    body = {"Status": "Error", "ExceptionType": "MXAPIRateLimitExceededException",
            "ExceptionMessage": "API calls exceeded the limit of 25 in 5 second(s)"}
    assert classify(429, body) == Outcome(
        classification="retry", error="leadsquared: HTTP 429: MXAPIRateLimitExceededException: API calls exceeded "
                                      "the limit of 25 in 5 second(s)")
    assert classify(429, body, {"Retry-After": "3"}).retry_after == 3.0


@pytest.mark.parametrize("status", [401, 403])
def test_bad_keys_are_auth(status: int) -> None:
    """401 or 403 means the access or secret key was refused: auth, not retried."""
    outcome = classify(status, {"Status": "Error", "ExceptionMessage": "Invalid AccessKey or SecretKey"})
    assert outcome.classification == "auth"
    assert outcome.error == (f"leadsquared: HTTP {status}: the access or secret key was refused: "
                             "Invalid AccessKey or SecretKey")


@pytest.mark.parametrize("status", [400, 404])
def test_bad_request_and_not_found_are_permanent(status: int) -> None:
    """400 (body not as the API says) and 404 (wrong org or path) are permanent, with the vendor's words."""
    outcome = classify(status, {"Status": "Error", "ExceptionMessage": "bad"})
    assert outcome == Outcome(classification="permanent", error=f"leadsquared: HTTP {status}: bad")


def test_a_2xx_without_success_is_permanent() -> None:
    """A 200 whose Status is not Success, or whose body is not JSON, is not a success."""
    assert classify(200, {"Status": "Pending"}).classification == "permanent"
    outcome = classify(200, b"OK")
    assert outcome == Outcome(classification="permanent",
                              error="leadsquared: HTTP 200 with a body that is not a JSON object: OK")
