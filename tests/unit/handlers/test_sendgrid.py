"""handlers/sendgrid.py: SendGrid Inbound Parse, parsed and raw."""

from __future__ import annotations

import msgspec
import pytest

from bridge.config import AuthConfig, BasicAuth
from bridge.errors import Rejected
from handlers.auth import check_auth
from handlers.base import Intercepted
from handlers.sendgrid import SendgridHandler, SendgridOptions
from tests.fixtures.providers import (
    ASHA_EMAIL,
    ENVELOPE,
    FORWARDED,
    JPEG,
    LOGO,
    REPORT,
    THREAD_EMAIL,
    basic,
    build,
    compact,
    load,
    message_shape,
    multipart,
    post,
    raw,
    sendgrid_multipart,
    sendgrid_raw,
    without_provider,
)

# SendGrid reports the SMTP envelope and a SpamAssassin score (no verdict: the report is prose).
SENDGRID_EMAIL = {**ASHA_EMAIL, **ENVELOPE, "spam": {"verdict": "unknown", "score": 0.1}}


def test_kind_and_channel() -> None:
    """SendGrid is kind `sendgrid` on the `email` channel, taking multipart (and JSON only to answer the Event
    Webhook)."""
    assert (SendgridHandler.kind, SendgridHandler.channel) == ("sendgrid", "email")
    assert SendgridHandler.content_types == frozenset({"multipart/form-data", "application/json"})


def test_parsed_post_normalises_to_the_email_shape() -> None:
    """A parsed Inbound Parse post gives the email shape, the attachment's content and the raw fields."""
    body, ctype = sendgrid_multipart()
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    assert without_provider(inbound.payload) == SENDGRID_EMAIL
    assert inbound.attachments[0].content == JPEG
    assert inbound.payload["provider"]["spam_score"] == "0.1"
    assert inbound.dedup_key == "<CAF=asha.1@mail.example.com>"


def test_raw_post_parses_the_mime_message() -> None:
    """With "POST the raw, full MIME message", the `email` field is parsed into the same shape."""
    fields = {k: v for k, v in load("sendgrid/parse.json").items()
              if k in ("to", "from", "subject", "envelope", "dkim", "SPF", "spam_score", "charsets")}
    body, ctype = multipart({**fields, "email": raw("ses/message.eml").decode()})
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    assert without_provider(inbound.payload) == SENDGRID_EMAIL
    assert "email" not in inbound.payload["provider"]


def test_fields_are_decoded_with_the_charsets_field() -> None:
    """A text field is decoded in the charset the `charsets` field names for it."""
    body, ctype = multipart({"charsets": '{"subject": "iso-8859-1"}', "from": "a@b.c", "subject": "x"})
    body = body.replace(b"\r\n\r\nx\r\n", b"\r\n\r\nCaf\xe9\r\n")
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    assert inbound.payload["subject"] == "Café"


def test_attachment_name_falls_back_to_attachment_info() -> None:
    """A file part without a filename takes its name from `attachment-info`."""
    body, ctype = multipart({"from": "a@b.c", "attachment-info": '{"attachment1": {"filename": "log.txt"}}'},
                            [("attachment1", "", "text/plain", b"log")])
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    assert inbound.payload["attachments"][0]["name"] == "log.txt"


@pytest.mark.parametrize("value", ["{not json", '["a list"]', '"text"'])
def test_unreadable_charsets_and_attachment_info_count_as_none(value: str) -> None:
    """A `charsets` or `attachment-info` field that is not a JSON object is ignored, not a refusal: the
    unnamed file gets a name from its place and type."""
    body, ctype = multipart({"charsets": value, "attachment-info": value, "from": "a@b.c", "subject": "Café"},
                            [("attachment1", "", "text/plain", b"log")])
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    assert inbound.payload["subject"] == "Café"
    assert inbound.payload["attachments"][0]["name"] == "attachment-1.txt"


def test_parse_is_protected_by_basic_auth() -> None:
    """Parse has no signature: a source with `auth` refuses a post without the credentials."""
    auth = AuthConfig(basic=BasicAuth(username="sendgrid", password="pw"))
    check_auth(auth, post({"Authorization": basic("sendgrid", "pw")}))
    with pytest.raises(Rejected) as info:
        check_auth(auth, post({"Authorization": basic("sendgrid", "guess")}))
    assert (info.value.status, info.value.check) == (401, "basic_auth")


def test_options_take_only_the_common_ones() -> None:
    """SendGrid has no options of its own."""
    msgspec.convert({"kind": "sendgrid", "auth": {"bearer": "t"}}, SendgridOptions)
    with pytest.raises(msgspec.ValidationError, match="unknown field `secret`"):
        msgspec.convert({"kind": "sendgrid", "secret": "s"}, SendgridOptions)


# -- raw MIME and attachments intact -------------------------------------------------------------------------


def test_raw_thread_keeps_its_attachments_intact() -> None:
    """The raw thread through "POST the raw, full MIME message": its headers in two charsets, both bodies, an
    inline logo, a Windows-path name, an RFC 2231 name and the attached message as its exact bytes."""
    body, ctype = sendgrid_raw()
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    assert message_shape(inbound.payload) == THREAD_EMAIL
    assert inbound.attachments[3].content == FORWARDED


def test_parsed_post_keeps_an_attached_message_whole_and_names_each_file_by_its_own_info() -> None:
    """Parsed mode: a message/rfc822 file keeps its bytes and a Windows path its base name; a nameless file is
    named by its own `attachment-info` entry, never another's; `content-ids` marks the inline one."""
    info = ('{"attachment1": {"filename": "C:\\\\Users\\\\asha\\\\forwarded.eml", "type": "message/rfc822"},'
            ' "attachment2": {"filename": "report.pdf", "type": "application/pdf"},'
            ' "attachment3": {"type": "image/png"}}')
    body, ctype = multipart({"from": "a@b.c", "attachments": "3", "attachment-info": info,
                             "content-ids": '{"logo@asha": "attachment3"}'}, [
        ("attachment1", "C:\\Users\\asha\\forwarded.eml", "message/rfc822", FORWARDED),
        ("attachment2", "report.pdf", "application/pdf", REPORT),
        ("attachment3", "", "image/png", LOGO),
    ])
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    names = [(a["name"], a["content_type"], a["inline"]) for a in inbound.payload["attachments"]]
    assert names == [("forwarded.eml", "message/rfc822", False), ("report.pdf", "application/pdf", False),
                     ("attachment-3.png", "image/png", True)]
    assert inbound.attachments[0].content == FORWARDED


# SendGrid's Event Webhook sample: delivery events, not a message
EVENTS = [{"email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
           "event": "delivered", "category": "cat facts", "sg_event_id": "sg_event_id",
           "sg_message_id": "sg_message_id", "response": "250 OK"}]


async def test_an_event_webhook_post_is_not_a_message() -> None:
    """Delivery events posted to the Parse URL are answered 200 under `not_a_message:event`, never parsed."""
    early = await build("sendgrid").intercept(post({"Content-Type": "application/json"}), compact(EVENTS))
    assert isinstance(early, Intercepted)
    assert (early.code, early.response.status) == ("not_a_message:event", 200)


@pytest.mark.parametrize("body", [b"{}", b"[]", b'[{"email": "a@b.c"}]', b'"text"'])
async def test_other_json_is_415(body: bytes) -> None:
    """JSON that is not a list of events is refused as the wrong content type, naming what Parse sends."""
    with pytest.raises(Rejected) as info:
        await build("sendgrid").intercept(post({"Content-Type": "application/json"}), body)
    assert info.value.status == 415
