"""Brevo (formerly Sendinblue) inbound parsing: `{"items": [...]}`, one parsed message per item. Brevo signs
nothing; its webhook is protected by `auth` (basic auth, or a bearer token Brevo sends in `Authorization`), or
by a `token` this source compares in a header of your choosing or in the URL's `?token=`. Attachments are not
in the payload: Brevo holds them behind a `DownloadToken`. With an `api_key`, each is downloaded from Brevo's
inbound attachments API before the event is stored (a failed download is a 503: Brevo posts again); without
one, each is recorded with its name, type and size. Brevo sends no raw MIME: its parsed fields are the message.
A transactional event (`delivered`, `opened`…) posted here is not a message (200, counted)."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

import structlog
from aiohttp import web

from bridge.config import SourceConfig, check_duration
from bridge.durations import parse_duration
from bridge.errors import Rejected
from handlers.attachments import Attachment
from handlers.base import (
    Handler,
    Inbound,
    Intercepted,
    count_fetched,
    decode_json_object,
    items,
    named,
    not_a_message,
    obj,
    per_request,
    signatures_checked,
)
from handlers.cloudmailin import byte_count
from handlers.email import Spam, spam_score
from handlers.fetch import FetchFailed, Getter, TooLarge, check_api_url, http_get
from handlers.limits import MAX_ATTACHMENTS
from handlers.mail_message import (
    Fields,
    check_batch,
    header_pairs,
    mail_inbound,
    mailbox,
    mailboxes,
    provider_file,
    provider_remote_file,
    text,
)
from handlers.signing import check_token, require

log = structlog.get_logger("ticketbridge.handlers.brevo")


class BrevoOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    token: str | None = None
    """A secret Brevo sends with each post; compared in constant time."""
    token_header: str | None = None
    """The header Brevo sends `token` in (a custom header of the webhook); without one, the URL's `?token=`."""
    api_key: str | None = None
    """A Brevo API key, to download attachments (`GET {api_url}/inbound/attachments/{DownloadToken}`)."""
    api_url: str = "https://api.brevo.com/v3"
    fetch_timeout: str = "10s"
    """How long one attachment download may take, connection included."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.api_key is not None:
            require(self.api_key, "api_key", "BREVO_API_KEY")
        check_api_url(self.api_url, "https://api.brevo.com/v3")
        check_duration(self.fetch_timeout, ("fetch_timeout",))
        if self.token is not None:
            require(self.token, "token", "BREVO_WEBHOOK_TOKEN")
        elif self.token_header is not None:
            raise ValueError("`token_header` names where the token is sent, but `token` is not set")


class BrevoHandler(Handler):
    kind: ClassVar[str] = "brevo"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = BrevoOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.get: Getter = http_get

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
        check_token(token, given, where)

    def _data(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "brevo.data", lambda: decode_json_object(body))

    @staticmethod
    def _event(data: dict[str, Any]) -> str | None:
        """The event of a transactional webhook (`delivered`, `opened`…) pointed at the inbound URL."""
        event = data.get("event")
        return event if "items" not in data and isinstance(event, str) else None

    def _items(self, request: web.Request, body: bytes) -> list[Any]:
        def read() -> list[Any]:
            data = self._data(request, body)
            if self._event(data) is not None:
                return []
            if not isinstance(data.get("items"), list):
                raise Rejected(400, "`items` is missing or not a list: not a Brevo inbound parsing payload",
                               check="json")
            check_batch(len(data["items"]), "`items`")
            return items(data["items"])

        return per_request(request, "brevo", read)

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._items(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        messages = [item for item in self._items(request, body) if isinstance(item, dict)]
        if (event := self._event(self._data(request, body))) is not None:
            return not_a_message("event", f"a Brevo {named(event)} event, not an inbound message")
        if not messages:
            return not_a_message("empty", "a Brevo payload with no message in `items`")
        if self.brevo.api_key is not None and signatures_checked(request):  # unchecked: the playground, verify off
            files: dict[str, bytes | str] = per_request(request, "brevo.files", dict)
            await self._download(messages, files)
            # Counted, so that intake parses the post in the parser thread when its attachments are large.
            count_fetched(request, sum(len(f) for f in files.values() if isinstance(f, bytes)))
        return None

    async def _download(self, messages: list[dict[str, Any]], files: dict[str, bytes | str]) -> None:
        """Each attachment's content by its DownloadToken (a reason instead when it is too large or past
        MAX_ATTACHMENTS in the post); Rejected(503) when a download fails."""
        assert self.brevo.api_key is not None
        timeout, cap = parse_duration(self.brevo.fetch_timeout), self.server.max_body_bytes
        tokens = [t for item in messages for entry in map(obj, items(item.get("Attachments")))
                  if isinstance(t := entry.get("DownloadToken"), str) and t]
        for i, token in enumerate(dict.fromkeys(tokens)):
            if i >= MAX_ATTACHMENTS:
                files[token] = f"not downloaded: more than {MAX_ATTACHMENTS} attachments in one post"
                continue
            url = f"{self.brevo.api_url.rstrip('/')}/inbound/attachments/{quote(token, safe='')}"
            try:
                files[token] = await self.get(url, {"api-key": self.brevo.api_key}, timeout, cap)
            except TooLarge as exc:
                files[token] = f"not downloaded: {exc} (server.max_body_bytes)"
            except FetchFailed as exc:
                log.warning("brevo.download_failed", source=self.name, error=str(exc))
                raise Rejected(503, f"could not download an attachment from Brevo ({exc}); nothing was stored, "
                                    "Brevo will post the message again", check="fetch") from None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        downloaded: dict[str, bytes | str] = per_request(request, "brevo.files", dict)
        return [self._message(item, downloaded) for item in self._items(request, body) if isinstance(item, dict)]

    @staticmethod
    def _message(item: dict[str, Any], downloaded: dict[str, bytes | str]) -> Inbound:
        headers = header_pairs(item.get("Headers"))
        files: list[Attachment] = []
        for entry in map(obj, items(item.get("Attachments"))):
            name, ctype = entry.get("Name"), entry.get("ContentType")
            inline = bool(text(entry.get("ContentID")))
            content = downloaded.get(str(entry.get("DownloadToken")))
            if isinstance(content, bytes):
                files.append(provider_file(name, ctype, content, inline=inline))
            else:
                files.append(provider_remote_file(name, ctype, byte_count(entry.get("ContentLength")),
                                                  content or "held by Brevo: download it with its DownloadToken",
                                                  inline=inline))
        sender = obj(item.get("From"))
        uuid = next((u for u in items(item.get("Uuid")) if isinstance(u, str)), None)
        reply_to = obj(item.get("ReplyTo"))
        score = spam_score(item.get("SpamScore"))  # a score without a threshold: the verdict is not Brevo's
        fields = Fields(
            from_=mailbox(sender.get("Name"), sender.get("Address")),
            to=mailboxes(item.get("To"), "Name", "Address"),
            cc=mailboxes(item.get("Cc"), "Name", "Address"),
            reply_to=mailbox(reply_to.get("Name"), reply_to.get("Address")),
            subject=text(item.get("Subject")),
            date=text(item.get("SentAtDate")),
            text=text(item.get("RawTextBody")),
            html=text(item.get("RawHtmlBody")),
            stripped_text=text(item.get("ExtractedMarkdownMessage")),
            attachments=files,
            message_id=text(item.get("MessageId")),
            in_reply_to=text(item.get("InReplyTo")),
            headers=headers,
            spam=None if score is None else Spam("unknown", score),
        )
        return mail_inbound(item, fields, provider_id=uuid)

