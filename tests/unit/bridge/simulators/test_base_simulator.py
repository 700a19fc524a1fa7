"""What every simulator serves beside the vendor API: tickets listed and reset, `/_received`, `/_faults`, `/_knobs`."""

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
    sim.hold({sim.key: "seeded"})
    client = await aiohttp_client(sim.app())
    for path in ("/tickets", "/"):
        listing = await (await client.get(path)).json()
        assert (listing["count"], listing["tickets"]) == (1, [{sim.key: "seeded"}])
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


@pytest.mark.parametrize("vendor", sorted(registry()))
async def test_every_simulator_serves_its_knobs(aiohttp_client: Any, vendor: str) -> None:
    """`/_knobs` reads the simulator's own knobs, refuses an unknown one with 400 (nothing changed), and DELETE
    puts the defaults back."""
    sim = registry()[vendor]()
    client = await aiohttp_client(sim.app())
    defaults = await (await client.get("/_knobs")).json()
    resp = await client.put("/_knobs", json={"no_such_knob": 1})
    assert resp.status == 400
    assert "no_such_knob" in (await resp.json())["error"]
    assert await (await client.get("/_knobs")).json() == defaults
    assert await (await client.delete("/_knobs")).json() == defaults


async def test_knobs_change_the_simulator(aiohttp_client: Any) -> None:
    """A PUT sets the whole knob struct on the simulator; a wrong type is refused."""
    sim = KaptureSimulator()
    client = await aiohttp_client(sim.app())
    assert (await client.put("/_knobs", json={"auth_key_expired": True})).status == 200
    assert sim.knobs.auth_key_expired is True
    assert (await client.put("/_knobs", json={"auth_key_expired": "yes"})).status == 400
    assert sim.knobs.auth_key_expired is True


@pytest.mark.parametrize("vendor", sorted(registry()))
def test_held_tickets_are_found_by_id_until_dropped(vendor: str) -> None:
    """`ticket` finds a held ticket by its vendor's id; one dropped past `max_tickets`, or by `drop`, is not
    found and not listed, and the listing keeps the order the tickets were made in."""
    sim = registry()[vendor]()
    sim.max_tickets = 2
    made = [{sim.key: f"t{n}"} for n in range(3)]
    for ticket in made:
        sim.hold(ticket)
    assert ([sim.ticket(f"t{n}") for n in range(3)], sim.tickets) == ([None, made[1], made[2]], made[1:])
    assert (sim.drop("t1"), sim.drop("t1"), sim.ticket("t1")) == (made[1], None, None)
    assert sim.listed()["count"] == 1 and sim.tickets == [made[2]]
    sim.clear()
    assert (sim.ticket("t2"), sim.tickets) == (None, [])


@pytest.mark.parametrize("vendor", [v for v, made in sorted(registry().items()) if made.histories])
def test_histories_keep_their_newest_entries_and_their_total_drops_the_oldest_tickets(vendor: str) -> None:
    """A history keeps its newest `max_history` entries; past `max_history_total` entries in all the oldest
    tickets are dropped, and a ticket dropped or deleted no longer counts."""
    sim = registry()[vendor]()
    sim.max_history, sim.max_history_total = 3, 5
    name = sim.histories[-1]
    first, second = ({sim.key: key, name: []} for key in ("t1", "t2"))
    sim.hold(first)
    sim.hold(second)
    sim.add_history(first, name, [1, 2, 3, 4])
    sim.add_history(second, name, [5, 6])
    assert (first[name], sim.tickets) == ([2, 3, 4], [first, second])
    sim.add_history(second, name, [7])
    assert (sim.ticket("t1"), sim.tickets) == (None, [second])
    sim.drop("t2")
    third, fourth = {sim.key: "t3", name: [1, 2, 3, 4]}, {sim.key: "t4", name: [5, 6]}
    sim.hold(third)
    sim.hold(fourth)
    assert (third[name], sim.tickets) == ([2, 3, 4], [third, fourth])
