"""handlers/whatsapp.py: the hub.challenge handshake, X-Hub-Signature-256, several messages per POST."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from bridge.errors import Rejected
from handlers.whatsapp import WhatsappHandler, message_text
from tests.fixtures.providers import build, compact, hub_signature, load, post

SECRET, VERIFY = "meta-app-secret", "meta-verify-token"
BODY = compact(load("whatsapp/messages.json"))


def handler() -> WhatsappHandler:
    h: WhatsappHandler = build("whatsapp", app_secret=SECRET, verify_token=VERIFY)
    return h


def signed(body: bytes = BODY) -> dict[str, str]:
    return {"X-Hub-Signature-256": hub_signature(SECRET, body), "Content-Type": "application/json"}


def test_kind_and_channel() -> None:
    """WhatsApp is kind `whatsapp` on the `chat` channel."""
    assert (WhatsappHandler.kind, WhatsappHandler.channel) == ("whatsapp", "chat")


async def test_handshake_echoes_the_challenge() -> None:
    """GET with hub.mode=subscribe and the right verify token is answered with the challenge as text."""
    req = make_mocked_request("GET", f"/hooks/wa?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=1158201444")
    resp: Any = await handler().handshake(req)
    assert (resp.status, resp.text, resp.content_type) == (200, "1158201444", "text/plain")


@pytest.mark.parametrize("query", [f"hub.mode=unsubscribe&hub.verify_token={VERIFY}&hub.challenge=1",
                                   "hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1",
                                   "hub.mode=subscribe&hub.challenge=1"])
async def test_handshake_with_a_wrong_token_is_403(query: str) -> None:
    """A wrong or missing verify token, or another mode, is a 403 (Meta's convention) and echoes nothing."""
    with pytest.raises(Rejected) as info:
        await handler().handshake(make_mocked_request("GET", f"/hooks/wa?{query}"))
    assert (info.value.status, info.value.check) == (403, "verify_token")


async def test_one_post_with_two_messages_gives_two_events() -> None:
    """Each message in a signed POST becomes its own event, de-duplicated by its wamid."""
    h, req = handler(), post(signed())
    h.verify(req, BODY)
    assert await h.intercept(req, BODY) is None
    first, second = h.parse(req, BODY)
    assert {k: v for k, v in first.payload.items() if k != "provider"} == {
        "from": "919876543210", "from_name": "Asha Rao", "to": "15550783881", "text": "My router is down again",
        "conversation_id": "919876543210", "message_id": first.dedup_key, "media": [],
    }
    assert first.dedup_key is not None and first.dedup_key.startswith("wamid.HBgMOTE5ODc2NTQzMjEwFQIAEhggQTFC")
    assert second.payload["text"] == "This is what the modem shows"
    assert second.payload["media"] == [{"type": "image", "id": "1279493672817426", "mime_type": "image/jpeg",
                                        "sha256": "HgtFs5m1LqHXBkAlWuG9jBXBeL0fkhB5+sOXjJWGPq8="}]
    assert first.dedup_key != second.dedup_key


async def test_status_updates_are_ignored() -> None:
    """A POST carrying only status updates is answered 200 and not stored."""
    body = compact(load("whatsapp/statuses.json"))
    early = await handler().intercept(post(signed(body)), body)
    assert early is not None and early.outcome == "ignored" and "1 status updates" in early.reason


@pytest.mark.parametrize("headers", [{}, {"X-Hub-Signature-256": hub_signature("other", BODY)},
                                     {"X-Hub-Signature-256": hub_signature(SECRET, BODY, "sha1")},
                                     {"X-Hub-Signature-256": hub_signature(SECRET, BODY).removeprefix("sha256=")}])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str]) -> None:
    """No signature, another secret, SHA1 or no `sha256=` prefix is refused."""
    with pytest.raises(Rejected) as info:
        handler().verify(post(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "signature")


@pytest.mark.parametrize(("message", "text"), [
    ({"type": "interactive", "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Yes"}}},
     "Yes"),
    ({"type": "button", "button": {"text": "Call me", "payload": "x"}}, "Call me"),
    ({"type": "reaction", "reaction": {"message_id": "m", "emoji": "👍"}}, "👍"),
    ({"type": "location", "location": {"latitude": 1, "longitude": 2, "name": "Home", "address": "1 Road"}},
     "Home, 1 Road"),
    ({"type": "unsupported", "errors": []}, None),
])
def test_text_of_other_message_types(message: dict[str, Any], text: str | None) -> None:
    """Buttons, list replies, reactions and locations give their text; unknown types give none."""
    assert message_text(message) == text


def stored_size(body: bytes) -> int:
    """The bytes the events of `body` would be stored as (their payloads, as JSON)."""
    return sum(len(compact(inbound.payload)) for inbound in handler().parse(post(signed(body)), body))


def one_value(messages: int, **value: Any) -> bytes:
    sent = [{"from": "919876543210", "id": f"wamid.{i}", "type": "text", "text": {"body": "hi"}}
            for i in range(messages)]
    return compact({"object": "whatsapp_business_account",
                    "entry": [{"changes": [{"value": {"messages": sent, **value}}]}]})


@pytest.mark.parametrize("body", [
    one_value(1_000, contacts=[{"profile": {"name": "x"}, "wa_id": str(i)} for i in range(1_000)]),
    one_value(200, metadata={"display_phone_number": "1" * 400_000, "phone_number_id": "106540352242922"}),
    one_value(200, contacts=[{"profile": {"name": "n" * 400_000}, "wa_id": "919876543210"}]),
    compact({"object": "o" * 400_000, "entry": [{"changes": [{"value": {"messages": [
        {"from": "1", "id": f"wamid.{i}", "type": "text"} for i in range(200)]}}]}]}),
], ids=["1000-contacts", "long-metadata", "long-name", "long-object"])
def test_what_a_values_messages_share_is_stored_bounded(body: bytes) -> None:
    """What every message of a value shares (its contacts, its metadata, the post's `object`) is kept once per
    event only as the sender's contact and the two metadata ids, each bounded: 1,000 messages beside 1,000
    contacts, or 200 beside a 400 KB field, store a few times their body, not messages times the field."""
    assert stored_size(body) <= 4 * len(body) + 200_000


def test_each_event_keeps_only_its_senders_contact_and_the_metadata_ids() -> None:
    """An event's provider part holds the contact whose wa_id sent it, and the metadata's phone number and id;
    a contact or metadata field that is not short text is left out, not failed."""
    data = load("whatsapp/messages.json")
    value = data["entry"][0]["changes"][0]["value"]
    value["contacts"] = [{"profile": {"name": "Someone Else"}, "wa_id": "911111111111", "email": "x@example.com"},
                         *value["contacts"], {"wa_id": 5}, "junk"]
    value["metadata"] = {**value["metadata"], "extra": "x" * 100, "phone_number_id": {"nested": 1}}
    body = compact(data)
    first, _ = handler().parse(post(signed(body)), body)
    provider = first.payload["provider"]
    assert provider["contacts"] == [{"profile": {"name": "Asha Rao"}, "wa_id": "919876543210"}]
    assert provider["metadata"] == {"display_phone_number": "15550783881", "phone_number_id": None}
    assert first.payload["from_name"] == "Asha Rao"
