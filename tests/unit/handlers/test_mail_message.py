"""handlers/mail_message.py: a provider's message made into an event, the raw MIME winning over its fields."""

from __future__ import annotations

import asyncio
import base64
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import Rejected
from handlers.attachments import attachment
from handlers.email import Headers, address_list, sender
from handlers.mail_message import MAX_BATCH_MESSAGES, Fields, mail_inbound, mailbox, mailboxes, part_file
from tests.fixtures.providers import (
    ASHA_EMAIL,
    BREVO_THREAD_FILES,
    ENVELOPE,
    FORWARDED,
    JPEG,
    PROVIDER_REPORTED,
    RESEND_API,
    THREAD,
    THREAD_EMAIL,
    FakeResendApi,
    brevo_thread,
    build,
    compact,
    load,
    mailersend_raw,
    mailersend_signature,
    mailjet_thread,
    mandrill_raw,
    mandrill_request,
    message_shape,
    post,
    postal_headers,
    postal_public_key,
    postal_raw,
    raw,
    sparkpost_raw,
    svix_headers,
    without_provider,
)

EML = raw("ses/message.eml")


def test_raw_message_wins_over_the_providers_fields() -> None:
    """Headers, bodies and attachments come from the raw message even where the parsed fields disagree."""
    fields = Fields(from_="mallory@example.net", to=["x@example.net"], subject="Other", text="other", html="<p>o",
                    attachments=[attachment("other.txt", "text/plain", b"x")])
    inbound = mail_inbound({"id": 1}, fields, raw=EML)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, "envelope_from": "asha.rao@example.com"}
    assert [a.meta["name"] for a in inbound.attachments] == ["router.jpg"]


def test_fields_fill_what_the_raw_message_lacks() -> None:
    """A raw message without Cc or a plain body takes them from the provider's fields."""
    bare = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: Hi\r\nContent-Type: text/html\r\n\r\n<p>Hi</p>\r\n"
    inbound = mail_inbound({}, Fields(cc=["c@example.com"], text="Hi"), raw=bare)
    assert (inbound.payload["cc"], inbound.payload["text"], inbound.payload["html"]) == (
        ["c@example.com"], "Hi", "<p>Hi</p>\n")


def test_without_raw_the_named_fields_come_before_the_headers() -> None:
    """The provider's named fields are read first, its copy of the headers fills the rest."""
    headers = Headers([("Subject", "From headers"), ("Message-ID", "<m1@example.com>"), ("To", "h@example.com"),
                       ("References", "<r1@example.com> <r2@example.com>")])
    inbound = mail_inbound({}, Fields(to=["f@example.com"], headers=headers))
    payload = inbound.payload
    assert (payload["to"], payload["subject"], payload["message_id"], payload["references"]) == (
        ["f@example.com"], "From headers", "<m1@example.com>", ["<r1@example.com>", "<r2@example.com>"])


def test_dedup_key_is_the_message_id_then_the_provider_id_then_a_digest() -> None:
    """The Message-ID names the event; without one the provider's id does; without either, the raw bytes."""
    assert mail_inbound({}, Fields(message_id="<m@x>"), provider_id=7).dedup_key == "<m@x>"
    assert mail_inbound({}, Fields(), provider_id=7).dedup_key == "7"
    assert mail_inbound({}, Fields(), provider_id=True).dedup_key is None
    no_id = b"From: a@example.com\r\n\r\nbody\r\n"
    assert mail_inbound({}, Fields(), raw=no_id).dedup_key == mail_inbound({}, Fields(), raw=no_id).dedup_key
    assert str(mail_inbound({}, Fields(), raw=no_id).dedup_key).startswith("sha256:")


def test_mailbox_quotes_the_display_name() -> None:
    """A name holding quotes, commas or backslashes stays one display name."""
    box = mailbox('Rao, "Asha" \\ A', "asha@example.com")
    inbound = mail_inbound({}, Fields(from_=box))
    assert (inbound.payload["from_name"], inbound.payload["from"]) == ('Rao, "Asha" \\ A', "asha@example.com")
    assert mailbox(None, "a@example.com") == "a@example.com"
    assert mailbox("A", 3) is None
    assert mailboxes([{"N": "A", "E": "a@x.test"}, "junk", {"E": None}], "N", "E") == ['"A" <a@x.test>']


@pytest.mark.parametrize("name", ['M" <ceo@corp.example>', 'M\\" <ceo@corp.example>', "M\\", "M (<ceo@corp.example>",
                                  'M", <ceo@corp.example>, "x', "M\r\n<ceo@corp.example>"])
def test_a_providers_name_and_address_read_back_as_that_mailbox(name: str) -> None:
    """Brevo, Mandrill and MailerSend give a sender's name and address apart: whatever the name holds, the
    mailbox built of them reads back as that address, the name as its name (whitespace made single spaces)."""
    assert sender(mailbox(name, "attacker@evil.example")) == (" ".join(name.split()), "attacker@evil.example")
    assert address_list(mailboxes([{"N": name, "E": "a@evil.example"}, {"N": name, "E": "b@evil.example"}],
                                  "N", "E")) == ["a@evil.example", "b@evil.example"]


@pytest.mark.parametrize("address", ["attacker@evil.example>, <ceo@corp.example", "attacker@evil.example\r\n"])
def test_a_providers_address_that_is_no_address_gives_no_mailbox(address: str) -> None:
    """An address field holding angle brackets or a line break is not one address: no mailbox is built of it."""
    assert mailbox("M", address) is None


def test_part_file_reads_the_name_and_type_from_part_headers() -> None:
    """An attachment described by its MIME headers gives its file name (RFC 2231 decoded, the base name of a
    Windows path) and its Content-Type as sent, which the attachment splits into bare type and charset."""
    headers = Headers([("Content-Type", 'application/pdf; name="x.pdf"'),
                       ("Content-Disposition", "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf")])
    assert part_file(headers) == ("résumé.pdf", 'application/pdf; name="x.pdf"')
    windows = Headers([("Content-Disposition", 'attachment; filename="C:\\Users\\asha\\report.pdf"')])
    assert part_file(windows)[0] == "report.pdf"
    assert part_file(Headers()) == ("", "text/plain")


def _over_the_batch_cap(kind: str) -> tuple[Any, bytes, Any]:
    count = MAX_BATCH_MESSAGES + 1
    if kind == "brevo":
        body = compact({"items": [{"Subject": "x"}] * count})
        return build("brevo"), body, post({"Content-Type": "application/json"})
    if kind == "sparkpost":
        body = compact([{"msys": {"relay_message": {"content": {"text": "x"}}}}] * count)
        return build("sparkpost"), body, post({"Content-Type": "application/json"})
    body, headers = mandrill_request("k", "https://bridge.example.com/hooks/src",
                                     [{"event": "inbound", "msg": {"text": "x"}}] * count)
    return build("mandrill", webhook_key="k", public_url="https://bridge.example.com/hooks/src"), body, post(headers)


@pytest.mark.parametrize("kind", ["brevo", "mandrill", "sparkpost"])
def test_a_batch_over_the_cap_is_413(kind: str) -> None:
    """A post of more than MAX_BATCH_MESSAGES messages is refused with 413 before any is parsed."""
    handler, body, request = _over_the_batch_cap(kind)
    with pytest.raises(Rejected) as info:
        asyncio.run(handler.intercept(request, body))
    assert info.value.status == 413
    assert f"{MAX_BATCH_MESSAGES + 1}, at most {MAX_BATCH_MESSAGES}" in str(info.value)


def rich_message() -> bytes:
    """A support email as clients send them: a subject in two charsets, an inline logo, a forwarded message,
    a file with a non-ASCII RFC 2231 name."""
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?Asha_R=C3=A3o?= <asha@example.com>"
    msg["To"] = "support@acme.test"
    msg["Subject"] = "=?iso-8859-1?q?Caf=E9?= =?utf-8?b?4oCUIHLDqXNlYXU=?="
    msg["Message-ID"] = "<rich.1@mail.example.com>"
    msg.set_content("See the forwarded mail.\n")
    msg.add_alternative('<p>See the forwarded mail.<img src="cid:logo@acme"></p>', subtype="html")
    msg.get_payload()[1].add_related(JPEG, maintype="image", subtype="jpeg", cid="<logo@acme>",
                                     filename="logo.jpg")
    forwarded = EmailMessage()
    forwarded["From"] = "router@isp.test"
    forwarded["Subject"] = "Outage"
    forwarded.set_content("The line is down.\n")
    msg.add_attachment(forwarded)
    msg.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename=("utf-8", "",
                                                                                               "Fähre €.pdf"))
    return bytes(msg)


def raw_post(kind: str, eml: bytes) -> list[Any]:
    """`eml` posted through `kind` as its provider sends raw MIME, verified and parsed."""
    url = "https://bridge.example.com/hooks/src"
    options: dict[str, Any] = {"mandrill": {"webhook_key": "k", "public_url": url}, "mailersend": {"secret": "s"},
                               "postal": {"public_key": postal_public_key()}}.get(kind, {})
    text = eml.decode()
    json_ct = {"Content-Type": "application/json"}
    if kind == "mandrill":
        body, headers = mandrill_request("k", url, [{"event": "inbound", "msg": {"raw_msg": text}}])
    elif kind == "sparkpost":
        body, headers = compact([{"msys": {"relay_message": {"content": {"email_rfc822": text}}}}]), json_ct
    elif kind == "mailersend":
        body = compact({"type": "inbound.message", "data": {"raw": text}})
        headers = {**json_ct, "Signature": mailersend_signature("s", body)}
    else:
        body = compact({"id": 1, "message": base64.b64encode(eml).decode(), "base64": True})
        headers = postal_headers(body)
    handler, request = build(kind, **options), post(headers)
    handler.verify(request, body)
    assert asyncio.run(handler.intercept(request, body)) is None
    inbounds: list[Any] = handler.parse(request, body)
    return inbounds


@pytest.mark.parametrize("kind", ["mandrill", "sparkpost", "mailersend", "postal"])
def test_raw_mime_goes_through_the_email_channels_parser(kind: str) -> None:
    """Each kind that sends raw MIME gives exactly what the email channel's MIME path reads from it (so that path's
    handling of inline parts and forwarded messages applies to these kinds too): the subject's two charsets
    decoded, the forwarded message and the RFC 2231 file name among the files."""
    eml = rich_message()
    [inbound] = raw_post(kind, eml)
    payload = without_provider(inbound.payload)
    assert payload == without_provider(mail_inbound({}, Fields(), raw=eml).payload)
    assert (payload["subject"], payload["from_name"]) == ("Café— réseau", "Asha Rão")  # RFC 2047: no space
    names = [a["name"] for a in payload["attachments"]]
    assert "Fähre €.pdf" in names
    assert any(a["content_type"] == "message/rfc822" for a in payload["attachments"])
    assert inbound.dedup_key == "<rich.1@mail.example.com>"


def thread_post(kind: str) -> Any:
    """THREAD as `kind` hands it over (raw where the provider sends raw MIME, else its parsed copy), verified,
    intercepted (downloads and fetches answered by fakes) and parsed: the one event."""
    url = "https://bridge.example.com/hooks/src"
    json_ct = {"Content-Type": "application/json"}
    options: dict[str, Any] = {}
    if kind == "mandrill":
        options = {"webhook_key": "k", "public_url": url}
        body, headers = mandrill_request("k", url, mandrill_raw())
    elif kind == "sparkpost":
        body, headers = compact(sparkpost_raw()), json_ct
    elif kind == "mailersend":
        options = {"secret": "s"}
        body = compact(mailersend_raw())
        headers = {**json_ct, "Signature": mailersend_signature("s", body)}
    elif kind == "postal":
        options = {"public_key": postal_public_key()}
        body = compact(postal_raw())
        headers = postal_headers(body)
    elif kind == "resend":
        options = {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "api_key": "re_123", "api_url": RESEND_API}
        body = compact(load("resend/email_received.json"))
        headers = svix_headers(options["secret"], body)
    elif kind == "brevo":
        options = {"api_key": "xkeysib-test"}
        body, headers = compact(brevo_thread()), json_ct
    else:
        body, headers = compact(mailjet_thread()), json_ct
    handler, request = build(kind, **options), post(headers)
    if kind == "resend":
        handler.get = FakeResendApi(message=THREAD)
    elif kind == "brevo":
        async def download(url: str, _headers: dict[str, str], _timeout: float, _cap: int) -> bytes:
            return BREVO_THREAD_FILES[url.rsplit("/", 1)[1]]
        handler.get = download
    handler.verify(request, body)
    assert asyncio.run(handler.intercept(request, body)) is None
    [inbound] = handler.parse(request, body)
    return inbound


# What each kind reports beside the message: the envelope (from the raw message's Return-Path, or the
# provider's own fields) and its spam result.
THREAD_REPORTED: dict[str, dict[str, Any]] = {
    "mandrill": {**ENVELOPE, "spam": {"verdict": "unknown", "score": 0.3}},
    "sparkpost": {**ENVELOPE, "spam": None},
    "mailersend": {**ENVELOPE, "spam": None},
    "postal": {**ENVELOPE, "spam": None},
    "resend": {"envelope_from": "asha.rao@example.com", "envelope_to": [], "spam": None},
    "brevo": {"envelope_from": "asha.rao@example.com", "envelope_to": [], "spam": {"verdict": "unknown", "score": 1.2}},
    "mailjet": {**ENVELOPE, "spam": {"verdict": "unknown", "score": 1.2}},
}


@pytest.mark.parametrize("kind", list(THREAD_REPORTED))
def test_the_raw_thread_gives_the_email_channels_shape(kind: str) -> None:
    """THREAD through each new kind is exactly the email channel's reading of it: the multi-charset subject,
    the Windows- and UNC-path names as base names, the RFC 2231 name, the inline logo marked inline and the
    attached message stored as its exact bytes; Brevo and Mailjet reach it from their parsed fields."""
    inbound = thread_post(kind)
    assert message_shape(inbound.payload) == THREAD_EMAIL
    assert {k: inbound.payload[k] for k in PROVIDER_REPORTED} == THREAD_REPORTED[kind]
    forwarded = next(a for a in inbound.attachments if a.meta["name"] == "forwarded.eml")
    assert forwarded.content == FORWARDED
    assert inbound.dedup_key == "<CAF=asha.2@mail.example.com>"


@pytest.mark.parametrize("kind", ["mandrill", "sparkpost", "mailersend", "postal"])
@pytest.mark.parametrize("from_", ['"\\"<ceo@corp.example>" <attacker@evil.example>, b@evil.example',
                                   "attacker@evil.example (<ceo@corp.example>), b@evil.example"])
def test_a_raw_from_naming_an_address_in_a_name_or_comment_is_not_that_sender(kind: str, from_: str) -> None:
    """The probe's forged From lines, sent raw through each kind: the address in the name or the comment is
    never the sender (the one angle-addr outside them is, or none)."""
    eml = (f"From: {from_}\r\nTo: support@acme.test\r\nSubject: spoof\r\nMessage-ID: <s@evil.example>\r\n\r\n"
           "hello\r\n").encode()
    [inbound] = raw_post(kind, eml)
    assert inbound.payload["from"] in ("attacker@evil.example", None)


NAME_PIECES = [*'ab "\\<>(),;:@.\r\n\t', "=?utf-8?q?", "?=", "ceo@corp.example", "\x00", "é"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(NAME_PIECES), max_size=16).map("".join))
def test_any_name_a_provider_gives_beside_an_address_leaves_that_address_the_sender(name: str) -> None:
    """Whatever the name holds (quotes, escapes, brackets, comments, addresses, line breaks), the mailbox built
    of it and an address is read as that address."""
    assert sender(mailbox(name, "attacker@evil.example"))[1] == "attacker@evil.example"


@pytest.mark.parametrize(("fields", "sender_"), [
    (Fields(from_="x@evil.example, <ceo@corp.example>"), None),  # a provider's From field (Mailjet, Postal)
    (Fields(from_=["x@evil.example", "<ceo@corp.example>"]), None),  # a From the provider split into a list
    (Fields(from_="=?utf-8?q?=3Cceo=40corp.example=3E?="), None),
    (Fields(from_=mailbox("Boss", "=?utf-8?q?ceo=40corp.example?=")), None),  # a name and address pair (Brevo)
    (Fields(headers=Headers([("From", "x@evil.example, <ceo@corp.example>")])), None),  # its copy of the headers
    (Fields(from_="John Doe, Support <john@x.example>"), "john@x.example"),
    (Fields(from_=mailbox("=?utf-8?q?=3Cceo=40corp.example=3E?=", "x@evil.example")), "x@evil.example"),
])
def test_a_providers_parsed_from_of_several_mailboxes_or_an_encoded_address_names_no_sender(
        fields: Fields, sender_: str | None) -> None:
    """The kinds that hand over parsed fields rather than the raw message read their From as a raw one is read:
    mailboxes of several addresses, or an address only inside an encoded word, name no sender."""
    assert mail_inbound({"id": 1}, fields).payload["from"] == sender_
