"""`sandbox_problem`: a shared sandbox's base_url is asked what it is before anything is sent there."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.sandbox_identity import IDENTITY_PATH, identity, sandbox_problem
from bridge.simulators import registry, serving


async def _impostor(request: web.Request) -> web.StreamResponse:
    """A server that is no sandbox, as a vendor's or a web server's answers look."""
    answers: dict[str, web.StreamResponse] = {
        "/json": web.json_response({"status": "ok"}),
        "/wrong-vendor": web.json_response(identity("leadsquared")),
        "/html": web.Response(text="<html>welcome</html>", content_type="text/html"),
        "/big": web.json_response({"sandbox": "ticketbridge", "vendor": "kapture", "pad": "x" * 10_000}),
        "/moved": web.Response(status=302, headers={"Location": "/kapture/_sandbox"}),
        "/not-utf8": web.Response(body=b'{"sandbox": "ticketbridge\xff"}', content_type="application/json"),
        "/deep": web.Response(body=b"[" * 4000, content_type="application/json"),
    }
    return answers.get(request.path.removesuffix(IDENTITY_PATH), web.Response(status=404))


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, str]]:
    """A standalone sandbox (every simulator) and an impostor: their addresses."""
    impostor = web.Application()
    impostor.router.add_route("*", "/{tail:.*}", _impostor)
    started = [TestServer(serving(registry()), host="127.0.0.1"), TestServer(impostor, host="127.0.0.1")]
    for server in started:
        await server.start_server()
    try:
        yield str(started[0].make_url("")).rstrip("/"), str(started[1].make_url("")).rstrip("/")
    finally:
        for server in started:
            await server.close()


async def test_each_simulator_answers_as_the_sandbox_of_its_vendor(servers: tuple[str, str]) -> None:
    """Every simulator of a `ticketbridge sandbox` says what it is under its mount, with or without a trailing
    slash on the base_url: no problem."""
    sandbox, _ = servers
    async with aiohttp.ClientSession() as session:
        for vendor in registry():
            assert await sandbox_problem(session, f"{sandbox}/{vendor}", vendor) is None
            assert await sandbox_problem(session, f"{sandbox}/{vendor}/", vendor) is None


@pytest.mark.parametrize(("path", "said"), [
    ("/json", "answered 200 but not"),
    ("/wrong-vendor", "answered 200 but not"),
    ("/html", "answered 200 but not"),
    ("/big", "answered 200 but not"),
    ("/not-utf8", "answered 200 but not"),
    ("/deep", "answered 200 but not"),
    ("/moved", "answered 302"),
    ("/nothing", "answered 404"),
])
async def test_a_server_that_is_not_a_sandbox_is_named_with_what_it_answered(servers: tuple[str, str], path: str,
                                                                            said: str) -> None:
    """Anything but the identity of a sandbox's simulator of the destination's vendor is a problem naming the URL
    asked and what it answered: another body (one that is not UTF-8, or nested past what a decoder follows, too),
    another vendor's simulator, a redirect (not followed), an error."""
    _, impostor = servers
    async with aiohttp.ClientSession() as session:
        problem = await sandbox_problem(session, f"{impostor}{path}", "kapture")
    assert problem is not None and problem.startswith(f"GET {impostor}{path}{IDENTITY_PATH} {said}"), problem


async def test_a_simulator_of_another_vendor_is_no_sandbox_of_this_one(servers: tuple[str, str]) -> None:
    """A kapture destination whose base_url names the sandbox's leadsquared mount (a typo) is refused."""
    sandbox, _ = servers
    async with aiohttp.ClientSession() as session:
        problem = await sandbox_problem(session, f"{sandbox}/leadsquared", "kapture")
    assert problem is not None and "not a ticketbridge sandbox's kapture simulator" in problem


async def test_nothing_listening_is_a_problem_not_an_exception() -> None:
    """A base_url where nothing listens is named as failing, with the error."""
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    await server.close()
    async with aiohttp.ClientSession() as session:
        problem = await sandbox_problem(session, f"{url}/kapture", "kapture", timeout_s=5)
    assert problem is not None and problem.startswith(f"GET {url}/kapture{IDENTITY_PATH} failed: "), problem
