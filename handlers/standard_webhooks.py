"""Standard Webhooks (standardwebhooks.com): `webhook-signature` holds one or more `v1,<base64>` HMAC-SHA256
signatures of `id.timestamp.body` (several while a secret is rotated), keyed by the `whsec_` secret. Senders
that use Svix send the same under `svix-id`, `svix-timestamp` and `svix-signature`; both are taken."""

from __future__ import annotations

import base64
import binascii
from typing import ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.auth import hmac_digest, signature_matches
from handlers.base import Handler, Inbound, decode_json_object
from handlers.signing import TimedOptions, check_timestamp, require

PREFIX = "whsec_"


class StandardWebhooksOptions(TimedOptions, kw_only=True, forbid_unknown_fields=True):
    secret: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret, "secret", "WEBHOOK_SECRET")
        key_of(self.secret)

    @property
    def key(self) -> bytes:
        return key_of(self.secret)


def key_of(secret: str) -> bytes:
    """The signing key: the base64 after `whsec_` (the prefix is optional)."""
    text = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("`secret` is not base64 after its whsec_ prefix") from None
    if not key:
        raise ValueError("`secret` holds no key after its whsec_ prefix")
    return key


class StandardWebhooksHandler(Handler):
    kind: ClassVar[str] = "standard-webhooks"
    channel = "webhook"
    Options: ClassVar[type[SourceConfig]] = StandardWebhooksOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def verify(self, request: web.Request, body: bytes) -> None:
        assert isinstance(self.options, StandardWebhooksOptions)
        verify_signed(request, body, self.options, self.clock())

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        msg_id = request.headers.get(f"{spelling(request)}-id")
        return [Inbound(payload=decode_json_object(body), dedup_key=msg_id or None)]


def verify_signed(request: web.Request, body: bytes, options: StandardWebhooksOptions, now: float) -> None:
    """Rejected(401) unless one v1 signature of the request matches its id, timestamp and body under
    `options.key`, and the timestamp is within `options.tolerance`. Any sender of this scheme checks with it."""
    prefix = spelling(request)
    msg_id = request.headers.get(f"{prefix}-id", "")
    raw_ts = request.headers.get(f"{prefix}-timestamp")
    given = request.headers.get(f"{prefix}-signature", "")
    if not msg_id or not given:
        raise Rejected(401, "headers webhook-id and webhook-signature (or svix-id and svix-signature) are "
                            "required", check="signature")
    check_timestamp(raw_ts, now, options.tolerance_s, header=f"{prefix}-timestamp")
    assert raw_ts is not None
    signed = msg_id.encode("utf-8", "replace") + b"." + raw_ts.strip().encode() + b"." + body
    expected = hmac_digest(options.key, signed, "sha256")
    ok = False
    for candidate in given.split():
        version, _, value = candidate.partition(",")
        if version == "v1":
            ok |= signature_matches(expected, value, "base64")
    if not ok:
        raise Rejected(401, f"no v1 signature in {prefix}-signature matches id, timestamp and body",
                       check="signature")


def spelling(request: web.Request) -> str:
    """`webhook` (the spec's header names), or `svix` for senders that use Svix (Clerk, Resend, …): the same
    scheme under `svix-id`, `svix-timestamp` and `svix-signature`. The three are read under one spelling."""
    headers = request.headers
    if "webhook-id" not in headers and "webhook-signature" not in headers and "svix-id" in headers:
        return "svix"
    return "webhook"
