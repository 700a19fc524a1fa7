"""Telegram bot updates: `X-Telegram-Bot-Api-Secret-Token` must equal the secret given to setWebhook.
Messages become chat events; other updates (edits, callbacks, membership) and bots' messages are ignored."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.base import Handler, Inbound, Intercepted, ignored, json_body, named, obj
from handlers.chat import chat_payload
from handlers.signing import require, same

HEADER = "X-Telegram-Bot-Api-Secret-Token"
MESSAGE_KEYS = ("message", "channel_post", "business_message")
MEDIA_KEYS = ("document", "audio", "voice", "video", "video_note", "animation", "sticker")


class TelegramOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    secret_token: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret_token, "secret_token", "TELEGRAM_SECRET_TOKEN")


def _message(update: dict[str, Any]) -> dict[str, Any] | None:
    for key in MESSAGE_KEYS:
        if isinstance(update.get(key), dict):
            message: dict[str, Any] = update[key]
            return message
    return None


def media_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    photos = message.get("photo")
    if isinstance(photos, list) and photos and isinstance(photos[-1], dict):  # sizes, smallest first
        out.append({"type": "photo", "file_id": photos[-1].get("file_id"), "mime_type": "image/jpeg"})
    for key in MEDIA_KEYS:
        item = message.get(key)
        if isinstance(item, dict):
            out.append({"type": key, "file_id": item.get("file_id"), "mime_type": item.get("mime_type"),
                        **({"file_name": item["file_name"]} if "file_name" in item else {})})
    return out


class TelegramHandler(Handler):
    kind: ClassVar[str] = "telegram"
    channel = "chat"
    Options: ClassVar[type[SourceConfig]] = TelegramOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def verify(self, request: web.Request, body: bytes) -> None:
        assert isinstance(self.options, TelegramOptions)
        given = request.headers.get(HEADER, "")
        if not given:
            raise Rejected(401, f"secret header {HEADER} is missing", check="secret_token")
        if not same(self.options.secret_token, given):
            raise Rejected(401, f"{HEADER} does not match this source's secret_token", check="secret_token")

    def prepare(self, request: web.Request, body: bytes) -> None:
        json_body(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        update = json_body(request, body)
        message = _message(update)
        if message is None:
            kinds = sorted(k for k in update if k != "update_id")
            shown = ", ".join(named(k) for k in kinds[:8]) + (f" and {len(kinds) - 8} more" if len(kinds) > 8 else "")
            return ignored(f"Telegram update without a new message ({shown or 'empty'})")
        sender = message.get("from")
        if isinstance(sender, dict) and sender.get("is_bot"):
            return ignored("a bot's message")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        update = json_body(request, body)
        message = _message(update)
        if message is None:
            raise Rejected(400, "the update has no message", check="json")
        sender = obj(message.get("from"))
        chat = obj(message.get("chat"))
        name = " ".join(str(sender[k]) for k in ("first_name", "last_name") if sender.get(k)) or chat.get("title")
        payload = chat_payload(
            from_=sender.get("id", chat.get("id")), from_name=name, to=None,
            text=message.get("text", message.get("caption")), conversation_id=chat.get("id"),
            message_id=message.get("message_id"), media=media_of(message), provider=update,
        )
        update_id = update.get("update_id")
        return [Inbound(payload=payload, dedup_key=str(update_id) if update_id is not None else None)]
