"""bridge/delivery/sender.py: one attempt, with every vendor fault turned into an Outcome."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import zlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aioresponses import aioresponses
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from bridge.delivery import sender
from bridge.delivery.ratelimit import SlidingWindowLimiter, acquire
from bridge.delivery.sender import EXCERPT_CHARS, MAX_RESPONSE_BYTES, send_once
from bridge.offload import LOOP_ANSWER_BYTES
from bridge.store.base import Claimed
from bridge.vendors.base import Outcome, VendorAuthFailed, VendorRequest, VendorUnavailable, answer_id, succeeded
from bridge.vendors.credentials import Token, TokenCredentials
from bridge.vendors.kapture import CREATE_PATH, KaptureAdapter, KaptureOptions
from bridge.vendors.netgroot import NetgrootAdapter, NetgrootOptions
from tests.allocations import peak_of
from tests.fixtures.kapture_answering import kapture_answering

BASE = "http://kapture.test"
URL_CREATE = BASE + CREATE_PATH


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 omits the `stream_writer` that aiohttp 3.14 requires (aioresponses#289)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def mock_post(m: aioresponses, url: str | re.Pattern[str] = URL_CREATE, **kwargs: Any) -> None:
    m.post(url, response_class=MockResponse, **kwargs)


class RecordingKapture(KaptureAdapter):
    """The real Kapture adapter, remembering what it was asked to classify."""

    def __init__(self, base_url: str = BASE) -> None:
        opts = KaptureOptions(vendor="kapture", base_url=BASE, token="t")
        super().__init__("kapture", opts, base_url)
        self.classified: list[tuple[int, bytes]] = []

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        self.classified.append((status, body))
        return super().classify(action, status, headers, body)


def claimed(body: dict[str, Any] | None = None, action: str = "create_ticket") -> Claimed:
    return Claimed(
        id="dlv_1", event_id="evt_1", mapping="contact-to-kapture", destination="kapture", action=action,
        body={"title": "Router down", "email_id": "asha@example.com"} if body is None else body,
        options={}, tries=0, attempts=0,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def adapter() -> RecordingKapture:
    return RecordingKapture()


def sent_requests(mock: aioresponses) -> list[Any]:
    return [call for calls in mock.requests.values() for call in calls]


async def test_success_takes_classification_and_ticket_id_from_the_adapter(
    session: aiohttp.ClientSession, adapter: RecordingKapture,
) -> None:
    """A vendor success is classified by the adapter, with its ticket id, status and the body as excerpt."""
    with aioresponses() as m:
        mock_post(m, status=200, payload={"status": "success", "ticket_id": "T-42"})
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert sent.outcome == Outcome(classification="success", ticket_id="T-42")
    assert sent.http_status == 200
    assert sent.excerpt is not None
    assert msgspec.json.decode(sent.excerpt) == {"status": "success", "ticket_id": "T-42"}
    assert len(adapter.classified) == 1
    assert sent.duration_ms >= 0.0
    assert sent.started_at_ms > 1_600_000_000_000


async def test_sends_the_request_the_adapter_builds(
    session: aiohttp.ClientSession, adapter: RecordingKapture,
) -> None:
    """The request goes out with the adapter's method, URL, headers and body, without following redirects."""
    with aioresponses() as m:
        mock_post(m, status=200, payload={"status": "success", "ticket_id": "T-1"})
        await send_once(session, adapter, claimed(), 5.0)
        call = m.requests[("POST", URL(URL_CREATE))][0]
    assert call.kwargs["headers"]["Authorization"] == "Basic t"
    assert call.kwargs["headers"]["Content-Type"] == "application/json"
    assert msgspec.json.decode(call.kwargs["data"]) == [{"title": "Router down", "email_id": "asha@example.com"}]
    assert call.kwargs["allow_redirects"] is False
    assert call.kwargs["timeout"].total == 5.0


async def test_body_level_failure_is_permanent_whatever_the_status(
    session: aiohttp.ClientSession, adapter: RecordingKapture,
) -> None:
    """Kapture's `{"status": "failed"}` with HTTP 200 is the adapter's permanent failure, not a success."""
    with aioresponses() as m:
        mock_post(m, status=200, payload={"status": "failed", "message": "unknown subject"})
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert sent.outcome.classification == "permanent"
    assert sent.outcome.error is not None
    assert "unknown subject" in sent.outcome.error
    assert sent.http_status == 200


async def test_server_error_is_retry_with_retry_after(
    session: aiohttp.ClientSession, adapter: RecordingKapture,
) -> None:
    """A 503 with Retry-After is a retry carrying the vendor's wait."""
    with aioresponses() as m:
        mock_post(m, status=503, body="down for maintenance", headers={"Retry-After": "30"})
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert sent.outcome.classification == "retry"
    assert sent.outcome.retry_after == 30.0
    assert sent.http_status == 503
    assert sent.excerpt == "down for maintenance"


async def test_redirect_is_not_followed(session: aiohttp.ClientSession, adapter: RecordingKapture) -> None:
    """A 302 is classified as it is: the body is never re-sent to the Location."""
    with aioresponses() as m:
        mock_post(m, status=302, body="", headers={"Location": BASE + "/login"})
        m.get(BASE + "/login", response_class=MockResponse, status=200,
              payload={"status": "success", "ticket_id": "T-9"})
        sent = await send_once(session, adapter, claimed(), 5.0)
        assert list(m.requests) == [("POST", URL(URL_CREATE))]
    assert sent.http_status == 302
    assert sent.outcome.classification != "success"


@pytest.mark.parametrize("exc", [TimeoutError(), aiohttp.ServerTimeoutError("read timed out")])
async def test_timeout_once_connected_is_unknown(
    session: aiohttp.ClientSession, adapter: RecordingKapture, exc: Exception,
) -> None:
    """A timeout once connected is an unknown outcome (the vendor may have acted on the request) whose error
    says it timed out and after how long, with no status."""
    with aioresponses() as m:
        mock_post(m, exception=exc)
        sent = await send_once(session, adapter, claimed(), 2.5)
    assert sent.outcome.classification == "unknown"
    assert sent.outcome.error == "timed out after 2.5s once connected: the vendor may have acted on it"
    assert sent.http_status is None
    assert sent.excerpt is None
    assert adapter.classified == []


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientConnectionError("Connection refused"),
        aiohttp.ClientConnectorError(SimpleNamespace(host="h", port=443, ssl=True),  # type: ignore[arg-type]
                                     OSError(111, "Connection refused")),
        aiohttp.ConnectionTimeoutError("connect timed out"),
        OSError("network unreachable"),
    ],
)
async def test_connection_not_made_is_retry(
    session: aiohttp.ClientSession, adapter: RecordingKapture, exc: Exception,
) -> None:
    """Failures to connect are retries (nothing reached the vendor) whose error names the exception type."""
    with aioresponses() as m:
        mock_post(m, exception=exc)
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert sent.outcome.classification == "retry"
    assert sent.outcome.error is not None
    assert sent.outcome.error.startswith(f"connection failed: {type(exc).__name__}")
    assert sent.http_status is None


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("truncated"),
        ConnectionResetError("reset by peer"),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        asyncio.IncompleteReadError(b"abc", 10),
    ],
)
async def test_connection_lost_before_the_answer_is_unknown(
    session: aiohttp.ClientSession, adapter: RecordingKapture, exc: Exception,
) -> None:
    """A connection lost after it was made, before the whole answer, is an unknown outcome naming the
    exception type: the vendor may have acted on the request."""
    with aioresponses() as m:
        mock_post(m, exception=exc)
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert sent.outcome.classification == "unknown"
    assert sent.outcome.error is not None
    assert sent.outcome.error.startswith(f"connection lost before the answer: {type(exc).__name__}")
    assert sent.http_status is None


@contextlib.asynccontextmanager
async def raw_vendor(answer: bytes, *, endless: bytes = b"") -> AsyncIterator[str]:
    """A vendor on a bare socket: it reads the request's head, writes `answer` byte for byte, then `endless`
    over and over until the client goes; yields its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            while endless:
                writer.write(endless)
                await writer.drain()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.parametrize(("answer", "endless", "said"), [
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n{}", b"",
     "Too many headers received"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * (1 << 20) + b"\r\nContent-Length: 2\r\n\r\n{}", b"",
     "Got more than 8190 bytes"),
    (b"HTTP/1.1 200 ", b"x" * 4096, "Got more than 8190 bytes"),
    (b"HTTP/1.1 201 Created\r\nSet-Cookie: session=" + b"S3CRET" * 2000 + b"\r\nContent-Length: 2\r\n\r\n{}", b"",
     "Got more than 8190 bytes when reading: <the vendor's text, not kept>"),
    (b"HTTP/1.1 201 Created\r\nX-Session\x01Token: S3CRET\r\nContent-Length: 2\r\n\r\n{}", b"",
     "Invalid header"),
], ids=["thousands-of-headers", "1mb-header", "endless-status-line", "long-cookie", "bad-header-line"])
async def test_an_answer_whose_head_cannot_be_read_is_unknown(
    session: aiohttp.ClientSession, answer: bytes, endless: bytes, said: str,
) -> None:
    """An answer whose head cannot be parsed came after the request was written: the outcome is unknown (the
    vendor may have acted on it), saying the answer could not be read and why, without the request's URL."""
    async with raw_vendor(answer, endless=endless) as base:
        sent = await asyncio.wait_for(send_once(session, RecordingKapture(base), claimed(), 5.0), timeout=10.0)
    assert sent.outcome.classification == "unknown"
    error = sent.outcome.error or ""
    assert error.startswith("the vendor's answer could not be read: ") and said in error, error
    assert error.endswith(": the vendor may have acted on it")
    assert base not in error and len(error) < 400
    assert "S3CRET" not in error and "vvv" not in error and "xxx" not in error  # nothing of the vendor's head


@contextlib.asynccontextmanager
async def keep_alive_vendor(first: bytes, then: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """A vendor on a bare socket that keeps its connections open, answering the first request `first` and the rest
    `then`; yields its base URL and, per request, the number of the connection it came on."""
    came_on: list[int] = []
    made = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal made
        made += 1
        mine = made
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                came_on.append(mine)
                writer.write(first if len(came_on) == 1 else then)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", came_on
    finally:
        server.close()


OK_BODY = b'[{"status":"success","ticket_id":"T-100001"}]'
OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(OK_BODY),
                                                                                                   OK_BODY)
SWITCHING = {
    "bare": b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    "with-a-body": b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 5\r\n\r\nhello",
    "upgrade": b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
}


@pytest.mark.parametrize("first", SWITCHING.values(), ids=SWITCHING.keys())
async def test_an_unrequested_101_is_unknown_and_its_connection_never_reused(first: bytes) -> None:
    """A create answered `101 Switching Protocols` (never asked for) is an unknown outcome with its status, not left
    to the adapter (Kapture would call the empty body a refusal); on the delivery session (`VendorResponse`) its
    connection is closed, so the next send goes out on a new one, whatever followed the 101 on the old."""
    async with keep_alive_vendor(first, OK_ANSWER) as (base, came_on), \
            aiohttp.ClientSession(response_class=sender.VendorResponse) as session:
        adapter = RecordingKapture(base)
        switched = await asyncio.wait_for(send_once(session, adapter, claimed(), 5.0), timeout=10.0)
        again = await asyncio.wait_for(send_once(session, adapter, claimed(), 5.0), timeout=10.0)
    assert (switched.outcome.classification, switched.http_status, switched.excerpt) == ("unknown", 101, None)
    assert (switched.outcome.error or "").startswith("HTTP 101 (Switching Protocols, which ticketbridge never asks")
    assert (again.outcome.classification, again.outcome.ticket_id, came_on) == ("success", "T-100001", [1, 2]), \
        (again, came_on)
    assert adapter.classified == [(200, OK_BODY)]


def test_bounded_marks_a_ticket_id_it_leaves_out_as_dropped() -> None:
    """`bounded` leaves out a ticket id no adapter checked (a reconciliation's found one) when it is no id, saying so
    and marking it `ticket_id_dropped`; a key so left out is said without that mark."""
    long_id = sender.bounded(Outcome(classification="reconciled", ticket_id="7" * (sender.ID_CHARS + 1)))
    assert (long_id.ticket_id, long_id.ticket_id_dropped) == (None, True)
    assert (long_id.error or "").startswith("the vendor's ticket id is 257 characters long")
    key = sender.bounded(Outcome(classification="success", ticket_id="7", ticket_key="k\x00"))
    assert (key.ticket_id, key.ticket_key, key.ticket_id_dropped) == ("7", None, False)


async def test_unmocked_host_is_a_connection_failure(
    session: aiohttp.ClientSession, adapter: RecordingKapture,
) -> None:
    """With nothing listening, the attempt is a retry rather than an exception."""
    with aioresponses():
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert sent.outcome.classification == "retry"
    assert sent.outcome.error is not None
    assert "Connection refused" in sent.outcome.error


@pytest.mark.parametrize(
    ("body", "action", "message"),
    [
        ({"email_id": "a@b.c"}, "create_ticket", "title"),
        ({"title": "   "}, "create_ticket", "title"),
        ({"title": "x"}, "close_ticket", "no action 'close_ticket'"),
    ],
)
async def test_mapping_error_is_permanent_without_sending(
    session: aiohttp.ClientSession, adapter: RecordingKapture, body: dict[str, Any], action: str, message: str,
) -> None:
    """When the adapter cannot build the request, nothing is sent and the attempt is permanent."""
    with aioresponses() as m:
        mock_post(m, re.compile(".*"), status=200, payload={"status": "success"}, repeat=True)
        sent = await send_once(session, adapter, claimed(body, action), 5.0)
        assert sent_requests(m) == []
    assert sent.outcome.classification == "permanent"
    assert sent.outcome.error is not None
    assert sent.outcome.error.startswith("not sent: ")
    assert message in sent.outcome.error
    assert sent.http_status is None
    assert sent.excerpt is None
    assert sent.duration_ms == 0.0


async def test_response_body_is_bounded(
    session: aiohttp.ClientSession, adapter: RecordingKapture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A response longer than the bound reaches the adapter cut at the bound, and the excerpt is shorter still."""
    # aioresponses cannot feed a body over 128 KiB; a lower bound exercises the same code (a real server test below).
    monkeypatch.setattr(sender, "MAX_RESPONSE_BYTES", 3000)
    with aioresponses() as m:
        mock_post(m, status=500, body=b"x" * 100_000)
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert [len(body) for _, body in adapter.classified] == [3000]
    assert sent.excerpt == "x" * EXCERPT_CHARS
    assert sent.outcome.classification == "retry"


async def test_response_body_is_bounded_on_a_real_connection(
    session: aiohttp.ClientSession, adapter: RecordingKapture, aiohttp_server: Any,
) -> None:
    """Against a real server sending 4 MiB, only MAX_RESPONSE_BYTES are read and classified."""

    async def huge(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"y" * (4 * 1024 * 1024))

    real = RecordingKapture(await kapture_answering(aiohttp_server, huge))
    sent = await send_once(session, real, claimed(), 10.0)
    assert [len(body) for _, body in real.classified] == [MAX_RESPONSE_BYTES]
    assert sent.outcome.classification == "retry"
    assert sent.http_status == 500
    assert sent.excerpt == "y" * EXCERPT_CHARS


async def test_a_body_over_a_mebibyte_is_sent_whole_without_a_warning(
    session: aiohttp.ClientSession, aiohttp_server: Any,
) -> None:
    """A 2 MiB request body (a mail's attachments) reaches a real server whole, with its length and content type,
    and aiohttp does not warn that it may hold the event loop (a ResourceWarning, an error under pytest)."""
    got: list[tuple[bytes, str | None, str]] = []

    async def create(request: web.Request) -> web.Response:
        got.append((await request.read(), request.headers.get("Content-Length"), request.content_type))
        return web.json_response({"status": "success", "ticket_id": "T-9"})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post(CREATE_PATH, create)
    server = await aiohttp_server(app)
    real = RecordingKapture(str(server.make_url("")))
    body = {"title": "logs", "description": "x" * (2 * 1024 * 1024)}
    sent = await send_once(session, real, claimed(body), 10.0)
    assert sent.outcome == Outcome(classification="success", ticket_id="T-9")
    [(data, length, content_type)] = got
    assert msgspec.json.decode(data) == [body]
    assert (length, content_type) == (str(len(data)), "application/json")


@contextlib.asynccontextmanager
async def hanging_vendor(aiohttp_server: Any) -> AsyncIterator[RecordingKapture]:
    """A Kapture on a real server whose create takes the request and answers only once the block has ended."""
    release = asyncio.Event()
    app = web.Application()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app.router.add_post(CREATE_PATH, hang)
    server = await aiohttp_server(app)
    try:
        yield RecordingKapture(str(server.make_url("")))
    finally:
        release.set()


async def test_slow_vendor_times_out_on_a_real_connection(
    session: aiohttp.ClientSession, aiohttp_server: Any,
) -> None:
    """A vendor that does not answer within timeout_s gives an unknown "timed out", not a hang or an exception."""
    async with hanging_vendor(aiohttp_server) as real:
        sent = await asyncio.wait_for(send_once(session, real, claimed(), 0.2), timeout=10.0)
    assert sent.outcome.classification == "unknown"
    assert sent.outcome.error == "timed out after 0.2s once connected: the vendor may have acted on it"
    assert sent.http_status is None
    assert sent.duration_ms >= 150
    assert real.classified == []


class UnansweredResolver(AbstractResolver):
    """A resolver whose name servers never answer: every look-up waits until it is given up."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def traced_session(resolver: AbstractResolver | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """A session marking whether a request's head was written, as the delivery session does."""
    connector = aiohttp.TCPConnector(resolver=resolver) if resolver is not None else aiohttp.TCPConnector()
    async with aiohttp.ClientSession(connector=connector, request_class=sender.WrittenRequest) as traced:
        yield traced


async def test_a_timeout_while_the_host_name_resolves_is_a_retry() -> None:
    """The whole send's timeout running out while the vendor's host name is still being looked up (its name
    servers do not answer) sent nothing: a plain retry, not an unknown outcome held for an operator."""
    real = RecordingKapture("http://vendor.test:8080")
    async with traced_session(UnansweredResolver()) as traced:
        sent = await asyncio.wait_for(send_once(traced, real, claimed(), 0.2), timeout=10.0)
    assert sent.outcome.classification == "retry"
    assert sent.outcome.error == ("timed out after 0.2s before the request was written (resolving the host name, "
                                  "connecting, or the TLS handshake): nothing reached the vendor")
    assert sent.http_status is None
    assert real.classified == []


async def test_a_timeout_in_the_tls_handshake_is_a_retry() -> None:
    """A vendor's port that takes the connection and never answers the TLS handshake: nothing of the request was
    written, so its timeout is a plain retry."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the ClientHello and nothing else, until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        real = RecordingKapture(f"https://127.0.0.1:{port}")
        async with traced_session() as traced:
            sent = await asyncio.wait_for(send_once(traced, real, claimed(), 0.3), timeout=10.0)
    finally:
        server.close()
        await server.wait_closed()
    assert sent.outcome.classification == "retry"
    assert (sent.outcome.error or "").startswith("timed out after 0.3s before the request was written")


async def test_a_timeout_once_the_request_was_written_stays_unknown(aiohttp_server: Any) -> None:
    """On the traced session too, a vendor that took the request and does not answer in time may have acted on it:
    unknown."""
    async with hanging_vendor(aiohttp_server) as real, traced_session() as traced:
        sent = await asyncio.wait_for(send_once(traced, real, claimed(), 0.2), timeout=10.0)
    assert sent.outcome.classification == "unknown"
    assert sent.outcome.error == "timed out after 0.2s once connected: the vendor may have acted on it"


def test_a_sends_connection_has_its_own_timeout_below_the_whole() -> None:
    """The host name's look-up, the connect and a TLS handshake (aiohttp's `connect`) within CONNECT_TIMEOUT_S; a
    destination's shorter timeout bounds them all."""
    assert sender.send_timeout(30.0) == aiohttp.ClientTimeout(total=30.0, connect=sender.CONNECT_TIMEOUT_S,
                                                              sock_connect=sender.CONNECT_TIMEOUT_S)
    assert sender.send_timeout(2.0) == aiohttp.ClientTimeout(total=2.0, connect=2.0, sock_connect=2.0)


async def test_small_body_is_read_whole(session: aiohttp.ClientSession, adapter: RecordingKapture) -> None:
    """A body under the bound reaches the adapter whole, and its excerpt is the body itself."""
    body = b'{"status": "success", "ticket_id": "T-7"}' + b" " * 1000
    with aioresponses() as m:
        mock_post(m, status=200, body=body)
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert adapter.classified == [(200, body)]
    assert sent.excerpt == body.decode()
    assert sent.outcome.ticket_id == "T-7"


class ThreadNotingKapture(RecordingKapture):
    """The real Kapture adapter, noting the thread each answer is classified in."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        self.threads.append(threading.current_thread().name)
        return super().classify(action, status, headers, body)


@pytest.mark.parametrize(("extra", "where"), [(0, "MainThread"), (1, "ticketbridge-inflate")], ids=["at", "past"])
@pytest.mark.parametrize("last", [b'"e"', b'"\xe9"'], ids=["strict", "lenient"])
async def test_an_answer_past_the_loop_s_share_is_classified_in_a_thread_as_on_the_loop(
    session: aiohttp.ClientSession, extra: int, where: str, last: bytes,
) -> None:
    """An answer of at most LOOP_ANSWER_BYTES is classified on the loop (no thread hop for a vendor's usual answer of
    a few KiB); one byte more, in the INFLATING thread, where decoding it (leniently at worst: a byte that is not
    UTF-8, read with Python's decoder) holds no callback of the loop. Either way it is classified the same."""
    head = b'[{"status": "success", "ticket_id": "T-7", "pad": ['
    end = last + b"]}]"
    body = head + b"{}," * ((LOOP_ANSWER_BYTES - len(head) - len(end)) // 3)
    body += b" " * (LOOP_ANSWER_BYTES + extra - len(body) - len(end)) + end
    assert len(body) == LOOP_ANSWER_BYTES + extra
    noting = ThreadNotingKapture()
    with aioresponses() as m:
        mock_post(m, status=200, body=body)
        sent = await send_once(session, noting, claimed(), 5.0)
    assert noting.threads == [where]
    assert (sent.outcome.classification, sent.outcome.ticket_id) == ("success", "T-7")


class CrashingKapture(ThreadNotingKapture):
    """The Kapture adapter crashing (a bug) on every answer it classifies."""

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        super().classify(action, status, headers, body)
        raise KeyError("boom")


@pytest.mark.parametrize(("size", "where"), [(100, "MainThread"), (LOOP_ANSWER_BYTES + 1, "ticketbridge-inflate")],
                         ids=["on-the-loop", "in-a-thread"])
async def test_a_classification_crashing_in_a_thread_is_what_its_status_says_as_on_the_loop(
    session: aiohttp.ClientSession, size: int, where: str,
) -> None:
    """An adapter crashing on a 503 gives what the status says (`classified_anyway`), its error naming the crash,
    whether the answer was classified on the loop or, past LOOP_ANSWER_BYTES, in a thread."""
    crashing = CrashingKapture()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        mock_post(m, status=503, body=b"x" * size)
        sent = await send_once(session, crashing, claimed(), 5.0)
    assert crashing.threads == [where]
    assert sent.outcome.classification == "retry"
    assert sent.outcome.error == "HTTP 503; internal error classifying its answer: KeyError: 'boom'"
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["delivery.classify_crashed"]


class HeldKapture(ThreadNotingKapture):
    """The Kapture adapter, its classification held in its thread until `go` is set (`started` once it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.go = threading.Event(), threading.Event()

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        self.started.set()
        assert self.go.wait(10)
        return super().classify(action, status, headers, body)


async def test_a_stop_while_an_answer_is_classified_in_a_thread_keeps_the_answer(
        session: aiohttp.ClientSession) -> None:
    """A send cancelled (a stop) while its answer, past LOOP_ANSWER_BYTES, is classified in the INFLATING thread
    waits for the classification and gives it, the stop raised again at the task's next wait: the vendor answered,
    and the delivery loop records that answer (a success and its ticket) before it stops, not `unknown`."""
    body = b'[{"status": "success", "ticket_id": "T-7", "pad": "' + b"x" * LOOP_ANSWER_BYTES + b'"}]'
    held = HeldKapture()
    got: list[Any] = []

    async def sending() -> None:
        got.append(await send_once(session, held, claimed(), 5.0))
        await asyncio.sleep(0)  # the task's next wait: the stop is raised here

    with aioresponses() as m:
        mock_post(m, status=200, body=body)
        task = asyncio.get_running_loop().create_task(sending())
        assert await asyncio.to_thread(held.started.wait, 10)
        task.cancel()
        held.go.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert held.threads == ["ticketbridge-inflate"]
    [sent] = got
    assert (sent.outcome.classification, sent.outcome.ticket_id) == ("success", "T-7")


async def test_excerpt_survives_invalid_utf8(session: aiohttp.ClientSession, adapter: RecordingKapture) -> None:
    """A body that is not UTF-8 still gives a text excerpt, with replacement characters."""
    with aioresponses() as m:
        mock_post(m, status=502, body=b"\xff\xfebad gateway")
        sent = await send_once(session, adapter, claimed(), 5.0)
    assert sent.excerpt is not None
    assert sent.excerpt.endswith("bad gateway")
    assert "\ufffd" in sent.excerpt
    assert sent.outcome.classification == "retry"


@pytest.mark.parametrize(("body", "classification", "error"), [
    (b'[{"status": "success", "ticket_id": "42", "title": "\xff\xfe"}]', "success", ""),
    (b"[" * 100_000 + b"]" * 100_000, "unknown", "kapture: HTTP 200 but the answer is not a JSON object, so no "
                                                 "ticket is named: [[["),
], ids=["invalid-utf8", "nested-100k-deep"])
async def test_an_answer_json_cannot_read_is_classified_not_a_crash(
    session: aiohttp.ClientSession, aiohttp_server: Any, body: bytes, classification: str, error: str,
) -> None:
    """A 2xx whose body msgspec refuses with something other than a DecodeError (bytes that are not UTF-8 in a
    string, nesting 100k deep) is classified, never a crash out of the send: bytes that are not UTF-8 are read
    leniently (a success with its ticket), a body that still cannot be read is in doubt (`unknown`), naming the
    status."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=200, body=body, content_type="application/json")

    sent = await send_once(session, RecordingKapture(await kapture_answering(aiohttp_server, answer)), claimed(), 5.0)
    assert sent.outcome.classification == classification
    assert (sent.outcome.error or "").startswith(error)
    assert sent.http_status == 200


async def test_a_look_up_redirected_elsewhere_is_not_followed(session: aiohttp.ClientSession,
                                                              aiohttp_server: Any) -> None:
    """A vendor that redirects a look-up (Netgroot's subject list) to another host, here an admin page on this
    machine, is not followed there: nothing is asked of that host, and nothing it says lands in the attempt."""
    admin_calls: list[str] = []
    admin = web.Application()

    async def admin_page(request: web.Request) -> web.Response:
        admin_calls.append(request.path)
        return web.Response(text="ADMIN PAGE: internal-secret")

    admin.router.add_get("/admin", admin_page)
    admin_server = await aiohttp_server(admin)
    vendor = web.Application()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(admin_server.make_url("/admin")))

    vendor.router.add_route("*", "/{path:.*}", redirect)
    server = await aiohttp_server(vendor)
    base = str(server.make_url("")).rstrip("/")
    netgroot = NetgrootAdapter("isp", NetgrootOptions(vendor="netgroot", base_url=base, token="tok", type_id=1,
                                                      status_id=1, priority_id=1, group_id=1), base)
    item = claimed({"subject": "Internet down", "message": "No internet"})
    sent = await send_once(session, netgroot, item, 5.0)
    assert admin_calls == []
    assert sent.outcome.classification == "retry"
    assert "HTTP 302" in (sent.outcome.error or "") and "internal-secret" not in (sent.outcome.error or "")


async def test_on_send_is_called_just_before_the_request(session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """The rate limiter's hook runs once per attempt, before the request reaches the vendor."""
    calls: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append("vendor")
        return web.json_response({"status": "success", "ticket_id": "T-1"})

    real = RecordingKapture(await kapture_answering(aiohttp_server, answer))

    async def on_send() -> None:
        calls.append("on_send")

    sent = await send_once(session, real, claimed(), 5.0, on_send=on_send)
    assert sent.outcome.classification == "success"
    assert calls == ["on_send", "vendor"]


async def test_on_send_is_not_called_when_nothing_is_sent(session: aiohttp.ClientSession,
                                                          adapter: RecordingKapture) -> None:
    """A request the adapter refuses to build sends nothing, so it uses no rate-limit slot."""
    calls: list[int] = []
    sent = await send_once(session, adapter, claimed({"email_id": "a@b.c"}), 5.0, on_send=lambda: calls.append(1))
    assert sent.outcome.classification == "permanent"
    assert calls == []


class LookupRefused(RecordingKapture):
    """A Kapture adapter whose pre-request look-up finds the credentials refused."""

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Any) -> dict[str, Any]:
        raise VendorAuthFailed("getSubjects: HTTP 401: the token was refused")


async def test_refused_credentials_in_a_look_up_are_auth_without_sending(session: aiohttp.ClientSession) -> None:
    """A look-up refused for bad credentials makes the attempt `auth` (dead, not retried), and nothing is sent."""
    calls: list[int] = []
    sent = await send_once(session, LookupRefused(), claimed(), 5.0, on_send=lambda: calls.append(1))
    assert sent.outcome == Outcome(classification="auth",
                                   error="not sent: getSubjects: HTTP 401: the token was refused")
    assert sent.http_status is None
    assert calls == []


class LookingUp(RecordingKapture):
    """A Kapture adapter that looks a value up with a GET before building its request, as Netgroot does."""

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Any) -> dict[str, Any]:
        status, body = await fetch(self.base_url + "/lookup", {})
        if status == 401:
            raise VendorAuthFailed(f"lookup: HTTP {status}")
        if status != 200:
            raise VendorUnavailable(f"lookup: HTTP {status}")
        return {**fields, "title": body.decode()}


async def lookup_vendor(aiohttp_server: Any, answers: list[int]) -> tuple[LookingUp, list[str]]:
    """A vendor whose look-up answers with `answers` in turn (the last one repeats); the log of what it was asked."""
    asked: list[str] = []
    app = web.Application()

    async def lookup(request: web.Request) -> web.Response:
        status = answers[min(len([a for a in asked if a == "lookup"]), len(answers) - 1)]
        asked.append("lookup")
        return web.Response(status=status, text="Router down" if status == 200 else "busy")

    async def create(request: web.Request) -> web.Response:
        asked.append("create")
        return web.json_response({"status": "success", "ticket_id": "T-1"})

    app.router.add_get("/lookup", lookup)
    app.router.add_post(CREATE_PATH, create)
    server = await aiohttp_server(app)
    return LookingUp(str(server.make_url("")).rstrip("/")), asked


async def test_a_look_up_failing_in_passing_is_tried_again_within_the_attempt(
        session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """A 503 then a 502 from a look-up are retried at once (aiohttp-retry); the third answer lets the send go out."""
    vendor, asked = await lookup_vendor(aiohttp_server, [503, 502, 200])
    sent = await send_once(session, vendor, claimed(), 5.0)
    assert sent.outcome.classification == "success"
    assert asked == ["lookup", "lookup", "lookup", "create"]


async def test_a_rate_limited_look_up_is_not_tried_again_and_says_so(
        session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """A 429 from a look-up is final: one try (tried again at once it would only be refused again), and the attempt
    is a retry that says it was rate limited, for the delivery loop to pause the destination."""
    vendor, asked = await lookup_vendor(aiohttp_server, [429, 200])
    sent = await send_once(session, vendor, claimed(), 5.0)
    assert sent.outcome == Outcome(classification="retry", rate_limited=True,
                                   error="not sent: a look-up (GET /lookup) was rate limited (HTTP 429)")
    assert asked == ["lookup"]


async def test_a_look_up_still_failing_ends_the_attempt_as_a_retry(
        session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """After three failed tries the attempt is a retry on the delivery's schedule, naming the last answer."""
    vendor, asked = await lookup_vendor(aiohttp_server, [503])
    sent = await send_once(session, vendor, claimed(), 5.0)
    assert sent.outcome == Outcome(classification="retry", error="not sent: lookup: HTTP 503")
    assert asked == ["lookup"] * 3


async def test_a_refused_look_up_is_not_tried_again(session: aiohttp.ClientSession, aiohttp_server: Any) -> None:
    """A 401 from a look-up is final: one try, and the attempt is an auth failure."""
    vendor, asked = await lookup_vendor(aiohttp_server, [401])
    sent = await send_once(session, vendor, claimed(), 5.0)
    assert sent.outcome.classification == "auth"
    assert asked == ["lookup"]


class PrepareFailing(RecordingKapture):
    """A Kapture adapter whose look-up while preparing the request fails with `failure`."""

    failure: Exception = TimeoutError()

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Any) -> dict[str, Any]:
        raise self.failure


@pytest.mark.parametrize(("failure", "outcome"), [
    (VendorAuthFailed("the key was refused"), Outcome(classification="auth", error="not sent: the key was refused")),
    (VendorUnavailable("lookup: HTTP 503"), Outcome(classification="retry", error="not sent: lookup: HTTP 503")),
    (aiohttp.ClientConnectionError("gone"),
     Outcome(classification="retry", error="not sent: a look-up failed: ClientConnectionError: gone")),
    (TimeoutError(), Outcome(classification="retry", error="not sent: a look-up failed: TimeoutError: ")),
])
async def test_a_failed_look_up_before_the_send_is_auth_or_retry_naming_it(
        session: aiohttp.ClientSession, failure: Exception, outcome: Outcome) -> None:
    """A look-up made while the request is prepared, refused for its credentials, is auth; failing in passing, a
    retry naming the failure (a vendor's own message names its look-up). Nothing is sent."""
    adapter = PrepareFailing()
    adapter.failure = failure
    calls: list[int] = []
    sent = await send_once(session, adapter, claimed(), 5.0, on_send=lambda: calls.append(1))
    assert (sent.outcome, sent.http_status, calls) == (outcome, None, [])


def test_one_rule_says_what_a_failed_look_up_means() -> None:
    """`lookup_failure`, which the sender, the ticket check and the reconciliation all use: refused credentials
    are auth, anything else a retry; the error names the look-up and the failure's type (a VendorUnavailable's
    message alone where it names its look-up)."""
    refused, down = VendorAuthFailed("HTTP 401"), VendorUnavailable("pull: HTTP 503")
    assert sender.lookup_failure(refused, failed="f: ", refused="r: ") == Outcome(classification="auth",
                                                                                  error="not sent: r: HTTP 401")
    assert sender.lookup_failure(down, failed="f: ") == Outcome(classification="retry",
                                                                error="not sent: f: VendorUnavailable: pull: HTTP 503")
    assert sender.lookup_failure(down, failed="f: ", name_unavailable=False) == Outcome(
        classification="retry", error="not sent: pull: HTTP 503")
    assert sender.lookup_failure(OSError("unreachable"), failed="f: ", name_unavailable=False) == Outcome(
        classification="retry", error="not sent: f: OSError: unreachable")
    assert set(sender.LOOKUP_ERRORS) >= {VendorAuthFailed, VendorUnavailable, *sender.TRANSPORT_ERRORS}


@pytest.mark.parametrize(("answer", "said"), [
    (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 100\r\n\r\n{\"status\": ",
     "HTTP 503; its body could not be read: ClientPayloadError: Response payload is not completed"),
    (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\n"
     b"0123456789", "HTTP 429; its body could not be read: it does not decode as gzip: Error -3 while "
                    "decompressing data: incorrect header check"),
], ids=["503-cut-off", "429-undecodable"])
async def test_a_refusal_whose_body_cannot_be_read_is_a_retry(
    session: aiohttp.ClientSession, answer: bytes, said: str,
) -> None:
    """A 5xx or 429 whose body is cut off or cannot be decoded is the vendor's refusal, as its status line said:
    a retry (its Retry-After kept) naming the status and why the body could not be read, not an unknown outcome."""
    async with raw_vendor(answer) as base:
        sent = await asyncio.wait_for(send_once(session, RecordingKapture(base), claimed(), 5.0), timeout=10.0)
    assert (sent.outcome.classification, sent.outcome.retry_after, sent.http_status) == ("retry", 7.0,
                                                                                        int(answer[9:12]))
    assert (sent.outcome.error or "").startswith(said), sent.outcome.error


ZSTD_BODY = b"(\xb5/\xfd\x00X\x91\x00\x00{\"message\": \"busy\"}"
"""A body declared zstd (a zstd frame's magic number first), which aiohttp on Python 3.11 without backports.zstd
cannot decode: it used to refuse the answer's head, its status unknown."""


@pytest.mark.parametrize(("status", "coding", "classification", "said"), [
    (500, "zstd", "retry", "HTTP 500; its body could not be read: its Content-Encoding is 'zstd', which "
                           "ticketbridge does not read (it offers gzip, deflate, br)"),
    (503, "x-foo", "retry", "HTTP 503; its body could not be read: its Content-Encoding is 'x-foo'"),
    (429, "zstd", "retry", "HTTP 429; its body could not be read: its Content-Encoding is 'zstd'"),
    (401, "zstd", "auth", "HTTP 401: the vendor refused the credentials; its body could not be read: its "
                          "Content-Encoding is 'zstd'"),
    (400, "zstd", "permanent", "HTTP 400; its body could not be read: its Content-Encoding is 'zstd'"),
    (422, "gzip, br", "permanent", "HTTP 422; its body could not be read: its Content-Encoding is 'gzip, br'"),
    (200, "zstd", "unknown", "HTTP 200; its body could not be read: its Content-Encoding is 'zstd'"),
    (201, "x-foo", "unknown", "HTTP 201; its body could not be read: its Content-Encoding is 'x-foo'"),
])
async def test_an_answer_in_a_coding_not_offered_is_what_its_status_says(
    session: aiohttp.ClientSession, status: int, coding: str, classification: str, said: str,
) -> None:
    """An answer whose body is in a coding the request did not offer (zstd, which aiohttp cannot decode here, one
    made up, several stacked) is what its status line says: a 5xx or 429 a retry (Retry-After kept), a 401 auth, a
    4xx the vendor's refusal (permanent), a 2xx unknown (only the body could name the ticket: never a success read
    from bytes that are not its text); its status and headers kept, the error saying why the body was not read. A
    zstd answer used to fail as its head was read: unknown, whatever its status, which was not kept."""
    answer = (f"HTTP/1.1 {status} X\r\nRetry-After: 7\r\nContent-Type: application/json\r\n"
              f"Content-Encoding: {coding}\r\nContent-Length: {len(ZSTD_BODY)}\r\n\r\n").encode() + ZSTD_BODY
    async with raw_vendor(answer) as base:
        adapter = RecordingKapture(base)
        sent = await asyncio.wait_for(send_once(session, adapter, claimed(), 5.0), timeout=10.0)
    assert (sent.outcome.classification, sent.http_status, sent.excerpt) == (classification, status, None)
    assert (sent.outcome.error or "").startswith(said), sent.outcome.error
    assert adapter.classified == []
    assert sent.exchange is not None and sent.exchange["response_headers"]["Content-Encoding"] == coding
    if classification == "retry":
        assert sent.outcome.retry_after == 7.0
    if classification == "unknown":
        assert (sent.outcome.error or "").endswith(": the vendor may have acted on it")


async def test_a_send_decodes_its_answer_itself(
    session: aiohttp.ClientSession, aiohttp_server: Any,
) -> None:
    """A send's answer is handed over still encoded (aiohttp's own decoding off for it, so that no coding can fail
    its head) and decoded by the sender's reader; a gzip answer is read as before, its ticket id kept."""
    async def created(request: web.Request) -> web.Response:
        body = zlib.compress(b'[{"status": "success", "ticket_id": "T-9"}]', wbits=31)
        return web.Response(body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    sent = await send_once(session, RecordingKapture(await kapture_answering(aiohttp_server, created)), claimed(), 5.0)
    assert (sent.outcome.classification, sent.outcome.ticket_id) == ("success", "T-9")
    assert sent.excerpt == '[{"status": "success", "ticket_id": "T-9"}]'


class PuttingKapture(RecordingKapture):
    """The Kapture adapter sending its requests as PUTs (as a LeadSquared update or an http destination may)."""

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any],
                      ticket: Mapping[str, Any] | None = None) -> VendorRequest:
        return msgspec.structs.replace(super().build_request(action, fields, options, ticket), method="PUT")


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 302 Found\r\nLocation: /ticket/4711\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 302 Found\r\nLocation: /ticket/4711\r\nContent-Length: 100\r\n\r\n{",
], ids=["read", "cut-off"])
async def test_a_put_answered_302_is_unknown_whether_or_not_its_body_was_read(
    session: aiohttp.ClientSession, answer: bytes,
) -> None:
    """A redirect is judged by its status alone, the same whether the adapter read its body or the body could not
    be read (`unread_refusal`): a PUT answered 302 is unknown both ways, never a retry on one path only."""
    async with raw_vendor(answer) as base:
        sent = await asyncio.wait_for(send_once(session, PuttingKapture(base), claimed(), 5.0), timeout=10.0)
    assert (sent.outcome.classification, sent.http_status) == ("unknown", 302)
    assert (sent.outcome.error or "").startswith("HTTP 302 redirect to '/ticket/…' (not followed): the vendor may "
                                                 "have acted on the request"), sent.outcome.error


async def test_a_success_status_whose_body_is_cut_off_is_still_unknown(session: aiohttp.ClientSession) -> None:
    """A 200 whose body is cut off mid-way may have made the ticket: its outcome stays unknown."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[{\"status\": \"success\""
    async with raw_vendor(answer) as base:
        sent = await asyncio.wait_for(send_once(session, RecordingKapture(base), claimed(), 5.0), timeout=10.0)
    assert sent.outcome.classification == "unknown"
    assert (sent.outcome.error or "").endswith("the vendor may have acted on it")


async def test_a_success_status_whose_answer_passes_the_read_limit_is_unknown_not_dead(
    session: aiohttp.ClientSession, aiohttp_server: Any,
) -> None:
    """A 200 longer than MAX_RESPONSE_BYTES cannot be judged on its first part (it is no JSON object there): it
    is unknown, its error saying the answer passed the read limit and naming the limit, not a permanent failure
    as though the vendor had refused."""

    async def long_success(request: web.Request) -> web.Response:
        pad = "p" * (300 * 1024)
        return web.json_response([{"status": "success", "ticket_id": "T-1", "pad": pad}])

    real = RecordingKapture(await kapture_answering(aiohttp_server, long_success))
    sent = await send_once(session, real, claimed(), 10.0)
    assert [len(body) for _, body in real.classified] == [MAX_RESPONSE_BYTES]
    assert (sent.outcome.classification, sent.http_status) == ("unknown", 200)
    assert sent.outcome.error == ("HTTP 200: the answer is longer than the 256 KiB read limit and was cut there, "
                                  "so what it says could not be read: the vendor may have acted on it")


def test_a_cut_success_keeps_what_was_said_of_the_ticket_id_it_dropped() -> None:
    """A success read from a cut answer whose ticket id was no id keeps the adapter's words on it (where the id was
    and what), the cut said after them, so that the record and the log of the lost ticket name both; a success
    whose id was simply not read says the cut alone."""
    dropped = succeeded(answer_id({"number": 5}, "data.id"))
    cut = sender.cut_answer(200, dropped)
    assert (cut.classification, cut.ticket_id, cut.ticket_id_dropped) == ("success", None, True)
    assert cut.error == (f"{dropped.error}; HTTP 200: the answer is longer than the 256 KiB read limit and was cut "
                         "there: no ticket id was read before the cut")
    assert dropped.error is not None and 'at `data.id` is an object ({"number":5})' in dropped.error
    assert sender.cut_answer(200, succeeded()).error == ("HTTP 200: the answer is longer than the 256 KiB read "
                                                         "limit and was cut there: no ticket id was read before the "
                                                         "cut")


def test_only_a_status_that_says_the_vendor_did_not_act_decides_an_unread_body() -> None:
    """Refused credentials (401) are `auth` whatever their body; a 200 or a 400 whose body could not be read is
    left to the caller (unknown): only the body could have said what the vendor did."""
    cut = aiohttp.ClientPayloadError("Response payload is not completed")
    refused = sender.unread_refusal(401, {}, cut, 5.0)
    assert refused is not None and refused.classification == "auth"
    assert refused.error == ("HTTP 401: the vendor refused the credentials; its body could not be read: "
                             "ClientPayloadError: Response payload is not completed")
    assert sender.unread_refusal(200, {}, cut, 5.0) is None
    assert sender.unread_refusal(400, {}, cut, 5.0) is None


@pytest.mark.parametrize(("status", "classification"), [
    (302, "unknown"), (303, "unknown"), (300, "unknown"), (301, "retry"), (307, "retry"), (308, "retry")])
def test_an_unread_redirect_is_what_its_status_says(status: int, classification: str) -> None:
    """A redirect whose body could not be read is what its status says, as when it was read (`classify_status`): a
    302 (Post/Redirect/Get: the vendor made the ticket) is unknown, never sent again; a 301, 307 or 308 asks for
    the same request elsewhere (a retry)."""
    cut = aiohttp.ClientPayloadError("Response payload is not completed")
    refused = sender.unread_refusal(status, {"Location": "https://app.example/ticket/4711"}, cut, 5.0)
    assert refused is not None and refused.classification == classification
    assert refused.error is not None and refused.error.endswith(
        "; its body could not be read: ClientPayloadError: Response payload is not completed")


ZLIB_BOMB_BYTES = 64 << 20
"""What the gzip and deflate bombs below inflate to (zeros): 256 times the read cap, and made in a fraction of a
second; zlib's ratio is at most about 1000:1, so these take 64 KB on the wire."""


def _inflating(encoding: str) -> bytes:
    """A body of zeros that inflates from `encoding`: `br` a gigabyte, from tests/fixtures/bombs (1.7 KB, made with
    Brotli's quality 11, which takes a minute); gzip and deflate ZLIB_BOMB_BYTES, made here."""
    if encoding == "br":
        return (Path(__file__).parents[3] / "fixtures" / "bombs" / "zeros-1gib.br").read_bytes()
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(ZLIB_BOMB_BYTES >> 20)) + packer.flush()


@pytest.mark.parametrize("encoding", ["br", "gzip", "deflate"])
async def test_an_answer_that_inflates_without_end_is_read_to_the_cap_in_bounded_memory(
    session: aiohttp.ClientSession, encoding: str,
) -> None:
    """A 200 whose body inflates to a gigabyte (brotli) or 64 MiB (gzip, deflate) is inflated only as far as the
    read cap: the adapter is given MAX_RESPONSE_BYTES, the outcome is unknown (the answer was cut), and the attempt
    allocates a few megabytes at most, not what the body inflates to."""
    body = _inflating(encoding)
    answer = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    async with raw_vendor(answer) as base:
        adapter = RecordingKapture(base)
        sent, peak = await peak_of(lambda: asyncio.wait_for(send_once(session, adapter, claimed(), 30.0),
                                                            timeout=60.0))
    assert [len(b) for _, b in adapter.classified] == [MAX_RESPONSE_BYTES]
    assert (sent.outcome.classification, sent.http_status) == ("unknown", 200)
    assert peak < 16 << 20, f"{peak / (1 << 20):.1f} MiB allocated"


BR_SUCCESS = b'\x8b\x19\x80[{"status": "success", "ticket_id": "713516551148"}]\x03'
BR_BUSY = b'\x8b\x0b\x80{"message": "slow down"}\x03'
"""Kapture's success and a 429's words in brotli (`brotli.compress`: short texts are kept as they are, framed)."""


async def test_a_brotli_answer_is_read_and_its_refusal_classified_by_its_status(
    session: aiohttp.ClientSession, aiohttp_server: Any,
) -> None:
    """The request offers `br` (Accept-Encoding) and a brotli answer is read: a success gives its ticket id, and a
    429 in brotli is a retry with its Retry-After, not an unknown outcome for want of a decoder."""
    offered: list[str] = []

    async def created(request: web.Request) -> web.Response:
        offered.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=BR_SUCCESS, headers={"Content-Type": "application/json", "Content-Encoding": "br"})

    sent = await send_once(session, RecordingKapture(await kapture_answering(aiohttp_server, created)), claimed(), 5.0)
    assert (sent.outcome.classification, sent.outcome.ticket_id) == ("success", "713516551148")
    assert "br" in [e.strip() for e in offered[0].split(",")], offered
    limited = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Encoding: br\r\n"
               b"Content-Length: %d\r\n\r\n" % len(BR_BUSY)) + BR_BUSY
    async with raw_vendor(limited) as base:
        sent = await asyncio.wait_for(send_once(session, RecordingKapture(base), claimed(), 5.0), timeout=10.0)
    assert (sent.outcome.classification, sent.outcome.retry_after, sent.http_status) == ("retry", 7.0, 429)


class NumberedTokens(TokenCredentials):
    """Hands out tok-1, tok-2, …, each for an hour."""

    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        now = self.clock()
        return Token(value=f"tok-{self.obtained + 1}", obtained_at=now, expires_at=now + 3600)


async def test_a_resend_after_a_refused_token_goes_through_on_send_again(session: aiohttp.ClientSession,
                                                                         aiohttp_server: Any) -> None:
    """The vendor counts a refused request against its rate limit as any other: the resend made with a new token
    is announced to `on_send` (the rate limit) like the first request, each time just before it goes out."""
    calls: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(f"vendor {request.headers['Authorization']}")
        if request.headers["Authorization"] == "Bearer tok-1":
            return web.json_response({"status": "failed", "message": "token expired"}, status=401)
        return web.json_response({"status": "success", "ticket_id": "T-1"}, status=201)

    real = RecordingKapture(await kapture_answering(aiohttp_server, answer))
    real.credentials = NumberedTokens("kapture")

    async def on_send() -> None:
        calls.append("on_send")

    sent = await send_once(session, real, claimed(), 5.0, on_send=on_send)
    assert sent.outcome.classification == "success"
    assert calls == ["on_send", "vendor Bearer tok-1", "on_send", "vendor Bearer tok-2"]


_HEADER_TEXT = st.text(alphabet=st.sampled_from(["a", " ", "\t", "\r", "\n", "\x00", "\x1f", "\x7f", "\x85", "é",
                                                 "\u2028", "\u00a0", "\U0001f600", ":"]), max_size=6)


@settings(max_examples=400, deadline=None)
@given(name=_HEADER_TEXT, value=_HEADER_TEXT)
def test_a_header_is_refused_exactly_when_it_holds_what_no_header_can_carry(name: str, value: str) -> None:
    """check_headers passes a header whose name and value are printable without searching them; whatever it passes
    holds nothing `header_problem` finds, and whatever it refuses is named for what that finds (the value first)."""
    from bridge.escaping import header_problem

    problem = header_problem(value) or header_problem(name)
    if problem is None:
        sender.check_headers({name: value}, (), "the request")
        return
    with pytest.raises(sender.UnsendableHeader) as refused:
        sender.check_headers({name: value}, (), "the request")
    assert problem in str(refused.value)
    assert ("its value" if header_problem(value) else "its name") in str(refused.value)


async def test_a_request_counts_against_the_rate_limit_from_when_aiohttp_has_written_it(aiohttp_server: Any) -> None:
    """On the delivery session a request takes the slot its task took and counts it from when aiohttp's task writing
    it has ended, not from when its head was handed to the connection: the write may run later (here 0.5 s of the
    limiter's clock pass while the body is written)."""
    now = [1000.0]
    limiter = SlidingWindowLimiter(1, 1.0, margin=0.0, min_margin_s=0.0, clock=lambda: now[0])

    async def body() -> AsyncIterator[bytes]:
        yield b"{"
        now[0] += 0.5  # the write ends half a second after the head was buffered
        yield b"}"

    async def create(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/t", create)
    server = await aiohttp_server(app)
    async with traced_session() as session:
        await acquire(limiter)
        async with session.post(server.make_url("/t"), data=body()) as resp:
            assert resp.status == 200
        await asyncio.sleep(0)  # the write task's done callbacks
    assert limiter.next_delay() == pytest.approx(1.0)  # a window from the end of the write (0.5 from its head)
