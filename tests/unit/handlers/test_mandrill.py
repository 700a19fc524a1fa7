"""handlers/mandrill.py: Mandrill inbound, `mandrill_events` signed with HMAC-SHA1 over the URL and fields."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request

from bridge.errors import Rejected
from handlers.base import Intercepted
from handlers.mandrill import MandrillHandler, MandrillOptions
from tests.fixtures.providers import (
    ASHA_EMAIL,
    ENVELOPE,
    JPEG,
    build,
    load,
    mandrill_request,
    passes,
    post,
    without_provider,
)

KEY = "zDQ9cJ7mIkIDBZ5eOFEg3A"
URL = "https://bridge.example.com/hooks/mandrill"


def handler() -> MandrillHandler:
    h: MandrillHandler = build("mandrill", webhook_key=KEY, public_url=URL)
    return h


def events(count: int = 1) -> list[Any]:
    one = load("mandrill/inbound_events.json")[0]
    out = []
    for i in range(count):
        event = copy.deepcopy(one)
        if i:
            event["msg"]["raw_msg"] = event["msg"]["raw_msg"].replace("CAF=asha.1@", f"CAF=asha.{i + 1}@")
        out.append(event)
    return out


def test_kind_and_channel() -> None:
    """Mandrill is kind `mandrill` on the `email` channel."""
    assert (MandrillHandler.kind, MandrillHandler.channel) == ("mandrill", "email")


def test_signed_inbound_event_verifies_and_parses_the_raw_message() -> None:
    """A signed post verifies; its message is read from `raw_msg`, attachment and all."""
    body, headers = mandrill_request(KEY, URL)
    h, req = handler(), post(headers)
    h.verify(req, body)
    assert asyncio.run(h.intercept(req, body)) is None
    [inbound] = h.parse(req, body)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE, "spam": {"verdict": "unknown", "score": 0.3}}
    assert inbound.attachments[0].content == JPEG
    assert inbound.dedup_key == "<CAF=asha.1@mail.example.com>"
    kept = inbound.payload["provider"]["msg"]
    assert "raw_msg" not in kept and kept["attachments"] == ["router.jpg"]


@pytest.mark.parametrize(("key", "url"), [("other-key", URL), (KEY, "https://bridge.example.com/hooks/other")])
def test_signature_over_another_key_or_url_is_401(key: str, url: str) -> None:
    """A signature made with another key, or over another URL, is refused."""
    body, headers = mandrill_request(key, url)
    with pytest.raises(Rejected) as info:
        handler().verify(post(headers), body)
    assert (info.value.status, info.value.check) == (401, "signature")


def test_changed_events_break_the_signature() -> None:
    """The signature covers the field's value: another body under the same signature is refused."""
    _body, headers = mandrill_request(KEY, URL)
    other, _ = mandrill_request(KEY, URL, events(2))
    assert not passes(lambda: handler().verify(post(headers), other))


def test_batch_gives_one_event_per_inbound_message() -> None:
    """`mandrill_events` with two inbound messages (and a non-inbound event) gives two events."""
    batch = [*events(2), {"event": "send", "msg": {}}]
    body, headers = mandrill_request(KEY, URL, batch)
    inbounds = handler().parse(post(headers), body)
    assert [i.dedup_key for i in inbounds] == ["<CAF=asha.1@mail.example.com>", "<CAF=asha.2@mail.example.com>"]


def test_parsed_fields_serve_without_raw_msg() -> None:
    """Without `raw_msg`, Mandrill's parsed fields and base64 attachments give the same shape."""
    [event] = events()
    del event["msg"]["raw_msg"]
    body, headers = mandrill_request(KEY, URL, [event])
    [inbound] = handler().parse(post(headers), body)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE, "spam": {"verdict": "unknown", "score": 0.3}}


def test_post_with_no_inbound_event_is_ignored() -> None:
    """Mandrill's test post (an empty batch) is answered as ignored."""
    body, headers = mandrill_request(KEY, URL, [])
    answer = asyncio.run(handler().intercept(post(headers), body))
    assert isinstance(answer, Intercepted) and answer.outcome == "ignored"
    assert answer.code.startswith("not_a_message:") and answer.response.status == 200


@pytest.mark.parametrize("value", ["{}", "not json"])
def test_events_that_are_not_an_array_are_400(value: str) -> None:
    """`mandrill_events` must be a JSON array."""
    from urllib.parse import urlencode

    body = urlencode({"mandrill_events": value}).encode()
    with pytest.raises(Rejected) as info:
        asyncio.run(handler().intercept(post({"Content-Type": "application/x-www-form-urlencoded"}), body))
    assert info.value.status == 400


def test_head_request_is_answered_200() -> None:
    """Mandrill checks a new webhook URL with HEAD; a GET is not answered by this source."""
    h = handler()
    head = asyncio.run(h.handshake(make_mocked_request("HEAD", "/hooks/mandrill")))
    assert head is not None and head.status == 200
    assert asyncio.run(h.handshake(make_mocked_request("GET", "/hooks/mandrill"))) is None


@pytest.mark.parametrize(("options", "reason"), [
    ({}, "missing required field `webhook_key`"),
    ({"webhook_key": ""}, "`webhook_key` is empty"),
    ({"webhook_key": "k", "public_url": "bridge.example.com/hooks/mandrill"}, "full URL Mandrill calls"),
])
def test_invalid_options(options: dict[str, str], reason: str) -> None:
    """The webhook key is required and public_url must be a full URL."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert({"kind": "mandrill", **options}, MandrillOptions)


def test_host_header_that_makes_no_url_is_400() -> None:
    """Without public_url the signed URL comes from the request; a Host header yarl cannot make a URL of is a
    400 saying to set public_url to the URL Mandrill calls, not a crash."""
    body, headers = mandrill_request(KEY, URL)
    with pytest.raises(Rejected) as info:
        build("mandrill", webhook_key=KEY).verify(post({**headers, "Host": "bridge.example.com:99999"}), body)
    assert info.value.status == 400
    assert "URL Mandrill calls" in str(info.value)
