"""handlers/resend.py: Resend's Svix-signed `email.received`, its content fetched from the Receiving API."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import msgspec
import pytest

from bridge.errors import Rejected
from bridge.intake import run_handler
from bridge.runtime import Runtime, Source
from handlers.base import Intercepted
from handlers.resend import ResendHandler
from tests.fixtures.providers import (
    ASHA_EMAIL,
    JPEG,
    NOW,
    RESEND_API,
    FakeResendApi,
    build,
    compact,
    load,
    passes,
    post,
    svix_headers,
    without_provider,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
API = RESEND_API
BODY = compact(load("resend/email_received.json"))
EMAIL_ID = "56761188-7520-42d8-8898-ff6fc54ce618"


def handler(api: FakeResendApi | None = None) -> tuple[ResendHandler, FakeResendApi]:
    h: ResendHandler = build("resend", secret=SECRET, api_key="re_123", api_url=API)
    fake = api or FakeResendApi()
    h.get = fake
    return h, fake


def run(h: ResendHandler, body: bytes = BODY) -> tuple[Intercepted | None, Any]:
    req = post(svix_headers(SECRET, body))
    h.verify(req, body)
    answer = asyncio.run(h.intercept(req, body))
    return answer, (h.parse(req, body) if answer is None else None)


def test_kind_and_channel() -> None:
    """Resend is kind `resend` on the `email` channel."""
    assert (ResendHandler.kind, ResendHandler.channel) == ("resend", "email")


def test_received_email_is_fetched_and_read_from_its_raw_message() -> None:
    """The event's email is fetched with the API key, then its raw message, which gives the email shape."""
    h, api = handler()
    _answer, [inbound] = run(h)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, "envelope_from": "asha.rao@example.com"}
    assert inbound.attachments[0].content == JPEG
    (url, headers, timeout, cap), (raw_url, raw_headers, _t, _c) = api.asked
    assert url == f"{API}/emails/receiving/{EMAIL_ID}"
    assert headers["Authorization"] == "Bearer re_123"
    assert (timeout, cap) == (10.0, h.server.max_body_bytes)
    assert raw_url.startswith("https://inbound-cdn.resend.com/") and raw_headers == {}
    assert inbound.dedup_key == "<CAF=asha.1@mail.example.com>"


def test_api_fields_serve_without_a_raw_download() -> None:
    """Without a raw download URL, the API's parsed fields give the shape, and each attachment is fetched
    through the attachments API and the download URL it gives."""
    api = FakeResendApi()
    del api.email["raw"]
    h, _ = handler(api)
    _answer, [inbound] = run(h)
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, "envelope_from": "asha.rao@example.com"}
    assert inbound.attachments[0].content == JPEG
    attachment_id = api.email["attachments"][0]["id"]
    assert [url for url, *_ in api.asked][1:] == [
        f"{API}/emails/receiving/{EMAIL_ID}/attachments/{attachment_id}",
        f"https://inbound-cdn.resend.com/files/{attachment_id}?signature=x"]


def test_failed_attachment_download_is_503() -> None:
    """Without a raw message, an attachment whose download fails is a 503 like any fetch."""
    api = FakeResendApi(fail="/files/")
    del api.email["raw"]
    h, _ = handler(api)
    with pytest.raises(Rejected) as info:
        run(h)
    assert (info.value.status, info.value.check) == (503, "fetch")


@pytest.mark.parametrize("where", [API, "inbound-cdn"])
def test_fetch_failure_is_503(where: str) -> None:
    """When the API or the raw download fails, the request is a 503 and nothing is parsed."""
    h, _ = handler(FakeResendApi(fail=where))
    with pytest.raises(Rejected) as info:
        run(h)
    assert (info.value.status, info.value.check) == (503, "fetch")
    assert EMAIL_ID in str(info.value)


def test_other_event_types_are_ignored_without_a_fetch() -> None:
    """A sending event posted to the inbound source is answered as ignored, and nothing is fetched."""
    h, api = handler()
    answer, _ = run(h, compact({"type": "email.delivered", "data": {"email_id": EMAIL_ID}}))
    assert isinstance(answer, Intercepted) and answer.outcome == "ignored"
    assert answer.code.startswith("not_a_message:") and answer.response.status == 200
    assert api.asked == []


def test_event_without_an_email_id_is_400() -> None:
    """An email.received event with no email_id cannot be fetched: 400."""
    h, _ = handler()
    with pytest.raises(Rejected) as info:
        run(h, compact({"type": "email.received", "data": {}}))
    assert info.value.status == 400


def test_forged_or_stale_signature_is_401() -> None:
    """The Svix signature is checked as for any standard-webhooks sender, timestamp included."""
    h, _ = handler()
    assert not passes(lambda: h.verify(post(svix_headers("whsec_b3RoZXItc2VjcmV0", BODY)), BODY))
    assert not passes(lambda: h.verify(post(svix_headers(SECRET, BODY, timestamp=NOW - 301)), BODY))


def test_api_key_is_required() -> None:
    """A Resend source needs an API key to fetch the content."""
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="api_key"):
        build("resend", secret=SECRET, api_key="")


def test_the_signed_download_url_is_not_kept() -> None:
    """The raw download's signed URL is used, not stored with the event."""
    h, _ = handler()
    _answer, [inbound] = run(h)
    assert "raw" not in inbound.payload["provider"]["email"]
    assert "signature=" not in str(inbound.payload)


def test_api_url_that_is_not_http_is_refused() -> None:
    """An `api_url` without http(s):// is a config error showing Resend's own URL as the example."""
    with pytest.raises(msgspec.ValidationError, match=r"`api_url` 'api\.resend\.com' must be an http\(s\) URL, "
                                                      r"e\.g\. https://api\.resend\.com"):
        build("resend", secret=SECRET, api_key="re_123", api_url="api.resend.com")


def test_an_unchecked_request_fetches_nothing() -> None:
    """The playground with `verify` off marks the request unchecked: an unsigned body naming any email id must not
    have the API key fetch it. The event's own fields are read instead."""
    from handlers.base import skip_signatures

    h, api = handler()
    req = post({"Content-Type": "application/json"})
    skip_signatures(req)
    assert asyncio.run(h.intercept(req, BODY)) is None
    [inbound] = h.parse(req, BODY)
    assert api.asked == []
    assert inbound.payload["provider"]["email"] == {} and inbound.payload["text"] in (None, "")  # nothing fetched


@pytest.mark.parametrize(("large", "off"), [(False, False), (True, True)], ids=["small", "large"])
async def test_a_fetched_message_is_parsed_where_its_size_places_it(monkeypatch: pytest.MonkeyPatch, large: bool,
                                                                    off: bool) -> None:
    """The event is small, so its body alone would place the parse on the event loop; what was fetched for it
    decides instead: a raw message of megabytes is parsed in the parser thread (the one thread for every large
    parse), a small one on the loop."""
    threads: list[str] = []
    original = ResendHandler._inbounds

    def recorded(event: dict[str, Any], fetched: Any) -> list[Any]:
        threads.append(threading.current_thread().name)
        return original(event, fetched)

    monkeypatch.setattr(ResendHandler, "_inbounds", staticmethod(recorded))
    api = FakeResendApi()
    if large:
        api.message = api.message.replace(b"\r\n\r\n", b"\r\n\r\n" + b"the router blinks red\r\n" * 80_000, 1)
    h, _fake = handler(api)
    request = post(svix_headers(SECRET, BODY))
    handled = await run_handler(cast(Runtime, None), Source("resend", h, None, 0.0), request, BODY)
    assert not isinstance(handled, Intercepted)
    assert handled[0][0].payload["subject"] == ASHA_EMAIL["subject"]
    assert [name.startswith("ticketbridge-parse") for name in threads] == [off]

