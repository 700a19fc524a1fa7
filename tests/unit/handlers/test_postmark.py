"""handlers/postmark.py: Postmark inbound JSON, attachments inline as base64."""

from __future__ import annotations

import copy

import pytest

from bridge.errors import Rejected
from handlers.postmark import PostmarkHandler
from tests.fixtures.providers import ASHA_EMAIL, JPEG, build, compact, load, post, without_provider

JSON = {"Content-Type": "application/json"}


def test_kind_and_channel() -> None:
    """Postmark is kind `postmark` on the `email` channel."""
    assert (PostmarkHandler.kind, PostmarkHandler.channel) == ("postmark", "email")


def test_inbound_normalises_to_the_email_shape() -> None:
    """Postmark's inbound JSON gives the email shape, with the Message-ID header as message_id."""
    [inbound] = build("postmark").parse(post(JSON), compact(load("postmark/inbound.json")))
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, "envelope_to": ["support@acme.test"],
                                                 "spam": {"verdict": "ham", "score": -0.1}}
    assert inbound.attachments[0].content == JPEG


def test_dedup_key_is_postmarks_message_id() -> None:
    """Postmark's own MessageID names the event."""
    [inbound] = build("postmark").parse(post(JSON), compact(load("postmark/inbound.json")))
    assert inbound.dedup_key == "73e6d360-66eb-11e1-8e72-a8904824019b"


def test_provider_keeps_the_raw_fields_but_not_the_content() -> None:
    """The raw fields are kept under provider; attachment content is on disk, not in the payload twice."""
    [inbound] = build("postmark").parse(post(JSON), compact(load("postmark/inbound.json")))
    provider = inbound.payload["provider"]
    assert provider["MessageStream"] == "inbound"
    assert provider["Attachments"] == [{"Name": "router.jpg", "ContentType": "image/jpeg", "ContentLength": 35,
                                        "ContentID": ""}]


def test_blank_stripped_reply_falls_back_to_ours() -> None:
    """When Postmark finds no reply to strip, the quoted history is stripped by us."""
    data = load("postmark/inbound.json")
    data["StrippedTextReply"] = ""
    [inbound] = build("postmark").parse(post(JSON), compact(data))
    assert inbound.payload["stripped_text"] == ASHA_EMAIL["stripped_text"]


@pytest.mark.parametrize(("change", "reason"), [
    ({"Attachments": {"a": 1}}, "`Attachments` is not a list"),
    ({"Attachments": ["x"]}, "`Attachments[0]` is not an object"),
    ({"Attachments": [{"Name": "a", "Content": "%%%"}]}, "`Attachments[0].Content` is not valid base64"),
])
def test_bad_attachments_are_400(change: dict[str, object], reason: str) -> None:
    """Attachments that cannot be read are a 400 naming the field."""
    data = copy.deepcopy(load("postmark/inbound.json"))
    data.update(change)
    with pytest.raises(Rejected) as info:
        build("postmark").parse(post(JSON), compact(data))
    assert info.value.status == 400
    assert reason in str(info.value)
