"""Twilio Messaging (SMS, WhatsApp): `X-Twilio-Signature`, base64 HMAC-SHA1 of the URL Twilio called plus
each POST parameter's name and value, sorted by name. Behind a proxy the URL we see is not the one Twilio
signed, so it comes from `public_url` (else server.public_url + the path, else the request itself).

Twilio joins each name to its value with no separator, so a captured request's parameters cut again at other
places still match its signature; after the signature, a request whose parameters do not read as one Twilio
message is refused as a bad signature (401 `signature`): docs/security.md, "Twilio's parameters", says what is
checked and why."""

from __future__ import annotations

import base64
import re
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
SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")
"""A Twilio SID: two capitals naming its kind (`SM`, `MM` for messages) and 32 lower-case hex digits."""
SID_LENGTH = 34
ACCOUNT_SID = re.compile(r"AC[0-9a-f]{32}")
MESSAGE_SIDS = ("MessageSid", "SmsMessageSid", "SmsSid")
"""The names Twilio gives a message's SID (the last two are legacy copies of the first), in dedup-key order."""
_SID_TEXT = re.compile(rf"(?:MessageSid|SmsSid)(?={SID.pattern})|MessageStatus(?=[a-z])")
"""Signed text that reads as a message's SID, or a status callback's status: the parameters it may belong to
are `_OWNERS`'."""
_OWNERS = {"MessageSid": frozenset({*MESSAGE_SIDS, "OriginalRepliedMessageSid"}), "SmsSid": frozenset({"SmsSid"}),
           "MessageStatus": frozenset({"MessageStatus"})}


class TwilioOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    auth_token: str
    public_url: str | None = None
    """The webhook URL exactly as configured in Twilio (scheme, host, path and query)."""
    account_sid: str | None = None
    """The Twilio account (`AC…`) whose messages the source takes; when set, a post naming another is refused."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.auth_token, "auth_token", "TWILIO_AUTH_TOKEN")
        check_public_url(self.public_url, "Twilio")
        if self.account_sid is not None and not ACCOUNT_SID.fullmatch(self.account_sid):
            raise KeyValueError(("account_sid",), f"`account_sid` {VALUE} is not a Twilio account SID: AC and 32 "
                                "lower-case hex digits, as the Twilio console shows it", self.account_sid)


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


def signed_pairs(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs in the order Twilio signs them: names sorted, a name's values sorted too."""
    values: dict[str, list[str]] = {}
    for name, value in params:
        values.setdefault(name, []).append(value)
    return [(name, value) for name in sorted(values) for value in sorted(values[name])]


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> bytes:
    """Twilio's algorithm: the URL, then each name+value, names sorted, a name's values sorted too."""
    return _signed(auth_token, url + _joined(signed_pairs(params)))


def _joined(pairs: list[tuple[str, str]]) -> str:
    return "".join(name + value for name, value in pairs)


def _signed(auth_token: str, data: str) -> bytes:
    return base64.b64encode(hmac_digest(auth_token.encode(), data.encode(), "sha1"))


def recut(form: dict[str, Any], pairs: list[tuple[str, str]], account_sid: str | None) -> str | None:
    """Why the signed parameters do not read as the one Twilio message (or status callback) they were signed as,
    or None when they do. A captured request cut again at other places signs the same text
    (`MessageSid=SM…&MessagingServiceSid=MG…` sent as one `MessageSid` holding `SM…MessagingServiceSidMG…`), so
    what names the message is pinned: `MessageSid`, `SmsMessageSid` and `SmsSid` (at least one) are each a SID and
    all the same; `AccountSid` is an account SID (the source's `account_sid`, when set); and wherever the signed
    text reads `MessageSid` or `SmsSid` followed by a SID, or `MessageStatus` followed by a status word, that is
    a parameter's whole name (one of `_OWNERS`) and, for a SID, its whole value. Then a re-cut keeps the
    message's SID (its dedup key), and a status callback stays one. `pairs`: the signed parameters in the order
    they are signed (`signed_pairs`). The reason names no value: each is request text."""
    sids = []
    for name in MESSAGE_SIDS:
        value = form.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not SID.fullmatch(value):
            return f"{name} is not one Twilio SID (two capitals and 32 lower-case hex digits)"
        sids.append(value)
    if not sids:
        return "no MessageSid, SmsMessageSid or SmsSid"
    if len(set(sids)) > 1:
        return "MessageSid, SmsMessageSid and SmsSid differ"
    account = form.get("AccountSid")
    if not isinstance(account, str) or not ACCOUNT_SID.fullmatch(account):
        return "AccountSid is missing or not a Twilio account SID (AC and 32 lower-case hex digits)"
    if account_sid is not None and account != account_sid:
        return "AccountSid is not the source's account_sid"
    # A name the signed text reads must be a parameter's whole name, and (a SID's) the value after it its whole value.
    owners: dict[int, tuple[str, str]] = {}  # where each value starts in the signed text: its name and value
    at = 0
    for name, value in pairs:
        at += len(name)
        owners[at] = (name, value)
        at += len(value)
    signed = _joined(pairs)
    for found in _SID_TEXT.finditer(signed):
        read, end = found.group(), found.end()
        name, value = owners.get(end, ("", ""))
        if name not in _OWNERS[read] or (read != "MessageStatus" and value != signed[end:end + SID_LENGTH]):
            return f"the signed text reads {read} inside another parameter"
    return None


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
        # The parameters signed are the form `parse` reads: one parser, run once per request; put in the order
        # they are signed once, for each URL Twilio may have signed and for `recut`.
        form = self._form(request, body)
        pairs = signed_pairs(form_params(form))
        text = _joined(pairs)
        ok = False
        for url in url_variants(self.signed_url(request)):
            ok |= same(_signed(self.twilio.auth_token, url + text), given)
        if not ok:
            raise Rejected(401, f"signature in {HEADER} does not match the URL and parameters (is public_url the "
                                "URL configured in Twilio?)", check="signature")
        if (why := recut(form, pairs, self.twilio.account_sid)) is not None:
            raise Rejected(401, f"the signed parameters do not read as one Twilio message: {why} (a captured "
                                "request's parameters cut again at other places)", check="signature")

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
            message_id=next((form[name] for name in MESSAGE_SIDS if form.get(name)), None), media=media,
            provider=form,
        )
        sid = payload["message_id"]
        return [Inbound(payload=payload, dedup_key=sid)]
