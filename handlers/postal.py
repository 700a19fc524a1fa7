"""Postal HTTP endpoints: one message per post, either raw (`message`, base64 when `base64` is true) or parsed
fields (`plain_body`, `html_body`, `attachments` with base64 `data`), as the route's endpoint is set. Signed
with the Postal server's RSA key: `X-Postal-Signature` is the base64 RSA-SHA1 (PKCS#1 v1.5) signature of the
raw body, and newer servers add `X-Postal-Signature-256` (RSA-SHA256), checked instead when sent. The public
key is the `p=` value of the server's DNS record (base64 DER), or a PEM. Message event webhooks posted here
(`{"event": …, "payload": …}`) are not messages (200, counted)."""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import Attachment, decode_base64
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
from handlers.email import Spam, spam_score
from handlers.mail_message import Fields, mail_inbound, provider_file, raw_bytes, text, without
from handlers.signing import require

SHA1_HEADER = "X-Postal-Signature"
SHA256_HEADER = "X-Postal-Signature-256"
MAX_SIGNATURE_CHARS = 2048
"""Base64 of an RSA signature of a 8192-bit key is 1368 characters; anything longer is refused unread."""


def load_public_key(value: str) -> rsa.RSAPublicKey:
    """The RSA public key of `public_key`: a PEM, or the base64 DER of Postal's DNS record (`p=` value)."""
    text_ = value.strip()
    try:
        if text_.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text_.encode())
        else:
            der = base64.b64decode("".join(text_.removeprefix("p=").split()).rstrip(";"), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("`public_key` is not an RSA public key: paste the p= value of the Postal server's DNS "
                         "record (base64), or a PEM") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("`public_key` is not an RSA key: Postal signs with RSA")
    return key


class PostalOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    public_key: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.public_key, "public_key", "POSTAL_PUBLIC_KEY")
        load_public_key(self.public_key)


class PostalHandler(Handler):
    kind: ClassVar[str] = "postal"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = PostalOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self.options, PostalOptions)
        self.key = load_public_key(self.options.public_key)

    def verify(self, request: web.Request, body: bytes) -> None:
        header, digest = ((SHA256_HEADER, hashes.SHA256()) if SHA256_HEADER in request.headers
                          else (SHA1_HEADER, hashes.SHA1()))  # noqa: S303 - Postal's documented scheme
        given = request.headers.get(header, "").strip()
        if not given:
            raise Rejected(401, f"signature header {header} is missing or empty", check="signature")
        try:
            if len(given) > MAX_SIGNATURE_CHARS:
                raise ValueError
            self.key.verify(base64.b64decode(given, validate=True), body, padding.PKCS1v15(), digest)
        except (ValueError, binascii.Error, InvalidSignature):
            raise Rejected(401, f"signature in {header} does not match the body with the server's public key "
                                "(is public_key this Postal server's?)", check="signature") from None

    def _message(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "postal", lambda: decode_json_object(body))

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._message(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = self._message(request, body)
        if "event" in data and "payload" in data:
            return not_a_message("event", f"a Postal {named(data.get('event'))} event, not an inbound message")
        if not any(k in data for k in ("message", "plain_body", "html_body", "subject")):
            return not_a_message("empty", "a Postal post with no message in it")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        # Base64 hides the MIME delimiter lines intake counts to place the parse: on the loop, the decoded
        # message's parts send it to the parser thread (email.parse_mime).
        return self._inbounds(self._message(request, body))

    @staticmethod
    def _inbounds(data: dict[str, Any]) -> list[Inbound]:
        message = data.get("message")
        raw = None
        if isinstance(message, str):
            raw = decode_base64(message, "`message`") if data.get("base64") is True else raw_bytes(message)
        files: list[Attachment] = []
        for i, item in enumerate(map(obj, items(data.get("attachments")))):
            # Postal's parsed attachments say nothing of a Content-ID: none is taken for inline
            files.append(provider_file(item.get("filename"), item.get("content_type"),
                                       decode_base64(item.get("data"), f"`attachments[{i}].data`"), inline=False))
        fields = Fields(
            from_=text(data.get("from")) or text(data.get("mail_from")),
            to=text(data.get("to")) or text(data.get("rcpt_to")),  # `rcpt_to`, `mail_from`: the envelope
            cc=text(data.get("cc")),
            subject=text(data.get("subject")),
            date=text(data.get("date")),
            envelope_from=text(data.get("mail_from")),
            envelope_to=text(data.get("rcpt_to")),
            spam=_spam(data),
            text=text(data.get("plain_body")),
            html=text(data.get("html_body")),
            message_id=text(data.get("message_id")),
            in_reply_to=text(data.get("in_reply_to")),
            references=text(data.get("references")),
            attachments=files,
        )
        provider = without(data, ["message", "attachments"])
        if "attachments" in data:
            provider["attachments"] = [without(obj(a), ["data"]) for a in items(data["attachments"])]
        inbound = mail_inbound(provider, fields, raw=raw, provider_id=data.get("id"),
                               spam=data.get("spam_status") == "Spam")
        return [inbound]


_VERDICTS = {"Spam": "spam", "NotSpam": "ham"}


def _spam(data: dict[str, Any]) -> Spam | None:
    """Postal's `spam_status` (`Spam`, `NotSpam`, `NotChecked`…) and, when sent, its `spam_score`."""
    status, score = data.get("spam_status"), spam_score(data.get("spam_score"))
    if not isinstance(status, str) and score is None:
        return None
    return Spam(_VERDICTS.get(status, "unknown") if isinstance(status, str) else "unknown", score)
