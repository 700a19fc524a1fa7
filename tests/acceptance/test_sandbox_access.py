"""The simulators on the public port (`/sandbox/{vendor}/…`) over real HTTP: clients on this machine use them
freely (the README's "Try it"); a client from another address, or through a proxy, needs the admin token
for every route, reads included; deliveries still reach the simulators on their own loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.simulators.kapture import KaptureSimulator
from bridge.vendors.kapture import CREATE_PATH, SANDBOX_TOKEN
from tests.conftest import ConfigFactory, eventually, runtime

CONFIG = """
server: {server}
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: "{token}"}}
sources:
  contact: {{kind: form}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
"""
MAPPING = """
    source: contact
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
"""
ADMIN = "adm-7f3c9a"
Client = TestClient[Any, Any]
Start = Callable[..., Awaitable[Client]]


class RemoteClient:
    """A client whose connection is not from a loopback address: the app on a real server behind a Unix
    socket, whose peer has no IP address at all (the guard trusts only the transport's peer)."""

    def __init__(self, app: web.Application, runner: web.AppRunner, session: aiohttp.ClientSession) -> None:
        self.app, self.runner, self.session = app, runner, session
        self.server = self  # what tests.conftest.runtime reads the app from

    def get(self, path: str, **kw: Any) -> Any:
        return self.session.get(path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.session.put(path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.session.delete(path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.session.post(path, **kw)


@pytest.fixture
async def start(write_config: ConfigFactory, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Start]:
    """The whole app on a real server: on loopback TCP, or (remote=True) on a Unix socket, with `token` as
    admin.token and `server` as its server table."""
    opened: list[RemoteClient] = []

    async def run(token: str = "", remote: bool = False, server: str = "{}") -> Any:
        app = build_app(write_config(CONFIG.format(token=token, server=server), {"web": MAPPING}))
        if not remote:
            return await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
        runner = web.AppRunner(app)
        await runner.setup()
        path = str(tmp_path / f"bridge-{len(opened)}.sock")
        await web.UnixSite(runner, path).start()
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path), base_url="http://bridge")
        client = RemoteClient(app, runner, session)
        opened.append(client)
        return client

    yield run
    for client in opened:
        await client.session.close()
        await client.runner.cleanup()


async def every_route(client: Client, headers: dict[str, str] | None = None) -> list[int]:
    """The status of each kind of sandbox call: list, received log, faults, wipe, and the vendor's own API."""
    h = headers or {}
    calls = [
        client.get("/sandbox/kapture/tickets", headers=h),
        client.get("/sandbox/kapture/_received", headers=h),
        client.put("/sandbox/kapture/_faults", json={"latency_ms": 1}, headers=h),
        client.delete("/sandbox/kapture/tickets", headers=h),
        client.post(f"/sandbox/kapture{CREATE_PATH}", json=[{"title": "planted", "email_id": "x@evil.test"}],
                    headers={"Authorization": f"Basic {SANDBOX_TOKEN}", **h}),
    ]
    return [(await c).status for c in calls]


async def test_clients_on_this_machine_use_the_sandbox_without_a_token(start: Start) -> None:
    """With the shipped default (no admin token), a loopback client lists, inspects, sets faults, wipes and
    creates tickets, as the README's "Try it" does."""
    client = await start()
    assert await every_route(client) == [200, 200, 200, 200, 200]
    assert runtime(client).simulators["kapture"].faults.latency_ms == 1


async def test_another_address_is_refused_everything_while_no_token_is_set(start: Start) -> None:
    """From a non-loopback address every sandbox route is 403, saying how to open it, and nothing changes."""
    client = await start(remote=True)
    sim = runtime(client).simulators["kapture"]
    sim.hold({"ticketId": "1", "title": "kept"})
    assert await every_route(client) == [403] * 5
    resp = await client.get("/sandbox/kapture/tickets")
    assert "admin.token" in (await resp.json())["error"]
    assert (sim.tickets, sim.faults.latency_ms) == ([{"ticketId": "1", "title": "kept"}], 0)


async def test_another_address_needs_the_admin_token(start: Start) -> None:
    """With admin.token set, a non-loopback client is 401 without it or with a wrong one, and let through with it."""
    client = await start(token=ADMIN, remote=True)
    assert await every_route(client) == [401] * 5
    assert await every_route(client, {"Authorization": "Bearer wrong"}) == [401] * 5
    right = {"Authorization": f"Bearer {ADMIN}"}
    assert await every_route(client, right) == [200] * 5
    assert runtime(client).simulators["kapture"].faults.latency_ms == 1


async def test_a_proxy_on_this_machine_does_not_make_its_clients_local(start: Start) -> None:
    """A loopback connection carrying forwarding headers (a reverse proxy in front) is treated as remote;
    the headers can only make the decision stricter, never open it."""
    client = await start()
    for header in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "127.0.0.1"}):
        assert await every_route(client, header) == [403] * 5


async def test_a_trusted_proxys_forwarded_loopback_address_does_not_make_its_client_local(start: Start) -> None:
    """With the loopback proxy in `server.trusted_proxies`, a request it forwards for a loopback address (which
    `request.remote` then is) is still no local one: the sandbox reads the connection's own peer and its forwarding
    headers, never the forwarded address, so a proxy's client cannot name itself local."""
    client = await start(server="{trusted_proxies: [127.0.0.0/8, '::1']}")
    for forwarded_for in ("127.0.0.1", "::1", "203.0.113.9, 127.0.0.1"):
        assert await every_route(client, {"X-Forwarded-For": forwarded_for}) == [403] * 5
    assert await every_route(client) == [200] * 5  # the proxy's own requests, forwarding nothing, are local


async def test_deliveries_still_reach_the_sandbox_on_its_own_loopback_port(start: Start) -> None:
    """The guard is on the public mount only: with clients that are not local, events still become tickets."""
    client = await start(remote=True)
    resp = await client.post("/hooks/contact", data={"subject": "Router down"})
    assert resp.status == 202
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)


async def test_a_page_of_another_site_cannot_use_the_sandbox_through_a_browser_on_this_machine(
        start: Start) -> None:
    """A browser on this machine connects from loopback for any page it shows. A request it marks as sent for a
    page of another site (Origin, Sec-Fetch-Site), or sent for a host name that is not this machine's (a
    rebinding name resolved to 127.0.0.1), is not local: refused while no token is set, saying why. The
    console's own origin, a typed address (Sec-Fetch-Site: none) and tools that send neither go through."""
    client = await start()
    own = f"http://{client.server.host}:{client.server.port}"
    for header in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                   {"Sec-Fetch-Site": "same-site"}, {"Host": f"rebind.evil.example:{client.server.port}"},
                   {"Host": f"127.evil.example:{client.server.port}"}):
        assert await every_route(client, header) == [403] * 5, header
    resp = await client.post(f"/sandbox/kapture{CREATE_PATH}", json=[{"title": "planted"}],
                             headers={"Origin": "https://evil.example", "Authorization": f"Basic {SANDBOX_TOKEN}"})
    assert "Origin: https://evil.example" in (await resp.json())["error"]
    assert runtime(client).simulators["kapture"].tickets == []
    for header in ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                   {"Host": f"localhost:{client.server.port}"}, {"Host": f"127.0.0.2:{client.server.port}"},
                   {"Host": f"[::1]:{client.server.port}"}):
        assert await every_route(client, header) == [200] * 5, header


UNROUTED = [("OPTIONS", "/sandbox/kapture/tickets"), ("PATCH", "/sandbox/kapture/tickets"),
            ("TRACE", "/sandbox/kapture/_knobs"), ("POST", "/sandbox/kapture/"), ("GET", "/sandbox/kapture/nope"),
            ("GET", "/sandbox/kapture")]
"""Paths and methods under the mount that no route takes."""


async def test_every_route_of_every_simulator_is_guarded(start: Start) -> None:
    """Each route each simulator mounts (vendor API, listing, received log, faults, knobs), with each method it
    takes, and every path or method under the mount that no route takes, is refused to a client that is not local
    while no token is set: a refused client learns nothing of the routes (no 404 or 405, no Allow)."""
    client = await start(remote=True)
    mounted = list(client.app._subapps)  # the applications build_app mounted
    assert mounted
    routed = [(route.method, (route.resource.get_info().get("path") or route.resource.get_info()["formatter"])
               .replace("{", "").replace("}", ""))
              for sub in mounted for route in sub.router.routes() if route.method != "*"]
    assert ("HEAD", "/sandbox/kapture/tickets") in routed
    for method, path in [*routed, *UNROUTED]:
        resp = await client.session.request(method, path)
        assert (resp.status, "Allow" in resp.headers) == (403, False), (method, path)


async def test_paths_no_route_takes_answer_clients_on_this_machine_as_before(start: Start,
                                                                             aiohttp_client: Any) -> None:
    """To a client the guard lets through, a path or method no route takes is answered as aiohttp answers it on the
    simulator mounted without a guard: 405 naming the methods the path takes, or 404."""
    plain = web.Application()
    plain.add_subapp("/sandbox/kapture/", KaptureSimulator().app())
    clients = [await start(), await aiohttp_client(plain)]
    answers: list[list[tuple[int, str | None]]] = [[], []]
    for client, seen in zip(clients, answers, strict=True):
        for method, path in UNROUTED:
            resp = await client.request(method, path)
            seen.append((resp.status, resp.headers.get("Allow")))
    assert answers[0] == answers[1]
    assert [status for status, _allow in answers[0]] == [405, 405, 405, 405, 404, 404]


async def test_intake_runs_no_middleware(start: Start) -> None:
    """The guard wraps the simulators' own handlers: no application of the server has a middleware, so that
    aiohttp runs no middleware chain for intake's requests."""
    client = await start()
    apps = [client.app, *client.app._subapps]
    assert len(apps) == 2
    assert [list(app.middlewares) for app in apps] == [[], []]
