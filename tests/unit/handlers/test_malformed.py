"""Every JSON provider on bodies of the wrong shape: each value of its fixture swapped for another JSON type
gives events, an ignored answer, or a 400 naming the problem, never an exception the intake turns into a 500."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.errors import Rejected
from tests.fixtures.providers import build, compact, load, post, postal_public_key

OPTIONS: dict[str, dict[str, Any]] = {
    "cloudmailin": {}, "postmark": {}, "typeform": {"secret": "s"}, "tally": {"secret": "s"},
    "webflow": {"secret": "s"}, "whatsapp": {"app_secret": "a", "verify_token": "v"},
    "slack": {"signing_secret": "s"}, "telegram": {"secret_token": "t"}, "intercom": {"secret": "s"},
    "ses": {"topic_arns": ["arn:aws:sns:eu-west-1:123456789012:inbound"]},
    "brevo": {}, "mailjet": {}, "sparkpost": {}, "mailersend": {"secret": "s"},
    "postal": {"public_key": postal_public_key()},
}
FIXTURES = [
    ("cloudmailin", "cloudmailin/normalized.json"), ("postmark", "postmark/inbound.json"),
    ("typeform", "typeform/form_response.json"), ("tally", "tally/form_response.json"),
    ("webflow", "webflow/form_submission.json"), ("whatsapp", "whatsapp/messages.json"),
    ("slack", "slack/message.json"), ("telegram", "telegram/message.json"), ("telegram", "telegram/photo.json"),
    ("intercom", "intercom/conversation_replied.json"), ("ses", "ses/received.json"),
    ("brevo", "brevo/inbound.json"), ("mailjet", "mailjet/parse.json"), ("sparkpost", "sparkpost/relay.json"),
    ("mailersend", "mailersend/inbound.json"), ("postal", "postal/hash.json"),
]
# Raw MIME, not JSON: parsed by the email package, and slow to re-parse for each changed value.
RAW_MIME: dict[str, tuple[Any, ...]] = {
    "ses": ("content",), "mailersend": ("data", "raw"), "sparkpost": (0, "msys", "relay_message", "content",
                                                                      "email_rfc822"),
}
# not iterable; not a container; lists and objects are unhashable; a digit to isdigit() but not to int(); more
# digits than int() reads
WRONG: list[Any] = [1, "x", [[1]], {"a": 1}, "²", "9" * 5000]


def paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value inside `value` (not `value` itself)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield (*path, key)
        yield from paths(child, (*path, key))


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def body_for(kind: str, data: Any) -> bytes:
    if kind == "ses":  # the SES notification travels as text inside the SNS envelope
        return compact({**load("ses/sns_notification.json"), "Message": json.dumps(data)})
    return compact(data)


async def outcome(handler: Any, body: bytes) -> str | None:
    """None when the handler answered as it should; else the exception that escaped."""
    kind, request = handler.kind, post({"Content-Type": "application/json"})
    try:
        if kind == "ses" or await handler.intercept(request, body) is None:  # SES's intercept checks the signature
            handler.parse(request, body)
    except Rejected as exc:
        return None if exc.status == 400 else f"Rejected({exc.status}): {exc}"
    except Exception as exc:  # the point: nothing else escapes
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.mark.parametrize(("kind", "fixture"), FIXTURES)
async def test_values_of_the_wrong_type_never_escape_as_exceptions(kind: str, fixture: str) -> None:
    """Each value of the fixture, replaced by each other JSON type in turn, is read or refused with a 400."""
    data, handler = load(fixture), build(kind, **OPTIONS[kind])
    if kind in RAW_MIME:
        *parents, last = RAW_MIME[kind]
        target = data
        for key in parents:
            target = target[key]
        del target[last]
    failures = []
    for path in paths(data):
        for value in WRONG:
            problem = await outcome(handler, body_for(kind, replaced(data, path, value)))
            if problem is not None:
                failures.append(f"{'.'.join(map(str, path))} = {value!r}: {problem}")
    assert failures == [], f"{len(failures)} bodies escaped, e.g. {failures[:5]}"
