"""What an ignored post's reason says of the provider's event name: the name itself when it looks like one, else
only its type and size. The reason is logged (`intake.ignored`) and sent back, and a cut of request text there
can leave a local part the log's email mask no longer recognises."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import pytest

from handlers.base import Intercepted, named
from tests.fixtures.providers import build, compact, post, postal_public_key

HOSTILE = "inbound.messageReturn-Path: <asha.rao@example.com>"
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# kind, options, the post naming `name` as its event, record or update type
POSTS: dict[str, tuple[dict[str, Any], Any]] = {
    "mailersend": ({"secret": "s"}, lambda name: {"type": name, "data": {}}),
    "resend": ({"secret": "whsec_cmVzZW5k", "api_key": "re_1"}, lambda name: {"type": name, "data": {}}),
    "postal": ({"public_key": postal_public_key()}, lambda name: {"event": name, "payload": {}}),
    "brevo": ({}, lambda name: {"event": name, "email": "x"}),
    "postmark": ({}, lambda name: {"RecordType": name}),
    "slack": ({"signing_secret": "s"}, lambda name: {"type": name}),
    "tally": ({"secret": "s"}, lambda name: {"eventType": name}),
    "typeform": ({"secret": "s"}, lambda name: {"event_type": name}),
    "webflow": ({"secret": "s"}, lambda name: {"triggerType": name}),
    "telegram": ({"secret_token": "t"}, lambda name: {"update_id": 1, name: {}}),
    "mailgun": ({"signing_key": "k"}, lambda name: {"event": name}),
    "twilio": ({"auth_token": "t"}, lambda name: {"MessageStatus": name}),
}


def reason(kind: str, name: str) -> str:
    options, make = POSTS[kind]
    data = make(name)
    form = kind in ("mailgun", "twilio")
    body = urlencode(data).encode() if form else compact(data)
    answer = asyncio.run(build(kind, **options).intercept(post(FORM if form else JSON), body))
    assert isinstance(answer, Intercepted) and answer.outcome == "ignored", answer
    return answer.reason


@pytest.mark.parametrize("kind", sorted(POSTS))
def test_a_name_that_is_not_an_event_name_is_told_by_its_size_only(kind: str) -> None:
    """A provider's event name holding spaces, `<`, `@` (text of a message, pasted or forged) is not echoed, not
    even cut: the reason says how long it is."""
    said = reason(kind, HOSTILE)
    assert "asha" not in said and "Return-Path" not in said and "inbound.message" not in said, said
    assert f"{len(HOSTILE)} characters" in said, said


@pytest.mark.parametrize("kind", sorted(POSTS))
def test_an_event_name_is_quoted(kind: str) -> None:
    """An ordinary event name is named in the reason, quoted."""
    assert "'activity.sent'" in reason(kind, "activity.sent")


@pytest.mark.parametrize(("value", "said"), [
    ("email.delivered", "'email.delivered'"), ("MessageLinkClicked", "'MessageLinkClicked'"),
    ("a" * 64, repr("a" * 64)), ("a" * 65, "<text of 65 characters>"), ("", "<text of 0 characters>"),
    ("asha.rao@example.com", "<text of 20 characters>"), ("ev\nx", "<text of 4 characters>"),
    ("évènement", "<text of 9 characters>"), (None, "<none>"), (True, "<a JSON boolean>"), (1e308, "<a JSON number>"),
    ({"a": 1}, "<a JSON object>"), ([1], "<a JSON array>"),
])
def test_named_quotes_names_and_describes_anything_else(value: Any, said: str) -> None:
    """`named` quotes up to 64 ASCII letters, digits and `_.:/-`, and gives any other value's type and size."""
    assert named(value) == said
