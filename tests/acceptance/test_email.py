"""The email channel through the whole app: one mapping for every mail provider, de-duplication under
concurrent retries, and attachments kept on disk."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.store.base import DeliveryFilter
from handlers.attachments import content_path
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import (
    BREVO_THREAD_FILES,
    FORWARDED,
    JPEG,
    JPEG_SHA256,
    NOW,
    RESEND_API,
    THREAD,
    THREAD_EMAIL,
    TOPIC,
    FakeResendApi,
    FakeSns,
    basic,
    brevo_thread,
    cloudmailin_raw,
    compact,
    load,
    mailersend_raw,
    mailersend_signature,
    mailgun_fields,
    mailgun_mime,
    mailgun_multipart,
    mailjet_thread,
    mandrill_raw,
    mandrill_request,
    multipart,
    postal_headers,
    postal_public_key,
    postal_raw,
    postmark_raw,
    raw,
    sendgrid_multipart,
    sendgrid_raw,
    ses_notification,
    ses_raw,
    sparkpost_raw,
    svix_headers,
)

ENV = {"MAILGUN_KEY": "key-3ax6xnjp29jd6fds4gc373sgvjxteol0", "PARSE_PW": "parse-pw", "POSTMARK_PW": "pm-pw",
       "CLOUDMAILIN_PW": "cm-pw", "BREVO_TOKEN": "brevo-url-token", "BREVO_API_KEY": "xkeysib-brevo",
       "MAILJET_PW": "mj-parse-pw", "MANDRILL_KEY": "zDQ9cJ7mIkIDBZ5eOFEg3A", "SPARKPOST_TOKEN": "sp-relay-token",
       "RESEND_SECRET": "whsec_cmVzZW5kLXNpZ25pbmctc2VjcmV0", "RESEND_API_KEY": "re_N9f8TbDq_resend",
       "MAILERSEND_SECRET": "ms-inbound-secret"}
PUBLIC_MANDRILL = "https://bridge.example.com/hooks/support-mandrill"

CONFIG = f"""
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: "letmein"}}
attachments: {{dir: var/files, max_bytes: 1024}}
sources:
  support-mailgun: {{kind: mailgun, signing_key: "${{MAILGUN_KEY}}"}}
  support-sendgrid: {{kind: sendgrid, auth: {{basic: {{username: parse, password: "${{PARSE_PW}}"}}}}}}
  support-postmark: {{kind: postmark, auth: {{basic: {{username: postmark, password: "${{POSTMARK_PW}}"}}}}}}
  support-ses: {{kind: ses, topic_arns: ["{TOPIC}"]}}
  support-cloudmailin: {{kind: cloudmailin, auth: {{basic: {{username: cm, password: "${{CLOUDMAILIN_PW}}"}}}}}}
  support-brevo: {{kind: brevo, token: "${{BREVO_TOKEN}}", api_key: "${{BREVO_API_KEY}}"}}
  support-mailjet: {{kind: mailjet, auth: {{basic: {{username: mailjet, password: "${{MAILJET_PW}}"}}}}}}
  support-mandrill: {{kind: mandrill, webhook_key: "${{MANDRILL_KEY}}", public_url: "{PUBLIC_MANDRILL}"}}
  support-sparkpost: {{kind: sparkpost, auth_token: "${{SPARKPOST_TOKEN}}"}}
  support-resend: {{kind: resend, secret: "${{RESEND_SECRET}}", api_key: "${{RESEND_API_KEY}}",
                   api_url: "{RESEND_API}"}}
  support-mailersend: {{kind: mailersend, secret: "${{MAILERSEND_SECRET}}"}}
  support-postal: {{kind: postal, public_key: "{postal_public_key()}"}}
destinations:
  kapture: {{vendor: kapture, sandbox: true, retry: {{schedule: [50ms]}}}}
"""

# One mapping, written once for the email channel, unchanged for every provider.
EMAIL_MAPPING = """
    name: email-to-kapture
    source: [support-mailgun, support-sendgrid, support-postmark, support-ses, support-cloudmailin, support-brevo,
             support-mailjet, support-mandrill, support-sparkpost, support-resend, support-mailersend, support-postal]
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
      email_id: {from: payload.from, required: true}
      customer_name: {from: payload.from_name, default: ""}
      ticket_details: {from: payload.stripped_text}
      cc: "{{ payload.cc | join(', ') }}"
      thread_ref: {from: payload.in_reply_to}
      message_ref: {from: payload.message_id}
      attachment: {from: "payload.attachments[0].name"}
      attached: "{{ payload.attachments | rejectattr('inline') | map(attribute='name') | join(', ') }}"
"""


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    c = await bridge_client(write_config(CONFIG, {"email": EMAIL_MAPPING}, ENV))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    runtime(c).sources["support-ses"].handler.fetch = FakeSns()  # type: ignore[attr-defined]
    runtime(c).sources["support-brevo"].handler.get = brevo_download  # type: ignore[attr-defined]
    RESEND.message = raw("ses/message.eml")
    runtime(c).sources["support-resend"].handler.get = RESEND  # type: ignore[attr-defined]
    return c


BREVO_FILES = {load("brevo/inbound.json")["items"][0]["Attachments"][0]["DownloadToken"]: JPEG, **BREVO_THREAD_FILES}


async def brevo_download(url: str, _headers: dict[str, str], _timeout_s: float, _max_bytes: int) -> bytes:
    """Brevo's inbound attachments API: each file of the fixtures by its DownloadToken."""
    return BREVO_FILES[url.rsplit("/", 1)[1]]


RESEND = FakeResendApi()
"""Resend's Receiving API and raw download; `message` is what the next fetched email holds."""


Request = tuple[str, bytes, dict[str, str]]  # path, body, headers
JSON = {"Content-Type": "application/json"}


def mailgun_post() -> tuple[bytes, dict[str, str]]:
    body, ctype = mailgun_multipart(ENV["MAILGUN_KEY"])
    return body, {"Content-Type": ctype}


# How each email kind posts a message: None is the provider's own parsed fixture, bytes a raw message handed
# over whole. A new email kind joins the cross-provider tests by being listed here.
def _mailgun(message: bytes | None) -> Request:
    key = ENV["MAILGUN_KEY"]
    body, ctype = mailgun_multipart(key) if message is None else mailgun_mime(key, message)
    return "/hooks/support-mailgun", body, {"Content-Type": ctype}


def _sendgrid(message: bytes | None) -> Request:
    body, ctype = sendgrid_multipart() if message is None else sendgrid_raw(message)
    return "/hooks/support-sendgrid", body, {"Content-Type": ctype, "Authorization": basic("parse", ENV["PARSE_PW"])}


def _postmark(message: bytes | None) -> Request:
    data = load("postmark/inbound.json") if message is None else postmark_raw(message)
    return "/hooks/support-postmark", compact(data), {**JSON, "Authorization": basic("postmark", ENV["POSTMARK_PW"])}


def _ses(message: bytes | None) -> Request:
    notification = ses_notification() if message is None else ses_raw(message)
    return "/hooks/support-ses", compact(notification), {"Content-Type": "text/plain; charset=UTF-8"}


def _cloudmailin(message: bytes | None) -> Request:
    auth = {"Authorization": basic("cm", ENV["CLOUDMAILIN_PW"])}
    if message is None:
        return "/hooks/support-cloudmailin", compact(load("cloudmailin/normalized.json")), {**JSON, **auth}
    body, ctype = cloudmailin_raw(message)
    return "/hooks/support-cloudmailin", body, {"Content-Type": ctype, **auth}


def _parsed_only(kind: str, message: bytes | None) -> None:
    """Brevo and Mailjet hand over no raw message: they carry THREAD as their parsed fields, and nothing else."""
    if message not in (None, THREAD):
        raise ValueError(f"{kind} sends no raw MIME: only its fixture or its parsed copy of THREAD can be posted")


def _brevo(message: bytes | None) -> Request:
    _parsed_only("brevo", message)
    data = load("brevo/inbound.json") if message is None else brevo_thread()
    return f"/hooks/support-brevo?token={ENV['BREVO_TOKEN']}", compact(data), JSON


def _mailjet(message: bytes | None) -> Request:
    _parsed_only("mailjet", message)
    data = load("mailjet/parse.json") if message is None else mailjet_thread()
    return "/hooks/support-mailjet", compact(data), {**JSON, "Authorization": basic("mailjet", ENV["MAILJET_PW"])}


def _mandrill(message: bytes | None) -> Request:
    body, headers = mandrill_request(ENV["MANDRILL_KEY"], PUBLIC_MANDRILL,
                                     None if message is None else mandrill_raw(message))
    return "/hooks/support-mandrill", body, headers


def _sparkpost(message: bytes | None) -> Request:
    data = load("sparkpost/relay.json") if message is None else sparkpost_raw(message)
    return "/hooks/support-sparkpost", compact(data), {**JSON, "X-MessageSystems-Webhook-Token": ENV["SPARKPOST_TOKEN"]}


def _resend(message: bytes | None) -> Request:
    RESEND.message = raw("ses/message.eml") if message is None else message
    body = compact(load("resend/email_received.json"))
    return "/hooks/support-resend", body, svix_headers(ENV["RESEND_SECRET"], body)


def _mailersend(message: bytes | None) -> Request:
    body = compact(load("mailersend/inbound.json") if message is None else mailersend_raw(message))
    signature = mailersend_signature(ENV["MAILERSEND_SECRET"], body)
    return "/hooks/support-mailersend", body, {**JSON, "Signature": signature}


def _postal(message: bytes | None) -> Request:
    body = compact(load("postal/raw.json") if message is None else postal_raw(message))
    return "/hooks/support-postal", body, postal_headers(body)


EMAIL_KINDS: dict[str, Callable[[bytes | None], Request]] = {
    "mailgun": _mailgun, "postmark": _postmark, "sendgrid": _sendgrid, "ses": _ses, "cloudmailin": _cloudmailin,
    "brevo": _brevo, "mailjet": _mailjet, "mandrill": _mandrill, "sparkpost": _sparkpost, "resend": _resend,
    "mailersend": _mailersend, "postal": _postal,
}


async def all_deliveries(client: Any) -> list[Any]:
    return await runtime(client).store.list_deliveries(DeliveryFilter(limit=1000))


async def test_same_mailgun_email_posted_twice_concurrently_gives_one_event_and_one_ticket(client: Any) -> None:
    """Two concurrent deliveries of one Mailgun email store one event (the other answered 200 duplicate) and
    create one ticket."""
    body, headers = mailgun_post()
    first, second = await asyncio.gather(client.post("/hooks/support-mailgun", data=body, headers=headers),
                                         client.post("/hooks/support-mailgun", data=body, headers=headers))
    answers = sorted([(first.status, await first.json()), (second.status, await second.json())],
                     key=lambda a: a[0])
    (dup_status, dup), (new_status, new) = answers
    assert (dup_status, new_status) == (200, 202)
    assert dup == {"accepted": True, "duplicate": True, "event_id": new["event_id"]}
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)
    await eventually(lambda: all_succeeded(client))
    assert len(sim.tickets) == 1
    assert len(await all_deliveries(client)) == 1


async def all_succeeded(client: Any) -> bool:
    return all(d.status == "succeeded" for d in await all_deliveries(client))


async def tickets_of_every_kind(client: Any, message: bytes | None) -> list[dict[str, Any]]:
    """Post `message` through every email kind; the fields of the tickets they made (one each)."""
    for kind, make in EMAIL_KINDS.items():
        path, data, hdrs = make(message)
        resp = await client.post(path, data=data, headers=hdrs)
        assert resp.status == 202, (kind, await resp.text())
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == len(EMAIL_KINDS))
    assert len(await all_deliveries(client)) == len(EMAIL_KINDS)
    return [ticket["fields"] for ticket in sim.tickets]


async def test_one_mapping_renders_the_same_ticket_from_every_email_kind(client: Any) -> None:
    """Each email kind's copy of one message, through one unchanged mapping, makes the identical ticket."""
    tickets = await tickets_of_every_kind(client, None)
    expected = {
        "title": "Re: Router down [#1042]", "email_id": "asha.rao@example.com", "customer_name": "Asha Rao",
        "ticket_details": "Hi,\n\nMy router is down again since this morning.\n\nThanks,\nAsha",
        "cc": "ops@acme.test", "thread_ref": "<ticket-1042@acme.test>", "message_ref": "<CAF=asha.1@mail.example.com>",
        "attachment": "router.jpg",
    }
    # Cloudmailin's fixture also lists a file held in its store: the first file is compared
    assert [{**t, "attached": None} for t in tickets] == [{**expected, "attached": None}] * len(EMAIL_KINDS)


async def test_the_raw_thread_renders_the_same_ticket_from_every_email_kind(client: Any, tmp_path: Path) -> None:
    """The same raw thread handed over whole by every email kind renders one identical ticket, and the
    forwarded message it attaches is stored as its exact bytes."""
    tickets = await tickets_of_every_kind(client, THREAD)
    expected = {
        "title": "Re: Router ✈ down (café) [#1042]", "email_id": "asha.rao@example.com", "customer_name": "Asha Rão",
        "ticket_details": THREAD_EMAIL["stripped_text"], "cc": "ops@acme.test", "thread_ref": "<ticket-1042@acme.test>",
        "message_ref": "<CAF=asha.2@mail.example.com>", "attachment": "logo.png",
        "attached": "report.pdf, übersicht №2.txt, forwarded.eml",
    }
    assert tickets == [expected] * len(EMAIL_KINDS)
    forwarded = hashlib.sha256(FORWARDED).hexdigest()
    assert content_path(tmp_path / "var" / "files", forwarded).read_bytes() == FORWARDED


@pytest.mark.parametrize(("kind", "request_", "code"), [
    ("mailgun", "stored", "stored"), ("mailgun", "tracking", "tracking"), ("mailgun", "event-webhook", "tracking"),
    ("postmark", "delivery", "delivery"), ("postmark", "check", "check"), ("sendgrid", "events", "event"),
    ("brevo", "brevo-event", "event"), ("mandrill", "mandrill-test", "event"), ("sparkpost", "sparkpost-test", "test"),
    ("resend", "resend-event", "event"), ("mailersend", "mailersend-event", "event"),
    ("postal", "postal-event", "event"),
])  # Mailjet's Parse API posts only messages: it has no notification to answer
async def test_a_notification_that_is_not_a_message_is_200_and_stores_nothing(
        client: Any, kind: str, request_: str, code: str, tmp_path: Path) -> None:
    """A provider's post that carries no message (a stored notice, a tracking or delivery record, the dashboard
    check) is answered 200, counted by its reason, and stores no event and makes no ticket."""
    path, data, hdrs = NOT_MESSAGES[request_]()
    resp = await client.post(path, data=data, headers=hdrs)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] is True
    metrics = await (await client.get("/metrics", headers={"Authorization": "Bearer letmein"})).text()
    assert (f'ticketbridge_intake_requests_total{{source="support-{kind}",outcome="ignored",'
            f'reason="not_a_message:{code}"}} 1') in metrics.splitlines()
    assert await all_deliveries(client) == []
    with sqlite3.connect(f"file:{tmp_path / 'var' / 'bridge.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def _mailgun_notice(fields: dict[str, str]) -> Request:
    signed = {k: v for k, v in mailgun_fields(ENV["MAILGUN_KEY"]).items() if k in ("timestamp", "token", "signature")}
    body, ctype = multipart({**fields, **signed})
    return "/hooks/support-mailgun", body, {"Content-Type": ctype}


def _postmark_json(data: dict[str, Any]) -> Request:
    return "/hooks/support-postmark", compact(data), {**JSON, "Authorization": basic("postmark", ENV["POSTMARK_PW"])}


def _resend_event() -> Request:
    body = compact({"type": "email.delivered", "created_at": "2024-06-03T10:05:02.000Z", "data": {
        "email_id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c", "from": "Acme <support@acme.test>",
        "to": ["asha.rao@example.com"], "subject": "Your ticket #1042", "created_at": "2024-06-03T10:05:00.000Z"}})
    return "/hooks/support-resend", body, svix_headers(ENV["RESEND_SECRET"], body)


def _mailersend_event() -> Request:
    body = compact({"type": "activity.sent", "domain_id": "7nxe3yjmeq2qp0zy", "created_at": "2024-06-03T10:05:02Z",
                    "data": {"object": "activity", "id": "665d9c5e5c3a1b0f2a0e7b99", "type": "sent",
                             "email": {"subject": "Your ticket #1042", "status": "sent"}}})
    signature = mailersend_signature(ENV["MAILERSEND_SECRET"], body)
    return "/hooks/support-mailersend", body, {**JSON, "Signature": signature}


def _postal_event() -> Request:
    body = compact({"event": "MessageSent", "timestamp": 1717409102.0, "uuid": "5d2a9ff1-4a3c-4e2a-9d4b-5b1e4f0d8c7a",
                    "payload": {"status": "Sent", "details": "Message for asha.rao@example.com accepted",
                                "message": {"id": 81245, "token": "Ffr3wmXbk6gM", "direction": "outgoing",
                                            "to": "asha.rao@example.com", "from": "support@acme.test"}}})
    return "/hooks/support-postal", body, postal_headers(body)


NOT_MESSAGES: dict[str, Callable[[], Request]] = {
    "brevo-event": lambda: (f"/hooks/support-brevo?token={ENV['BREVO_TOKEN']}", compact({
        "event": "delivered", "email": "asha.rao@example.com", "id": 26224, "date": "2024-06-03 12:05:00",
        "message-id": "<202406031005.72431157123@smtp-relay.mailin.fr>", "ts_event": 1717409100}), JSON),
    "mandrill-test": lambda: ("/hooks/support-mandrill", *mandrill_request(ENV["MANDRILL_KEY"], PUBLIC_MANDRILL, [])),
    "sparkpost-test": lambda: ("/hooks/support-sparkpost", compact([{"msys": {}}]),
                               {**JSON, "X-MessageSystems-Webhook-Token": ENV["SPARKPOST_TOKEN"]}),
    "resend-event": _resend_event,
    "mailersend-event": _mailersend_event,
    "postal-event": _postal_event,
    "event-webhook": lambda: ("/hooks/support-mailgun", compact({
        "signature": {k: v for k, v in mailgun_fields(ENV["MAILGUN_KEY"]).items()
                      if k in ("timestamp", "token", "signature")},
        "event-data": {"event": "delivered", "id": "CPgfbmQMTCKtHW6uIWtuVe", "recipient": "alice@example.com"}}),
        JSON),
    "events": lambda: ("/hooks/support-sendgrid", compact([
        {"email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "delivered", "category": "cat facts", "sg_event_id": "sg_event_id",
         "sg_message_id": "sg_message_id", "response": "250 OK"}]),
        {**JSON, "Authorization": basic("parse", ENV["PARSE_PW"])}),
    "stored": lambda: _mailgun_notice({
        "domain": "acme.test", "recipient": "support@acme.test", "sender": "asha.rao@example.com",
        "subject": "Re: Router down [#1042]", "message-url":
        "https://storage.eu.mailgun.net/v3/domains/acme.test/messages/eyJwIjpmYWxzZX0=", "attachments": "[]"}),
    "tracking": lambda: _mailgun_notice({"event": "delivered", "recipient": "asha.rao@example.com",
                                         "domain": "acme.test", "Message-Id": "<20240603.1@acme.test>"}),
    "delivery": lambda: _postmark_json({
        "RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound",
        "MessageID": "00000000-0000-0000-0000-000000000000", "Recipient": "john@example.com",
        "Tag": "welcome-email", "DeliveredAt": "2019-11-05T16:33:54.9070259Z",
        "Details": "Test delivery webhook details", "Metadata": {"example": "value"}}),
    "check": lambda: _postmark_json({**load("postmark/inbound.json"), "Attachments": [
        {"Name": "test.txt", "Data": "VGhpcyBpcyBhdHRhY2htZW50IGNvbnRlbnRzLCBiYXNlLTY0IGVuY29kZWQu",
         "ContentType": "text/plain", "ContentLength": 45}]}),
}


@pytest.mark.parametrize("depth", [129, 1000, 2700])
async def test_a_cloudmailin_envelope_field_nested_too_deeply_is_400_and_stores_nothing(
        client: Any, tmp_path: Path, depth: int) -> None:
    """A raw-format field name of more bracketed keys than MAX_JSON_DEPTH (`envelope[a][a]…`, 3 KB for a
    thousand) is refused with a 400 naming the field and the limit, at any depth: not stored 129 levels deep,
    not a 500 from the store's JSON encoder a thousand deep."""
    fields = {"message": THREAD.decode(), "envelope" + "[a]" * depth: "x"}
    body, ctype = multipart(fields)
    resp = await client.post("/hooks/support-cloudmailin", data=body,
                             headers={"Content-Type": ctype, "Authorization": basic("cm", ENV["CLOUDMAILIN_PW"])})
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert "'envelope[a][a]" in error and f"{depth} levels" in error and "at most 128" in error, error
    assert len(error) < 400
    with sqlite3.connect(f"file:{tmp_path / 'var' / 'bridge.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


async def test_a_cloudmailin_envelope_field_at_the_depth_limit_is_taken(client: Any) -> None:
    """MAX_JSON_DEPTH bracketed keys are still an envelope field: the event is stored with them nested."""
    body, ctype = multipart({"message": THREAD.decode(), "envelope" + "[a]" * 128: "x"})
    resp = await client.post("/hooks/support-cloudmailin", data=body,
                             headers={"Content-Type": ctype, "Authorization": basic("cm", ENV["CLOUDMAILIN_PW"])})
    assert resp.status == 202, await resp.text()
    node = (await runtime(client).store.get_event((await resp.json())["event_id"])).payload["provider"]["envelope"]
    for _ in range(127):
        node = node["a"]
    assert node == {"a": "x"}


async def test_attachment_content_is_kept_on_disk_by_digest(client: Any, tmp_path: Path) -> None:
    """An attachment's content is written under the configured folder by its sha256, and the event says so."""
    body, headers = mailgun_post()
    resp = await client.post("/hooks/support-mailgun", data=body, headers=headers)
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.payload["attachments"] == [{"name": "router.jpg", "content_type": "image/jpeg", "inline": False,
                                             "size": len(JPEG),
                                             "sha256": JPEG_SHA256, "stored": True}]
    assert runtime(client).config.attachments_dir == tmp_path / "var" / "files"
    assert content_path(tmp_path / "var" / "files", JPEG_SHA256).read_bytes() == JPEG


async def test_attachment_over_the_cap_is_recorded_not_stored(client: Any, tmp_path: Path) -> None:
    """A part over attachments.max_bytes is listed with stored false and the reason; the email is still taken."""
    data = load("postmark/inbound.json")
    import base64

    data["Attachments"].append({"Name": "big.bin", "ContentType": "application/octet-stream",
                                "Content": base64.b64encode(b"x" * 2000).decode(), "ContentLength": 2000})
    resp = await client.post("/hooks/support-postmark", data=compact(data),
                             headers={"Content-Type": "application/json",
                                      "Authorization": basic("postmark", ENV["POSTMARK_PW"])})
    assert resp.status == 202
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    big = event.payload["attachments"][1]
    assert (big["name"], big["stored"], big["reason"]) == ("big.bin", False,
                                                           "2000 bytes is over the attachment cap of 1024 bytes")
    assert not content_path(tmp_path / "var" / "files", big["sha256"]).exists()


async def test_unwritable_attachment_folder_is_503_and_stores_nothing(client: Any, tmp_path: Path) -> None:
    """When attachments cannot be written, the answer is 503 (the provider retries) and no event is stored; the
    log names the folder."""
    (tmp_path / "var" / "files").write_text("a file where the folder should be")
    body, headers = mailgun_post()
    with capture_logs() as logs:
        resp = await client.post("/hooks/support-mailgun", data=body, headers=headers)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert runtime(client).counters["intake.attachments_unavailable"] == 1
    [logged] = [e for e in logs if e["event"] == "intake.attachments_unavailable"]
    assert logged["folder"] == str(tmp_path / "var" / "files") and "Not a directory" in logged["error"]
    assert await all_deliveries(client) == []


def test_attachments_folder_defaults_under_var(write_config: ConfigFactory, tmp_path: Path) -> None:
    """Without an `attachments` table, content goes to var/attachments beside the config, capped at 10 MiB."""
    config = write_config("sources: {}\n")
    assert config.attachments_dir == tmp_path / "var" / "attachments"
    assert config.attachments.max_bytes == 10 * 1024 * 1024


def test_attachments_options_are_checked(write_config: ConfigFactory) -> None:
    """An unknown key or a negative cap in `attachments` is a config error naming the key."""
    from bridge.errors import ErrorList

    with pytest.raises(ErrorList, match="attachments"):
        write_config("attachments: {max_bytes: -1}\n")
    with pytest.raises(ErrorList, match="folder"):
        write_config("attachments: {folder: x}\n")


RAW_KINDS = [kind for kind in EMAIL_KINDS if kind not in ("brevo", "mailjet")]  # those two send no raw message


@pytest.mark.parametrize(("from_", "sender"), [
    ('"\\"<ceo@corp.example>" <attacker@evil.example>, b@evil.example', None),
    ('"\\"<ceo@corp.example>" <attacker@evil.example>', "attacker@evil.example"),
    ("attacker@evil.example (<ceo@corp.example>), b@evil.example", None),
    ("x@evil.example, <ceo@corp.example>", None),
    ("=?utf-8?q?=3Cceo=40corp.example=3E?=", None),
    ("John Doe, Support <john@x.example>", "john@x.example"),
    ("=?utf-8?q?x?= <a@b.example>", "a@b.example"),
], ids=["escaped_quote_two_mailboxes", "escaped_quote", "comment", "several_mailboxes", "encoded_word",
        "name_with_comma", "encoded_name"])
async def test_an_address_in_a_from_name_or_comment_is_not_the_sender_for_any_kind(
        client: Any, from_: str, sender: str | None) -> None:
    """The probe's forged From lines, handed over raw by every kind that sends the raw message: the address in
    the display name or the comment (a victim's) is never the event's sender, which conversations trust."""
    store = runtime(client).store
    for n, kind in enumerate(RAW_KINDS):
        eml = (f"From: {from_}\r\nTo: support@acme.test\r\nSubject: spoof {kind}\r\n"
               f"Message-ID: <spoof-{n}@evil.example>\r\n\r\nplease change my bank details\r\n").encode()
        path, data, hdrs = EMAIL_KINDS[kind](eml)
        resp = await client.post(path, data=data, headers=hdrs)
        assert resp.status == 202, (kind, await resp.text())
        event = await store.get_event((await resp.json())["event_id"])
        assert event.payload["from"] == sender, kind
