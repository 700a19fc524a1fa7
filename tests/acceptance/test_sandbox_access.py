"""The simulators on the public port (`/sandbox/{vendor}/…`) over real HTTP: clients on this machine use them
freely (the README's "Try it"); a client from another address, or through a proxy, needs the admin token
for every route, reads included; deliveries still reach the simulators on their own loopback port."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.vendors.kapture import CREATE_PATH, SANDBOX_TOKEN
from tests.conftest import ConfigFactory, eventually, runtime

CONFIG = """
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


def outward_address() -> str | None:
    """An address of this machine that is not loopback (the one its route to the outside uses), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route and its source address
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture
def start(write_config: ConfigFactory, aiohttp_client: Any) -> Start:
    """The whole app on a real server bound to `host`, with `token` as admin.token."""

    async def run(token: str = "", host: str = "127.0.0.1") -> Client:
        app = build_app(write_config(CONFIG.format(token=token), {"web": MAPPING}))
        client: Client = await aiohttp_client(app, server_kwargs={"host": host})
        return client

    return run


@pytest.fixture
def remote_host() -> str:
    host = outward_address()
    if host is None:
        pytest.skip("this machine has no address other than loopback to connect from")
    return host


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


async def test_another_address_is_refused_everything_while_no_token_is_set(start: Start, remote_host: str) -> None:
    """From a non-loopback address every sandbox route is 403, saying how to open it, and nothing changes."""
    client = await start(host=remote_host)
    sim = runtime(client).simulators["kapture"]
    sim.tickets.append({"id": 1, "title": "kept"})
    assert await every_route(client) == [403] * 5
    resp = await client.get("/sandbox/kapture/tickets")
    assert "admin.token" in (await resp.json())["error"]
    assert (sim.tickets, sim.faults.latency_ms) == ([{"id": 1, "title": "kept"}], 0)


async def test_another_address_needs_the_admin_token(start: Start, remote_host: str) -> None:
    """With admin.token set, a non-loopback client is 401 without it or with a wrong one, and let through with it."""
    client = await start(token=ADMIN, host=remote_host)
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


async def test_deliveries_still_reach_the_sandbox_on_its_own_loopback_port(start: Start, remote_host: str) -> None:
    """The guard is on the public mount only: with the server on a public address, events still become tickets."""
    client = await start(host=remote_host)
    resp = await client.post("/hooks/contact", data={"subject": "Router down"})
    assert resp.status == 202
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)
