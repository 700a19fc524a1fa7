"""Slack Events API: the v0 signature (hex HMAC-SHA256 of `v0:timestamp:body`) within the tolerance,
the `url_verification` handshake, messages as chat events; bot messages and other events are ignored.
A message is de-duplicated by its channel and `ts` (what identifies a Slack message): Slack's retries, and
the `message` and `app_mention` events one message gives an app subscribed to both, are stored once. An
edit is never a new message: `message_changed` is ignored, and an `app_mention` for a message edited to
mention the app (the message's own `ts`) is a duplicate when the message is stored already. An event
without a channel and `ts` falls back to its `event_id`. The app's verification `token` (deprecated, and a
credential: it let anyone who had it pass for Slack before signatures) is left out of what is stored."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.auth import hmac_digest, signature_matches
from handlers.base import (
    KEEP_HEADERS,
    Handler,
    Inbound,
    Intercepted,
    handshake_answer,
    ignored,
    items,
    json_body,
    named,
    obj,
)
from handlers.chat import chat_payload
from handlers.signing import TimedOptions, check_timestamp, require

TAKEN_EVENTS = ("message", "app_mention")  # tuples: a body may put any value, even a list, in `type`
# Message subtypes a person produces; the rest (edits, deletions, joins, bots) are not new messages.
PERSON_SUBTYPES = (None, "file_share", "thread_broadcast", "me_message")


class SlackOptions(TimedOptions, kw_only=True, forbid_unknown_fields=True):
    signing_secret: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.signing_secret, "signing_secret", "SLACK_SIGNING_SECRET")


class SlackHandler(Handler):
    kind: ClassVar[str] = "slack"
    channel = "chat"
    Options: ClassVar[type[SourceConfig]] = SlackOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})
    keep_headers: ClassVar[tuple[str, ...]] = (*KEEP_HEADERS, "x-slack-retry-num", "x-slack-retry-reason")

    @property
    def slack(self) -> SlackOptions:
        assert isinstance(self.options, SlackOptions)
        return self.options

    def verify(self, request: web.Request, body: bytes) -> None:
        given = request.headers.get("X-Slack-Signature", "")
        if not given:
            raise Rejected(401, "signature header X-Slack-Signature is missing", check="signature")
        raw_ts = request.headers.get("X-Slack-Request-Timestamp")
        check_timestamp(raw_ts, self.clock(), self.slack.tolerance_s, header="X-Slack-Request-Timestamp")
        assert raw_ts is not None
        expected = hmac_digest(self.slack.signing_secret.encode(), b"v0:" + raw_ts.strip().encode() + b":" + body,
                               "sha256")
        version, _, value = given.strip().partition("=")
        if version.lower() != "v0" or not signature_matches(expected, value, "hex"):
            raise Rejected(401, "signature in X-Slack-Signature does not match timestamp and body",
                           check="signature")

    def prepare(self, request: web.Request, body: bytes) -> None:
        json_body(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = json_body(request, body)
        kind = data.get("type")
        if kind == "url_verification":
            answer = web.Response(body=msgspec.json.encode({"challenge": data.get("challenge")}),
                                  content_type="application/json")
            return handshake_answer(answer, "Slack url_verification")
        if kind != "event_callback":
            return ignored(f"Slack payload type {named(kind)}")
        event = data.get("event")
        if not isinstance(event, dict):
            raise Rejected(400, "event_callback without an `event` object", check="json")
        if event.get("type") not in TAKEN_EVENTS:
            return ignored(f"Slack event {named(event.get('type'))}")
        if event.get("bot_id") or event.get("subtype") == "bot_message" or event.get("bot_profile"):
            return ignored("a bot's message")
        if event.get("subtype") not in PERSON_SUBTYPES:
            return ignored(f"Slack message subtype {named(event.get('subtype'))}")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = json_body(request, body)
        event: dict[str, Any] = data["event"]
        profile = obj(event.get("user_profile"))
        channel, thread = event.get("channel"), event.get("thread_ts")
        files = [{k: f.get(k) for k in ("id", "name", "mimetype", "url_private") if k in f}
                 for f in items(event.get("files")) if isinstance(f, dict)]
        payload = chat_payload(
            from_=event.get("user"), from_name=profile.get("real_name") or profile.get("display_name"),
            to=channel, text=event.get("text"),
            # A thread is one conversation; outside threads, each person's messages in a channel are one.
            conversation_id=f"{channel}/{thread}" if channel and thread else
            f"{channel}/{event.get('user')}" if channel and event.get("user") else channel,
            message_id=event.get("client_msg_id") or event.get("ts"), media=files,
            provider={k: v for k, v in data.items() if k != "token"},
        )
        return [Inbound(payload=payload, dedup_key=_message_key(event) or _event_id(data))]


def _message_key(event: dict[str, Any]) -> str | None:
    """`message:<channel>/<ts>` for a message-like event: a message's `ts` is unique within its channel, and
    the `message` and `app_mention` events of one message (each with its own `event_id`) share both."""
    channel, ts = event.get("channel"), event.get("ts")
    if isinstance(channel, str) and channel and isinstance(ts, str) and ts:
        return f"message:{channel}/{ts}"
    return None


def _event_id(data: dict[str, Any]) -> str | None:
    event_id = data.get("event_id")
    return str(event_id) if event_id else None
