"""Intercom webhooks: `X-Hub-Signature: sha1=` hex HMAC-SHA1 of the body with the app's client secret.
Conversation topics become chat events (the newest part of the conversation); `ping` is answered and ignored."""

from __future__ import annotations

import re
from functools import cached_property
from html import unescape
from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.auth import HmacConfig, check_hmac
from handlers.base import Handler, Inbound, Intercepted, ignored, items, json_body, obj
from handlers.chat import chat_payload
from handlers.signing import require

HEADER = "X-Hub-Signature"
_TAG = re.compile(r"<[^<>]+>")  # not "<[^>]+>": on a run of "<" without ">" that rescans to the end from each one
_BREAK = re.compile(r"<\s*(br|/p|/div|/li)\s*/?>", re.IGNORECASE)


class IntercomOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    secret: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret, "secret", "INTERCOM_CLIENT_SECRET")


def html_text(html: Any) -> str | None:
    """Intercom message bodies are HTML: a plain-text rendering for the chat shape's `text`."""
    if not isinstance(html, str):
        return None
    text = unescape(_TAG.sub("", _BREAK.sub("\n", html)))
    return "\n".join(line.strip() for line in text.strip().splitlines())


def _latest(item: dict[str, Any]) -> dict[str, Any]:
    """The newest conversation part, else the conversation's opening message (`source`)."""
    parts = item.get("conversation_parts")
    listed = parts.get("conversation_parts") if isinstance(parts, dict) else None
    if isinstance(listed, list) and listed and isinstance(listed[-1], dict):
        last: dict[str, Any] = listed[-1]
        return last
    source = item.get("source")
    return source if isinstance(source, dict) else {}


class IntercomHandler(Handler):
    kind: ClassVar[str] = "intercom"
    channel = "chat"
    Options: ClassVar[type[SourceConfig]] = IntercomOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    @cached_property
    def signature(self) -> HmacConfig:
        assert isinstance(self.options, IntercomOptions)
        return HmacConfig(secret=self.options.secret, header=HEADER, algorithm="sha1", prefix="sha1=")

    def verify(self, request: web.Request, body: bytes) -> None:
        check_hmac(self.signature, request, body, check="signature")

    def prepare(self, request: web.Request, body: bytes) -> None:
        json_body(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = json_body(request, body)
        if data.get("topic") == "ping":
            return ignored("Intercom ping")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = json_body(request, body)
        inner = data.get("data")
        item = inner.get("item") if isinstance(inner, dict) else None
        if not isinstance(item, dict):
            raise Rejected(400, "no `data.item` object in the body", check="json")
        is_conversation = item.get("type") == "conversation"
        part = _latest(item) if is_conversation else {}
        author = obj(part.get("author"))
        attachments = [{k: a.get(k) for k in ("name", "url", "content_type", "filesize") if k in a}
                       for a in items(part.get("attachments")) if isinstance(a, dict)]
        payload = chat_payload(
            from_=author.get("email") or author.get("id"), from_name=author.get("name"),
            to=data.get("app_id"), text=html_text(part.get("body")),
            conversation_id=item.get("id") if is_conversation else None, message_id=part.get("id"),
            media=attachments, provider=data,
        )
        notification = data.get("id")
        return [Inbound(payload=payload, dedup_key=str(notification) if notification else None)]
