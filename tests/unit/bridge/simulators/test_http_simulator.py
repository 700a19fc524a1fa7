"""The generic http simulator: any JSON write is stored and answered with an id."""

from __future__ import annotations

from typing import Any

from bridge.simulators.http import HttpSimulator


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
