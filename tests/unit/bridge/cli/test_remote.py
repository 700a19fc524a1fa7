"""bridge/cli/remote.py: the CLI reads a server's admin API answers under a cap, as it streams them, so that a wrong
--url (an endless answer, a compressed one that inflates to gigabytes) cannot fill the operator's memory."""

from __future__ import annotations

import zlib
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.cli.remote import MAX_ANSWER_BYTES, AdminClient, RemoteError

DELIVERY = "/admin/api/deliveries/dlv_1"


async def client_of(aiohttp_server: Any, answer: web.Response, session: aiohttp.ClientSession,
                    **caps: int) -> AdminClient:
    async def handler(_request: web.Request) -> web.Response:
        return answer

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return AdminClient(str(server.make_url("")), "admin-secret", session, **caps)


@pytest.mark.parametrize("status", [200, 500])
async def test_an_answer_over_the_cap_is_refused_naming_the_url_and_the_cap(aiohttp_server: Any,
                                                                             status: int) -> None:
    """An answer, or an error answer, longer than the client's cap is a RemoteError that names the request, the
    status and the cap, read no further than the cap."""
    async with aiohttp.ClientSession() as session:
        client = await client_of(aiohttp_server, web.Response(body=b"x" * 5_000, status=status), session,
                                 max_answer_bytes=1_000)
        with pytest.raises(RemoteError) as info:
            await client.get_delivery("dlv_1")
    message = str(info.value)
    assert message.startswith(f"GET {client.url}{DELIVERY} answered {status} with more than 1,000 bytes, the most "
                              "the CLI reads of an admin API answer"), message
    assert info.value.status == status


async def test_a_compressed_answer_is_capped_as_it_inflates(aiohttp_server: Any) -> None:
    """A gzip answer of a few kilobytes that inflates past MAX_ANSWER_BYTES is refused once the inflated bytes
    pass the cap (it was inflated whole, then failed to decode as JSON: an error that named nothing)."""
    squeezer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = squeezer.compress(b"\0" * (MAX_ANSWER_BYTES + 1)) + squeezer.flush()
    assert len(bomb) < MAX_ANSWER_BYTES // 500
    answer = web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    async with aiohttp.ClientSession() as session:
        client = await client_of(aiohttp_server, answer, session)
        with pytest.raises(RemoteError, match=f"answered 200 with more than {MAX_ANSWER_BYTES:,} bytes"):
            await client.get_delivery("dlv_1")


async def test_an_answer_within_the_cap_is_read_whole(aiohttp_server: Any) -> None:
    """An error answer within the cap is read and its message passed on, as before."""
    answer = web.json_response({"error": "the store is unavailable"}, status=503)
    async with aiohttp.ClientSession() as session:
        client = await client_of(aiohttp_server, answer, session, max_answer_bytes=1_000)
        with pytest.raises(RemoteError, match=r"answered 503: the store is unavailable$"):
            await client.get_delivery("dlv_1")
