"""handlers/slack.py: the v0 signature and its window, url_verification, messages, bots ignored."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bridge.errors import Rejected
from handlers.slack import SlackHandler
from tests.fixtures.providers import NOW, build, compact, load, passes, post, slack_headers

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BODY = compact(load("slack/message.json"))


def handler() -> SlackHandler:
    h: SlackHandler = build("slack", signing_secret=SECRET)
    return h


def test_kind_and_channel() -> None:
    """Slack is kind `slack` on the `chat` channel."""
    assert (SlackHandler.kind, SlackHandler.channel) == ("slack", "chat")


def test_signature_matches_slacks_documented_example() -> None:
    """The v0 base string and HMAC reproduce the example in Slack's "Verifying requests" guide."""
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    h = handler()
    h.clock = lambda: 1531420618.0
    headers = {"X-Slack-Request-Timestamp": "1531420618",
               "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"}
    assert passes(lambda: h.verify(post(headers), body))
    assert not passes(lambda: h.verify(post(headers), body.replace(b"roadrunner", b"coyote")))


async def test_signed_message_becomes_a_chat_event() -> None:
    """A person's message gives the chat shape, de-duplicated by its channel and ts."""
    h, req = handler(), post(slack_headers(SECRET, BODY))
    h.verify(req, BODY)
    assert await h.intercept(req, BODY) is None
    [inbound] = h.parse(req, BODY)
    assert {k: v for k, v in inbound.payload.items() if k != "provider"} == {
        "from": "U061F7AUR", "from_name": None, "to": "D024BE91L", "text": "My router is down again",
        "conversation_id": "D024BE91L/U061F7AUR", "message_id": "0f5a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8", "media": [],
    }
    assert inbound.dedup_key == "message:D024BE91L/1717408960.000200"


def test_the_apps_verification_token_is_not_stored() -> None:
    """Slack's deprecated verification `token` is a credential: the event keeps the rest of the body, not it."""
    [inbound] = handler().parse(post(slack_headers(SECRET, BODY)), BODY)
    provider = inbound.payload["provider"]
    assert "token" not in provider and provider["event_id"] == "Ev0PV52K21"
    assert b"XXYYZZ" in BODY and b"XXYYZZ" not in compact(inbound.payload)


def test_the_message_and_app_mention_events_of_one_message_share_a_dedup_key() -> None:
    """An app subscribed to `message.*` and `app_mention` gets two events, each with its own event_id, for one
    message that mentions it: one key (channel and ts), so one ticket. Another message (ts) or channel is
    another key, and an event without a channel or ts falls back to its event_id."""
    def key(event_id: str, **change: Any) -> str | None:
        data = load("slack/message.json")
        data["event_id"] = event_id
        data["event"].update(change)
        for name in [k for k, v in change.items() if v is None]:
            del data["event"][name]
        [inbound] = handler().parse(post(), compact(data))
        return inbound.dedup_key

    message = key("Ev1")
    assert message == key("Ev2", type="app_mention") == key("Ev3", type="app_mention", edited={"ts": "1"})
    assert len({message, key("Ev1", ts="1717408960.000300"), key("Ev1", channel="C0OTHER")}) == 3
    assert key("Ev4", ts=None) == "Ev4"
    assert key("Ev5", channel=None) == "Ev5"
    assert key("Ev6", ts=1717408960.0002) == "Ev6"


def test_threaded_reply_names_the_thread() -> None:
    """A reply in a thread has the channel and the thread's ts as its conversation."""
    data = load("slack/message.json")
    data["event"]["thread_ts"] = "1717400000.000100"
    [inbound] = handler().parse(post(), compact(data))
    assert inbound.payload["conversation_id"] == "D024BE91L/1717400000.000100"


async def test_url_verification_echoes_the_challenge() -> None:
    """A signed url_verification is answered with its challenge and stores nothing."""
    body = compact(load("slack/url_verification.json"))
    h, req = handler(), post(slack_headers(SECRET, body))
    h.verify(req, body)
    early: Any = await h.intercept(req, body)
    assert early.outcome == "handshake"
    assert msgspec.json.decode(early.response.body) == {
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


@pytest.mark.parametrize(("change", "reason"), [
    ({"bot_id": "B1", "subtype": "bot_message"}, "bot"),
    ({"bot_id": "B1"}, "bot"),
    ({"subtype": "message_changed"}, "message_changed"),
    ({"type": "reaction_added"}, "reaction_added"),
])
async def test_bots_edits_and_other_events_are_ignored(change: dict[str, str], reason: str) -> None:
    """Bots' messages, edits and non-message events are answered 200 and not stored."""
    data = load("slack/message.json")
    data["event"].update(change)
    early = await handler().intercept(post(), compact(data))
    assert early is not None and early.outcome == "ignored" and reason in early.reason


async def test_bot_message_fixture_is_ignored() -> None:
    """Slack's documented bot_message event is ignored."""
    early = await handler().intercept(post(), compact(load("slack/bot_message.json")))
    assert early is not None and early.outcome == "ignored"


@pytest.mark.parametrize(("headers", "check"), [
    ({}, "signature"),
    (slack_headers("other-secret", BODY), "signature"),
    ({**slack_headers(SECRET, BODY), "X-Slack-Request-Timestamp": str(NOW + 1)}, "signature"),
    ({k: v for k, v in slack_headers(SECRET, BODY).items() if k != "X-Slack-Request-Timestamp"}, "timestamp"),
])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str], check: str) -> None:
    """No signature, another secret, a timestamp other than the signed one, or none, is refused by the check
    that failed."""
    with pytest.raises(Rejected) as info:
        handler().verify(post(headers), BODY)
    assert info.value.status == 401
    assert info.value.check == check


@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_timestamp_is_401(offset: int) -> None:
    """A correctly signed request over 5 minutes old (or ahead) is refused, as Slack advises."""
    with pytest.raises(Rejected) as info:
        handler().verify(post(slack_headers(SECRET, BODY, NOW + offset)), BODY)
    assert (info.value.status, info.value.check) == (401, "timestamp")


def test_retry_headers_are_kept() -> None:
    """Slack's retry number and reason are kept with the event; the signature is not."""
    req = post({**slack_headers(SECRET, BODY), "X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"})
    kept = handler().kept_headers(req)
    assert (kept["x-slack-retry-num"], kept["x-slack-retry-reason"]) == ("2", "http_timeout")
    assert "x-slack-signature" not in kept
