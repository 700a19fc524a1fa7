"""Mandrill (Mailchimp Transactional) inbound: a form whose `mandrill_events` field is a JSON array of events,
each `inbound` event one message with its raw MIME (`msg.raw_msg`). Signed in `X-Mandrill-Signature`: base64
HMAC-SHA1, keyed by the webhook's key, of the webhook URL followed by each POST field's name and value, sorted
by name. Behind a proxy the URL seen is not the one Mandrill signed: `public_url` is the URL as configured. A
post with no `inbound` event (Mandrill's webhook test) is not a message (200, counted)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import Attachment, decode_base64
from handlers.base import Handler, Inbound, Intercepted, decode_json, items, not_a_message, obj, per_request
from handlers.email import Spam, spam_score
from handlers.formdata import first_value, parse_urlencoded
from handlers.mail_message import (
    Fields,
    check_batch,
    header_pairs,
    mail_inbound,
    mailbox,
    provider_file,
    raw_bytes,
    text,
    without,
)
from handlers.signing import require, same
from handlers.twilio import check_public_url, form_params, signature, signed_url

HEADER = "X-Mandrill-Signature"
URLENCODED = "application/x-www-form-urlencoded"


class MandrillOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    webhook_key: str
    public_url: str | None = None
    """The webhook URL exactly as configured in Mandrill (scheme, host, path and query)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.webhook_key, "webhook_key", "MANDRILL_WEBHOOK_KEY")
        check_public_url(self.public_url, "Mandrill")


class MandrillHandler(Handler):
    kind: ClassVar[str] = "mandrill"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = MandrillOptions
    content_types: ClassVar[frozenset[str]] = frozenset({URLENCODED})

    @property
    def mandrill(self) -> MandrillOptions:
        assert isinstance(self.options, MandrillOptions)
        return self.options

    async def handshake(self, request: web.Request) -> web.StreamResponse | None:
        """Mandrill checks a new webhook URL with a HEAD request, which must answer 200."""
        return web.Response(status=200) if request.method == "HEAD" else None

    def signed_url(self, request: web.Request) -> str:
        return signed_url(request, self.mandrill.public_url, self.server.public_url, "Mandrill")

    def _form(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "mandrill", lambda: parse_urlencoded(body, request.charset))

    def verify(self, request: web.Request, body: bytes) -> None:
        given = request.headers.get(HEADER, "")
        if not given:
            raise Rejected(401, f"signature header {HEADER} is missing", check="signature")
        params = form_params(self._form(request, body))
        if not same(signature(self.mandrill.webhook_key, self.signed_url(request), params), given):
            raise Rejected(401, f"signature in {HEADER} does not match the URL and fields (is public_url the URL "
                                "configured in Mandrill?)", check="signature")

    def _events(self, request: web.Request, body: bytes) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            raw = first_value(self._form(request, body).get("mandrill_events"))
            if raw is None:
                raise Rejected(400, "the form has no `mandrill_events` field", check="form")
            events = decode_json(raw, "field `mandrill_events`", check="form")
            if not isinstance(events, list):
                raise Rejected(400, "`mandrill_events` is not a JSON array", check="form")
            inbound = [e for e in events if isinstance(e, dict) and e.get("event") == "inbound"]
            check_batch(len(inbound), "`mandrill_events`")
            return inbound

        return per_request(request, "mandrill.events", read)

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._events(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        if not self._events(request, body):
            return not_a_message("event", "a Mandrill post with no inbound event (a webhook test, or other events)")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        return [self._message(i, event) for i, event in enumerate(self._events(request, body))]

    @staticmethod
    def _message(i: int, event: dict[str, Any]) -> Inbound:
        msg = obj(event.get("msg"))
        raw = text(msg.get("raw_msg"))
        files: list[Attachment] = []
        if raw is None:  # the parsed copies serve only when the raw message is missing
            for key in ("attachments", "images"):
                for name, given in obj(msg.get(key)).items():
                    item = obj(given)
                    content = item.get("content")
                    where = f"`mandrill_events[{i}].msg.{key}[{name!r}].content`"
                    data = (decode_base64(content, where) if item.get("base64") is not False
                            else str(content).encode())
                    # `images` are the message's inline images (signature logos); `attachments` the rest
                    files.append(provider_file(text(item.get("name")) or name, item.get("type"), data,
                                               inline=key == "images"))
        score = spam_score(obj(msg.get("spam_report")).get("score"))  # SpamAssassin's score, without a verdict
        fields = Fields(
            from_=mailbox(msg.get("from_name"), msg.get("from_email")),
            to=_pairs(msg.get("to")),
            cc=_pairs(msg.get("cc")),
            subject=text(msg.get("subject")),
            envelope_to=text(msg.get("email")),  # the address Mandrill received the message at
            spam=None if score is None else Spam("unknown", score),
            text=text(msg.get("text")),
            html=text(msg.get("html")),
            attachments=files,
            headers=header_pairs(msg.get("headers")),
        )
        # The raw message and the files' contents are parsed and stored, not kept twice; the files are named.
        kept = without(msg, ["raw_msg", "attachments", "images"])
        for key in ("attachments", "images"):
            if key in msg:
                kept[key] = list(obj(msg[key]))
        provider = {**without(event, ["msg"]), "msg": kept}
        return mail_inbound(provider, fields, raw=raw_bytes(raw) if raw is not None else None,
                            provider_id=msg.get("_id"))


def _pairs(value: object) -> list[str]:
    """Mandrill's `[[address, name], …]` recipients as `"Name" <address>` texts."""
    boxes = [mailbox(pair[1] if len(pair) > 1 else None, pair[0]) for pair in items(value)
             if isinstance(pair, list) and pair]
    return [b for b in boxes if b]
