"""MailerSend inbound routing: one JSON `inbound.message` event whose `data` holds the raw MIME (`raw`) beside
the parsed fields. Signed in the `Signature` header: hex HMAC-SHA256 of the raw body, keyed by the route's
signing secret. Other event types posted here (a `webhook.test`, activity events) are not messages (200, counted)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from handlers.attachments import Attachment, decode_base64
from handlers.auth import HmacConfig, check_hmac
from handlers.base import (
    Handler,
    Inbound,
    Intercepted,
    decode_json_object,
    items,
    named,
    not_a_message,
    obj,
    per_request,
)
from handlers.cloudmailin import byte_count
from handlers.mail_message import (
    Fields,
    header_pairs,
    mail_inbound,
    mailbox,
    mailboxes,
    provider_file,
    provider_remote_file,
    raw_bytes,
    text,
    without,
)
from handlers.signing import require

HEADER = "Signature"


class MailersendOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    secret: str
    """The inbound route's signing secret."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret, "secret", "MAILERSEND_INBOUND_SECRET")


class MailersendHandler(Handler):
    kind: ClassVar[str] = "mailersend"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = MailersendOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def verify(self, request: web.Request, body: bytes) -> None:
        assert isinstance(self.options, MailersendOptions)
        check_hmac(HmacConfig(secret=self.options.secret, header=HEADER, algorithm="sha256", encoding="hex"),
                   request, body, check="signature")

    def _event(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "mailersend", lambda: decode_json_object(body))

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._event(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        kind = self._event(request, body).get("type")
        if kind != "inbound.message":
            return not_a_message("event", f"a MailerSend {named(kind)} event, not an inbound message")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        event = self._event(request, body)
        data = obj(event.get("data"))
        raw = text(data.get("raw"))
        files: list[Attachment] = []
        if raw is None:  # the parsed copies serve only when the raw message is missing
            for i, item in enumerate(map(obj, items(data.get("attachments")))):
                name, ctype = item.get("file_name"), item.get("content_type")
                inline = bool(text(item.get("content_id"))) or item.get("disposition") == "inline"
                if item.get("content") is not None:
                    files.append(provider_file(name, ctype, decode_base64(item["content"],
                                                                          f"`data.attachments[{i}].content`"),
                                               inline=inline))
                else:
                    files.append(provider_remote_file(name, ctype, byte_count(item.get("size")),
                                                      "MailerSend sent no content", inline=inline))
        recipients = obj(data.get("recipients"))
        sender = obj(data.get("from"))
        fields = Fields(
            from_=mailbox(sender.get("name"), sender.get("email")),
            to=mailboxes(obj(recipients.get("to")).get("data"), "name", "email"),
            cc=mailboxes(obj(recipients.get("cc")).get("data"), "name", "email"),
            subject=text(data.get("subject")),
            date=text(data.get("date")),
            envelope_from=text(obj(data.get("sender")).get("email")),
            envelope_to=[e for r in items(recipients.get("rcptTo")) if (e := text(obj(r).get("email")))],
            text=text(data.get("text")),
            html=text(data.get("html")),
            attachments=files,
            headers=header_pairs(data.get("headers")),
        )
        kept = without(data, ["raw", "attachments"])
        kept["attachments"] = [without(obj(a), ["content"]) for a in items(data.get("attachments"))]
        provider = {**without(event, ["data"]), "data": kept}
        return [mail_inbound(provider, fields, raw=raw_bytes(raw) if raw is not None else None,
                             provider_id=data.get("id"))]
