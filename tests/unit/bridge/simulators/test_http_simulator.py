"""The generic http simulator: any JSON write is stored and answered with an id."""

from __future__ import annotations

import hashlib
from typing import Any

from bridge.simulators.http import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TOKEN_PATH, HttpKnobs, HttpSimulator
from bridge.vendors.files import Part, multipart_body
from tests.fixtures.watched_tickets import hold_watched, reads


async def test_any_json_write_is_stored_and_answered_with_an_id(aiohttp_client: Any) -> None:
    """POST, PUT and PATCH under any path are stored with their method, path and body, answered 201 with an id."""
    sim = HttpSimulator()
    client = await aiohttp_client(sim.app())
    answers = []
    for method, path in (("POST", "/v1/tickets"), ("PATCH", "/v1/tickets/T-1")):
        resp = await client.request(method, path, json={"title": "x"})
        answers.append((resp.status, await resp.json()))
    assert answers == [(201, {"success": True, "data": {"id": "T-1"}}), (201, {"success": True, "data": {"id": "T-2"}})]
    assert [(t["method"], t["path"], t["body"]) for t in sim.tickets] == [
        ("POST", "/v1/tickets", {"title": "x"}), ("PATCH", "/v1/tickets/T-1", {"title": "x"})]
    assert (await (await client.get("/tickets")).json())["count"] == 2


async def test_a_body_that_is_not_json_is_a_400(aiohttp_client: Any) -> None:
    """A write whose body is not JSON is refused and not stored."""
    sim = HttpSimulator()
    client = await aiohttp_client(sim.app())
    resp = await client.post("/x", data=b"<xml/>")
    assert resp.status == 400
    assert sim.tickets == []


async def test_multipart_writes_keep_their_files_and_follow_ups_show_on_their_ticket(aiohttp_client: Any) -> None:
    """A multipart body's JSON part is the body, its files kept with size and sha256; a later write whose path
    names the ticket is added to that ticket's updates."""
    sim = HttpSimulator()
    client = await aiohttp_client(sim.app())
    body, content_type = multipart_body([Part("data", b'{"title": "x"}', content_type="application/json"),
                                         Part("files", b"abc", "a.txt", "text/plain")])
    assert (await client.post("/v1/tickets", data=body, headers={"Content-Type": content_type})).status == 201
    await client.patch("/v1/tickets/T-1/comments", json={"comment": "again"})
    first = sim.tickets[0]
    assert (first["body"], first["files"]) == ({"title": "x"}, [
        {"part": "files", "name": "a.txt", "content_type": "text/plain", "size": 3,
         "sha256": hashlib.sha256(b"abc").hexdigest()}])
    assert [u["body"] for u in first["updates"]] == [{"comment": "again"}]


async def test_a_follow_up_finds_the_tickets_its_path_names_without_reading_the_others(aiohttp_client: Any) -> None:
    """A write whose path names held tickets adds to each of them, found by id: no other ticket held is read."""
    sim = HttpSimulator()
    others = hold_watched(sim, "id", 50, updates=[])
    client = await aiohttp_client(sim.app())
    await client.post("/v1/tickets", json={"title": "x"})
    await client.patch("/v1/tickets/T-1/comments/T-1", json={"comment": "again"})
    assert reads(others) == 0
    made = sim.tickets[-2]
    assert (made["id"], [u["body"] for u in made["updates"]]) == ("T-1", [{"comment": "again"}])


async def test_a_follow_up_naming_a_dropped_ticket_adds_to_none(aiohttp_client: Any) -> None:
    """Past `max_tickets` the oldest ticket is dropped: a write naming it is kept as a new ticket only."""
    sim = HttpSimulator()
    sim.max_tickets = 2
    client = await aiohttp_client(sim.app())
    for _ in range(3):
        await client.post("/v1/tickets", json={"title": "x"})
    await client.patch("/v1/tickets/T-1", json={"comment": "late"})
    assert [(t["id"], t["updates"]) for t in sim.tickets] == [("T-3", []), ("T-4", [])]


async def test_a_ticket_keeps_its_newest_updates(aiohttp_client: Any) -> None:
    """Writes naming a ticket past `max_history` drop its oldest updates."""
    sim = HttpSimulator()
    sim.max_history = 2
    client = await aiohttp_client(sim.app())
    await client.post("/v1/tickets", json={"title": "x"})
    for n in range(3):
        await client.patch("/v1/tickets/T-1", json={"n": n})
    assert [u["body"] for u in sim.tickets[0]["updates"]] == [{"n": 1}, {"n": 2}]


async def test_the_token_endpoint_keeps_the_newest_tokens_live(aiohttp_client: Any) -> None:
    """Past `max_tokens` live tokens a new one forgets the oldest, refused (401 invalid_token) from then on."""
    sim = HttpSimulator()
    sim.knobs = HttpKnobs(oauth2=True)
    sim.max_tokens = 2
    client = await aiohttp_client(sim.app())
    form = {"grant_type": "client_credentials", "client_id": SANDBOX_CLIENT_ID, "client_secret": SANDBOX_CLIENT_SECRET}
    tokens = [(await (await client.post(TOKEN_PATH, data=form)).json())["access_token"] for _ in range(3)]
    statuses = [(await client.post("/t", json={}, headers={"Authorization": f"Bearer {t}"})).status for t in tokens]
    assert (statuses, list(sim.issued)) == ([401, 201, 201], tokens[1:])
