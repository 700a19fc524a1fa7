"""Mailgun routes: inbound mail posted as a form, signed with an HMAC of its timestamp and token."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import Attachment
from handlers.auth import hmac_digest, signature_matches
from handlers.base import (
    Handler,
    Inbound,
    Intercepted,
    SignedNonce,
    decode_json,
    decode_json_object,
    named,
    not_a_message,
    obj,
    optional_json_object,
    per_request,
)
from handlers.email import Headers, email_payload, header_spam, message_files, parse_mime_text
from handlers.formdata import add_value, decode_part, file_attachment, first_value, multipart_parts, parse_urlencoded
from handlers.signing import TimedOptions, check_timestamp, key_scope, require

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"


class MailgunOptions(TimedOptions, kw_only=True, forbid_unknown_fields=True):
    signing_key: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.signing_key, "signing_key", "MAILGUN_SIGNING_KEY")


class MailgunForm(msgspec.Struct):
    fields: dict[str, Any]
    files: list[Attachment]
    mime: bytes | None = None
    """`body-mime` as sent (routes to a URL ending in "mime" forward the whole message), kept as bytes."""


class MailgunHandler(Handler):
    kind: ClassVar[str] = "mailgun"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = MailgunOptions
    # JSON is what Mailgun's (current) event webhooks post: taken only to answer one pointed at a route's URL.
    content_types: ClassVar[frozenset[str]] = frozenset({URLENCODED, MULTIPART, JSON})

    @property
    def mailgun(self) -> MailgunOptions:
        assert isinstance(self.options, MailgunOptions)
        return self.options

    def _form(self, request: web.Request, body: bytes) -> MailgunForm:
        def read() -> MailgunForm:
            if request.content_type == MULTIPART:
                fields: dict[str, Any] = {}
                files = []
                mime = None
                parts = multipart_parts(body, request.headers.get("Content-Type", ""))
                # `content-id-map`: {"<cid>": "attachment-1"}, the files an HTML body shows inline
                inline = set()
                for part in parts:
                    if part.name == "content-id-map" and part.filename is None:
                        inline = {str(v) for v in (optional_json_object(part.data) or {}).values()}
                for part in parts:
                    if part.filename is not None:
                        files.append(file_attachment(part._replace(content_id=part.content_id or (
                            part.name if part.name in inline else None))))
                    elif part.name == "body-mime":  # the message's own bytes: parsed, not kept twice
                        mime = part.data
                    else:
                        add_value(fields, part.name, decode_part(part))
                return MailgunForm(fields, files, mime)
            if request.content_type == JSON:
                # {"signature": {"timestamp", "token", "signature"}, "event-data": {…}}: signed the same way
                data = decode_json_object(body)
                signed = obj(data.get("signature"))
                fields = {k: v for k, v in signed.items() if k in ("timestamp", "token", "signature")
                          and isinstance(v, str | int)}
                fields = {k: str(v) for k, v in fields.items()}
                if isinstance(data.get("event-data"), dict):
                    fields["event-data"] = data["event-data"]
                return MailgunForm(fields, [], None)
            fields = parse_urlencoded(body, request.charset)
            raw = fields.pop("body-mime", None)
            text = first_value(raw)
            return MailgunForm(fields, [], text.encode("utf-8", "surrogateescape") if text else None)

        return per_request(request, "mailgun", read)

    def verify(self, request: web.Request, body: bytes) -> None:
        # Mailgun signs fields of the body, so the form is read first; the signature is still checked before
        # anything of it is used.
        fields = self._form(request, body).fields
        timestamp, token, signature = (first_value(fields.get(k)) for k in ("timestamp", "token", "signature"))
        if not token or not signature:
            raise Rejected(401, "the form has no Mailgun `token` and `signature`", check="signature")
        check_timestamp(timestamp, self.clock(), self.mailgun.tolerance_s, header="field `timestamp`")
        assert timestamp is not None
        expected = hmac_digest(self.mailgun.signing_key.encode(), (timestamp + token).encode(), "sha256")
        if not signature_matches(expected, signature, "hex"):
            raise Rejected(401, "Mailgun `signature` does not match timestamp and token", check="signature")

    def nonce(self, request: web.Request, body: bytes) -> SignedNonce | None:
        # The signature covers the timestamp and token only: the token is what a replay would reuse.
        fields = self._form(request, body).fields
        timestamp, token = first_value(fields.get("timestamp")), first_value(fields.get("token"))
        if not token:
            return None
        stamp = check_timestamp(timestamp, self.clock(), self.mailgun.tolerance_s, header="field `timestamp`")
        left = stamp + self.mailgun.tolerance_s - self.clock()
        # Mailgun's signing key is the account's: a token is used once across every source that shares it.
        return SignedNonce(value=token, name="Mailgun `token`", valid_for_s=max(0.0, left),
                           scope=key_scope(self.mailgun.signing_key))

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._form(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        form = self._form(request, body)
        fields = form.fields
        if form.mime is not None or "body-plain" in fields or "body-html" in fields:
            return None
        if "message-url" in fields:  # a store(notify=…) action: the message waits at Mailgun, not here
            return not_a_message("stored", "a Mailgun stored-message notification (set the route to forward)")
        if "event" in fields or "event-data" in fields:  # a tracking webhook (form: legacy) pointed at this URL
            event = first_value(fields.get("event")) or str(obj(fields.get("event-data")).get("event") or "tracking")
            return not_a_message("tracking", f"a Mailgun {named(event)} tracking notification")
        if request.content_type == JSON:
            raise Rejected(415, "a Mailgun route posts a form; a JSON body is taken only as an event webhook "
                                "(`event-data`), answered and not stored", check="content_type")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        form = self._form(request, body)
        fields = form.fields
        mime = parse_mime_text(form.mime, "field `body-mime`")
        headers = mime.headers if mime is not None and "message-headers" not in fields else self._headers(fields)
        files = message_files(mime, form.files)
        payload = email_payload(
            from_=headers.get("From") or first_value(fields.get("from")) or first_value(fields.get("sender")),
            to=headers.get_all("To") or first_value(fields.get("recipient")),
            cc=headers.get_all("Cc"),
            subject=first_value(fields.get("subject")) or headers.get("Subject"),
            text=first_value(fields.get("body-plain")),
            html=first_value(fields.get("body-html")),
            stripped_text=first_value(fields.get("stripped-text")),
            message_id_=headers.get("Message-Id"),
            in_reply_to=headers.get("In-Reply-To"),
            references=headers.get_all("References"),
            attachments=files,
            provider=fields,
            mime=mime,
            reply_to=headers.get_all("Reply-To"),
            date=headers.get("Date"),
            envelope_from=first_value(fields.get("sender")),
            envelope_to=first_value(fields.get("recipient")),
            spam=header_spam(headers, "X-Mailgun-Sflag", "X-Mailgun-Sscore"),
        )
        dedup = payload["message_id"] or first_value(fields.get("token"))
        return [Inbound(payload=payload, dedup_key=dedup, attachments=files)]

    @staticmethod
    def _headers(fields: dict[str, Any]) -> Headers:
        """The message's headers: `message-headers` (a JSON list of pairs), else the header-named fields."""
        raw = first_value(fields.get("message-headers"))
        if raw:
            pairs = decode_json(raw, "field `message-headers`", check="form")
            if isinstance(pairs, list):
                return Headers((str(p[0]), str(p[1])) for p in pairs
                               if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str))
        names = ("From", "To", "Cc", "Reply-To", "Subject", "Message-Id", "In-Reply-To", "References", "Date",
                 "X-Mailgun-Sflag", "X-Mailgun-Sscore")
        return Headers((n, v) for n in names if (v := first_value(fields.get(n))) is not None)
