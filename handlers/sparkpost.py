"""SparkPost relay webhooks: a JSON array of `msys.relay_message` events, each one inbound message whose raw
MIME is `content.email_rfc822` (base64 when `email_rfc822_is_base64`). SparkPost sends the relay webhook's
`auth_token` in `X-MessageSystems-Webhook-Token`; a webhook set up with basic auth is checked by `auth`.
SparkPost's test post when a webhook is saved carries no relay message: it is not a message (200, counted)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.attachments import decode_base64
from handlers.base import Handler, Inbound, Intercepted, decode_json, items, not_a_message, obj, per_request
from handlers.email import Headers
from handlers.mail_message import Fields, check_batch, mail_inbound, raw_bytes, text, without
from handlers.signing import check_token, require

HEADER = "X-MessageSystems-Webhook-Token"


class SparkpostOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    auth_token: str | None = None
    """The relay webhook's `auth_token`, sent in X-MessageSystems-Webhook-Token."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auth_token is not None:
            require(self.auth_token, "auth_token", "SPARKPOST_WEBHOOK_TOKEN")


class SparkpostHandler(Handler):
    kind: ClassVar[str] = "sparkpost"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = SparkpostOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def verify(self, request: web.Request, body: bytes) -> None:
        assert isinstance(self.options, SparkpostOptions)
        token = self.options.auth_token
        if token is None:
            return
        check_token(token, request.headers.get(HEADER), f"header {HEADER}")

    def _relays(self, request: web.Request, body: bytes) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            batch = decode_json(body)
            if not isinstance(batch, list):
                raise Rejected(400, f"expected a JSON array of SparkPost events, got a JSON {type(batch).__name__}",
                               check="json")
            relays = [relay for item in batch if (relay := obj(obj(obj(item).get("msys")).get("relay_message")))]
            check_batch(len(relays), "the SparkPost batch")
            return relays

        return per_request(request, "sparkpost", read)

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._relays(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        if not self._relays(request, body):
            return not_a_message("test", "a SparkPost post with no relay message (a webhook test)")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        # Base64 hides the MIME delimiter lines intake counts to place the parse: on the loop, the decoded
        # messages' parts, over all of the batch, send it to the parser thread (email.parse_mime).
        return self._inbounds(self._relays(request, body))

    @classmethod
    def _inbounds(cls, relays: list[dict[str, Any]]) -> list[Inbound]:
        return [cls._message(i, relay) for i, relay in enumerate(relays)]

    @staticmethod
    def _message(i: int, relay: dict[str, Any]) -> Inbound:
        content = obj(relay.get("content"))
        rfc822 = content.get("email_rfc822")
        raw = None
        if isinstance(rfc822, str):
            raw = (decode_base64(rfc822, f"event {i}: `content.email_rfc822`")
                   if content.get("email_rfc822_is_base64") is True else raw_bytes(rfc822))
        # SparkPost lists headers as one-key objects: [{"Subject": "…"}, {"To": "…"}]
        headers = Headers((str(name), str(value)) for entry in items(content.get("headers"))
                          for name, value in obj(entry).items() if isinstance(value, str))
        fields = Fields(
            from_=text(relay.get("friendly_from")) or text(relay.get("msg_from")),
            to=[t for t in items(content.get("to")) if isinstance(t, str)] or text(relay.get("rcpt_to")),
            subject=text(content.get("subject")),
            envelope_from=text(relay.get("msg_from")),
            envelope_to=text(relay.get("rcpt_to")),
            text=text(content.get("text")),
            html=text(content.get("html")),
            headers=headers,
        )
        provider = {**relay, "content": without(content, ["email_rfc822"])}
        return mail_inbound(provider, fields, raw=raw)
