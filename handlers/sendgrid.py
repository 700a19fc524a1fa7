"""SendGrid Inbound Parse: a multipart form, parsed (text, html, attachment files) or raw (the whole MIME
message in `email`). Parse has no signature: protect the source with `auth` (basic auth in the URL)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.escaping import escape_text
from handlers.attachments import Attachment, attachment
from handlers.base import Handler, Inbound, optional_json_object
from handlers.email import Headers, email_payload, message_id, parse_mime
from handlers.formdata import Part, add_value, first_value, multipart_parts

MULTIPART = "multipart/form-data"


class SendgridOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    pass


def _charsets(parts: list[Part]) -> dict[str, str]:
    """The `charsets` field: which charset each text field is in (Parse sends no per-part charset)."""
    for part in parts:
        if part.name == "charsets" and part.filename is None:
            return {str(k): str(v) for k, v in (optional_json_object(part.data) or {}).items() if isinstance(v, str)}
    return {}


def _text(part: Part, charsets: dict[str, str]) -> str:
    for charset in (charsets.get(part.name), part.charset, "utf-8"):
        if charset:
            try:
                return escape_text(part.data.decode(charset))  # see formdata.decode_part
            except (ValueError, LookupError):
                continue
    return part.data.decode("utf-8", "replace")


class SendgridHandler(Handler):
    kind: ClassVar[str] = "sendgrid"
    channel = "email"
    Options: ClassVar[type[SourceConfig]] = SendgridOptions
    content_types: ClassVar[frozenset[str]] = frozenset({MULTIPART})

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        parts = multipart_parts(body, request.headers.get("Content-Type", ""))
        charsets = _charsets(parts)
        fields: dict[str, Any] = {}
        files: list[Attachment] = []
        raw_email: bytes | None = None
        for part in parts:
            if part.filename is not None:
                files.append(attachment(part.filename, part.content_type, part.data))
            elif part.name == "email":  # the whole message, attachments and all: parsed below, not kept twice
                raw_email = part.data
            else:
                add_value(fields, part.name, _text(part, charsets))
        raw_info = fields.get("attachment-info")
        info = (optional_json_object(raw_info) or {}) if isinstance(raw_info, str) else {}
        # attachment-info names the file when the part's own filename is blank; looked up once, not per file
        named = next((str(e["filename"]) for e in info.values() if isinstance(e, dict) and e.get("filename")), None)
        for item in files:
            if not item.meta["name"] and named is not None:
                item.meta["name"] = named

        if raw_email is not None:  # "POST the raw, full MIME message"
            mime = parse_mime(raw_email)
            headers, text, html, files = mime.headers, mime.text, mime.html, files + mime.attachments
        else:
            headers = Headers.from_block(fields.get("headers") or "") if isinstance(fields.get("headers"), str) \
                else Headers()
            text, html = first_value(fields.get("text")), first_value(fields.get("html"))

        payload = email_payload(
            from_=first_value(fields.get("from")) or headers.get("From"),
            to=first_value(fields.get("to")) or headers.get_all("To"),
            cc=first_value(fields.get("cc")) or headers.get_all("Cc"),
            subject=first_value(fields.get("subject")) or headers.get("Subject"),
            text=text, html=html, stripped_text=None,
            message_id_=headers.get("Message-ID"),
            in_reply_to=headers.get("In-Reply-To"),
            references=headers.get_all("References"),
            attachments=files,
            provider=fields,
        )
        return [Inbound(payload=payload, dedup_key=message_id(headers.get("Message-ID")), attachments=files)]
