"""handlers/postal.py: Postal HTTP endpoints, signed with the server's RSA key (X-Postal-Signature)."""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any, cast

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge import offload
from bridge.errors import Rejected
from bridge.intake import offloaded, run_handler
from bridge.runtime import Runtime, Source
from handlers.base import Intercepted
from handlers.postal import PostalHandler
from tests.fixtures.providers import (
    ASHA_EMAIL,
    ENVELOPE,
    JPEG,
    build,
    compact,
    load,
    passes,
    post,
    postal_headers,
    postal_key,
    postal_public_key,
    without_provider,
)


def handler(public_key: str | None = None) -> PostalHandler:
    h: PostalHandler = build("postal", public_key=postal_public_key() if public_key is None else public_key)
    return h


def test_kind_and_channel() -> None:
    """Postal is kind `postal` on the `email` channel."""
    assert (PostalHandler.kind, PostalHandler.channel) == ("postal", "email")


@pytest.mark.parametrize("fixture", ["postal/raw.json", "postal/hash.json"])
def test_signed_message_verifies_and_normalises(fixture: str) -> None:
    """A signed post verifies; the raw (base64 `message`) and the parsed-fields formats give one shape."""
    body = compact(load(fixture))
    h, req = handler(), post(postal_headers(body))
    h.verify(req, body)
    assert asyncio.run(h.intercept(req, body)) is None
    [inbound] = h.parse(req, body)
    spam = {"verdict": "ham", "score": None} if "spam_status" in load(fixture) else None  # NotSpam in hash.json
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE, "spam": spam}
    assert inbound.attachments[0].content == JPEG
    assert inbound.dedup_key == "<CAF=asha.1@mail.example.com>"
    assert "message" not in inbound.payload["provider"]


def test_sha256_signature_is_checked_when_sent() -> None:
    """A newer server's X-Postal-Signature-256 is checked instead of the SHA-1 one, and must match."""
    body = compact(load("postal/raw.json"))
    headers = postal_headers(body, sha256=True)
    assert passes(lambda: handler().verify(post(headers), body))
    broken = {**headers, "X-Postal-Signature-256": headers["X-Postal-Signature"]}
    assert not passes(lambda: handler().verify(post(broken), body))


@pytest.mark.parametrize("header", ["X-Postal-Signature", "X-Postal-Signature-256"])
def test_empty_signature_header_is_named(header: str) -> None:
    """An empty signature header is a 401 naming that header, the SHA-256 one when it is the one sent."""
    body = compact(load("postal/raw.json"))
    with pytest.raises(Rejected) as info:
        handler().verify(post({header: " "}), body)
    assert (info.value.status, info.value.check) == (401, "signature")
    assert f"{header} is missing or empty" in str(info.value)


@pytest.mark.parametrize("change", ["other_key", "other_body", "not_base64", "missing", "huge"])
def test_forged_signature_is_401(change: str) -> None:
    """A signature by another key, over another body, unreadable, missing or oversized is refused."""
    body = compact(load("postal/raw.json"))
    headers = postal_headers(body)
    if change == "other_key":
        headers = postal_headers(body, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif change == "other_body":
        body += b" "
    elif change == "not_base64":
        headers["X-Postal-Signature"] = "%%%"
    elif change == "missing":
        del headers["X-Postal-Signature"]
    else:
        headers["X-Postal-Signature"] = "A" * 4096
    with pytest.raises(Rejected) as info:
        handler().verify(post(headers), body)
    assert (info.value.status, info.value.check) == (401, "signature")


def test_public_key_may_be_a_pem() -> None:
    """The key is taken as the DNS record's base64 DER, with or without `p=`, or as a PEM."""
    pem = postal_key().public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    body = compact(load("postal/raw.json"))
    for key in (pem, "p=" + postal_public_key() + ";"):
        assert passes(lambda k=key: handler(k).verify(post(postal_headers(body)), body))  # type: ignore[misc]


@pytest.mark.parametrize("value", ["not a key", "c2hvcnQ="])
def test_unreadable_public_key_is_a_config_error(value: str) -> None:
    """A public_key that is not an RSA key is refused when the config loads."""
    with pytest.raises(msgspec.ValidationError, match="public_key"):
        handler(value)


def test_empty_public_key_says_to_set_it_from_the_environment() -> None:
    """An empty public_key (an unset environment variable) is refused, naming the variable to set."""
    with pytest.raises(msgspec.ValidationError, match=r"`public_key` is empty: .* \$\{POSTAL_PUBLIC_KEY\}"):
        handler("")


@pytest.mark.parametrize("data", [
    {"event": "MessageSent", "payload": {"message": {"id": 1}}, "uuid": "b8e8f3d2"},
    {"id": 1, "rcpt_to": "support@acme.test"},
])
def test_event_webhooks_and_empty_posts_are_ignored(data: dict[str, Any]) -> None:
    """A message-event webhook, or a post with no message, is answered as ignored."""
    body = compact(data)
    answer = asyncio.run(handler().intercept(post(postal_headers(body)), body))
    assert isinstance(answer, Intercepted) and answer.outcome == "ignored"
    assert answer.code.startswith("not_a_message:") and answer.response.status == 200


def test_spam_status_marks_the_event_as_spam() -> None:
    """Postal's `spam_status: Spam` marks the event as spam, and the payload's `spam` carries the verdict and
    Postal's score when it sends one."""
    data = load("postal/hash.json")
    data["spam_status"] = "Spam"
    data["spam_score"] = 5.1
    body = compact(data)
    [inbound] = handler().parse(post(postal_headers(body)), body)
    assert inbound.spam is True
    assert inbound.payload["spam"] == {"verdict": "spam", "score": 5.1}


def with_parts(raw: bytes, count: int) -> bytes:
    """`raw` (a multipart/mixed message on boundary b1) with `count` more text parts."""
    extra = b"".join(b"--b1\r\nContent-Type: text/plain\r\n\r\nlog line\r\n" for _ in range(count))
    head, _, tail = raw.rpartition(b"--b1--")
    return head + extra + b"--b1--" + tail


@pytest.mark.parametrize(("parts", "off"), [(0, False), (offload.LOOP_MIME_LINES, True)], ids=["few", "many"])
async def test_a_base64_message_is_parsed_where_its_parts_place_it(monkeypatch: pytest.MonkeyPatch, parts: int,
                                                                   off: bool) -> None:
    """Base64 hides the raw message's MIME parts from intake's look at the body: it is parsed on the loop while its
    decoded parts are few, else again in the parser thread (the one thread for every large parse), as every
    provider's is; never in a thread of its own, which no bound on the parses at once would hold."""
    threads: list[str] = []
    original = PostalHandler._inbounds

    def recorded(data: dict[str, Any]) -> list[Any]:
        threads.append(threading.current_thread().name)
        return original(data)

    monkeypatch.setattr(PostalHandler, "_inbounds", staticmethod(recorded))
    data = load("postal/raw.json")
    data["message"] = base64.b64encode(with_parts(base64.b64decode(data["message"]), parts)).decode()
    body = compact(data)
    assert not offloaded(body)  # a small body: its look alone would parse it on the loop
    request = post({"Content-Type": "application/json"})
    handled = await run_handler(cast(Runtime, None), Source("postal", handler(), None, 0.0), request, body,
                                verify=False)
    assert not isinstance(handled, Intercepted)
    assert handled[0][0].payload["message_id"] == "<CAF=asha.1@mail.example.com>"
    loop = threading.current_thread().name
    if off:  # begun on the loop, stopped at the decoded message's parts, and parsed again in the parser thread
        assert threads[0] == loop and threads[1].startswith("ticketbridge-parse") and len(threads) == 2, threads
    else:
        assert threads == [loop]
