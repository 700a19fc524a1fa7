"""handlers/fetch.py: GETs from a provider's API, every failure one exception that names no signed query."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from bridge import __version__
from handlers.fetch import FetchFailed, TooLarge, http_get
from handlers.sns import https_get


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
