"""Resend inbound: an `email.received` event, signed as Svix signs (handlers/standard_webhooks.py), that
carries the message's ids and envelope but not its content. The content is fetched from Resend's Receiving API
(`GET /emails/receiving/{email_id}`, with the `api_key`), and the raw message from the download URL the API
gives, before the event is stored; the raw message then wins over the API's parsed fields. Without a raw
download, each attachment is fetched through `GET …/attachments/{id}` and the download URL it gives. A fetch that fails
is a 503 with nothing stored: Resend retries the event. Other event types posted here are not messages
(200, counted)."""

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
from handlers.email import Headers
from handlers.fetch import FetchFailed, Getter, TooLarge, check_api_url, http_get
from handlers.limits import MAX_ATTACHMENTS
from handlers.mail_message import (
    Fields,
    header_pairs,
    mail_inbound,
    provider_file,
    provider_remote_file,
    text,
    without,
)
from handlers.signing import require
from handlers.standard_webhooks import StandardWebhooksOptions, verify_signed

log = structlog.get_logger("ticketbridge.handlers.resend")

class ResendOptions(StandardWebhooksOptions, kw_only=True, forbid_unknown_fields=True):
    api_key: str
    """A Resend API key allowed to read received emails."""
    api_url: str = "https://api.resend.com"
    fetch_timeout: str = "10s"
    """How long one fetch from Resend may take, connection included."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.api_key, "api_key", "RESEND_API_KEY")
        check_api_url(self.api_url, "https://api.resend.com")
        check_duration(self.fetch_timeout, ("fetch_timeout",))


class Fetched:
    """What was fetched for one request: the API's JSON, and the raw message when it could be downloaded."""

    def __init__(self) -> None:
        self.email: dict[str, Any] | None = None
        self.raw: bytes | None = None
        self.files: dict[str, bytes | str] = {}
        """Without a raw message: each attachment's content by its id (or why it was not downloaded)."""


class ResendHandler(Handler):
    kind: ClassVar[str] = "resend"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = ResendOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.get: Getter = http_get

    @property
    def resend(self) -> ResendOptions:
        assert isinstance(self.options, ResendOptions)
        return self.options

    def verify(self, request: web.Request, body: bytes) -> None:
        verify_signed(request, body, self.resend, self.clock())

    def _event(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "resend", lambda: decode_json_object(body))

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._event(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        event = self._event(request, body)
        if event.get("type") != "email.received":
            return not_a_message("event", f"a Resend {named(event.get('type'))} event, not a received email")
        email_id = obj(event.get("data")).get("email_id")
        if not isinstance(email_id, str) or not email_id:
            raise Rejected(400, "`data.email_id` is missing: the received email cannot be fetched", check="json")
        if not signatures_checked(request):
            # The playground with `verify` off: an unsigned body must not have the API key fetch an email it
            # names. The event's own fields are read instead.
            return None
        fetched = per_request(request, "resend.fetched", Fetched)
        timeout, cap = parse_duration(self.resend.fetch_timeout), self.server.max_body_bytes
        url = f"{self.resend.api_url.rstrip('/')}/emails/receiving/{quote(email_id, safe='')}"
        try:
            answer = await self.get(url, {"Authorization": f"Bearer {self.resend.api_key}",
                                          "Accept": "application/json"}, timeout, cap)
            count_fetched(request, len(answer))
            fetched.email = decode_json_object(answer)
            download = obj(fetched.email.get("raw")).get("download_url")
            if isinstance(download, str) and download.startswith(("https://", "http://")):
                fetched.raw = await self.get(download, {}, timeout, cap)
                count_fetched(request, len(fetched.raw))
            else:
                await self._attachments(url, fetched, timeout, cap)
                count_fetched(request, sum(len(f) for f in fetched.files.values() if isinstance(f, bytes)))
        except TooLarge as exc:
            raise Rejected(413, f"received email {email_id} fetched from Resend is too large: {exc} "
                                "(server.max_body_bytes)", check="limits") from None
        except (FetchFailed, Rejected) as exc:
            log.warning("resend.fetch_failed", source=self.name, email_id=email_id, error=str(exc))
            raise Rejected(503, f"could not fetch received email {email_id} from Resend ({exc}); nothing was "
                                "stored, Resend will send the event again", check="fetch") from None
        # The request's body is a small event; what was fetched (megabytes of MIME, perhaps) is counted, so that
        # intake parses it in the parser thread when it is large.
        return None

    async def _attachments(self, email_url: str, fetched: Fetched, timeout_s: float, cap: int) -> None:
        """Without a raw message, each attachment from `GET …/attachments/{id}` and the download URL it gives."""
        assert fetched.email is not None
        ids = [a["id"] for a in map(obj, items(fetched.email.get("attachments"))) if isinstance(a.get("id"), str)]
        for i, attachment_id in enumerate(dict.fromkeys(ids)):
            if i >= MAX_ATTACHMENTS:
                fetched.files[attachment_id] = f"not downloaded: more than {MAX_ATTACHMENTS} attachments"
                continue
            meta = decode_json_object(await self.get(
                f"{email_url}/attachments/{quote(attachment_id, safe='')}",
                {"Authorization": f"Bearer {self.resend.api_key}", "Accept": "application/json"}, timeout_s, cap))
            download = meta.get("download_url")
            if not isinstance(download, str) or not download.startswith(("https://", "http://")):
                fetched.files[attachment_id] = "Resend gave no download URL"
                continue
            try:
                fetched.files[attachment_id] = await self.get(download, {}, timeout_s, cap)
            except TooLarge as exc:
                fetched.files[attachment_id] = f"not downloaded: {exc} (server.max_body_bytes)"

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        return self._inbounds(self._event(request, body), per_request(request, "resend.fetched", Fetched))

    @staticmethod
    def _inbounds(event: dict[str, Any], fetched: Fetched) -> list[Inbound]:
        email = fetched.email or {}
        data = obj(event.get("data"))
        files: list[Attachment] = []
        for a in map(obj, items(email.get("attachments") or data.get("attachments"))):
            name, ctype = a.get("filename"), a.get("content_type")
            inline = bool(text(a.get("content_id"))) or a.get("content_disposition") == "inline"
            content = fetched.files.get(str(a.get("id")))
            files.append(provider_file(name, ctype, content, inline=inline) if isinstance(content, bytes)
                         else provider_remote_file(name, ctype, byte_count(a.get("size")),
                                                   content or "held by Resend: not downloaded", inline=inline))
        raw_headers = email.get("headers")
        headers = (Headers((str(h["name"]), str(h["value"])) for h in map(obj, items(raw_headers))
                           if isinstance(h.get("name"), str) and isinstance(h.get("value"), str))
                   if isinstance(raw_headers, list) else header_pairs(raw_headers))
        fields = Fields(  # the headers first: Resend's `to` and `cc` lists drop the display names
            from_=headers.get("From") or text(email.get("from")) or text(data.get("from")),
            to=headers.get_all("To") or _texts(email.get("to")) or _texts(data.get("to")),
            cc=headers.get_all("Cc") or _texts(email.get("cc")) or _texts(data.get("cc")),
            reply_to=_texts(email.get("reply_to")),
            subject=text(email.get("subject")) or text(data.get("subject")),
            text=text(email.get("text")),
            html=text(email.get("html")),
            message_id=text(email.get("message_id")) or text(data.get("message_id")),
            attachments=files,
            headers=headers,
        )
        provider = {**event, "email": without(email, ["text", "html", "headers", "raw"])}  # raw: a signed URL
        return [mail_inbound(provider, fields, raw=fetched.raw, provider_id=data.get("email_id"))]


def _texts(value: Any) -> list[str]:
    return [v for v in items(value) if isinstance(v, str)] or ([value] if isinstance(value, str) else [])
