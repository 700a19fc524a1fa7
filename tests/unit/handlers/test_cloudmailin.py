"""handlers/cloudmailin.py: Cloudmailin's JSON (normalised) format."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from handlers.cloudmailin import CloudmailinHandler, byte_count
from tests.fixtures.providers import (
    ASHA_EMAIL,
    ENVELOPE,
    FORWARDED,
    JPEG,
    LOGO,
    THREAD_EMAIL,
    build,
    cloudmailin_raw,
    compact,
    load,
    message_shape,
    post,
    without_provider,
)

JSON = {"Content-Type": "application/json"}


def test_kind_and_channel() -> None:
    """Cloudmailin is kind `cloudmailin` on the `email` channel."""
    assert (CloudmailinHandler.kind, CloudmailinHandler.channel) == ("cloudmailin", "email")


def test_normalised_json_gives_the_email_shape() -> None:
    """Headers, plain, html and reply_plain map to the email shape; content attachments carry their bytes."""
    [inbound] = build("cloudmailin").parse(post(JSON), compact(load("cloudmailin/normalized.json")))
    payload = without_provider(inbound.payload)
    photo, _invoice = payload.pop("attachments")
    assert payload == {**{k: v for k, v in ASHA_EMAIL.items() if k != "attachments"}, **ENVELOPE}
    assert photo == ASHA_EMAIL["attachments"][0]
    assert inbound.attachments[0].content == JPEG
    assert inbound.dedup_key == "<CAF=asha.1@mail.example.com>"
    assert "content" not in inbound.payload["provider"]["attachments"][0]


def test_linked_attachment_is_recorded_as_not_stored() -> None:
    """An attachment held in Cloudmailin's store is listed with its link, stored false and the reason."""
    [inbound] = build("cloudmailin").parse(post(JSON), compact(load("cloudmailin/normalized.json")))
    invoice = inbound.payload["attachments"][1]
    assert invoice == {"name": "invoice.pdf", "content_type": "application/pdf", "inline": False, "size": 48213,
                       "sha256": None, "stored": False, "reason": "held by Cloudmailin's attachment store",
                       "url": "https://attachments.cloudmailin.example/ab12/invoice.pdf"}


def test_envelope_fills_in_for_missing_headers() -> None:
    """Without From/To headers, the envelope's sender and recipient are used."""
    data = load("cloudmailin/normalized.json")
    del data["headers"]["from"], data["headers"]["to"]
    [inbound] = build("cloudmailin").parse(post(JSON), compact(data))
    assert (inbound.payload["from"], inbound.payload["to"]) == ("asha.rao@example.com", ["support@acme.test"])


@pytest.mark.parametrize(("value", "count"), [
    (48213, 48213), ("48213", 48213), (0, 0),
    ("²", None), ("٣", None), ("9" * 5000, None), (-3, None), ("-3", None), (1.5, None), (True, None),
    (None, None), ([1], None), ("", None),
])
def test_byte_count_takes_plain_counts_only(value: Any, count: int | None) -> None:
    """A size is a number, or ASCII digits in a string; anything else (digits only to isdigit, a thousand
    digits, negatives, other types) is unknown rather than an error."""
    assert byte_count(value) == count


def test_raw_format_message_is_parsed_and_kept_whole() -> None:
    """The raw message format (a form of `envelope[…]` fields and `message`): the message is parsed into the
    email shape, its attached message stored as its exact bytes, and the raw text is not kept twice."""
    body, ctype = cloudmailin_raw()
    [inbound] = build("cloudmailin").parse(post({"Content-Type": ctype}), body)
    assert message_shape(inbound.payload) == THREAD_EMAIL
    assert {k: inbound.payload[k] for k in ("envelope_from", "envelope_to")} == ENVELOPE
    assert inbound.attachments[3].content == FORWARDED
    assert "message" not in inbound.payload["provider"]
    assert inbound.payload["provider"]["envelope"] == {
        "to": "support@acme.test", "recipients": ["support@acme.test"], "from": "asha.rao@example.com",
        "helo_domain": "mail.example.com", "remote_ip": "203.0.113.5",
        "spf": {"result": "pass", "domain": "example.com"}}


def test_attachment_names_are_base_names_and_inline_parts_are_marked() -> None:
    """A Windows path in `file_name` gives its base name; a `content_id` marks the file inline."""
    data = load("cloudmailin/normalized.json")
    data["attachments"] = [
        {"content": base64.b64encode(FORWARDED).decode(), "file_name": "C:\\Users\\asha\\forwarded.eml",
         "content_type": "message/rfc822", "size": len(FORWARDED), "disposition": "attachment"},
        {"content": base64.b64encode(LOGO).decode(), "file_name": "logo.png", "content_type": "image/png",
         "size": len(LOGO), "disposition": "inline", "content_id": "<logo@asha>"},
    ]
    [inbound] = build("cloudmailin").parse(post(JSON), compact(data))
    assert [(a["name"], a["inline"]) for a in inbound.payload["attachments"]] == \
        [("forwarded.eml", False), ("logo.png", True)]
    assert inbound.attachments[0].content == FORWARDED


def test_an_encoded_attachment_name_is_decoded() -> None:
    """A `file_name` holding RFC 2047 words (as some clients send it) is decoded."""
    data = load("cloudmailin/normalized.json")
    data["attachments"] = [{"content": base64.b64encode(b"x").decode(), "file_name": "=?utf-8?b?w7xiZXJzaWNodC5wZGY=?=",
                            "content_type": "application/pdf", "size": 1, "disposition": "attachment"}]
    [inbound] = build("cloudmailin").parse(post(JSON), compact(data))
    assert inbound.payload["attachments"][0]["name"] == "übersicht.pdf"
