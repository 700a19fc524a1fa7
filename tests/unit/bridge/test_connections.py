"""Read deadlines per connection phase, and the cap on open connections, on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import brotli
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from structlog.testing import capture_logs

from bridge.connections import (
    REFUSAL,
    ConnectionLimits,
    ConnectionStats,
    GuardedAppRunner,
    content_encoding,
    refusal_reason,
)

OUTER = 20.0  # far above every deadline here: only a server that never closes reaches it


STARTED = web.AppKey("started", asyncio.Event)


async def _echo(request: web.Request) -> web.Response:
    if (started := request.app.get(STARTED)) is not None:
        started.set()
    body = await request.read()
    return web.Response(text=f"read {len(body)}")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query["s"]))  # the handler's own work, longer than every deadline
    return web.Response(text="done")


@asynccontextmanager
async def serving(limits: ConnectionLimits, started: asyncio.Event | None = None,
                  ) -> AsyncIterator[tuple[int, ConnectionStats]]:
    """A small app served through the guard; `started` is set when /echo begins reading a body."""
    app = web.Application()
    if started is not None:
        app[STARTED] = started
    app.router.add_get("/ping", _pong)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/slow", _slow)
    stats = ConnectionStats()
    runner = GuardedAppRunner(app, limits=limits, stats=stats, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], stats
    finally:
        await runner.cleanup()


async def _pong(request: web.Request) -> web.Response:
    return web.Response(text="pong")


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(OUTER):
        while not check():
            await asyncio.sleep(0.01)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a reset, when it closes on bytes it
    has not read, is a close too)."""
    chunks = []
    async with asyncio.timeout(OUTER):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: its status and body."""
    async with asyncio.timeout(OUTER):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
        return int(lines[0].split()[1]), await reader.readexactly(length)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


FAST = ConnectionLimits(header_timeout=0.2, body_timeout=0.2, keepalive_timeout=0.2, max_connections=100)


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    """A fresh connection that never sends a request head is closed, counted as a header timeout."""
    async with serving(FAST) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await read_to_eof(reader) == b""
        writer.close()
        await until(lambda: stats.open == 0)
        assert stats.timed_out == {"idle": 0, "header": 1, "body": 0}


async def test_a_head_sent_a_line_at_a_time_is_cut_off_at_the_header_deadline() -> None:
    """Header lines trickling in do not extend the deadline: the head must be whole within header_timeout."""
    async with serving(FAST) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\n")
        closed = asyncio.ensure_future(read_to_eof(reader))
        sent = 0
        while not closed.done() and sent < 2000:  # 2000 lines at 10 ms: far past the 0.2 s deadline
            writer.write(f"X-Slow-{sent}: a\r\n".encode())
            sent += 1
            await asyncio.sleep(0.01)  # the slow client's pace
        assert await closed == b""
        assert sent < 2000
        assert stats.timed_out["header"] == 1
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    """After an answer, a connection that sends nothing more is closed, counted as idle."""
    limits = ConnectionLimits(header_timeout=30, body_timeout=30, keepalive_timeout=0.2, max_connections=10)
    async with serving(limits) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/ping"))
        assert await response(reader) == (200, b"pong")
        assert await read_to_eof(reader) == b""
        assert stats.timed_out == {"idle": 1, "header": 0, "body": 0}
        writer.close()


async def test_the_next_heads_deadline_counts_from_its_first_byte() -> None:
    """On a kept-alive connection, a partial next head is cut at header_timeout, not at keepalive_timeout."""
    limits = ConnectionLimits(header_timeout=0.2, body_timeout=30, keepalive_timeout=30, max_connections=10)
    async with serving(limits) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/ping"))
        assert await response(reader) == (200, b"pong")
        writer.write(b"GET /ping HTTP/1.1\r\n")
        assert await read_to_eof(reader) == b""
        assert stats.timed_out == {"idle": 0, "header": 1, "body": 0}
        writer.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes() -> None:
    """A handler reading a body that stalls is answered 408, and the connection is closed after it."""
    async with serving(FAST) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        status, body = await response(reader)
        assert status == 408
        assert b"did not arrive within 0.2 s" in body
        assert await read_to_eof(reader) == b""
        assert stats.timed_out == {"idle": 0, "header": 0, "body": 1}
        writer.close()


async def test_a_pipelined_requests_slow_body_is_timed_too() -> None:
    """A slow body behind a pipelined request keeps its own deadline after the first answer."""
    async with serving(FAST) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/ping") + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123")
        assert await response(reader) == (200, b"pong")
        assert (await response(reader))[0] == 408
        assert await read_to_eof(reader) == b""
        assert stats.timed_out["body"] == 1
        writer.close()


async def test_a_slow_body_pipelined_behind_a_whole_body_is_timed_too() -> None:
    """A request whose head arrives with the end of the previous body still gets a body deadline."""
    started = asyncio.Event()
    async with serving(FAST, started) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n01")
        async with asyncio.timeout(OUTER):
            await started.wait()  # the first head is in and being handled: the next bytes come apart
        writer.write(b"234POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123")
        assert await response(reader) == (200, b"read 5")
        assert (await response(reader))[0] == 408
        assert await read_to_eof(reader) == b""
        assert stats.timed_out["body"] == 1
        writer.close()


async def test_a_slow_handler_is_not_a_slow_client() -> None:
    """A request that arrived in time is answered however long its handler takes."""
    async with serving(FAST) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/slow?s=0.8"))
        assert await response(reader) == (200, b"done")
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert await response(reader) == (200, b"read 3")
        assert sum(stats.timed_out.values()) == 0
        writer.close()


async def test_prompt_requests_keep_a_connection_open_past_every_deadline() -> None:
    """A client that keeps sending whole requests in time is never cut, however long it stays."""
    limits = ConnectionLimits(header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.5, max_connections=10)
    async with serving(limits) as (port, stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        start, answered = loop.time(), 0
        while loop.time() - start < 2.0:  # four times every deadline
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            assert await response(reader) == (200, b"read 2")
            answered += 1
            await asyncio.sleep(0.02)
        assert answered > 10
        assert sum(stats.timed_out.values()) == 0
        assert stats.open == 1
        writer.close()


async def test_past_max_connections_a_connection_gets_503_and_later_ones_get_in() -> None:
    """With the cap reached, a new connection is answered 503 with Retry-After; once one closes, the next gets in."""
    limits = ConnectionLimits(header_timeout=30, body_timeout=30, keepalive_timeout=30, max_connections=2)
    async with serving(limits) as (port, stats):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await until(lambda: stats.open == 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/ping"))
        assert await read_to_eof(reader) == REFUSAL
        assert b"Retry-After: 5\r\n" in REFUSAL and b"Connection: close\r\n" in REFUSAL
        assert stats.refused == 1
        writer.close()
        held[0][1].close()
        await until(lambda: stats.open == 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/ping"))
        assert await response(reader) == (200, b"pong")
        assert stats.refused == 1
        writer.close()
        held[1][1].close()


async def test_a_busy_connection_does_not_arm_a_timer_per_request() -> None:
    """Three hundred prompt requests on one connection schedule at most a couple of deadline timers."""
    loop = asyncio.get_running_loop()
    armed = 0
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Callable[..., object], *args: object, **kw: Any) -> asyncio.TimerHandle:
        nonlocal armed
        armed += getattr(callback, "__name__", "") == "_expire"
        return call_at(when, callback, *args, **kw)

    limits = ConnectionLimits(header_timeout=30, body_timeout=30, keepalive_timeout=60, max_connections=10)
    async with serving(limits) as (port, _stats):
        loop.call_at = counting_call_at  # type: ignore[method-assign]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(300):
                writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
                assert await response(reader) == (200, b"read 2")
            writer.close()
        finally:
            del loop.call_at  # type: ignore[method-assign]
    assert 1 <= armed <= 2


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a handler's own failure")


@pytest.mark.parametrize("head", [
    b"GET /ping HTTP/1.1\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
], ids=["no_host", "two_hosts", "bad_header_line"])
async def test_a_request_the_parser_refuses_is_a_400_and_one_warning_not_an_error_per_request(
        head: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A request with no Host header, two, or a malformed header line is answered 400 by aiohttp's parser. It
    is logged as one `server.bad_request` warning per interval, with the reason and no traceback, not as an
    error with a traceback per request, which any client could use to flood the error log."""
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    with capture_logs() as logs:
        async with serving(FAST) as (port, stats):
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                answer = await read_to_eof(reader)
                assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n"), answer
                writer.close()
            await until(lambda: stats.open == 0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    [warning] = [e for e in logs if e["event"] == "server.bad_request"]
    assert warning["log_level"] == "warning" and warning["status"] == 400
    assert warning["remote"] == "127.0.0.1" and warning["suppressed"] == 0
    assert len(warning["error"]) <= 200 and ("Host" in warning["error"] or "header" in warning["error"].lower())


async def test_a_handlers_own_failure_is_still_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Only the parser's 400s are quietened: a handler raising is a 500 logged by aiohttp with its traceback."""
    app = web.Application()
    app.router.add_get("/boom", _boom)
    runner = GuardedAppRunner(app, limits=FAST, stats=ConnectionStats(), access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(get("/boom"))
        assert (await read_to_eof(reader)).startswith(b"HTTP/1.1 500 ")
        writer.close()
    finally:
        await runner.cleanup()
    [record] = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno == logging.ERROR]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


@pytest.mark.parametrize("head", [
    b"POST /echo?token=SECRET\x01TOKEN HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET /ping?token=SECRETTOKEN HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer SECRET\x01TOKEN\r\n\r\n",
    b"GET /ping?token=SECRETTOKEN HTTP/1.1\r\nHost: a\r\nX-Api-Key: SECRETTOKEN\x00\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer SECRETTOKEN" + b"x" * 9000 + b"\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: a\r\nSECRETTOKEN\r\n\r\n",
    b"GET /ping?token=SECRETTOKEN HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
], ids=["request_line", "header_value", "nul_in_value", "long_value", "no_colon", "two_hosts"])
async def test_a_refused_requests_warning_names_the_reason_and_none_of_its_bytes(
        head: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """The parser's reason quotes the bytes it refused (`b'POST /hooks/x?token=…'`, a header line): the
    warning keeps its first line, with quoted request text left out, so that a token in a query string or
    a header never reaches the log."""
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        async with serving(FAST) as (port, stats):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            assert (await read_to_eof(reader)).startswith(b"HTTP/1.0 4"), head[:60]
            writer.close()
            await until(lambda: stats.open == 0)
    [warning] = [e for e in logs if e["event"] == "server.bad_request"]
    assert "SECRET" not in repr(logs) and "SECRET" not in caplog.text
    assert warning["error"] and "\n" not in warning["error"], warning


@pytest.mark.parametrize(("message", "logged"), [
    ("Bad status line 'GET /x?token=SECRET HTTP/1.1'", "Bad status line <request text>"),
    ("Bad HTTP method in status line 'G\\'ET /x?token=SECRET'", "Bad HTTP method in status line <request text>"),
    ("Invalid HTTP header: b'Authorization Bearer SECRET'", "Invalid HTTP header: <request text>"),
    ("Got more than 8190 bytes when reading: b'Bearer SECRET...'.", "Got more than 8190 bytes when reading: "
                                                                     "<request text>."),
    ("Invalid header value char:\n\n  b'Authorization: Bearer SECRET'\n  ^", "Invalid header value char"),
    ("Invalid URL: b'/x?token=SECRET", "Invalid URL: <request text>"),
    ("Duplicate 'Host' header found.", "Duplicate 'Host' header found."),
    ("Duplicate 'SECRET' header found.", "Duplicate <request text> header found."),
    ("\n  b'SECRET'", "malformed request"),
])
def test_a_refusals_reason_keeps_no_request_text(message: str, logged: str) -> None:
    """aiohttp's two parsers word their reasons differently; the Python one quotes the refused line in the
    first line itself."""
    assert refusal_reason(message) == logged


def _encodings() -> list[tuple[str, bytes]]:
    """What aiohttp's parser would inflate: 200 KB of `x` in each encoding it reads here."""
    text = b"x" * 200_000
    return [("gzip", gzip.compress(text)), ("deflate", zlib.compress(text)), ("br", brotli.compress(text))]


@pytest.mark.parametrize(("coding", "sent"), _encodings(), ids=["gzip", "deflate", "br"])
async def test_a_compressed_body_reaches_the_handler_as_sent_never_inflated(coding: str, sent: bytes) -> None:
    """The server does not unpack a Content-Encoding: aiohttp's parser would inflate it on the event loop as it
    arrives, before any route or limit (a gzip of 194 KB posted to any path held the loop over a second). The
    handler reads the bytes sent, not the 200 KB they inflate to."""
    async with serving(FAST) as (port, _stats):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: {coding}\r\n"
                         f"Content-Length: {len(sent)}\r\n\r\n".encode() + sent)
            assert await response(reader) == (200, f"read {len(sent)}".encode())
        finally:
            writer.close()


@pytest.mark.parametrize(("values", "declared"), [
    ([], None), ([""], None), (["identity"], None), (["Identity , identity"], None), (["identity", " "], None),
    (["gzip"], "gzip"), (["GZIP"], "GZIP"), (["identity, br"], "identity, br"), (["identity", "deflate"],
                                                                               "identity, deflate"),
    (["x-unknown"], "x-unknown"),
])
def test_content_encoding_names_any_coding_but_identity(values: list[str], declared: str | None) -> None:
    request = make_mocked_request("POST", "/x", headers=CIMultiDict(("Content-Encoding", v) for v in values))
    assert content_encoding(request) == declared
