"""Twilio Messaging (SMS, WhatsApp): `X-Twilio-Signature`, base64 HMAC-SHA1 of the URL Twilio called plus
each POST parameter's name and value, sorted by name. Behind a proxy the URL we see is not the one Twilio
signed, so it comes from `public_url` (else server.public_url + the path, else the request itself)."""

from __future__ import annotations

import base64
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import VALUE, Rejected
from bridge.yamlfile import KeyValueError
from handlers.auth import hmac_digest
from handlers.base import Handler, Inbound, Intercepted, ignored, named, per_request
from handlers.chat import chat_payload
from handlers.formdata import parse_urlencoded
from handlers.signing import require, same

HEADER = "X-Twilio-Signature"
URLENCODED = "application/x-www-form-urlencoded"
CHANNEL_PREFIXES = ("whatsapp:", "messenger:", "rcs:", "sms:")


class TwilioOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    auth_token: str
    public_url: str | None = None
    """The webhook URL exactly as configured in Twilio (scheme, host, path and query)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.auth_token, "auth_token", "TWILIO_AUTH_TOKEN")
        check_public_url(self.public_url, "Twilio")


def check_public_url(public_url: str | None, vendor: str) -> None:
    """Refuse a `public_url` option that is not a full http(s) URL: the signature covers the whole URL."""
    if public_url is not None and not public_url.startswith(("https://", "http://")):
        raise KeyValueError(("public_url",), f"`public_url` {VALUE} must be the full URL {vendor} calls, https://…",
                            public_url)


def signed_url(request: web.Request, public_url: str | None, server_public_url: str | None, vendor: str) -> str:
    """The URL the vendor signed: the source's `public_url`, else server.public_url + the path, else the
    request's own URL (Rejected(400) when its Host header is not a host name)."""
    if public_url:
        return public_url
    if server_public_url:
        return server_public_url.rstrip("/") + request.path_qs
    try:
        return str(request.url)
    except ValueError:  # yarl refuses the Host header: a port past 65535, a label IDNA cannot encode
        raise Rejected(400, f"the Host header is not a host name; set public_url to the URL {vendor} calls",
                       check="signature") from None


def form_params(form: dict[str, Any]) -> list[tuple[str, str]]:
    """A parsed form's (name, value) pairs, a repeated name's values each a pair, as the signature takes them."""
    return [(name, v) for name, value in form.items() for v in (value if isinstance(value, list) else [value])]


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> bytes:
    """Twilio's algorithm: the URL, then each name+value, names sorted, a name's values sorted too."""
    values: dict[str, list[str]] = {}
    for name, value in params:
        values.setdefault(name, []).append(value)
    data = [url]
    for name in sorted(values):
        data.extend(name + value for value in sorted(values[name]))
    return base64.b64encode(hmac_digest(auth_token.encode(), "".join(data).encode(), "sha1"))


def url_variants(url: str) -> list[str]:
    """The URL with and without its default port: Twilio signs either form, depending on the product."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    bare = urlunsplit(parts._replace(netloc=prefix + host))
    with_port = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{port or default}"))
    return [url] + [u for u in (bare, with_port) if u != url]


def _address(value: Any) -> str | None:
    """`whatsapp:+14155550100` → `+14155550100`."""
    if not isinstance(value, str):
        return None
    if value.lower().startswith(CHANNEL_PREFIXES):
        return value.split(":", 1)[1]
    return value


class TwilioHandler(Handler):
    kind: ClassVar[str] = "twilio"
    channel = "chat"
    Options: ClassVar[type[SourceConfig]] = TwilioOptions
    content_types: ClassVar[frozenset[str]] = frozenset({URLENCODED})

    @property
    def twilio(self) -> TwilioOptions:
        assert isinstance(self.options, TwilioOptions)
        return self.options

    def signed_url(self, request: web.Request) -> str:
        return signed_url(request, self.twilio.public_url, self.server.public_url, "Twilio")

    def verify(self, request: web.Request, body: bytes) -> None:
        given = request.headers.get(HEADER, "")
        if not given:
            raise Rejected(401, f"signature header {HEADER} is missing", check="signature")
        # The parameters signed are the form `parse` reads: one parser, run once per request.
        params = form_params(self._form(request, body))
        ok = False
        for url in url_variants(self.signed_url(request)):
            ok |= same(signature(self.twilio.auth_token, url, params), given)
        if not ok:
            raise Rejected(401, f"signature in {HEADER} does not match the URL and parameters (is public_url the "
                                "URL configured in Twilio?)", check="signature")

    def _form(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "twilio", lambda: parse_urlencoded(body, request.charset))

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._form(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        form = self._form(request, body)
        if "MessageStatus" in form:
            return ignored(f"Twilio status callback ({named(form.get('MessageStatus'))})")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        form = self._form(request, body)
        media = []
        count = form.get("NumMedia")
        # isascii: "²" and "٣" are digits to isdigit but not to int(); the length keeps int() off huge numbers.
        for i in range(min(int(count), 10) if isinstance(count, str) and count.isascii() and count.isdigit()
                       and len(count) <= 4 else 0):
            url = form.get(f"MediaUrl{i}")
            if isinstance(url, str):
                media.append({"url": url, "content_type": form.get(f"MediaContentType{i}")})
        sender = form.get("From") if isinstance(form.get("From"), str) else None
        payload = chat_payload(
            from_=_address(sender), from_name=form.get("ProfileName"), to=_address(form.get("To")),
            text=form.get("Body"), conversation_id=form.get("ConversationSid") or sender,
            message_id=form.get("MessageSid") or form.get("SmsMessageSid"), media=media, provider=form,
        )
        sid = payload["message_id"]
        return [Inbound(payload=payload, dedup_key=sid)]
