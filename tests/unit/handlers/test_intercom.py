"""handlers/intercom.py: X-Hub-Signature (sha1), conversation topics as chat events, ping ignored."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.intercom import IntercomHandler, html_text
from tests.fixtures.providers import build, compact, hub_signature, load, post

SECRET = "intercom-client-secret"
BODY = compact(load("intercom/conversation_replied.json"))


def test_kind_and_channel() -> None:
    """Intercom is kind `intercom` on the `chat` channel."""
    assert (IntercomHandler.kind, IntercomHandler.channel) == ("intercom", "chat")


async def test_reply_becomes_a_chat_event() -> None:
    """A signed conversation.user.replied gives the newest part as the chat shape, by notification id."""
    h, req = build("intercom", secret=SECRET), post({"X-Hub-Signature": hub_signature(SECRET, BODY, "sha1")})
    h.verify(req, BODY)
    assert await h.intercept(req, BODY) is None
    [inbound] = h.parse(req, BODY)
    assert {k: v for k, v in inbound.payload.items() if k != "provider"} == {
        "from": "asha.rao@example.com", "from_name": "Asha Rao", "to": "ecahpwf5",
        "text": "It is still down since this morning.\nThe light blinks red.", "conversation_id": "147",
        "message_id": "7288",
        "media": [{"name": "modem.jpg", "url": "https://downloads.intercomcdn.com/i/o/modem.jpg",
                   "content_type": "image/jpeg", "filesize": 60211}],
    }
    assert inbound.payload["provider"]["topic"] == "conversation.user.replied"
    assert inbound.dedup_key == "notif_ccd8a4d2-3a69-4a6e-9f1e-8f0e3c2b1a90"


def test_new_conversation_uses_its_opening_message() -> None:
    """Without conversation parts, the conversation's source message is the text."""
    data = load("intercom/conversation_replied.json")
    data["data"]["item"]["conversation_parts"]["conversation_parts"] = []
    [inbound] = build("intercom", secret=SECRET).parse(post(), compact(data))
    assert (inbound.payload["text"], inbound.payload["message_id"]) == ("Hi, my router is down", "403918316")


async def test_ping_is_ignored() -> None:
    """Intercom's ping is answered 200 and not stored."""
    early = await build("intercom", secret=SECRET).intercept(post(), compact(load("intercom/ping.json")))
    assert early is not None and early.outcome == "ignored"


@pytest.mark.parametrize("headers", [{}, {"X-Hub-Signature": hub_signature("other", BODY, "sha1")},
                                     {"X-Hub-Signature": hub_signature(SECRET, BODY, "sha256")}])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str]) -> None:
    """No signature, another secret or another algorithm is refused."""
    with pytest.raises(Rejected) as info:
        build("intercom", secret=SECRET).verify(post(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "signature")


def test_html_text() -> None:
    """Tags go, breaks and paragraphs become lines, entities are decoded."""
    assert html_text("<p>a &amp; b</p><p>c<br>d</p>") == "a & b\nc\nd"
    assert html_text(None) is None
