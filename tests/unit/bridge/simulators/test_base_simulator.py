"""What every simulator serves beside its vendor's API: the ticket listing and reset, `/_received`, `/_faults`."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.simulators import registry
from bridge.simulators.kapture import KaptureSimulator
from bridge.simulators.leadsquared import LeadSquaredSimulator
from bridge.vendors.kapture import PULL_PATH, SANDBOX_TOKEN
from bridge.vendors.leadsquared import SANDBOX_ACCESS_KEY, SANDBOX_ORG, SANDBOX_SECRET_KEY


@pytest.mark.parametrize("vendor", sorted(registry()))
async def test_every_simulator_lists_resets_and_has_its_knobs(aiohttp_client: Any, vendor: str) -> None:
    """Each simulator lists its tickets at / and /tickets, forgets them on DELETE /tickets, and serves the
    request log and the fault knobs."""
    sim = registry()[vendor]()
    sim.tickets.append({"id": "seeded"})
    client = await aiohttp_client(sim.app())
    for path in ("/tickets", "/"):
        listing = await (await client.get(path)).json()
        assert (listing["count"], listing["tickets"]) == (1, [{"id": "seeded"}])
    resp = await client.delete("/tickets")
    assert (resp.status, await resp.json()) == (200, {"count": 0})
    assert sim.tickets == []
    assert (await (await client.get("/_received")).json())["count"] == 0
    assert (await (await client.put("/_faults", json={"fail_count": 1})).json())["fail_count"] == 1
    assert sim.faults.fail_count == 1


async def test_kapture_reset_forgets_pulls_and_the_request_count(aiohttp_client: Any) -> None:
    """DELETE /tickets on the Kapture simulator also forgets the pulls it was asked and its request count."""
    sim = KaptureSimulator()
    client = await aiohttp_client(sim.app())
    await client.post(PULL_PATH, json=[{"start_date": "2024-04-19", "end_date": "2024-04-19"}],
                      headers={"Authorization": f"Basic {SANDBOX_TOKEN}"})
    assert (len(sim.pulls), (await (await client.get("/tickets")).json())["requests"]) == (1, 1)
    await client.delete("/tickets")
    assert (sim.pulls, sim.requests) == ([], 0)


async def test_leadsquared_reset_starts_a_new_rate_window(aiohttp_client: Any) -> None:
    """DELETE /tickets on the LeadSquared simulator also forgets the calls counted against its limit."""
    sim = LeadSquaredSimulator(limit=1, window_seconds=60)
    client = await aiohttp_client(sim.app())
    url = f"/api/tenants/{SANDBOX_ORG}/tickets"
    keys = {"X-LSQ-ACCESS-KEY": SANDBOX_ACCESS_KEY, "X-LSQ-SECRET-KEY": SANDBOX_SECRET_KEY}
    ticket = {"TypeId": "1", "RelatedTicketTypeId": 1, "Fields": [{"SchemaName": "LeadDetail.Phone", "Value": "1"}]}
    assert [(await client.post(url, json=ticket, headers=keys)).status for _ in range(2)] == [200, 429]
    await client.delete("/tickets")
    assert (await client.post(url, json=ticket, headers=keys)).status == 200
