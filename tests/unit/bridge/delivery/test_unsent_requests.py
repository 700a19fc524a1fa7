"""bridge/delivery: a request that cannot go out (a header no HTTP request can carry) is recorded as not sent, never
as an unknown outcome; a crash while classifying an answer whose status alone decides is recorded by that status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
from aiohttp import web

from bridge.config import RetryConfig
from bridge.delivery.dispatcher import Destination
from bridge.vendors.base import Outcome
from bridge.vendors.http import HttpAdapter, HttpOptions
from tests.unit.bridge.delivery.test_dispatcher import RecordingStore, eventually, running
from tests.unit.bridge.delivery.test_unknown_outcomes import in_doubt


async def vendor(aiohttp_server: Any, *, status: int = 201, token: str = "tok") -> tuple[str, list[str]]:
    """A vendor at a real server (aiohttp writes the request's bytes itself): its base URL and the paths asked."""
    asked: list[str] = []

    async def tickets(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"id": "T-1"}, status=status)

    async def oauth(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"access_token": token, "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/tickets", tickets)
    app.router.add_get("/search", tickets)
    app.router.add_post("/oauth/token", oauth)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), asked


def http_destination(base: str, on_unknown: str, **options: Any) -> Destination:
    cfg = msgspec.convert({"vendor": "http", "base_url": base, "path": "/tickets", "on_unknown": on_unknown,
                           "headers": {"X-Api-Key": "key"}, "timeout_seconds": 5.0, **options}, HttpOptions)
    cfg.retry = RetryConfig(schedule=["30s", "5m"], jitter=0)
    return Destination.from_config("api", cfg, base)


@pytest.mark.parametrize("on_unknown", ["hold", "resend"])
async def test_a_header_no_request_can_carry_is_not_sent_and_not_in_doubt(aiohttp_server: Any,
                                                                          on_unknown: str) -> None:
    """A header value with a newline (a secret file's trailing newline that reached the destination) makes no request:
    the attempt is a permanent failure that says it was not sent and names the header, never an unknown outcome
    (held in doubt, or resent as a possible duplicate), and the secret is not in the error."""
    base, asked = await vendor(aiohttp_server)
    dest = http_destination(base, on_unknown)
    assert isinstance(dest.config, HttpOptions)
    dest.config.headers["X-Api-Key"] = "s3cret-key\n"
    store = RecordingStore()
    delivery_id = await store.add("api")
    async with running(store, dest):
        await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.classification, result.next_status, result.duplicate) == ("permanent", "dead", False)
    assert result.error is not None and result.error.startswith("not sent: ")
    assert "X-Api-Key" in result.error and "ends with a newline" in result.error
    assert "s3cret" not in result.error
    assert store.deliveries[delivery_id].row.in_doubt_since_ms is None
    assert asked == []


async def test_a_resend_that_cannot_go_out_counts_no_duplicate(aiohttp_server: Any) -> None:
    """A delivery in doubt under `on_unknown: resend` whose request cannot be written is no possible duplicate."""
    base, asked = await vendor(aiohttp_server)
    dest = http_destination(base, "resend")
    assert isinstance(dest.config, HttpOptions)
    dest.config.headers["X-Api-Key"] = "key\r\nX-Injected: 1"
    store = RecordingStore()
    delivery_id = await in_doubt(store, to="api", body={"title": "t"})
    async with running(store, dest):
        await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.classification, result.duplicate) == ("permanent", False)
    assert store.deliveries[delivery_id].row.duplicates == 0
    assert asked == []


async def test_a_reconciliation_whose_look_up_cannot_go_out_says_so(aiohttp_server: Any) -> None:
    """A reconciliation's look-up with such a header is not sent either: the attempt says why, naming the header,
    rather than an internal error."""
    base, asked = await vendor(aiohttp_server)
    dest = http_destination(base, "reconcile", lookup={"path": "/search?ref={title}", "ticket_id_path": "id"})
    assert isinstance(dest.config, HttpOptions)
    dest.config.headers["X-Api-Key"] = "key\n"
    store = RecordingStore()
    await in_doubt(store, to="api", body={"title": "t"})
    async with running(store, dest):
        await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert result.classification == "permanent"
    assert result.error is not None and "internal error" not in result.error
    assert "not sent: " in result.error and "X-Api-Key" in result.error
    assert asked == []


async def test_an_access_token_with_a_newline_is_an_auth_failure_naming_it(aiohttp_server: Any) -> None:
    """An OAuth2 token endpoint answering an access_token with CR/LF in it is refused as the credentials' failure
    (auth, dead, not in doubt), the error naming `access_token`; no request is sent with it."""
    base, asked = await vendor(aiohttp_server, token="tok-abc\r\nX-Injected: 1")
    dest = http_destination(base, "hold", auth={"oauth2": {"token_url": "/oauth/token", "client_id": "c",
                                                           "client_secret": "s"}})
    store = RecordingStore()
    delivery_id = await store.add("api")
    async with running(store, dest):
        await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.classification, result.next_status) == ("auth", "dead")
    assert result.error is not None and "access_token" in result.error and "tok-abc" not in result.error
    assert store.deliveries[delivery_id].row.in_doubt_since_ms is None
    assert asked == ["/oauth/token"]


class CrashingClassifier(HttpAdapter):
    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        raise KeyError("boom")


@pytest.mark.parametrize(("status", "classification", "next_status"), [
    (503, "retry", "pending"), (401, "auth", "dead"), (200, "unknown", "dead")])
async def test_a_crash_classifying_an_answer_its_status_decides_is_recorded_by_its_status(
        aiohttp_server: Any, status: int, classification: str, next_status: str) -> None:
    """The adapter crashing on an answer whose status alone says the vendor did not act (5xx, 401) records what
    the status says; on any other answer (a 2xx that may have made the ticket) the outcome stays unknown."""
    base, _ = await vendor(aiohttp_server, status=status)
    dest = http_destination(base, "hold")
    dest.adapter = CrashingClassifier("api", dest.config, base)
    store = RecordingStore()
    delivery_id = await store.add("api")
    async with running(store, dest):
        await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.classification, result.next_status, result.http_status if status != 200 else None) == (
        classification, next_status, status if status != 200 else None)
    assert "KeyError" in (result.error or "")
    in_doubt_since = store.deliveries[delivery_id].row.in_doubt_since_ms
    assert (in_doubt_since is not None) == (classification == "unknown")
