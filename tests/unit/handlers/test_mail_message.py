"""handlers/mail_message.py: a provider's message made into an event, the raw MIME winning over its fields."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.errors import Rejected
from handlers.attachments import attachment
from handlers.email import Headers
from handlers.mail_message import MAX_BATCH_MESSAGES, Fields, mail_inbound, mailbox, mailboxes, part_file
from tests.fixtures.providers import ASHA_EMAIL, build, compact, mandrill_request, post, raw, without_provider

EML = raw("ses/message.eml")


def test_raw_message_wins_over_the_providers_fields() -> None:
    """Headers, bodies and attachments come from the raw message even where the parsed fields disagree."""
    fields = Fields(from_="mallory@example.net", to=["x@example.net"], subject="Other", text="other", html="<p>o",
                    attachments=[attachment("other.txt", "text/plain", b"x")])
    inbound = mail_inbound({"id": 1}, fields, raw=EML)
    assert without_provider(inbound.payload) == ASHA_EMAIL
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


def test_part_file_reads_the_name_and_type_from_part_headers() -> None:
    """An attachment described by its MIME headers gives its file name (RFC 2231 decoded) and bare type."""
    headers = Headers([("Content-Type", 'application/pdf; name="x.pdf"'),
                       ("Content-Disposition", "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf")])
    assert part_file(headers) == ("résumé.pdf", "application/pdf")
    assert part_file(Headers()) == (None, "text/plain")


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
