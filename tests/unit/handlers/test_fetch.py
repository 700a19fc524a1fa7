"""handlers/fetch.py: GETs from a provider's API, every failure one exception that names no signed query."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from bridge import __version__
from handlers.fetch import FetchFailed, TooLarge, http_get
from handlers.sns import FetchError, https_get


async def test_answer_is_read_and_failures_are_fetch_failed(aiohttp_server: Any) -> None:
    """A 200 gives its body; another status, an answer over the cap or a dead port is FetchFailed."""
    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100)

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/missing", missing)
    server = await aiohttp_server(app)
    assert await http_get(str(server.make_url("/ok")), {}, 5, 100) == b"x" * 100
    with pytest.raises(TooLarge, match="over 99 bytes"):
        await http_get(str(server.make_url("/ok")), {}, 5, 99)
    with pytest.raises(FetchFailed, match="HTTP 404"):
        await http_get(str(server.make_url("/missing")), {}, 5, 100)


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/raw?signature=s3cr3t", "ftp://cdn.test/raw?signature=s3cr3t"])
async def test_a_failure_does_not_name_the_signed_query(url: str) -> None:
    """A failure whose reason is the URL (aiohttp's invalid or non-HTTP URL errors) leaves its query out."""
    with pytest.raises(FetchFailed) as info:
        await http_get(url, {}, 5, 100)
    assert "s3cr3t" not in str(info.value)
    assert url.partition("?")[0] in str(info.value)


async def test_fetches_say_ticketbridge_not_python_and_aiohttp_versions(aiohttp_server: Any) -> None:
    """A provider's API (Resend, Brevo) and SNS's certificate hosts see `ticketbridge/<version>` as the
    User-Agent, not aiohttp's default naming the Python and aiohttp versions."""
    seen: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        return web.Response(body=b"-----BEGIN CERTIFICATE-----")

    app = web.Application()
    app.router.add_get("/c.pem", ok)
    server = await aiohttp_server(app)
    await http_get(str(server.make_url("/c.pem")), {}, 5, 100)
    await https_get(str(server.make_url("/c.pem")))
    assert seen == [f"ticketbridge/{__version__}"] * 2


class InPieces:
    """A stand-in host whose answer goes out in two writes: the second only once the test, told the first is on
    the wire, lets it (`go`), so that the client has had the first piece on its own before the rest comes."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.first, self.rest = first, rest
        self.first_sent, self.go = asyncio.Event(), asyncio.Event()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(self.first)
        self.first_sent.set()
        await self.go.wait()
        await response.write(self.rest)
        await response.write_eof()
        return response

    async def fetched(self, aiohttp_server: Any, get: Callable[[str], Awaitable[bytes]]) -> bytes:
        app = web.Application()
        app.router.add_get("/body", self.answer)
        server = await aiohttp_server(app)
        task = asyncio.create_task(get(str(server.make_url("/body"))))
        await self.first_sent.wait()
        self.go.set()
        return await task


PEM = b"-----BEGIN CERTIFICATE-----\n" + b"TUlJ" * 300 + b"\n-----END CERTIFICATE-----\n"


async def test_an_answer_in_pieces_is_read_whole(aiohttp_server: Any) -> None:
    """A download (Resend's raw message, a Brevo attachment) or a signing certificate that arrives in two
    pieces is read to its end, not cut after the first: the cut one was stored short, or called not PEM."""
    half = len(PEM) // 2
    fetched = await InPieces(PEM[:half], PEM[half:]).fetched(aiohttp_server, lambda url: http_get(url, {}, 5, 65_536))
    certificate = await InPieces(PEM[:half], PEM[half:]).fetched(aiohttp_server, https_get)
    assert fetched == certificate == PEM


async def test_an_answer_over_the_cap_in_pieces_is_too_large(aiohttp_server: Any) -> None:
    """An answer over the cap is refused as too large when its first piece is under it: 200 KB sent as 32 KB
    and the rest is over the 64 KiB of a certificate, not a short body called not PEM."""
    first, rest = b"x" * 32_768, b"x" * 167_232
    with pytest.raises(TooLarge, match="over 65536 bytes"):
        await InPieces(first, rest).fetched(aiohttp_server, lambda url: http_get(url, {}, 5, 65_536))
    with pytest.raises(FetchError, match="more than 65536 bytes") as info:
        await InPieces(first, rest).fetched(aiohttp_server, https_get)
    assert info.value.status == 200
