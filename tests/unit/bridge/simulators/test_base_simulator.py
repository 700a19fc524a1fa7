"""What every simulator serves beside the vendor API: tickets listed and reset, `/_received`, `/_faults`, `/_knobs`."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from bridge.simulators import registry, serving
from bridge.simulators.base import VendorSimulator
from bridge.simulators.kapture import KaptureSimulator
from bridge.simulators.leadsquared import LeadSquaredSimulator
from bridge.vendors.kapture import PULL_PATH, SANDBOX_TOKEN
from bridge.vendors.leadsquared import SANDBOX_ACCESS_KEY, SANDBOX_ORG, SANDBOX_SECRET_KEY
from tests.fixtures.ticket_weight import ticket_weight


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


async def test_the_standalone_sandbox_answers_health_probes(aiohttp_client: Any) -> None:
    """`ticketbridge sandbox` (every simulator under /{vendor}/) answers /healthz and /readyz with 200, what a
    container's health check and an orchestrator's probes ask of the deploy kits' shared sandbox."""
    client = await aiohttp_client(serving(sorted(registry())))
    for path in ("/healthz", "/readyz"):
        resp = await client.get(path)
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert (await (await client.get("/kapture/tickets")).json())["count"] == 0


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


def held_json(sim: VendorSimulator) -> int:
    """What the tickets held weigh, each encoded afresh."""
    return sum(len(msgspec.json.encode(t)) for t in sim.tickets)


@pytest.mark.parametrize("vendor", sorted(registry()))
def test_past_max_ticket_bytes_the_oldest_tickets_are_dropped(vendor: str) -> None:
    """Tickets weighing more than `max_ticket_bytes` in all drop the oldest first, however few they are; the
    entry bound still holds beside it."""
    sim = registry()[vendor]()
    made = [{sim.key: f"t{n}", "body": "x" * 100} for n in range(4)]
    one = len(msgspec.json.encode(made[0]))
    sim.max_ticket_bytes = 2 * one + 10
    for ticket in made:
        sim.hold(ticket)
    assert (sim.tickets, sim.held_bytes) == (made[2:], 2 * one)
    sim.max_ticket_bytes, sim.max_tickets = 10 * one, 1
    sim.hold({sim.key: "t4"})
    assert sim.tickets == [{sim.key: "t4"}]


@pytest.mark.parametrize("vendor", sorted(registry()))
def test_a_ticket_heavier_than_the_budget_is_held_alone(vendor: str) -> None:
    """The newest ticket is never dropped for its bytes: heavier than the whole budget, it is held alone."""
    sim = registry()[vendor]()
    sim.max_ticket_bytes = 100
    sim.hold({sim.key: "small"})
    heavy = {sim.key: "heavy", "body": "x" * 1000}
    sim.hold(heavy)
    assert (sim.tickets, sim.held_bytes) == ([heavy], held_json(sim))


@pytest.mark.parametrize("vendor", [v for v, made in sorted(registry().items()) if made.histories])
def test_alone_over_the_budget_a_ticket_keeps_the_newest_entry_of_each_history(vendor: str) -> None:
    """A ticket held alone past the budget drops its heaviest history's oldest entries first, down to the newest
    of each; when that is not enough, it is dropped itself: whoever sends its follow-ups cannot grow it past the
    budget."""
    sim = registry()[vendor]()
    first, last = sim.histories[0], sim.histories[-1]
    ticket: dict[str, Any] = {sim.key: "t", **{name: [] for name in sim.histories}}
    sim.hold(ticket)
    sim.max_ticket_bytes = len(msgspec.json.encode(ticket)) + 300
    sim.add_history(ticket, first, ["a" * 50] * 3)
    assert (ticket[first], sim.held_bytes) == (["a" * 50] * 3, held_json(sim))
    sim.add_history(ticket, last, ["b" * 100, "c" * 100])
    if first == last:  # the one history drops its oldest
        assert ticket[last] == ["a" * 50, "b" * 100, "c" * 100]
    else:  # the heaviest drops its oldest, even one just added
        assert (ticket[first], ticket[last]) == (["a" * 50] * 3, ["c" * 100])
    assert sim.held_bytes == held_json(sim) <= sim.max_ticket_bytes
    sim.add_history(ticket, last, ["d" * 400])  # its newest entry alone is past the budget
    assert (sim.tickets, sim.held_bytes, held_json(sim)) == ([], 0, 0)


def test_a_merge_replaces_a_field_the_ticket_holds_and_never_a_history() -> None:
    """`change_by` takes the caller's weighing of a replaced field; a new field or a history is refused (their
    weight would be wrong), and `change` refuses a history."""
    sim = LeadSquaredSimulator()
    ticket: dict[str, Any] = {"Id": "1", "Fields": [], "Notes": []}
    sim.hold(ticket)
    for name in ("Notes", "New"):
        with pytest.raises(ValueError, match=f"'{name}' is not a field the ticket holds"):
            sim.change_by(ticket, name, [], 0)
    with pytest.raises(ValueError, match="'Notes' is a history"):
        sim.change(ticket, Notes=["x"])
    assert (ticket, sim.held_bytes) == ({"Id": "1", "Fields": [], "Notes": []}, held_json(sim))


def random_value(rng: random.Random) -> Any:
    return rng.choice([lambda: "é" * rng.randrange(60), lambda: rng.randrange(10 ** 6), lambda: None,
                       lambda: {"k": "v" * rng.randrange(30), "n": [1, 2]}, lambda: [rng.random()]])()


@pytest.mark.parametrize("vendor", sorted(registry()))
def test_the_weight_kept_is_the_tickets_weighed_afresh_after_any_changes(vendor: str) -> None:
    """A seeded random run of holds (new and again), history entries added, drops, field changes, merges and
    clears, under small bounds that all trim: the weight kept always equals the held tickets encoded afresh."""
    rng = random.Random(f"{vendor}-20240419")
    sim = registry()[vendor]()
    sim.max_tickets, sim.max_history, sim.max_history_total, sim.max_ticket_bytes = 6, 4, 15, 700
    for step in range(3_000):
        held = sim.tickets
        kind = rng.randrange(20) if held else 0
        if kind < 5:
            sim.hold({sim.key: f"t{rng.randrange(12)}", "body": random_value(rng),
                      **{name: [random_value(rng) for _ in range(rng.randrange(6))] for name in sim.histories}})
        elif kind < 12 and sim.histories:
            ticket = rng.choice(held)
            sim.add_history(ticket, rng.choice(sim.histories), [random_value(rng) for _ in range(rng.randrange(6))])
        elif kind < 15:
            sim.change(rng.choice(held), **{f"f{rng.randrange(3)}": random_value(rng),
                                            "body": random_value(rng)})
        elif kind < 17:
            ticket = rng.choice(held)
            merged = [*ticket.get("merged", []), random_value(rng)]
            grown = len(msgspec.json.encode(merged)) - len(msgspec.json.encode(ticket["merged"])) \
                if "merged" in ticket else len(msgspec.json.encode({"merged": merged})) - 1
            if "merged" in ticket:
                sim.change_by(ticket, "merged", merged, grown)
            else:
                sim.change(ticket, merged=merged)
        elif kind < 19:
            sim.drop(rng.choice(held)[sim.key])
        elif step % 7 == 0:
            sim.clear()
        assert sim.held_bytes == held_json(sim) == sum(ticket_weight(t, sim.histories) for t in sim.tickets)
        assert sim.held_entries == sum(len(t[name]) for t in sim.tickets for name in sim.histories)
        assert len(sim.tickets) <= sim.max_tickets
        assert all(len(t[name]) <= sim.max_history for t in sim.tickets for name in sim.histories)
        assert len(sim.tickets) == 1 or sim.held_bytes <= sim.max_ticket_bytes


@pytest.mark.parametrize("vendor", sorted(registry()))
async def test_a_content_type_header_aiohttp_cannot_read_is_a_400_on_every_vendor_route(
        aiohttp_client: Any, vendor: str) -> None:
    """aiohttp reads Content-Type with the email package's parser, which raises on some malformed parameters
    wherever a body is read as text, JSON or a form: each vendor route answers 400, never a 500."""
    import re

    sim = registry()[vendor]()
    client = await aiohttp_client(sim.app())
    routes = [(method, re.sub(r"\{[^}]*\}", "1", path)) for method, path, _h in sim.vendor_routes()
              if method in ("POST", "PUT")]
    assert routes
    for method, path in routes:
        resp = await client.request(method, path, data=b"{}", headers={"Content-Type": "application/json; x=;+*"})
        assert resp.status == 400, (method, path, resp.status, await resp.text())
