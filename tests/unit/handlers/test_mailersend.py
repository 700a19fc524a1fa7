"""handlers/mailersend.py: MailerSend inbound routing, `Signature` = hex HMAC-SHA256 of the body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.errors import Rejected
from handlers.base import Intercepted
from handlers.mailersend import MailersendHandler
from tests.fixtures.providers import (
    ASHA_EMAIL,
    ENVELOPE,
    JPEG,
    build,
    compact,
    load,
    mailersend_signature,
    passes,
    post,
    without_provider,
)

SECRET = "Jh0zM1yWmTqPx3ZcQ2bR"


def signed(data: Any, secret: str = SECRET) -> tuple[bytes, Any]:
    body = compact(data)
    return body, post({"Content-Type": "application/json", "Signature": mailersend_signature(secret, body)})


def test_kind_and_channel() -> None:
    """MailerSend is kind `mailersend` on the `email` channel."""
    assert (MailersendHandler.kind, MailersendHandler.channel) == ("mailersend", "email")


def test_signed_message_verifies_and_is_read_from_its_raw_mime() -> None:
    """A signed inbound.message verifies; `data.raw` gives the email shape, kept out of the provider fields."""
    body, req = signed(load("mailersend/inbound.json"))
    h = build("mailersend", secret=SECRET)
    h.verify(req, body)
    assert asyncio.run(h.intercept(req, body)) is None
    [inbound] = h.parse(req, body)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE}
    assert inbound.attachments[0].content == JPEG
    assert "raw" not in inbound.payload["provider"]["data"]
    assert "content" not in inbound.payload["provider"]["data"]["attachments"][0]


def test_signature_with_another_secret_or_body_is_401() -> None:
    """A signature by another secret, or over other bytes, is refused."""
    h = build("mailersend", secret=SECRET)
    body, req = signed(load("mailersend/inbound.json"), "other")
    with pytest.raises(Rejected) as info:
        h.verify(req, body)
    assert (info.value.status, info.value.check) == (401, "signature")
    body, req = signed(load("mailersend/inbound.json"))
    assert not passes(lambda: h.verify(req, body + b" "))


def test_parsed_fields_serve_without_the_raw_message() -> None:
    """Without `data.raw`, the parsed fields and base64 attachments give the same shape."""
    data = load("mailersend/inbound.json")
    del data["data"]["raw"]
    body, req = signed(data)
    [inbound] = build("mailersend", secret=SECRET).parse(req, body)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE}


@pytest.mark.parametrize("kind", ["webhook.test", "activity.sent"])
def test_other_event_types_are_ignored(kind: str) -> None:
    """A test ping or an activity event posted to the inbound source is answered as ignored."""
    body, req = signed({"type": kind, "data": {}})
    answer = asyncio.run(build("mailersend", secret=SECRET).intercept(req, body))
    assert isinstance(answer, Intercepted) and answer.outcome == "ignored"
    assert answer.code.startswith("not_a_message:") and answer.response.status == 200
