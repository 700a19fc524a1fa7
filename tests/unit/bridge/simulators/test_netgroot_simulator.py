"""The Netgroot ISP CRM simulator: getSubjects, CreateTicket, Login and Logout with their documented answers."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.simulators.netgroot import NO_SUBSCRIBER_TOKEN, SANDBOX_PASSWORD, SANDBOX_USERNAME, NetgrootSimulator
from bridge.vendors.credentials import jwt_expiry
from bridge.vendors.netgroot import CREATE_PATH, LOGIN_PATH, LOGOUT_PATH, SANDBOX_TOKEN, SUBJECTS_PATH, TICKETS_PATH
from tests.fixtures.clocks import ManualClock

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



LOGIN = {"username": SANDBOX_USERNAME, "password": SANDBOX_PASSWORD}


async def test_login_answers_a_jwt_that_expires_after_the_knobs_lifetime(aiohttp_client: Any) -> None:
    """Login answers the documented body with an HS256 JWT whose `exp` is the knob's lifetime away; the token
    files tickets for its subscriber until then and is refused (401) from then on."""
    clock = ManualClock(1_800_000_000.0)
    sim = NetgrootSimulator(clock=clock)
    client = await aiohttp_client(sim.app())
    assert (await client.put("/_knobs", json={"token_lifetime_seconds": 30})).status == 200
    resp = await client.post(LOGIN_PATH, json=LOGIN)
    body = await resp.json()
    assert (resp.status, body["message"], body["subscriber"]["username"]) == (200, "Login successful", "sandbox")
    assert jwt_expiry(body["token"]) == clock.now + 30
    auth = {"Authorization": f"Bearer {body['token']}"}
    assert (await client.post(CREATE_PATH, json=TICKET, headers=auth)).status == 200
    assert sim.tickets[0]["subscriber_id"] == 1
    clock.now += 30
    resp = await client.post(CREATE_PATH, json=TICKET, headers=auth)
    assert (resp.status, await resp.json()) == (401, {"success": False, "message": "Unauthorized"})
    assert sim.expired_refusals == 1


@pytest.mark.parametrize("body", [{"username": "sandbox", "password": "wrong"}, {"username": "nobody",
                                                                                 "password": "x"}, {}])
async def test_bad_credentials_are_refused_as_documented(aiohttp_client: Any, body: dict[str, str]) -> None:
    """A wrong password or unknown user gets 401 `Invalid credentials`, with no `success` key."""
    _, client = await start(aiohttp_client)
    resp = await client.post(LOGIN_PATH, json=body)
    assert (resp.status, await resp.json()) == (401, {"message": "Invalid credentials"})


async def test_logout_revokes_the_token(aiohttp_client: Any) -> None:
    """After Logout with a token, that token is refused; the subscriber's tickets are listed while it lives."""
    sim, client = await start(aiohttp_client)
    token = (await (await client.post(LOGIN_PATH, json=LOGIN)).json())["token"]
    auth = {"Authorization": f"Bearer {token}"}
    await client.post(CREATE_PATH, json=TICKET, headers=auth)
    listed = await (await client.get(TICKETS_PATH, headers=auth)).json()
    assert [t["ticket_id"] for t in listed["data"]] == [101]
    assert (await client.post(LOGOUT_PATH, headers=auth)).status == 200
    assert (await client.get(TICKETS_PATH, headers=auth)).status == 401
    assert sim.logouts == 1


async def test_logins_keep_the_newest_tokens_live(aiohttp_client: Any) -> None:
    """Past `max_tokens` live JWTs a Login forgets the oldest, which is refused (401) from then on."""
    sim, client = await start(aiohttp_client)
    sim.max_tokens = 2
    tokens = [(await (await client.post(LOGIN_PATH, json=LOGIN)).json())["token"] for _ in range(3)]
    statuses = [(await client.get(TICKETS_PATH, headers={"Authorization": f"Bearer {t}"})).status for t in tokens]
    assert (statuses, list(sim.jwts)) == ([401, 200, 200], tokens[1:])
