"""Postmark inbound: one JSON message, attachments inline as base64. Postmark signs nothing: protect the
source with `auth` (basic auth in the webhook URL)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import Attachment, attachment, decode_base64
from handlers.base import Handler, Inbound, Intercepted, decode_json_object, named, not_a_message, per_request
from handlers.email import Headers, basename, email_payload, header_spam, message_files, parse_mime_text
from handlers.mail_message import mailbox, mailboxes

# Postmark's other webhooks (RecordType), should one be pointed at the inbound URL: words for the metric.
_RECORD_TYPES = frozenset({"delivery", "bounce", "spamcomplaint", "open", "click", "subscriptionchange"})


class PostmarkOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    pass


def _full(value: Any) -> list[str]:
    """`ToFull`/`CcFull` entries (Postmark's decoded names and addresses) as `"Name" <address>` texts, each name
    escaped: a name holding a quote and an address stays a name."""
    return mailboxes(value, "Name", "Email")


class PostmarkHandler(Handler):
    kind: ClassVar[str] = "postmark"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = PostmarkOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def _data(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "postmark", lambda: decode_json_object(body))

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._data(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = self._data(request, body)
        record = data.get("RecordType", "Inbound")
        if record != "Inbound":
            word = str(record).lower()
            return not_a_message(word if word in _RECORD_TYPES else "other",
                                 f"a Postmark {named(record)} record, not an inbound message")
        files = data.get("Attachments")
        # The dashboard's "Check" button posts a sample whose attachments carry `Data`, not `Content`.
        if isinstance(files, list) and any(isinstance(f, dict) and "Data" in f and "Content" not in f for f in files):
            return not_a_message("check", "Postmark's inbound webhook check")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = self._data(request, body)
        raw_headers = data.get("Headers")
        headers = Headers((str(h["Name"]), str(h["Value"])) for h in raw_headers or []
                          if isinstance(h, dict) and isinstance(h.get("Name"), str) and "Value" in h) \
            if isinstance(raw_headers, list) else Headers()
        files: list[Attachment] = []
        provider = dict(data)
        raw_files = data.get("Attachments")
        if raw_files is not None and not isinstance(raw_files, list):
            raise Rejected(400, "`Attachments` is not a list", check="json")
        kept = []
        for i, item in enumerate(raw_files or []):
            if not isinstance(item, dict):
                raise Rejected(400, f"`Attachments[{i}]` is not an object", check="json")
            content = decode_base64(item.get("Content"), f"`Attachments[{i}].Content`")
            cid = item.get("ContentID")
            files.append(attachment(basename(item["Name"]) if isinstance(item.get("Name"), str) else None,
                                    item.get("ContentType"), content,
                                    inline=isinstance(cid, str) and bool(cid.strip())))
            kept.append({k: v for k, v in item.items() if k != "Content"})  # the content is on disk, once
        if raw_files is not None:
            provider["Attachments"] = kept
        # "Include raw email content in JSON payload": the message itself, which wins over the parsed fields.
        mime = parse_mime_text(data.get("RawEmail"), "`RawEmail`")
        provider.pop("RawEmail", None)  # parsed, not kept twice
        files = message_files(mime, files)
        from_full = data.get("FromFull")
        from_ = (mailbox(from_full.get("Name"), from_full.get("Email"))
                 if isinstance(from_full, dict) and isinstance(from_full.get("Email"), str) else data.get("From"))
        payload = email_payload(
            from_=from_ if isinstance(from_, str) else None,
            to=_full(data.get("ToFull")) or _text(data.get("To")),
            cc=_full(data.get("CcFull")) or _text(data.get("Cc")),
            subject=_text(data.get("Subject")),
            text=_text(data.get("TextBody")),
            html=_text(data.get("HtmlBody")),
            stripped_text=_text(data.get("StrippedTextReply")),
            message_id_=headers.get("Message-ID"),
            in_reply_to=headers.get("In-Reply-To"),
            references=headers.get_all("References"),
            attachments=files,
            provider=provider,
            mime=mime,
            reply_to=_text(data.get("ReplyTo")) or headers.get_all("Reply-To"),
            date=_text(data.get("Date")) or headers.get("Date"),
            envelope_from=headers.get("Return-Path"),
            envelope_to=_text(data.get("OriginalRecipient")),
            spam=header_spam(headers),
        )
        postmark_id = data.get("MessageID")  # a UUID string: any other type is read as missing, never str()'d
        key = postmark_id if isinstance(postmark_id, str) and postmark_id else None
        return [Inbound(payload=payload, dedup_key=key, attachments=files)]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
