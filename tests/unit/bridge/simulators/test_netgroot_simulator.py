"""The Netgroot ISP CRM simulator: getSubjects and CreateTicket with their documented answers."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.simulators.netgroot import NO_SUBSCRIBER_TOKEN, NetgrootSimulator
from bridge.vendors.netgroot import CREATE_PATH, SANDBOX_TOKEN, SUBJECTS_PATH

AUTH = {"Authorization": f"Bearer {SANDBOX_TOKEN}"}
TICKET = {"subject_id": 1, "type_id": 1, "status_id": 1, "priority_id": 1, "group_id": 1,
          "message": "Internet is not working since yesterday."}
Client = TestClient[Any, Any]


async def start(aiohttp_client: Any) -> tuple[NetgrootSimulator, Client]:
    sim = NetgrootSimulator()
    return sim, await aiohttp_client(sim.app())


async def test_subjects_answer_as_documented(aiohttp_client: Any) -> None:
    """getSubjects lists subject ids and names under `data`, starting with the documented two."""
    sim, client = await start(aiohttp_client)
    resp = await client.get(SUBJECTS_PATH, headers=AUTH)
    body = await resp.json()
    assert (resp.status, body["success"]) == (200, True)
    assert body["data"][:2] == [{"subject_id": 1, "name": "Technical Support"},
                                {"subject_id": 2, "name": "Billing Issue"}]
    assert sim.subject_requests == 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {SANDBOX_TOKEN}"}])
async def test_bad_tokens_are_unauthorized(aiohttp_client: Any, headers: dict[str, str]) -> None:
    """A missing or wrong bearer token gets the documented 401 on both endpoints."""
    _, client = await start(aiohttp_client)
    for resp in (await client.get(SUBJECTS_PATH, headers=headers),
                 await client.post(CREATE_PATH, json=TICKET, headers=headers)):
        assert (resp.status, await resp.json()) == (401, {"success": False, "message": "Unauthorized"})


async def test_a_ticket_is_created_as_documented(aiohttp_client: Any) -> None:
    """A valid ticket gets the documented success with data.ticket_id from 101, and is listed."""
    sim, client = await start(aiohttp_client)
    resp = await client.post(CREATE_PATH, json=TICKET, headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {"success": True, "message": "Ticket created successfully",
                                                      "data": {"ticket_id": 101, "status": "Open"}})
    assert sim.tickets[0]["subject"] == "Technical Support"
    assert sim.tickets[0]["subscriber_id"] == 1


async def test_a_token_without_subscriber_is_not_found(aiohttp_client: Any) -> None:
    """A valid key whose subscriber does not exist gets the documented 404 Subscriber not found."""
    _, client = await start(aiohttp_client)
    resp = await client.post(CREATE_PATH, json=TICKET, headers={"Authorization": f"Bearer {NO_SUBSCRIBER_TOKEN}"})
    assert (resp.status, await resp.json()) == (404, {"success": False, "message": "Subscriber not found"})


@pytest.mark.parametrize("change", [{"subject_id": "1"}, {"subject_id": 99}, {"type_id": True}, {"group_id": 0},
                                    {"message": ""}, {"message": None}, {"priority_id": None}])
async def test_invalid_data_is_a_400(aiohttp_client: Any, change: dict[str, Any]) -> None:
    """An id that is not a known positive integer, or an empty message, gets the documented 400."""
    sim, client = await start(aiohttp_client)
    resp = await client.post(CREATE_PATH, json={**TICKET, **change}, headers=AUTH)
    assert (resp.status, await resp.json()) == (400, {"success": False, "message": "Invalid request data"})
    assert sim.tickets == []
