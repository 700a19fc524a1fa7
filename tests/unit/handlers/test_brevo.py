"""handlers/brevo.py: Brevo inbound parsing, a batch of parsed messages in `items`."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import msgspec
import pytest

from bridge.errors import Rejected
from handlers.base import Intercepted
from handlers.brevo import BrevoHandler
from tests.fixtures.providers import ASHA_EMAIL, build, compact, load, passes, post, without_provider

JSON = {"Content-Type": "application/json"}
BODY = compact(load("brevo/inbound.json"))


def test_kind_and_channel() -> None:
    """Brevo is kind `brevo` on the `email` channel."""
    assert (BrevoHandler.kind, BrevoHandler.channel) == ("brevo", "email")


def test_item_normalises_to_the_email_shape() -> None:
    """An item gives the email shape; Brevo's extracted reply is the stripped text."""
    [inbound] = build("brevo").parse(post(JSON), BODY)
    payload = without_provider(inbound.payload)
    assert payload.pop("attachments") == [{"name": "router.jpg", "content_type": "image/jpeg", "size": 35,
                                           "sha256": None, "stored": False,
                                           "reason": "held by Brevo: download it with its DownloadToken"}]
    assert payload == {k: v for k, v in ASHA_EMAIL.items() if k != "attachments"}
    assert inbound.dedup_key == "<CAF=asha.1@mail.example.com>"
    assert inbound.payload["provider"]["Uuid"] == ["c8d6b0b6-3a4f-4b8e-9a51-2f7e9b0f4e21"]


def test_each_item_is_one_event() -> None:
    """A batch of two items gives two events, each with its own dedup key."""
    data = load("brevo/inbound.json")
    second = copy.deepcopy(data["items"][0])
    second.update(MessageId="<second@mail.example.com>", Subject="Another", Headers={})
    data["items"].append(second)
    inbounds = build("brevo").parse(post(JSON), compact(data))
    assert [i.dedup_key for i in inbounds] == ["<CAF=asha.1@mail.example.com>", "<second@mail.example.com>"]
    assert inbounds[1].payload["subject"] == "Another"


def test_without_a_message_id_the_uuid_names_the_event() -> None:
    """Brevo's Uuid is the dedup key of an item with no Message-ID."""
    data = load("brevo/inbound.json")
    item = data["items"][0]
    del item["MessageId"]
    item["Headers"].pop("Message-ID")
    [inbound] = build("brevo").parse(post(JSON), compact(data))
    assert inbound.dedup_key == "c8d6b0b6-3a4f-4b8e-9a51-2f7e9b0f4e21"


@pytest.mark.parametrize("data", [{"items": []}, {"items": ["x", 1]}])
def test_no_message_in_items_is_ignored(data: dict[str, Any]) -> None:
    """A payload whose items hold no message is answered as ignored."""
    answer = asyncio.run(build("brevo").intercept(post(JSON), compact(data)))
    assert isinstance(answer, Intercepted) and answer.outcome == "ignored"


def test_payload_without_items_is_400() -> None:
    """A body that is not Brevo's shape is a 400 saying so."""
    with pytest.raises(Rejected) as info:
        asyncio.run(build("brevo").intercept(post(JSON), b'{"event": "delivered"}'))
    assert (info.value.status, info.value.check) == (400, "json")


def test_token_in_the_url_or_in_a_header() -> None:
    """With `token`, the URL's ?token= must hold it; with `token_header` too, that header must."""
    in_url = build("brevo", token="tok")
    assert passes(lambda: in_url.verify(post(JSON, "/hooks/brevo?token=tok"), BODY))
    assert not passes(lambda: in_url.verify(post(JSON, "/hooks/brevo?token=guess"), BODY))
    assert not passes(lambda: in_url.verify(post(JSON, "/hooks/brevo"), BODY))
    in_header = build("brevo", token="tok", token_header="X-Brevo-Token")
    assert passes(lambda: in_header.verify(post({**JSON, "X-Brevo-Token": "tok"}), BODY))
    assert not passes(lambda: in_header.verify(post(JSON, "/hooks/brevo?token=tok"), BODY))


def test_token_header_without_a_token_is_refused() -> None:
    """`token_header` alone is a config error naming the missing `token`."""
    with pytest.raises(msgspec.ValidationError, match="`token` is not set"):
        build("brevo", token_header="X-Brevo-Token")
