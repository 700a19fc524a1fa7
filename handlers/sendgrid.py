"""SendGrid Inbound Parse: a multipart form, parsed (text, html, attachment files) or raw (the whole MIME
message in `email`). Parse has no signature: protect the source with `auth` (basic auth in the URL)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from bridge.escaping import escape_text
from handlers.attachments import Attachment
from handlers.base import (
    Handler,
    Inbound,
    Intercepted,
    decode_json,
    not_a_message,
    obj,
    optional_json_object,
    per_request,
)
from handlers.charsets import text_codec
from handlers.email import Headers, Spam, basename, email_payload, message_files, parse_mime, spam_score
from handlers.formdata import Part, add_value, file_attachment, first_value, multipart_parts

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
    """A text field in the first of its named charsets, its part's and UTF-8 that reads it; else as UTF-8
    with the bytes it cannot read replaced."""
    for charset in (charsets.get(part.name), part.charset, "utf-8"):
        codec = text_codec(charset)
        if codec is not None:
            try:
                return escape_text(part.data.decode(codec))  # see formdata.decode_part
            except ValueError:
                continue
    return part.data.decode("utf-8", "replace")


class SendgridHandler(Handler):
    kind: ClassVar[str] = "sendgrid"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = SendgridOptions
    # JSON is taken only to answer the Event Webhook (delivery events) should it be pointed at this URL.
    content_types: ClassVar[frozenset[str]] = frozenset({MULTIPART, "application/json"})

    def prepare(self, request: web.Request, body: bytes) -> None:
        if request.content_type != MULTIPART:
            self._events(request, body)

    def _events(self, request: web.Request, body: bytes) -> Any:
        return per_request(request, "sendgrid.events", lambda: decode_json(body))

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        if request.content_type == MULTIPART:
            return None
        events = self._events(request, body)
        if isinstance(events, list) and events and all(isinstance(e, dict) and "event" in e for e in events):
            return not_a_message("event", f"a SendGrid Event Webhook post of {len(events)} delivery event(s)")
        raise Rejected(415, "Inbound Parse posts multipart/form-data; a JSON body is taken only as an Event "
                            "Webhook post (a list of events), answered and not stored", check="content_type")

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        parts = multipart_parts(body, request.headers.get("Content-Type", ""))
        charsets = _charsets(parts)
        fields: dict[str, Any] = {}
        file_parts: list[Part] = []
        raw_email: bytes | None = None
        for part in parts:
            if part.filename is not None:
                file_parts.append(part)
            elif part.name == "email":  # the whole message, attachments and all: parsed below, not kept twice
                raw_email = part.data
            else:
                add_value(fields, part.name, _text(part, charsets))
        files = self._files(file_parts, fields)

        mime = None
        text = html = None
        if raw_email is not None:  # "POST the raw, full MIME message"
            mime = parse_mime(raw_email)
            headers = mime.headers
            files = message_files(mime, files)
        else:
            headers = Headers.from_block(fields.get("headers") or "") if isinstance(fields.get("headers"), str) \
                else Headers()
            text, html = first_value(fields.get("text")), first_value(fields.get("html"))

        envelope = obj(optional_json_object(fields["envelope"]) if isinstance(fields.get("envelope"), str) else None)
        score = spam_score(first_value(fields.get("spam_score")))
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
            mime=mime,
            reply_to=headers.get_all("Reply-To"),
            date=headers.get("Date"),
            envelope_from=envelope.get("from") if isinstance(envelope.get("from"), str) else None,
            envelope_to=envelope.get("to"),
            spam=None if score is None else Spam("unknown", score),
        )
        return [Inbound(payload=payload, dedup_key=payload["message_id"], attachments=files)]

    @staticmethod
    def _files(parts: list[Part], fields: dict[str, Any]) -> list[Attachment]:
        """The file parts as attachments. `attachment-info` ({"attachment1": {"filename", "name", "type",
        "content-id"}}) names a file whose part came without a name, each by its own field; `content-ids`
        ({"<cid>": "attachment1"}) marks the files shown inline."""
        raw_info, raw_cids = first_value(fields.get("attachment-info")), first_value(fields.get("content-ids"))
        info = (optional_json_object(raw_info) or {}) if raw_info else {}
        inline = {str(v) for v in ((optional_json_object(raw_cids) or {}) if raw_cids else {}).values()}
        files = []
        for part in parts:
            entry = obj(info.get(part.name))
            inline_part = part.name in inline or bool(entry.get("content-id")) or part.content_id is not None
            named = next((entry[k] for k in ("filename", "name") if isinstance(entry.get(k), str) and entry[k]), "")
            files.append(file_attachment(part._replace(
                filename=part.filename or basename(named),
                content_id=part.content_id or (part.name if inline_part else None))))
        return files
