"""handlers/telegram.py: the secret-token header, messages as chat events, other updates ignored."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.telegram import TelegramHandler
from tests.fixtures.providers import build, compact, load, post

TOKEN = "tg_Secret-Token_123"
HEADER = "X-Telegram-Bot-Api-Secret-Token"


def test_kind_and_channel() -> None:
    """Telegram is kind `telegram` on the `chat` channel."""
    assert (TelegramHandler.kind, TelegramHandler.channel) == ("telegram", "chat")


async def test_message_becomes_a_chat_event() -> None:
    """A message update with the right secret token gives the chat shape, de-duplicated by update_id."""
    body = compact(load("telegram/message.json"))
    h, req = build("telegram", secret_token=TOKEN), post({HEADER: TOKEN})
    h.verify(req, body)
    assert await h.intercept(req, body) is None
    [inbound] = h.parse(req, body)
    assert {k: v for k, v in inbound.payload.items() if k != "provider"} == {
        "from": "5123456789", "from_name": "Asha Rao", "to": None, "text": "My router is down again",
        "conversation_id": "5123456789", "message_id": "1427", "media": [],
    }
    assert inbound.dedup_key == "873261001"


def test_photo_gives_its_largest_size_and_caption() -> None:
    """A photo message gives its caption as text and its largest size as media."""
    [inbound] = build("telegram", secret_token=TOKEN).parse(post(), compact(load("telegram/photo.json")))
    assert inbound.payload["text"] == "This is what the modem shows"
    assert inbound.payload["media"] == [{"type": "photo", "file_id": "AgACAgQAAxkBAAIBc2Zlarge",
                                         "mime_type": "image/jpeg"}]


async def test_edits_and_bots_are_ignored() -> None:
    """An edited message, or a bot's message, is answered 200 and not stored."""
    h = build("telegram", secret_token=TOKEN)
    early = await h.intercept(post(), compact(load("telegram/edited_message.json")))
    assert early is not None and "edited_message" in early.reason
    bot = load("telegram/message.json")
    bot["message"]["from"]["is_bot"] = True
    early = await h.intercept(post(), compact(bot))
    assert early is not None and early.outcome == "ignored"


@pytest.mark.parametrize("headers", [{}, {HEADER: "guess"}, {HEADER: TOKEN + "x"}, {HEADER: TOKEN[:-1]}])
def test_missing_or_wrong_secret_token_is_401(headers: dict[str, str]) -> None:
    """No secret token, or any other value (prefixes included), is refused."""
    with pytest.raises(Rejected) as info:
        build("telegram", secret_token=TOKEN).verify(post(headers), b"{}")
    assert (info.value.status, info.value.check) == (401, "secret_token")
