"""handlers/mailgun.py: Mailgun routes, signed with HMAC-SHA256(signing key, timestamp + token)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest

from bridge.errors import Rejected
from handlers.base import Intercepted
from handlers.mailgun import MailgunHandler, MailgunOptions
from tests.fixtures.providers import (
    ASHA_EMAIL,
    ENVELOPE,
    FORWARDED,
    JPEG,
    LOGO,
    MAILGUN_TOKEN,
    NOW,
    PROVIDER_REPORTED,
    REPORT,
    THREAD_EMAIL,
    build,
    mailgun_fields,
    mailgun_mime,
    mailgun_multipart,
    message_shape,
    multipart,
    passes,
    post,
    without_provider,
)

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}


def handler() -> MailgunHandler:
    h: MailgunHandler = build("mailgun", signing_key=KEY)
    return h


def rejected(fields: dict[str, str]) -> Rejected:
    body = urlencode(fields).encode()
    with pytest.raises(Rejected) as info:
        handler().verify(post(URLENCODED), body)
    assert info.value.status == 401
    return info.value


def test_kind_and_channel() -> None:
    """Mailgun is kind `mailgun` on the `email` channel."""
    assert (MailgunHandler.kind, MailgunHandler.channel) == ("mailgun", "email")


def test_signed_urlencoded_post_verifies_and_parses() -> None:
    """A route post signed with the signing key verifies and normalises to the email shape."""
    body = urlencode(mailgun_fields(KEY)).encode()
    h, req = handler(), post(URLENCODED)
    h.verify(req, body)
    [inbound] = h.parse(req, body)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE, "attachments": []}
    assert inbound.payload["provider"]["recipient"] == "support@acme.test"


def test_multipart_post_carries_the_attachment() -> None:
    """With attachments (multipart), each file's content travels with its metadata."""
    body, ctype = mailgun_multipart(KEY)
    h, req = handler(), post({"Content-Type": ctype})
    h.verify(req, body)
    [inbound] = h.parse(req, body)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE}
    [item] = inbound.attachments
    assert item.content == JPEG
    assert item.meta is inbound.payload["attachments"][0]
    assert "attachment-1" not in inbound.payload["provider"]


def test_dedup_key_is_the_message_id_else_the_token() -> None:
    """The Message-Id header names the event; without one, Mailgun's token does."""
    body = urlencode(mailgun_fields(KEY)).encode()
    assert handler().parse(post(URLENCODED), body)[0].dedup_key == "<CAF=asha.1@mail.example.com>"
    fields = {k: v for k, v in mailgun_fields(KEY, token="tok-1").items()
              if k not in ("message-headers", "Message-Id")}
    assert handler().parse(post(URLENCODED), urlencode(fields).encode())[0].dedup_key == "tok-1"


@pytest.mark.parametrize("key", ["key-other", KEY + "x"])
def test_signature_with_another_key_is_401(key: str) -> None:
    """A signature made with another key is refused by the signature check."""
    err = rejected(mailgun_fields(key))
    assert err.check == "signature"


def test_tampered_token_is_401() -> None:
    """Changing the token after signing breaks the signature."""
    fields = mailgun_fields(KEY)
    fields["token"] = fields["token"][:-1] + "1"
    assert rejected(fields).check == "signature"


@pytest.mark.parametrize("missing", ["signature", "token", "timestamp"])
def test_missing_signature_fields_are_401(missing: str) -> None:
    """A post without its token, signature or timestamp is refused."""
    fields = mailgun_fields(KEY)
    del fields[missing]
    assert rejected(fields).check in ("signature", "timestamp")


@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_or_future_timestamp_is_401(offset: int) -> None:
    """A correctly signed post whose timestamp is over 5 minutes away is refused as a replay."""
    err = rejected(mailgun_fields(KEY, timestamp=NOW + offset))
    assert err.check == "timestamp"


def test_tolerance_is_configurable() -> None:
    """With `tolerance: 1h`, a post 10 minutes old is taken, and one two hours old is not."""
    h: MailgunHandler = build("mailgun", signing_key=KEY, tolerance="1h")
    assert passes(lambda: h.verify(post(URLENCODED), urlencode(mailgun_fields(KEY, timestamp=NOW - 600)).encode()))
    assert not passes(lambda: h.verify(post(URLENCODED),
                                       urlencode(mailgun_fields(KEY, timestamp=NOW - 7200)).encode()))


def test_xml_is_415() -> None:
    """A body that is neither a form nor JSON is refused by content type (intake checks it before verify)."""
    with pytest.raises(Rejected) as info:
        handler().check_content_type(post({"Content-Type": "application/xml"}))
    assert info.value.status == 415
    assert info.value.check == "content_type"


def event_webhook(key: str = KEY, data: dict[str, Any] | None = None) -> bytes:
    """Mailgun's event webhook body: the signature object beside `event-data` (its documented sample)."""
    signed = {k: v for k, v in mailgun_fields(key).items() if k in ("timestamp", "token", "signature")}
    return msgspec.json.encode({"signature": signed, "event-data": data or {
        "event": "delivered", "id": "CPgfbmQMTCKtHW6uIWtuVe", "timestamp": 1521472262.908181,
        "recipient": "alice@example.com",
        "message": {"headers": {"message-id": "20130503182626.18666.16540@acme.test"}}}})


async def test_a_signed_event_webhook_is_not_a_message() -> None:
    """A JSON event webhook pointed at the route's URL is verified like a route post, then answered 200 under
    `not_a_message:tracking`, never parsed."""
    early = await run(event_webhook(), "application/json")
    assert isinstance(early, Intercepted)
    assert (early.code, early.response.status) == ("not_a_message:tracking", 200)
    assert "delivered" in early.reason


def test_a_forged_event_webhook_is_401() -> None:
    """The event webhook's signature is checked as a route post's: another key is refused."""
    with pytest.raises(Rejected) as info:
        handler().verify(post({"Content-Type": "application/json"}), event_webhook("key-other"))
    assert info.value.status == 401


async def test_other_json_is_415() -> None:
    """Signed JSON without `event-data` is not what a route posts: 415 naming what is taken."""
    signed = {k: v for k, v in mailgun_fields(KEY).items() if k in ("timestamp", "token", "signature")}
    with pytest.raises(Rejected) as info:
        await run(msgspec.json.encode({"signature": signed}), "application/json")
    assert info.value.status == 415


@pytest.mark.parametrize(("options", "reason"), [
    ({}, "missing required field `signing_key`"),
    ({"signing_key": ""}, "`signing_key` is empty"),
    ({"signing_key": "k", "secret": "x"}, "unknown field `secret`"),
    ({"signing_key": "k", "tolerance": "later"}, "not a duration"),
])
def test_invalid_options(options: dict[str, str], reason: str) -> None:
    """A missing or empty signing key, a bad tolerance or another kind's option is refused."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert({"kind": "mailgun", **options}, MailgunOptions)


def test_the_signed_token_is_the_nonce_until_the_timestamp_leaves_the_tolerance() -> None:
    """The token is what a replay with another body would reuse: it is handed to intake as the nonce, valid for
    as long as the signed timestamp stays within the tolerance."""
    body = urlencode(mailgun_fields(KEY, timestamp=NOW - 100)).encode()
    h, req = handler(), post(URLENCODED)
    h.verify(req, body)
    nonce = h.nonce(req, body)
    assert nonce is not None
    assert (nonce.value, nonce.name, nonce.valid_for_s) == (MAILGUN_TOKEN, "Mailgun `token`", 200.0)


# -- raw MIME, attachments intact, notifications that are not messages ---------------------------------------


async def run(body: bytes, ctype: str) -> Any:
    """verify, intercept, then (when not intercepted) parse, as intake does."""
    h, req = handler(), post({"Content-Type": ctype})
    h.verify(req, body)
    early = await h.intercept(req, body)
    return early if early is not None else h.parse(req, body)


async def test_body_mime_is_parsed_and_wins() -> None:
    """A route forwarding `body-mime` gives the message's own headers, bodies and attachments, the attached
    message stored as its exact bytes."""
    [inbound] = await run(*mailgun_mime(KEY))
    assert message_shape(inbound.payload) == THREAD_EMAIL
    assert {k: inbound.payload[k] for k in PROVIDER_REPORTED} == {**ENVELOPE, "spam": None}
    assert inbound.attachments[3].content == FORWARDED
    assert "body-mime" not in inbound.payload["provider"]


async def test_form_post_keeps_an_attached_message_whole_and_a_windows_name() -> None:
    """Files of a form post: a message/rfc822 part keeps its exact bytes, a Windows path gives its base name, a
    blank name gets one from its place and type, and a file in `content-id-map` is inline."""
    fields = {**mailgun_fields(KEY), "content-id-map": '{"<logo@asha>": "attachment-3"}'}
    body, ctype = multipart(fields, [
        ("attachment-1", "C:\\Users\\asha\\forwarded.eml", 'message/rfc822; charset="us-ascii"', FORWARDED),
        ("attachment-2", "", "application/pdf", REPORT),
        ("attachment-3", "\\\\share\\mail\\logo.png", "image/png", LOGO),
    ])
    [inbound] = await run(body, ctype)
    forwarded, report, logo = inbound.payload["attachments"]
    assert (forwarded["name"], forwarded["content_type"], forwarded["charset"]) == \
        ("forwarded.eml", "message/rfc822", "us-ascii")
    assert inbound.attachments[0].content == FORWARDED
    assert (report["name"], logo["name"], logo["inline"], forwarded["inline"]) == \
        ("attachment-2.pdf", "logo.png", True, False)


@pytest.mark.parametrize(("fields", "code"), [
    # store(notify=…): the message waits at Mailgun; the notice names it by URL
    ({"message-url": "https://storage.eu.mailgun.net/v3/domains/acme.test/messages/eyJwIjpmYWxzZX0=",
      "domain": "acme.test", "recipient": "support@acme.test", "sender": "asha.rao@example.com",
      "subject": "Re: Router down [#1042]", "attachments": "[]", "content-id-map": "{}"}, "stored"),
    # a legacy (form-posted) tracking webhook pointed at the inbound URL
    ({"event": "delivered", "recipient": "asha.rao@example.com", "domain": "acme.test",
      "Message-Id": "<20240603100500.1.ABC@acme.test>", "message-headers": "[]"}, "tracking"),
])
async def test_notifications_that_are_not_messages_are_answered_not_parsed(fields: dict[str, str], code: str) -> None:
    """Mailgun's stored-message notice and a legacy tracking event are answered 200, counted by their reason,
    and never parsed into an email."""
    signed = {**fields, **{k: v for k, v in mailgun_fields(KEY).items() if k in ("timestamp", "token", "signature")}}
    early = await run(urlencode(signed).encode(), URLENCODED["Content-Type"])
    assert isinstance(early, Intercepted)
    assert (early.outcome, early.code, early.response.status) == ("ignored", f"not_a_message:{code}", 200)
