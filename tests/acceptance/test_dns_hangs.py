"""Vendors whose host names hang in DNS, through the whole app: they hold no thread the store, intake or another
vendor's sends need, and their sends, which never reached the vendor, are plain retries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import AppClient, ConfigFactory, eventually
from tests.fixtures.threads import commented_thread
from tests.unit.bridge.test_resolver import HANGING, HangingNames, hang_names

TOKEN = "admintoken-0123456789"
HUNG = 6
DEFAULT_THREADS = 4
"""The event loop's default executor here: fewer threads than the names that hang."""


def config(vendor_port: int) -> str:
    hung = "\n".join(f"""
      d{i}:
        vendor: http
        base_url: "http://v{i}{HANGING}:18181"
        path: /tickets
        timeout_seconds: 0.5
        retry: {{schedule: [50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms], jitter: 0}}""" for i in range(HUNG))
    return f"""
    store: {{url: "sqlite:///var/bridge.db"}}
    admin: {{token: "{TOKEN}"}}
    sources:
      form: {{kind: json}}
      chat: {{kind: json}}
    destinations:
      api:
        vendor: http
        base_url: "http://vendor.test:{vendor_port}"
        path: /tickets
        ticket_id_path: id
        retry: {{schedule: [50ms]}}
{hung}
    """


MAPPINGS = {
    **{f"d{i}": f"""
    source: form
    destination: d{i}
    action: create_ticket
    fields: {{title: "{{{{ payload.subject }}}}"}}
    """ for i in range(HUNG)},
    "api": commented_thread("chat"),
}


@pytest.fixture
def hanging_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingNames]:
    yield from hang_names(monkeypatch)


async def vendor(aiohttp_server: Any) -> tuple[Any, list[str]]:
    """The healthy vendor: a ticket made, then comments on it."""
    seen: list[str] = []
    app = web.Application()

    async def create(request: web.Request) -> web.Response:
        seen.append("create")
        return web.json_response({"id": "T-1"}, status=201)

    async def comment(request: web.Request) -> web.Response:
        seen.append(f"comment {request.match_info['ticket']}")
        return web.json_response({"ok": True})

    app.router.add_post("/tickets", create)
    app.router.add_post("/tickets/{ticket}/comments", comment)
    return await aiohttp_server(app), seen


async def test_hosts_hanging_in_dns_leave_another_vendors_replies_and_the_admin_api_fast(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, hanging_names: HangingNames,
) -> None:
    """Six destinations whose host names hang in DNS (more than the event loop's default executor has threads)
    while they are retried: a conversation's first message and its reply to a healthy vendor are delivered, the
    admin API answers within its wait, and the hung sends are retries, none held as unknown."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(DEFAULT_THREADS, "default"))
    server, seen = await vendor(aiohttp_server)
    client = await bridge_client(write_config(config(server.port), MAPPINGS))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.post("/hooks/form", json={"subject": "to the hanging vendors"})
    assert resp.status == 202
    await eventually(lambda: hanging_names.blocked >= DEFAULT_THREADS)  # as many as the default executor has

    async def answered(destination: str) -> list[dict[str, Any]]:
        resp = await asyncio.wait_for(client.get(f"/admin/api/deliveries?destination={destination}&limit=10",
                                                 headers=headers), 5)
        assert resp.status == 200
        items: list[dict[str, Any]] = (await resp.json())["items"]
        return items

    for text in ("first", "second"):
        resp = await client.post("/hooks/chat", json={"case": "c-1", "text": text})
        assert resp.status == 202

    async def replied() -> bool:
        items = await answered("api")
        return len(items) == 2 and all(item["status"] == "succeeded" for item in items)

    await eventually(replied)
    assert seen == ["create", "comment T-1"]
    assert hanging_names.blocked == HUNG  # each in a thread of its own, all still hanging

    async def retried() -> bool:  # each hung send timed out at least once
        items = [item for i in range(HUNG) for item in await answered(f"d{i}")]
        return len(items) == HUNG and all(item["attempts"] >= 1 for item in items)

    await eventually(retried)
    for i in range(HUNG):
        [item] = await answered(f"d{i}")
        assert item["status"] in {"pending", "in_flight"}, item
        assert item["in_doubt_since_ms"] is None, item
        assert "before the request was written" in item["last_error"], item
    assert all(hanging_names.calls[f"v{i}{HANGING}"] == 1 for i in range(HUNG))  # one thread each, through retries
