"""Meta WhatsApp Cloud API: the GET `hub.challenge` handshake, `X-Hub-Signature-256` (hex HMAC-SHA256 of the
body with the app secret), and one event per message in a POST; status callbacks are answered and ignored. Each
event's `provider` holds its message, the sender's contact (the one whose `wa_id` sent it: `profile.name` and
`wa_id`) and the metadata's `display_phone_number` and `phone_number_id`, not every contact of the post: a text
longer than a name or an id (256, 64 characters) is left out there, so a post's size bounds what it stores."""

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
MAX_ID_CHARS = 64
"""A phone number, a phone number id, a wa_id, the `object` name: Meta's are under 30 characters."""
MAX_NAME_CHARS = 256
"""A contact's profile name (WhatsApp lets a person write a few words)."""


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


def _short(value: Any, limit: int) -> str | None:
    """`value` when it is text of at most `limit` characters, else None: what every event of a value shares is kept
    bounded, so that a value's many messages cost in proportion to the body, not messages times the value."""
    return value if isinstance(value, str) and len(value) <= limit else None


def _contacts(value: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each contact of a value by its wa_id, as `{"profile": {"name"}, "wa_id"}` with both bounded."""
    out: dict[str, dict[str, Any]] = {}
    for contact in map(obj, items(value.get("contacts"))):
        wa_id = _short(contact.get("wa_id"), MAX_ID_CHARS)
        if wa_id is not None and wa_id not in out:
            name = _short(obj(contact.get("profile")).get("name"), MAX_NAME_CHARS)
            out[wa_id] = {"profile": {"name": name}, "wa_id": wa_id}
    return out


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
        kind_of_object = _short(data.get("object"), MAX_ID_CHARS)
        for value in _values(data):
            raw_metadata = obj(value.get("metadata"))
            metadata = {k: _short(raw_metadata.get(k), MAX_ID_CHARS) for k in ("display_phone_number",
                                                                                "phone_number_id")}
            contacts = _contacts(value)
            for message in items(value.get("messages")):
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                media_body = message.get(kind) if kind in MEDIA_TYPES else None
                media = [{"type": kind, **{k: media_body.get(k) for k in ("id", "mime_type", "sha256", "filename")
                                           if k in media_body}}] if isinstance(media_body, dict) else []
                sender = contacts.get(str(message.get("from")))
                payload = chat_payload(
                    from_=message.get("from"), from_name=sender["profile"]["name"] if sender else None,
                    to=metadata["display_phone_number"], text=message_text(message),
                    conversation_id=message.get("from"), message_id=message.get("id"), media=media,
                    provider={"message": message, "metadata": metadata, "contacts": [sender] if sender else [],
                              "object": kind_of_object},
                )
                out.append(Inbound(payload=payload, dedup_key=payload["message_id"]))
        return out
