"""handlers/brevo.py: Brevo inbound parsing, a batch of parsed messages in `items`."""

from __future__ import annotations

import asyncio
import copy
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import pytest

from bridge.errors import Rejected
from bridge.intake import run_handler
from bridge.runtime import Runtime, Source
from handlers.base import Intercepted
from handlers.brevo import BrevoHandler
from handlers.fetch import FetchFailed, TooLarge
from tests.fixtures.providers import ASHA_EMAIL, JPEG, build, compact, load, passes, post, without_provider

JSON = {"Content-Type": "application/json"}
BODY = compact(load("brevo/inbound.json"))
BREVO_EMAIL = {**ASHA_EMAIL, "envelope_from": "asha.rao@example.com", "spam": {"verdict": "unknown", "score": 0.3}}
"""Brevo reports the Return-Path (in its copy of the headers) and a SpamScore without a verdict."""


def test_kind_and_channel() -> None:
    """Brevo is kind `brevo` on the `email` channel."""
    assert (BrevoHandler.kind, BrevoHandler.channel) == ("brevo", "email")


def test_item_normalises_to_the_email_shape() -> None:
    """An item gives the email shape; Brevo's extracted reply is the stripped text."""
    [inbound] = build("brevo").parse(post(JSON), BODY)
    payload = without_provider(inbound.payload)
    assert payload.pop("attachments") == [{"name": "router.jpg", "content_type": "image/jpeg", "inline": False,
                                           "size": 35, "sha256": None, "stored": False,
                                           "reason": "held by Brevo: download it with its DownloadToken"}]
    assert payload == {k: v for k, v in BREVO_EMAIL.items() if k != "attachments"}
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
    assert answer.code.startswith("not_a_message:") and answer.response.status == 200


def test_payload_without_items_is_400() -> None:
    """A body that is not Brevo's shape is a 400 saying so."""
    with pytest.raises(Rejected) as info:
        asyncio.run(build("brevo").intercept(post(JSON), b'{"subject": "hello"}'))
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


@dataclass
class FakeBrevoApi:
    """Stands in for Brevo's inbound attachments API: the photo for any token; records what was asked."""

    status: str = "ok"
    asked: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    content: bytes = JPEG

    async def __call__(self, url: str, headers: dict[str, str], timeout_s: float, max_bytes: int) -> bytes:
        self.asked.append((url, headers))
        if self.status == "down":
            raise FetchFailed("HTTP 502")
        if self.status == "large":
            raise TooLarge(f"the answer is over {max_bytes} bytes")
        return self.content


def with_api(api: FakeBrevoApi) -> BrevoHandler:
    h: BrevoHandler = build("brevo", api_key="xkeysib-123", api_url="https://api.brevo.test/v3")
    h.get = api
    return h


@pytest.mark.parametrize(("size", "off"), [(len(JPEG), False), (128 * 1024, True)], ids=["small", "large"])
async def test_a_post_is_parsed_where_its_downloads_place_it(monkeypatch: pytest.MonkeyPatch, size: int,
                                                            off: bool) -> None:
    """The post is small, so its body alone would place the parse (each attachment hashed, the payload built) on
    the event loop; what was downloaded for it decides instead: large attachments, the parser thread."""
    threads: list[str] = []
    original = BrevoHandler._message

    def recorded(item: dict[str, Any], downloaded: dict[str, bytes | str]) -> Any:
        threads.append(threading.current_thread().name)
        return original(item, downloaded)

    monkeypatch.setattr(BrevoHandler, "_message", staticmethod(recorded))
    api = FakeBrevoApi(content=JPEG[:size] + b"\0" * (size - len(JPEG)))
    handled = await run_handler(cast(Runtime, None), Source("brevo", with_api(api), None, 0.0), post(JSON), BODY)
    assert not isinstance(handled, Intercepted)
    assert handled[0][0].attachments[0].content == api.content
    assert [name.startswith("ticketbridge-parse") for name in threads] == [off]


def test_with_an_api_key_attachments_are_downloaded() -> None:
    """With `api_key`, each attachment is downloaded by its DownloadToken before the event is made."""
    api = FakeBrevoApi()
    h, req = with_api(api), post(JSON)
    assert asyncio.run(h.intercept(req, BODY)) is None
    [inbound] = h.parse(req, BODY)
    assert without_provider(inbound.payload) == BREVO_EMAIL
    assert inbound.attachments[0].content == JPEG
    token = load("brevo/inbound.json")["items"][0]["Attachments"][0]["DownloadToken"]
    assert api.asked == [(f"https://api.brevo.test/v3/inbound/attachments/{token}", {"api-key": "xkeysib-123"})]


def test_failed_download_is_503() -> None:
    """A download that fails is a 503 naming the fetch: Brevo posts again."""
    with pytest.raises(Rejected) as info:
        asyncio.run(with_api(FakeBrevoApi("down")).intercept(post(JSON), BODY))
    assert (info.value.status, info.value.check) == (503, "fetch")


def test_attachment_over_the_cap_is_recorded_not_stored() -> None:
    """An attachment larger than the body cap is listed as not stored, with the reason."""
    h, req = with_api(FakeBrevoApi("large")), post(JSON)
    asyncio.run(h.intercept(req, BODY))
    [inbound] = h.parse(req, BODY)
    meta = inbound.payload["attachments"][0]
    assert meta["stored"] is False and meta["reason"].startswith("not downloaded: the answer is over")


def test_a_transactional_event_at_the_inbound_url_is_not_a_message() -> None:
    """A Brevo transactional webhook (`delivered`) posted to the inbound source is not a message: 200 under
    `not_a_message:event`, never parsed as an empty email."""
    event = {"event": "delivered", "email": "asha.rao@example.com", "id": 26224, "date": "2024-06-03 12:05:00",
             "message-id": "<202406031005.72431157123@smtp-relay.mailin.fr>", "ts_event": 1717409100}
    answer = asyncio.run(build("brevo").intercept(post(JSON), compact(event)))
    assert isinstance(answer, Intercepted)
    assert (answer.code, answer.response.status) == ("not_a_message:event", 200)


def test_api_url_that_is_not_http_is_refused() -> None:
    """An `api_url` without http(s):// is a config error showing Brevo's own URL as the example."""
    with pytest.raises(msgspec.ValidationError, match=r"`api_url` 'api\.brevo\.com/v3' must be an http\(s\) URL, "
                                                      r"e\.g\. https://api\.brevo\.com/v3"):
        build("brevo", api_key="xkeysib-123", api_url="api.brevo.com/v3")


def test_an_unchecked_request_downloads_nothing() -> None:
    """The playground with `verify` off marks the request unchecked: its DownloadTokens are not fetched with the
    API key; the attachments are listed as not downloaded."""
    from handlers.base import skip_signatures

    api = FakeBrevoApi()
    h, req = with_api(api), post(JSON)
    skip_signatures(req)
    assert asyncio.run(h.intercept(req, BODY)) is None
    [inbound] = h.parse(req, BODY)
    assert api.asked == []
    assert inbound.attachments[0].content is None
