"""Meta WhatsApp Cloud API: the GET `hub.challenge` handshake, `X-Hub-Signature-256` (hex HMAC-SHA256 of the
body with the app secret), and one event per message in a POST; status callbacks are answered and ignored."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.auth import HmacConfig, check_hmac
from handlers.base import Handler, Inbound, Intercepted, ignored, items, json_body, obj
from handlers.chat import chat_payload
from handlers.signing import require, same

HEADER = "X-Hub-Signature-256"
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")


class WhatsappOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    app_secret: str
    verify_token: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.app_secret, "app_secret", "META_APP_SECRET")
        require(self.verify_token, "verify_token", "META_VERIFY_TOKEN")


def message_text(message: dict[str, Any]) -> str | None:
    """What the person wrote or chose, whatever the message type."""
    kind = message.get("type")
    body = message.get(kind) if isinstance(kind, str) else None
    if not isinstance(body, dict):
        return None
    if kind == "text":
        return body.get("body")
    if kind in MEDIA_TYPES:
        return body.get("caption")
    if kind == "button":
        return body.get("text")
    if kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply")
        return reply.get("title") if isinstance(reply, dict) else None
    if kind == "reaction":
        return body.get("emoji")
    if kind == "location":
        parts = [body.get("name"), body.get("address")]
        return ", ".join(p for p in parts if isinstance(p, str)) or None
    return None


def _values(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in items(data.get("entry")):
        if not isinstance(entry, dict):
            continue
        for change in items(entry.get("changes")):
            if isinstance(change, dict) and isinstance(change.get("value"), dict):
                yield change["value"]


class WhatsappHandler(Handler):
    kind: ClassVar[str] = "whatsapp"
    channel = "chat"
    Options: ClassVar[type[SourceConfig]] = WhatsappOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    @property
    def whatsapp(self) -> WhatsappOptions:
        assert isinstance(self.options, WhatsappOptions)
        return self.options

    async def handshake(self, request: web.Request) -> web.StreamResponse | None:
        query = request.query
        if query.get("hub.mode") != "subscribe":
            raise Rejected(403, "expected hub.mode=subscribe", check="verify_token")
        if not same(self.whatsapp.verify_token, query.get("hub.verify_token", "")):
            raise Rejected(403, "hub.verify_token does not match this source's verify_token", check="verify_token")
        return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")

    @cached_property
    def signature(self) -> HmacConfig:
        return HmacConfig(secret=self.whatsapp.app_secret, header=HEADER, prefix="sha256=")

    def verify(self, request: web.Request, body: bytes) -> None:
        check_hmac(self.signature, request, body, check="signature")

    def prepare(self, request: web.Request, body: bytes) -> None:
        json_body(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = json_body(request, body)
        if not any(v.get("messages") for v in _values(data)):
            statuses = sum(len(items(v.get("statuses"))) for v in _values(data))
            return ignored(f"no messages ({statuses} status updates)" if statuses else "no messages")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = json_body(request, body)
        out = []
        for value in _values(data):
            metadata = obj(value.get("metadata"))
            names = {str(c.get("wa_id")): obj(c.get("profile")).get("name") for c in items(value.get("contacts"))
                     if isinstance(c, dict)}
            for message in items(value.get("messages")):
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                media_body = message.get(kind) if kind in MEDIA_TYPES else None
                media = [{"type": kind, **{k: media_body.get(k) for k in ("id", "mime_type", "sha256", "filename")
                                           if k in media_body}}] if isinstance(media_body, dict) else []
                payload = chat_payload(
                    from_=message.get("from"), from_name=names.get(str(message.get("from"))),
                    to=metadata.get("display_phone_number"), text=message_text(message),
                    conversation_id=message.get("from"), message_id=message.get("id"), media=media,
                    provider={"message": message, "metadata": metadata,
                              "contacts": value.get("contacts") or [], "object": data.get("object")},
                )
                out.append(Inbound(payload=payload, dedup_key=payload["message_id"]))
        return out
