"""Brevo (formerly Sendinblue) inbound parsing: `{"items": [...]}`, one parsed message per item. Brevo signs
nothing; its webhook is protected by `auth` (basic auth, or a bearer token Brevo sends in `Authorization`), or
by a `token` this source compares in a header of your choosing or in the URL's `?token=`. Attachments are not
in the payload: Brevo holds them behind a `DownloadToken`, and each is recorded with its name, type and size."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import Attachment, remote_attachment
from handlers.base import Handler, Inbound, Intercepted, decode_json_object, ignored, items, obj, per_request
from handlers.cloudmailin import byte_count
from handlers.mail_message import Fields, check_batch, header_pairs, mail_inbound, mailbox, mailboxes, text
from handlers.signing import require, same


class BrevoOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    token: str | None = None
    """A secret Brevo sends with each post; compared in constant time."""
    token_header: str | None = None
    """The header Brevo sends `token` in (a custom header of the webhook); without one, the URL's `?token=`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token is not None:
            require(self.token, "token", "BREVO_WEBHOOK_TOKEN")
        elif self.token_header is not None:
            raise ValueError("`token_header` names where the token is sent, but `token` is not set")


class BrevoHandler(Handler):
    kind: ClassVar[str] = "brevo"
    channel = "email"
    Options: ClassVar[type[SourceConfig]] = BrevoOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    @property
    def brevo(self) -> BrevoOptions:
        assert isinstance(self.options, BrevoOptions)
        return self.options

    def verify(self, request: web.Request, body: bytes) -> None:
        token = self.brevo.token
        if token is None:
            return
        where = f"header {self.brevo.token_header}" if self.brevo.token_header else "the URL's `token` parameter"
        given = (request.headers.get(self.brevo.token_header) if self.brevo.token_header
                 else request.query.get("token"))
        if not given:
            raise Rejected(401, f"no token in {where}", check="token")
        if not same(token, given):
            raise Rejected(401, f"the token in {where} is wrong", check="token")

    def _items(self, request: web.Request, body: bytes) -> list[Any]:
        def read() -> list[Any]:
            data = decode_json_object(body)
            if not isinstance(data.get("items"), list):
                raise Rejected(400, "`items` is missing or not a list: not a Brevo inbound parsing payload",
                               check="json")
            check_batch(len(data["items"]), "`items`")
            return items(data["items"])

        return per_request(request, "brevo", read)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        if not any(isinstance(item, dict) for item in self._items(request, body)):
            return ignored("Brevo payload with no message in `items`")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        return [self._message(item) for item in self._items(request, body) if isinstance(item, dict)]

    @staticmethod
    def _message(item: dict[str, Any]) -> Inbound:
        headers = header_pairs(item.get("Headers"))
        files: list[Attachment] = []
        for entry in map(obj, items(item.get("Attachments"))):
            files.append(remote_attachment(entry.get("Name"), entry.get("ContentType"),
                                           byte_count(entry.get("ContentLength")),
                                           "held by Brevo: download it with its DownloadToken"))
        sender = obj(item.get("From"))
        uuid = next((u for u in items(item.get("Uuid")) if isinstance(u, str)), None)
        fields = Fields(
            from_=mailbox(sender.get("Name"), sender.get("Address")),
            to=mailboxes(item.get("To"), "Name", "Address"),
            cc=mailboxes(item.get("Cc"), "Name", "Address"),
            subject=text(item.get("Subject")),
            text=text(item.get("RawTextBody")),
            html=text(item.get("RawHtmlBody")),
            stripped_text=text(item.get("ExtractedMarkdownMessage")),
            attachments=files,
            message_id=text(item.get("MessageId")),
            in_reply_to=text(item.get("InReplyTo")),
            headers=headers,
        )
        return mail_inbound(item, fields, provider_id=uuid)

