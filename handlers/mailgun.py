"""Mailgun routes: inbound mail posted as a form, signed with an HMAC of its timestamp and token."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import Attachment, attachment
from handlers.auth import hmac_digest, signature_matches
from handlers.base import Handler, Inbound, SignedNonce, decode_json, per_request
from handlers.email import Headers, email_payload, message_id
from handlers.formdata import add_value, decode_part, first_value, multipart_parts, parse_urlencoded
from handlers.signing import TimedOptions, check_timestamp, require

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


class MailgunOptions(TimedOptions, kw_only=True, forbid_unknown_fields=True):
    signing_key: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.signing_key, "signing_key", "MAILGUN_SIGNING_KEY")


class MailgunForm(msgspec.Struct):
    fields: dict[str, Any]
    files: list[Attachment]


class MailgunHandler(Handler):
    kind: ClassVar[str] = "mailgun"
    channel = "email"
    Options: ClassVar[type[SourceConfig]] = MailgunOptions
    content_types: ClassVar[frozenset[str]] = frozenset({URLENCODED, MULTIPART})

    @property
    def mailgun(self) -> MailgunOptions:
        assert isinstance(self.options, MailgunOptions)
        return self.options

    def _form(self, request: web.Request, body: bytes) -> MailgunForm:
        def read() -> MailgunForm:
            if request.content_type == MULTIPART:
                fields: dict[str, Any] = {}
                files = []
                for part in multipart_parts(body, request.headers.get("Content-Type", "")):
                    if part.filename is not None:
                        files.append(attachment(part.filename, part.content_type, part.data))
                    else:
                        add_value(fields, part.name, decode_part(part))
                return MailgunForm(fields, files)
            return MailgunForm(parse_urlencoded(body, request.charset), [])

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
        return SignedNonce(value=token, name="Mailgun `token`", valid_for_s=max(0.0, left))

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        form = self._form(request, body)
        fields = form.fields
        headers = self._headers(fields)
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
            attachments=form.files,
            provider=fields,
        )
        dedup = message_id(headers.get("Message-Id")) or first_value(fields.get("token"))
        return [Inbound(payload=payload, dedup_key=dedup, attachments=form.files)]

    @staticmethod
    def _headers(fields: dict[str, Any]) -> Headers:
        """The message's headers: `message-headers` (a JSON list of pairs), else the header-named fields."""
        raw = first_value(fields.get("message-headers"))
        if raw:
            pairs = decode_json(raw, "field `message-headers`", check="form")
            if isinstance(pairs, list):
                return Headers((str(p[0]), str(p[1])) for p in pairs
                               if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str))
        names = ("From", "To", "Cc", "Subject", "Message-Id", "In-Reply-To", "References", "Date")
        return Headers((n, v) for n in names if (v := first_value(fields.get(n))) is not None)
