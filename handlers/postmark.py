"""Postmark inbound: one JSON message, attachments inline as base64. Postmark signs nothing: protect the
source with `auth` (basic auth in the webhook URL)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import Attachment, attachment, decode_base64
from handlers.base import Handler, Inbound, decode_json_object
from handlers.email import Headers, email_payload


class PostmarkOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    pass


def _full(value: Any) -> list[str]:
    """`ToFull`/`CcFull` entries as `Name <address>` texts."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("Email"), str):
            name = item.get("Name")
            out.append(f'"{name}" <{item["Email"]}>' if isinstance(name, str) and name else item["Email"])
    return out


class PostmarkHandler(Handler):
    kind: ClassVar[str] = "postmark"
    channel = "email"
    Options: ClassVar[type[SourceConfig]] = PostmarkOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = decode_json_object(body)
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
            files.append(attachment(item.get("Name"), item.get("ContentType"), content))
            kept.append({k: v for k, v in item.items() if k != "Content"})  # the content is on disk, once
        if raw_files is not None:
            provider["Attachments"] = kept
        from_full = data.get("FromFull")
        from_ = (f'"{from_full.get("Name") or ""}" <{from_full["Email"]}>'
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
        )
        postmark_id = data.get("MessageID")
        return [Inbound(payload=payload, dedup_key=str(postmark_id) if postmark_id else None, attachments=files)]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
