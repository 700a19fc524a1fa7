"""The admin console of two processes on one PostgreSQL store: a destination paused through one is held in
both, shown paused by both, and sends again in both once resumed (audited); rate-limit use and the breaker
are the store's, not one process's."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.simulators.kapture import KaptureSimulator
from bridge.store.postgres import PostgresStore
from tests.acceptance.console_app import ADMIN
from tests.acceptance.test_console_api import NUL_REQUESTS, refused_nul
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration

CONFIG = """
store: {url: "sqlite:///var/unused.db"}
admin: {token: admin-secret}
sources:
  partner: {kind: json}
destinations:
  kapture:
    vendor: kapture
    sandbox: true
    retry: {schedule: ["0s"]}
    rate_limit: {requests: 50, per_seconds: 60}
"""
MAPPINGS = {"partner": """
    source: partner
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.title }}"
"""}

Client = TestClient[Any, Any]


async def two_processes(write_config: ConfigFactory, bridge_client: AppClient, schema: str) -> tuple[Client, Client]:
    config = write_config(CONFIG, MAPPINGS)
    return (await bridge_client(config, store=PostgresStore(DSN, schema=schema)),
            await bridge_client(config, store=PostgresStore(DSN, schema=schema)))


async def lane(client: Client) -> dict[str, Any]:
    resp = await client.get("/admin/api/destinations", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    [state] = (await resp.json())["items"]
    return dict(state)


async def change(client: Client, action: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post(f"/admin/api/destinations/kapture/{action}", json=body, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


def sim(client: Client) -> KaptureSimulator:
    found: KaptureSimulator = runtime(client).simulators["kapture"]
    return found


async def test_a_pause_through_one_process_holds_both_until_resumed(
    pg_schema: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """Paused through A, work accepted by B stays pending and both consoles say paused; resumed through A, B
    sends it within its recheck; the pause and the resume are audited once in the shared store."""
    a, b = await two_processes(write_config, bridge_client, pg_schema)
    assert (await change(a, "pause", {"reason": "vendor maintenance"}))["paused"] is True
    for client in (a, b):
        state = await lane(client)
        assert (state["paused"], state["paused_until"]) == (True, None)
    for i in range(4):
        assert (await b.post("/hooks/partner", json={"title": f"held {i}"})).status == 202
    await eventually(lambda: _backlog(b, 4))
    assert sim(a).tickets == [] and sim(b).tickets == []
    assert (await change(a, "resume", {}))["paused"] is False
    await eventually(lambda: len(sim(a).tickets) + len(sim(b).tickets) == 4, timeout=15)
    assert (await lane(b))["paused"] is False
    resp = await b.get("/admin/api/audit", headers=ADMIN)
    assert [e["action"] for e in (await resp.json())["items"]] == ["destination.resume", "destination.pause"]


async def test_a_pause_survives_a_restart_of_every_process(
    pg_schema: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """The pause is kept in the database: with the process that took it gone, one started afresh on the store
    still holds the destination, and holds its work, until it is resumed (README, "Ops console and admin API")."""
    config = write_config(CONFIG, MAPPINGS)
    first = await bridge_client(config, store=PostgresStore(DSN, schema=pg_schema))
    await change(first, "pause", {"reason": "vendor maintenance"})
    await first.close()
    again = await bridge_client(config, store=PostgresStore(DSN, schema=pg_schema))
    assert (await lane(again))["paused"] is True
    assert (await again.post("/hooks/partner", json={"title": "held"})).status == 202
    await eventually(lambda: _backlog(again, 1))
    assert sim(again).tickets == []
    assert (await change(again, "resume", {}))["paused"] is False
    await eventually(lambda: len(sim(again).tickets) == 1)


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _backlog(client: Client, n: int) -> bool:
    return int((await lane(client))["counts"]["pending"]) == n


async def test_rate_use_and_a_timed_pause_are_the_stores_in_every_process(
    pg_schema: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """Sends made by A count in B's rate-limit use (the shared slots, not B's idle limiter); a pause for a while
    set through B shows the same end, in epoch time, in A."""
    a, b = await two_processes(write_config, bridge_client, pg_schema)
    for i in range(3):
        assert (await a.post("/hooks/partner", json={"title": f"sent {i}"})).status == 202
    await eventually(lambda: len(sim(a).tickets) + len(sim(b).tickets) == 3, timeout=15)

    async def used() -> int:
        use = (await lane(b))["rate_limit"]
        assert (use["requests"], use["per_seconds"]) == (50, 60.0)
        return int(use["used"])

    # A lane woken after the last send may hold a grant until its claim comes back empty and gives it back.
    await eventually(lambda: _is(used(), 3))
    paused = await change(b, "pause", {"seconds": 120})
    seen = await lane(a)
    assert seen["paused"] is True and seen["paused_until"] == paused["paused_until"]
    ends = seen["paused_until"].replace("Z", "+00:00")
    assert abs(datetime.fromisoformat(ends).timestamp() - (time.time() + 120)) < 5


async def test_a_nul_in_an_id_or_filter_is_the_callers_400_not_a_store_failure(
    pg_schema: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """PostgreSQL refuses a NUL in any text parameter. Asked for one through the admin API (a read token may),
    the answer is the caller's 400, and the store is not taken for failing: /readyz stays 200."""
    client = await bridge_client(write_config(CONFIG, MAPPINGS), store=PostgresStore(DSN, schema=pg_schema))
    assert (await client.post("/hooks/partner", json={"title": "kept"})).status == 202
    for method, path, body, where in NUL_REQUESTS:
        await refused_nul(client, method, path, body, where)
        assert runtime(client).store.problem() is None  # type: ignore[union-attr]
    assert (await client.get("/readyz")).status == 200
