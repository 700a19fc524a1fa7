"""handlers/postmark.py: Postmark inbound JSON, attachments inline as base64."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from bridge.errors import Rejected
from handlers.base import Intercepted
from handlers.postmark import PostmarkHandler
from tests.fixtures.providers import (
    ASHA_EMAIL,
    FORWARDED,
    JPEG,
    LOGO,
    THREAD_EMAIL,
    build,
    compact,
    load,
    message_shape,
    post,
    postmark_raw,
    without_provider,
)

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


@pytest.mark.parametrize("value", [1e308, 1, True, False, 0, {"id": "x"}, ["x"], None, ""])
def test_a_message_id_that_is_not_text_is_no_dedup_key(value: Any) -> None:
    """Postmark sends MessageID as a UUID string: a number, a bool or a container is read as missing (no dedup
    key), not written out as `1e+308` or `True` to collide with every other post doing the same."""
    data = load("postmark/inbound.json")
    data["MessageID"] = value
    [inbound] = build("postmark").parse(post(JSON), compact(data))
    assert inbound.dedup_key is None


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


# -- raw MIME, attachments intact, posts that are not messages ------------------------------------------------


async def run(data: dict[str, Any]) -> Any:
    """intercept, then (when not intercepted) parse, as intake does."""
    h, req, body = build("postmark"), post(JSON), compact(data)
    early = await h.intercept(req, body)
    return early if early is not None else h.parse(req, body)


async def test_raw_email_wins_over_the_parsed_fields() -> None:
    """With `RawEmail`, the raw message's headers, bodies and attachments are used, not Postmark's parsed JSON
    (which here describes another message), and the raw text is not kept twice."""
    [inbound] = await run(postmark_raw())
    assert message_shape(inbound.payload) == THREAD_EMAIL
    assert inbound.payload["envelope_from"] == "asha.rao@example.com"  # the raw message's Return-Path
    assert inbound.payload["spam"] == {"verdict": "ham", "score": -0.1}
    assert inbound.attachments[3].content == FORWARDED
    assert "RawEmail" not in inbound.payload["provider"]


async def test_attachments_keep_an_attached_message_a_windows_name_and_inline_marks() -> None:
    """Base64 attachments: a message/rfc822 keeps its bytes and bare type, a Windows path its base name, a
    ContentID marks the file inline."""
    data = load("postmark/inbound.json")
    data["Attachments"] = [
        {"Name": "C:\\Users\\asha\\forwarded.eml", "Content": base64.b64encode(FORWARDED).decode(),
         "ContentType": 'message/rfc822; charset="us-ascii"', "ContentLength": len(FORWARDED), "ContentID": ""},
        {"Name": "logo.png", "Content": base64.b64encode(LOGO).decode(), "ContentType": "image/png",
         "ContentLength": len(LOGO), "ContentID": "logo@asha"},
    ]
    [inbound] = await run(data)
    forwarded, logo = inbound.payload["attachments"]
    assert {k: forwarded[k] for k in ("name", "content_type", "charset", "inline")} == \
        {"name": "forwarded.eml", "content_type": "message/rfc822", "charset": "us-ascii", "inline": False}
    assert inbound.attachments[0].content == FORWARDED
    assert logo["inline"] is True


@pytest.mark.parametrize(("data", "code"), [
    # a Delivery webhook pointed at the inbound URL (Postmark's documented example)
    ({"RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound", "MessageID":
      "00000000-0000-0000-0000-000000000000", "Recipient": "john@example.com", "Tag": "welcome-email",
      "DeliveredAt": "2019-11-05T16:33:54.9070259Z", "Details": "Test delivery webhook details",
      "Metadata": {"example": "value"}}, "delivery"),
    ({"RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce", "Email": "a@b.c"}, "bounce"),
    ({"RecordType": "SomethingNew"}, "other"),
])
async def test_other_record_types_are_not_messages(data: dict[str, Any], code: str) -> None:
    """A Postmark post of another RecordType is answered 200 and counted by its type, never parsed."""
    early = await run(data)
    assert isinstance(early, Intercepted)
    assert (early.outcome, early.code, early.response.status) == ("ignored", f"not_a_message:{code}", 200)


async def test_the_dashboard_check_is_answered_200() -> None:
    """The "Check" button's sample (attachments carrying `Data`, not `Content`) is answered 200, not a 400."""
    data = load("postmark/inbound.json")
    data["Attachments"] = [{"Name": "test.txt", "Data": "VGhpcyBpcyBhdHRhY2htZW50IGNvbnRlbnRzLCBiYXNlLTY0IGVuY29kZWQu",
                            "ContentType": "text/plain", "ContentLength": 45}]
    early = await run(data)
    assert isinstance(early, Intercepted)
    assert (early.code, early.response.status) == ("not_a_message:check", 200)


@pytest.mark.parametrize("name", ['M" <ceo@corp.example>', 'M\\" <ceo@corp.example>', 'M\\', '"<ceo@corp.example>"',
                                  "M (<ceo@corp.example>", 'M", <ceo@corp.example>, "x'])
def test_a_name_holding_quotes_and_an_address_is_only_a_name(name: str) -> None:
    """FromFull, ToFull and CcFull are Postmark's decoded reading of the headers: a name holding a quote and an
    address stays the name of the mailbox Postmark read, never makes another (the reply of a stranger named
    `M" <ceo@corp.example>` is his, not the CEO's)."""
    data = load("postmark/inbound.json")
    data["FromFull"] = {"Email": "attacker@evil.example", "Name": name, "MailboxHash": ""}
    data["ToFull"] = [{"Email": "support@acme.test", "Name": name, "MailboxHash": ""}]
    data["CcFull"] = [{"Email": "ops@acme.test", "Name": name, "MailboxHash": ""}]
    [inbound] = build("postmark").parse(post(JSON), compact(data))
    payload = inbound.payload
    assert (payload["from"], payload["from_name"]) == ("attacker@evil.example", name)
    assert (payload["to"], payload["to_names"]) == (["support@acme.test"], [name])
    assert (payload["cc"], payload["cc_names"]) == (["ops@acme.test"], [name])
