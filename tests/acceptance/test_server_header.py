"""Every answer says `Server: ticketbridge` and no version, over raw HTTP: the app's own answers on the main port
(intake, admin, console, metrics, the sandbox routes), those aiohttp writes by itself (400 for a request it cannot
parse, 404, 405, 413), a sandbox's own port, and the connection guard's 503 and 408 on the server as `serve`
runs it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from bridge.cli.serve import serve
from tests.acceptance.rawhttp import Answer, RawClient, read_answer
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.integration.processes import free_port

CONFIG = """
server: {max_body_bytes: 1024}
store: {url: "sqlite:///var/bridge.db"}
admin: {token: ops-token}
sources:
  partner: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
MAPPINGS = {"partner": """
    source: partner
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.title }}"
"""}
ADMIN = ("Authorization", "Bearer ops-token")
JSON = ("Content-Type", "application/json")
BIG = b'{"title": "' + b"x" * 2000 + b'"}'

# method, path, body, headers, the status expected (each a different kind of answer)
MAIN_PORT: list[tuple[str, str, bytes, list[tuple[str, str]], int]] = [
    ("POST", "/hooks/partner", b'{"title": "a"}', [JSON], 202),
    ("POST", "/hooks/partner", b"{not json", [JSON], 400),
    ("POST", "/hooks/partner", BIG, [JSON], 413),  # intake's own bound
    ("POST", "/admin/api/playground", BIG, [ADMIN, JSON], 413),  # aiohttp's client_max_size
    ("GET", "/healthz", b"", [], 200),
    ("GET", "/readyz", b"", [], 200),
    ("GET", "/admin/api/overview", b"", [ADMIN], 200),
    ("GET", "/admin/api/overview", b"", [], 401),
    ("GET", "/admin/mappings", b"", [ADMIN], 200),
    ("GET", "/admin/", b"", [], 200),
    ("GET", "/admin/static/console.js", b"", [], 200),
    ("GET", "/admin", b"", [], 302),
    ("GET", "/metrics", b"", [ADMIN], 200),
    ("GET", "/sandbox/kapture/tickets", b"", [ADMIN], 200),
    ("GET", "/sandbox/kapture/tickets", b"", [], 401),  # for another host than localhost: the token is wanted
    ("GET", "/no/such/route", b"", [], 404),
    ("PUT", "/healthz", b"", [], 405),
    ("B@D", "/healthz", b"", [], 400),  # a request line aiohttp cannot parse
]


def named(answer: Answer, what: str) -> None:
    assert answer.headers.get("server") == "ticketbridge", (what, answer.status, answer.headers)


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    return await bridge_client(write_config(CONFIG, MAPPINGS), workers=False)


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), MAIN_PORT,
                         ids=[f"{m} {p} {s}" for m, p, _, _, s in MAIN_PORT])
async def test_every_kind_of_answer_on_the_main_port_names_ticketbridge_alone(
        client: Any, method: str, path: str, body: bytes, headers: list[tuple[str, str]], status: int) -> None:
    """An answer of each kind on the server's port, the app's and aiohttp's own, says `Server: ticketbridge`."""
    raw = RawClient(client.host, client.port)
    try:
        answer = await raw.request(method, path, body, list(headers))
    finally:
        await raw.close()
    assert answer.status == status, (answer.status, answer.body[:300])
    named(answer, f"{method} {path}")


async def test_a_header_aiohttp_cannot_parse_is_a_400_naming_ticketbridge(client: Any) -> None:
    """A header line without a colon is refused by aiohttp's parser with a 400 that says `Server: ticketbridge`."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        answer, _ = await read_answer(reader)
    finally:
        writer.close()
    assert answer.status == 400
    named(answer, "a bad header line")


async def test_a_sandbox_on_its_own_port_names_ticketbridge(client: Any) -> None:
    """A sandbox's loopback port answers its routes, an unknown route and a bad request line as ticketbridge."""
    url = runtime(client).sandbox_urls["kapture"]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    raw = RawClient(host, int(port))
    try:
        for method, path, status in (("GET", "/tickets", 200), ("GET", "/no/such/route", 404),
                                     ("B@D", "/tickets", 400)):
            answer = await raw.request(method, path, b"", [])
            assert answer.status == status, (method, path, answer.status)
            named(answer, f"sandbox {method} {path}")
    finally:
        await raw.close()


@contextlib.asynccontextmanager
async def served(write_config: ConfigFactory, config_yaml: str = CONFIG, mappings: dict[str, str] | None = None,
                 **server: Any) -> AsyncIterator[int]:
    """The app as `ticketbridge serve` runs it (through the connection guard), on a free port."""
    config = write_config(config_yaml, MAPPINGS if mappings is None else mappings)
    port = free_port()
    config = dataclasses.replace(config, server=msgspec.structs.replace(
        config.server, host="127.0.0.1", port=port, **server))
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(serve(config, workers=False, stop=stop))
        try:
            await eventually(lambda: any(e["event"] == "server.started" for e in logs) or task.done())
            assert not task.done(), task
            yield port
        finally:
            stop.set()
            await task


async def test_the_connection_guards_503_names_ticketbridge(write_config: ConfigFactory) -> None:
    """Past `max_connections`, the guard's fixed 503 says `Server: ticketbridge` too."""
    async with served(write_config, max_connections=1) as port:
        held = await asyncio.open_connection("127.0.0.1", port)
        try:
            held[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first, _ = await read_answer(held[0])  # answered: this connection is open and counted
            named(first, "the connection within the cap")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                refused, _ = await read_answer(reader)
            finally:
                writer.close()
        finally:
            held[1].close()
    assert refused.status == 503
    named(refused, "the guard's 503")


async def test_a_body_cut_off_by_its_deadline_gets_a_408_naming_ticketbridge(write_config: ConfigFactory) -> None:
    """A body that stops arriving is answered 408 by the guard's deadline, saying `Server: ticketbridge`."""
    async with served(write_config, body_timeout_seconds=0.2) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /hooks/partner HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"title\": ")
            answer, _ = await read_answer(reader)
        finally:
            writer.close()
    assert answer.status == 408
    named(answer, "the body deadline's 408")
