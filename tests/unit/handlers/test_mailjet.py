"""handlers/mailjet.py: Mailjet Parse API JSON, attachments base64 in the fields their Parts name."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.mailjet import MailjetHandler
from tests.fixtures.providers import ASHA_EMAIL, ENVELOPE, JPEG, build, compact, load, post, without_provider

JSON = {"Content-Type": "application/json"}


def test_kind_and_channel() -> None:
    """Mailjet is kind `mailjet` on the `email` channel."""
    assert (MailjetHandler.kind, MailjetHandler.channel) == ("mailjet", "email")


def test_parse_post_normalises_to_the_email_shape() -> None:
    """The Parse API's JSON gives the email shape, its attachment read from `Attachment1`."""
    [inbound] = build("mailjet").parse(post(JSON), compact(load("mailjet/parse.json")))
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE, "spam": {"verdict": "unknown", "score": 0.3}}
    assert inbound.attachments[0].content == JPEG
    assert inbound.dedup_key == "<CAF=asha.1@mail.example.com>"
    assert "Attachment1" not in inbound.payload["provider"]


def test_headers_come_before_the_envelope() -> None:
    """`Recipient` (the envelope) serves only when the To header is missing."""
    data = load("mailjet/parse.json")
    data["Recipient"] = "support+1042@acme.test"
    assert build("mailjet").parse(post(JSON), compact(data))[0].payload["to"] == ["support@acme.test"]
    del data["Headers"]["To"]
    assert build("mailjet").parse(post(JSON), compact(data))[0].payload["to"] == ["support+1042@acme.test"]


def test_attachment_that_is_not_base64_is_400() -> None:
    """A part whose content field is not base64 is a 400 naming the field."""
    data = load("mailjet/parse.json")
    data["Attachment1"] = "%%%"
    with pytest.raises(Rejected) as info:
        build("mailjet").parse(post(JSON), compact(data))
    assert info.value.status == 400
    assert "`Attachment1`" in str(info.value)


def test_without_a_date_header_mailjets_own_date_is_read() -> None:
    """With no Date among the headers, Mailjet's `Date` field (20240603T100500, UTC) gives the payload's date."""
    data = load("mailjet/parse.json")
    del data["Headers"]["Date"]
    [inbound] = build("mailjet").parse(post(JSON), compact(data))
    assert inbound.payload["date"] == "2024-06-03T10:05:00+00:00"
