"""The Netgroot ISP CRM adapter: subjects by name through a cached look-up, the create request, and answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog

from bridge.delivery.sender import MAX_RESPONSE_BYTES
from bridge.errors import MappingError
from bridge.vendors import netgroot
from bridge.vendors.base import Outcome, VendorAuthFailed, VendorUnavailable, decode_json
from bridge.vendors.netgroot import (
    CREATE_PATH,
    SUBJECTS_PATH,
    UNKNOWN_REFRESH_MIN_SECONDS,
    NetgrootAdapter,
    NetgrootOptions,
    SubjectCache,
    parse_subjects,
)
from bridge.vendors.registry import adapter_class
from bridge.yamlfile import KeyValueError
from tests.loop_cpu import LoopCpu, measured

BASE = "https://crm.example-isp.net"
SUBJECTS: dict[str, Any] = {"success": True, "data": [{"subject_id": 1, "name": "Technical Support"},
                                                      {"subject_id": 2, "name": "Billing Issue"}]}
DEFAULTS = {"type_id": 1, "status_id": 1, "priority_id": 2, "group_id": 3}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeVendor:
    """A getSubjects endpoint for `fetch`: answers in turn from `answers` (the last one repeats)."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers) or [(200, SUBJECTS)]
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def fetch(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.calls.append((url, headers))
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        await asyncio.sleep(0)
        return status, body if isinstance(body, bytes) else json.dumps(body).encode()


def adapter(clock: FakeClock | None = None, **kwargs: Any) -> NetgrootAdapter:
    opts = msgspec.convert({"vendor": "netgroot", "base_url": BASE, "token": "tok", **DEFAULTS, **kwargs},
                           NetgrootOptions)
    made = NetgrootAdapter("isp-crm", opts, BASE)
    if clock is not None:
        made.subjects.clock = clock
    return made


def build(fields: dict[str, Any], **kwargs: Any) -> Any:
    return json.loads(adapter(**kwargs).build_request("create_ticket", fields, {}).body)


def classify(status: int, body: Any) -> Outcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return adapter().classify("create_ticket", status, {}, raw)


# -- options and the request --------------------------------------------------------------------


def test_registry_and_options() -> None:
    """`netgroot` names this adapter; a real destination needs a token, and id defaults are whole numbers."""
    assert adapter_class("netgroot") is NetgrootAdapter
    with pytest.raises(msgspec.ValidationError, match="`auth` is required"):
        msgspec.convert({"vendor": "netgroot", "base_url": BASE}, NetgrootOptions)
    with pytest.raises(msgspec.ValidationError, match="type_id"):
        msgspec.convert({"vendor": "netgroot", "sandbox": True, "type_id": "one"}, NetgrootOptions)
    with pytest.raises(msgspec.ValidationError, match="'soon' is not a duration") as info:
        msgspec.convert({"vendor": "netgroot", "sandbox": True, "subjects_ttl": "soon"}, NetgrootOptions)
    assert isinstance(info.value.__cause__, KeyValueError)
    assert info.value.__cause__.key == ("subjects_ttl",)  # the config loader reports it at that key and line


async def test_request_has_the_six_fields_as_integers_and_text_with_bearer_auth() -> None:
    """CreateTicket is a JSON POST with the six required fields, ids as integers; the destination's
    credentials give the Bearer token the delivery loop adds."""
    made = adapter()
    request = made.build_request("create_ticket", {"subject_id": "2", "message": "Internet down",
                                                   "priority_id": 1}, {})
    assert (request.method, request.url) == ("POST", BASE + CREATE_PATH)
    assert request.headers == {"Content-Type": "application/json"}
    assert made.credentials is not None
    async with aiohttp.ClientSession() as session:
        assert await made.credentials.headers(session) == {"Authorization": "Bearer tok"}
    assert json.loads(request.body) == {"subject_id": 2, "type_id": 1, "status_id": 1, "priority_id": 1,
                                        "group_id": 3, "message": "Internet down"}


def test_other_fields_are_sent_after_the_six() -> None:
    """Fields beyond the six are passed through as rendered, after them."""
    body = build({"subject_id": 1, "message": "m", "username": "asha"})
    assert list(body) == ["subject_id", "type_id", "status_id", "priority_id", "group_id", "message", "username"]


@pytest.mark.parametrize(("field", "value"), [("subject_id", "two"), ("type_id", 1.5), ("group_id", True),
                                               ("priority_id", "-1"), ("status_id", [1])])
def test_an_id_that_is_not_a_whole_number_is_refused(field: str, value: Any) -> None:
    """An id field that is not an integer (or digits) is a mapping error naming the field and the value."""
    with pytest.raises(MappingError) as info:
        build({"subject_id": 1, "message": "m", field: value})
    assert str(info.value) == f"{field}: {value!r} is not an integer id: the ISP CRM takes a whole number here"


def test_an_id_with_no_default_and_no_field_is_refused() -> None:
    """Without a default on the destination, a missing id names where it may be set."""
    opts = msgspec.convert({"vendor": "netgroot", "base_url": BASE, "token": "t"}, NetgrootOptions)
    with pytest.raises(MappingError) as info:
        NetgrootAdapter("isp-crm", opts, BASE).build_request("create_ticket", {"subject_id": 1, "message": "m"}, {})
    assert str(info.value) == "type_id: required: set it in the mapping, or as `type_id` on the destination 'isp-crm'"


@pytest.mark.parametrize("message", [None, "", "  ", {"text": "x"}])
def test_message_must_be_text(message: Any) -> None:
    """An empty or non-text message is refused before sending."""
    with pytest.raises(MappingError, match="message: required text"):
        build({"subject_id": 1, "message": message})


def test_an_unresolved_subject_name_is_never_sent() -> None:
    """build_request refuses a `subject` name that prepare has not turned into an id."""
    with pytest.raises(MappingError, match="subject: the subject name was not resolved"):
        build({"subject": "Billing Issue", "message": "m"})
    with pytest.raises(MappingError, match="subject_id: netgroot needs"):
        build({"message": "m"})


@pytest.mark.parametrize(("fields", "problems"), [
    (["subject", "message"], []),
    (["subject_id", "message"], []),
    (["subject", "subject_id", "message"], ["subject: give either `subject` (a name) or `subject_id`, not both"]),
    (["message"], ["subject: netgroot create_ticket needs `subject` (a name) or `subject_id`"]),
    (["subject"], ["message: netgroot create_ticket needs a `message` field"]),
])
def test_static_check(fields: list[str], problems: list[str]) -> None:
    """A mapping must give the subject one way, and a message."""
    assert NetgrootAdapter.static_check("create_ticket", fields, {}) == problems


# -- classification -----------------------------------------------------------------------------


def test_success_carries_data_ticket_id() -> None:
    """The documented success gives `data.ticket_id` as the ticket id."""
    body = {"success": True, "message": "Ticket created successfully", "data": {"ticket_id": 101, "status": "Open"}}
    assert classify(200, body) == Outcome(classification="success", ticket_id="101")


@pytest.mark.parametrize(("status", "message"), [(404, "Subscriber not found"), (400, "Invalid request data"),
                                                 (200, "Ticket not created")])
def test_documented_failures_are_permanent(status: int, message: str) -> None:
    """404, 400 and `success: false` (whatever the status) are permanent, with the vendor's message."""
    assert classify(status, {"success": False, "message": message}) == Outcome(
        classification="permanent", error=f"netgroot: HTTP {status}: {message}")


@pytest.mark.parametrize(("body", "classification"), [
    (b'{"success": true, "data": {"ticket_id": 7}, "note": "caf\xe9"}', "success"),
    (b'["caf\xe9"]', "unknown"), (b"caf\xe9 <html>", "unknown")])
def test_an_answer_is_decoded_once(monkeypatch: pytest.MonkeyPatch, body: bytes, classification: str) -> None:
    """An answer is decoded once per classification: one that only the lenient decode reads (a Latin-1 byte)
    costs its time once, not twice."""
    decoded: list[bytes] = []

    def counted(raw: bytes) -> Any:
        decoded.append(raw)
        return decode_json(raw)

    monkeypatch.setattr(netgroot, "decode_json", counted)
    assert classify(200, body).classification == classification
    assert decoded == [body]


@pytest.mark.parametrize("status", [401, 200])
def test_unauthorized_is_auth(status: int) -> None:
    """401, or a `success: false` body saying Unauthorized, is an auth failure."""
    outcome = classify(status, {"success": False, "message": "Unauthorized"})
    assert outcome.classification == "auth"
    assert outcome.error == (f"netgroot: HTTP {status}: Unauthorized: check the destination's auth (the log-in, "
                             "or the API token)")


def test_server_errors_are_retried() -> None:
    """A 5xx is retried."""
    assert classify(503, b"maintenance").classification == "retry"


# -- subjects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "error", "message"), [
    (401, {"success": False, "message": "Unauthorized"}, VendorAuthFailed,
     'netgroot: getSubjects: HTTP 401: the token was refused: {"success": false, "message": "Unauthorized"}'),
    (403, b"", VendorAuthFailed, "netgroot: getSubjects: HTTP 403: the token was refused: "),
    (503, b"down", VendorUnavailable, "netgroot: getSubjects: HTTP 503: down"),
    (429, b"", VendorUnavailable, "netgroot: getSubjects: HTTP 429: "),
    (408, b"", VendorUnavailable, "netgroot: getSubjects: HTTP 408: "),
    (404, b"Not Found", MappingError,
     "subject: the subject list could not be read (getSubjects answered HTTP 404: Not Found)"),
    (200, {"success": False}, MappingError,
     'subject: the subject list could not be read (getSubjects answered HTTP 200: {"success": false})'),
    (200, b"<html>", MappingError, "subject: the subject list could not be read (getSubjects answered HTTP 200: "
                                   "<html>)"),
])
def test_a_failed_subject_look_up_says_how(status: int, body: Any, error: type[Exception], message: str) -> None:
    """Refused credentials are auth, passing failures retry later, anything else is permanent; each says what
    getSubjects answered."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(error) as info:
        parse_subjects(status, raw)
    assert type(info.value) is error
    assert str(info.value) == message


def test_subjects_are_read_tolerantly() -> None:
    """Items with `id` or `subject_name` are read too; malformed items are skipped."""
    body = {"success": True, "data": [{"id": 7, "subject_name": "Relocation"}, {"subject_id": "x", "name": "Bad"},
                                      "junk", {"subject_id": 1, "name": " Technical   Support "}]}
    assert parse_subjects(200, json.dumps(body).encode()) == {
        "relocation": (7, "Relocation"), "technical support": (1, " Technical   Support ")}


async def test_prepare_resolves_a_name_to_its_id() -> None:
    """A `subject` name becomes `subject_id`, looked up (the delivery loop adds the credentials), case and spaces
    aside."""
    vendor = FakeVendor()
    made = adapter()
    fields = await made.prepare("create_ticket", {"message": "m", "subject": " billing  ISSUE"}, vendor.fetch)
    assert fields == {"subject_id": 2, "message": "m"}
    assert vendor.calls == [(BASE + SUBJECTS_PATH, {})]


async def test_a_long_subject_list_read_leniently_does_not_hold_the_event_loop() -> None:
    """getSubjects answering 256 KiB (the most a look-up of a send reads) that msgspec refuses for one byte that is
    not UTF-8, made of 87,000 empty items (the costliest shape to read leniently: 40-130 ms of CPU), is read off the
    loop (`read_answer_off_loop`), no callback of it taking more than MAX_CALLBACK_CPU_MS, and resolves the name as
    before."""
    head = b'{"success": true, "data": [{"subject_id": 2, "name": "Billing Issue"}, '
    tail = b'"\xe9"]}'
    body = head + b"{}," * ((MAX_RESPONSE_BYTES - len(head) - len(tail)) // 3) + tail
    assert len(body) <= MAX_RESPONSE_BYTES and decode_json(body) is not None
    made = adapter()
    meter = LoopCpu()
    fields = await meter.running(made.prepare("create_ticket", {"message": "m", "subject": "Billing Issue"},
                                              FakeVendor((200, body)).fetch))
    assert fields == {"subject_id": 2, "message": "m"}
    measured("a subject list read leniently", meter)


async def test_prepare_leaves_a_subject_id_alone() -> None:
    """A mapping that gives `subject_id` needs no look-up."""
    vendor = FakeVendor()
    assert await adapter().prepare("create_ticket", {"subject_id": 9, "message": "m"}, vendor.fetch) == {
        "subject_id": 9, "message": "m"}
    assert vendor.calls == []


async def test_subjects_are_cached_until_the_ttl() -> None:
    """Look-ups within the TTL reuse the list; after it, the list is fetched again and the refresh logged."""
    clock = FakeClock()
    vendor = FakeVendor()
    made = adapter(clock, subjects_ttl="10m")
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            await made.prepare("create_ticket", {"subject": "Billing Issue", "message": "m"}, vendor.fetch)
        clock.now += 599
        await made.prepare("create_ticket", {"subject": "Billing Issue", "message": "m"}, vendor.fetch)
        assert len(vendor.calls) == 1
        clock.now += 1
        await made.prepare("create_ticket", {"subject": "Billing Issue", "message": "m"}, vendor.fetch)
    assert len(vendor.calls) == 2
    assert [(e["event"], e["reason"], e["count"], e["destination"]) for e in logs] == [
        ("vendor.subjects_refreshed", "first use", 2, "isp-crm"),
        ("vendor.subjects_refreshed", "expired", 2, "isp-crm")]


async def test_an_unknown_name_refreshes_once_then_is_permanent_listing_the_names() -> None:
    """A name not in the cached list fetches it once more; still unknown, the error lists the known names."""
    clock = FakeClock()
    vendor = FakeVendor()
    made = adapter(clock)
    await made.prepare("create_ticket", {"subject": "Billing Issue", "message": "m"}, vendor.fetch)
    clock.now += UNKNOWN_REFRESH_MIN_SECONDS
    with pytest.raises(MappingError) as info:
        await made.prepare("create_ticket", {"subject": "Router", "message": "m"}, vendor.fetch)
    assert len(vendor.calls) == 2
    assert str(info.value) == "subject: unknown subject 'Router'; the ISP CRM knows: 'Technical Support', " \
                              "'Billing Issue'"


async def test_a_name_added_at_the_vendor_is_found_by_the_refresh() -> None:
    """A subject created at the vendor after the list was cached is found by the refresh an unknown name makes."""
    clock = FakeClock()
    added = {"success": True, "data": [*SUBJECTS["data"], {"subject_id": 5, "name": "Router"}]}
    vendor = FakeVendor((200, SUBJECTS), (200, added))
    made = adapter(clock)
    await made.prepare("create_ticket", {"subject": "Billing Issue", "message": "m"}, vendor.fetch)
    clock.now += 60
    fields = await made.prepare("create_ticket", {"subject": "Router", "message": "m"}, vendor.fetch)
    assert fields["subject_id"] == 5


async def test_unknown_names_in_a_burst_cost_one_refresh() -> None:
    """Right after a fetch, an unknown name is refused without fetching again, so bad events cannot flood the API."""
    vendor = FakeVendor()
    made = adapter(FakeClock())
    for _ in range(20):
        with pytest.raises(MappingError, match="unknown subject 'Nope'"):
            await made.prepare("create_ticket", {"subject": "Nope", "message": "m"}, vendor.fetch)
    assert len(vendor.calls) == 1


async def test_concurrent_look_ups_share_one_fetch() -> None:
    """Many deliveries resolving names at once on a cold cache make one getSubjects call."""
    vendor = FakeVendor()
    made = adapter(FakeClock())
    results = await asyncio.gather(*(made.prepare("create_ticket", {"subject": "Technical Support", "message": "m"},
                                                  vendor.fetch) for _ in range(10)))
    assert {r["subject_id"] for r in results} == {1}
    assert len(vendor.calls) == 1


async def test_a_failed_refresh_keeps_nothing_and_tries_again() -> None:
    """After a look-up that could not be made, the next delivery fetches the list again."""
    vendor = FakeVendor((503, b"down"), (200, SUBJECTS))
    made = adapter(FakeClock())
    with pytest.raises(VendorUnavailable):
        await made.prepare("create_ticket", {"subject": "Billing Issue", "message": "m"}, vendor.fetch)
    fields = await made.prepare("create_ticket", {"subject": "Billing Issue", "message": "m"}, vendor.fetch)
    assert fields["subject_id"] == 2
    assert len(vendor.calls) == 2


@pytest.mark.parametrize("name", [None, "", "  ", ["Billing"]])
async def test_a_blank_subject_name_is_refused(name: Any) -> None:
    """An empty or non-text subject name is refused without a look-up."""
    vendor = FakeVendor()
    with pytest.raises(MappingError, match="is not a subject name"):
        await adapter().prepare("create_ticket", {"subject": name, "message": "m"}, vendor.fetch)
    assert vendor.calls == []


def test_cache_starts_empty() -> None:
    """A new cache holds no subjects and has fetched nothing."""
    cache = SubjectCache(60)
    assert (cache.subjects, cache.fetched_at, cache.fetches) == ({}, None, 0)


def test_files_are_listed_in_the_message() -> None:
    """The ISP CRM has no file endpoint: a `files` field becomes the names and sizes at the end of the message."""
    files = [{"name": "bill.pdf", "size": 2048, "sha256": "c" * 64, "stored": True}]
    body = build({"subject_id": 2, "message": "Wrong bill", "files": files})
    assert body["message"] == "Wrong bill\n\nAttachments:\n- bill.pdf (2.0 KB)"
    assert "files" not in body


def test_a_follow_up_is_a_new_ticket_and_needs_no_ticket() -> None:
    """With no update endpoint, a follow-up's request is the create whatever the ticket (its mapping names it)."""
    made = adapter()
    with_ticket = made.build_request("create_ticket", {"subject_id": 1, "message": "m"}, {}, ticket={"id": "101"})
    assert with_ticket == made.build_request("create_ticket", {"subject_id": 1, "message": "m"}, {})


@pytest.mark.parametrize("body", [b"<html>ok</html>", b"", b"[]"])
def test_a_2xx_whose_body_is_not_a_json_object_is_unknown(body: bytes) -> None:
    """A 200 whose answer is not a JSON object names no ticket, but the CRM said it acted: in doubt, not permanent."""
    assert classify(200, body) == Outcome(
        classification="unknown", error="netgroot: HTTP 200 but the answer is not a JSON object, so no ticket "
                                        f"is named: {body.decode()}")


@pytest.mark.parametrize("title", [b"Caf\xe9", b"Router \\ud83d"])
def test_a_success_msgspec_cannot_decode_is_read_leniently(title: bytes) -> None:
    """A success echoing a Latin-1 byte or a subject cut inside an emoji still names its ticket."""
    body = b'{"success": true, "data": {"ticket_id": 101, "subject": "' + title + b'"}}'
    assert classify(200, body) == Outcome(classification="success", ticket_id="101")
