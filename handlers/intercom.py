"""Intercom webhooks: `X-Hub-Signature: sha1=` hex HMAC-SHA1 of the body with the app's client secret.
Conversation topics become chat events (the newest part of the conversation); `ping` is answered and ignored."""

from __future__ import annotations

import re
from collections.abc import Callable
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
# Neither pattern, nor the character references `unescape` reads (`&` then no `&`), matches a text that holds its
# first character again: a step may end before any `<` (or `&`).


class IntercomOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    secret: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret, "secret", "INTERCOM_CLIENT_SECRET")


HTML_STEP = 16 * 1024
"""Characters of a message body each substitution reads at a time. A substitution is one call into C, which holds
the GIL, and so the event loop, for all its length even from the parser thread: over 1 MB of `<`, of `<b>x</b>`
or of `&`, one held it 20-110 ms. A step of this many holds it well under a millisecond."""


def _in_steps(replace: Callable[[str], str], text: str, first: str) -> str:
    """`replace(text)` for a replacement whose every match starts with `first` and holds no other `first`, made a
    step of about HTML_STEP characters at a time: each step ends before a `first`, so no match spans two."""
    if len(text) <= HTML_STEP:
        return replace(text)
    done = []
    start = 0
    while start < len(text):
        cut = text.find(first, start + HTML_STEP)
        cut = len(text) if cut == -1 else cut  # the rest holds no match: its scan costs little
        done.append(replace(text[start:cut]))
        start = cut
    return "".join(done)


def _breaks(html: str) -> str:
    return _BREAK.sub("\n", html)


def _tags(html: str) -> str:
    return _TAG.sub("", html)


def html_text(html: Any) -> str | None:
    """Intercom message bodies are HTML: a plain-text rendering for the chat shape's `text`. Line-breaking tags
    become line breaks, other tags go, character references are read (each pass in steps: `_in_steps`)."""
    if not isinstance(html, str):
        return None
    text = _in_steps(unescape, _in_steps(_tags, _in_steps(_breaks, html, "<"), "<"), "&")
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
