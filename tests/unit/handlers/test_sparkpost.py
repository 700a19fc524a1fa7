"""handlers/sparkpost.py: SparkPost relay webhooks, a JSON array of relay messages with their raw MIME."""

from __future__ import annotations

import asyncio
import base64
import copy
import threading
from typing import Any, cast

import pytest

from bridge.errors import Rejected
from bridge.intake import offloaded, run_handler
from bridge.runtime import Runtime, Source
from handlers.base import Intercepted
from handlers.sparkpost import SparkpostHandler
from tests.fixtures.providers import ASHA_EMAIL, ENVELOPE, JPEG, build, compact, load, passes, post, without_provider

JSON = {"Content-Type": "application/json"}


def test_kind_and_channel() -> None:
    """SparkPost is kind `sparkpost` on the `email` channel."""
    assert (SparkpostHandler.kind, SparkpostHandler.channel) == ("sparkpost", "email")


def test_relay_message_is_read_from_its_raw_mime() -> None:
    """`content.email_rfc822` gives the email shape; the raw text is not kept twice."""
    [inbound] = build("sparkpost").parse(post(JSON), compact(load("sparkpost/relay.json")))
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE}
    assert inbound.attachments[0].content == JPEG
    assert "email_rfc822" not in inbound.payload["provider"]["content"]
    assert inbound.payload["provider"]["webhook_id"] == "4839201967643219"


def test_base64_raw_message_is_decoded() -> None:
    """With `email_rfc822_is_base64`, the raw message is base64 and decoded first."""
    data = load("sparkpost/relay.json")
    content = data[0]["msys"]["relay_message"]["content"]
    content["email_rfc822"] = base64.b64encode(content["email_rfc822"].encode()).decode()
    content["email_rfc822_is_base64"] = True
    h, req, body = build("sparkpost"), post(JSON), compact(data)
    assert asyncio.run(h.intercept(req, body)) is None
    [inbound] = h.parse(req, body)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE}


@pytest.mark.parametrize(("count", "off"), [(1, False), (6, True)], ids=["one message", "a batch"])
async def test_base64_messages_are_parsed_where_their_parts_place_them(monkeypatch: pytest.MonkeyPatch, count: int,
                                                                       off: bool) -> None:
    """Base64 hides each relay message's MIME parts from intake's look at the body: the batch is parsed on the loop
    while its decoded messages hold few parts in all (one has 6 delimiter lines; six, 36, past LOOP_MIME_LINES),
    else again in the parser thread (the one thread for every large parse), as every provider's is; never in a
    thread of its own, which no bound on the parses at once would hold."""
    threads: list[str] = []
    original = SparkpostHandler._message

    def recorded(i: int, relay: dict[str, Any]) -> Any:
        threads.append(threading.current_thread().name)
        return original(i, relay)

    monkeypatch.setattr(SparkpostHandler, "_message", staticmethod(recorded))
    [item] = load("sparkpost/relay.json")
    content = item["msys"]["relay_message"]["content"]
    content["email_rfc822"] = base64.b64encode(content["email_rfc822"].encode()).decode()
    content["email_rfc822_is_base64"] = True
    body = compact([item] * count)
    assert not offloaded(body)  # a small body: its look alone would parse it on the loop
    handled = await run_handler(cast(Runtime, None), Source("sparkpost", build("sparkpost"), None, 0.0), post(JSON),
                                body)
    assert not isinstance(handled, Intercepted) and len(handled[0]) == count
    loop = threading.current_thread().name
    if off:  # begun on the loop, stopped at the sixth message, and parsed again, whole, in the parser thread
        assert threads[:count] == [loop] * count and len(threads) == 2 * count, threads
        assert all(name.startswith("ticketbridge-parse") for name in threads[count:]), threads
    else:
        assert threads == [loop]


def test_batch_gives_one_event_per_relay_message() -> None:
    """An array of two relay messages gives two events."""
    data = load("sparkpost/relay.json")
    second = copy.deepcopy(data[0])
    content = second["msys"]["relay_message"]["content"]
    content["email_rfc822"] = content["email_rfc822"].replace("CAF=asha.1@", "CAF=asha.2@")
    inbounds = build("sparkpost").parse(post(JSON), compact([*data, second]))
    assert [i.dedup_key for i in inbounds] == ["<CAF=asha.1@mail.example.com>", "<CAF=asha.2@mail.example.com>"]


def test_webhook_test_post_is_ignored() -> None:
    """SparkPost's test post, with no relay message, is answered as ignored."""
    answer = asyncio.run(build("sparkpost").intercept(post(JSON), b'[{"msys":{}}]'))
    assert isinstance(answer, Intercepted) and answer.outcome == "ignored"
    assert answer.code.startswith("not_a_message:") and answer.response.status == 200


def test_body_that_is_not_an_array_is_400() -> None:
    """The body must be a JSON array of events."""
    with pytest.raises(Rejected) as info:
        asyncio.run(build("sparkpost").intercept(post(JSON), b'{"msys":{}}'))
    assert info.value.status == 400


def test_auth_token_header_is_checked() -> None:
    """With `auth_token`, X-MessageSystems-Webhook-Token must hold it."""
    h, body = build("sparkpost", auth_token="tok"), compact(load("sparkpost/relay.json"))
    assert passes(lambda: h.verify(post({**JSON, "X-MessageSystems-Webhook-Token": "tok"}), body))
    assert not passes(lambda: h.verify(post({**JSON, "X-MessageSystems-Webhook-Token": "guess"}), body))
    assert not passes(lambda: h.verify(post(JSON), body))
