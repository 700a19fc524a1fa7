"""The LeadSquared simulator: the ticket envelope it takes, its answers, and its 25-per-window limit."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.simulators.leadsquared import LeadSquaredSimulator
from bridge.vendors.leadsquared import SANDBOX_ACCESS_KEY, SANDBOX_ORG, SANDBOX_SECRET_KEY

URL = f"/api/tenants/{SANDBOX_ORG}/tickets"
KEYS = {"X-LSQ-ACCESS-KEY": SANDBOX_ACCESS_KEY, "X-LSQ-SECRET-KEY": SANDBOX_SECRET_KEY}
TICKET = {"TypeId": "1", "Id": None, "LeadId": None, "RelatedTicketTypeId": 1,
          "Fields": [{"SchemaName": "LeadDetail.EmailAddress", "Value": "a@b.io"},
                     {"SchemaName": "Title", "Value": "Router down"}]}
Client = TestClient[Any, Any]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def start(aiohttp_client: Any, **kwargs: Any) -> tuple[LeadSquaredSimulator, Client]:
    sim = LeadSquaredSimulator(**kwargs)
    return sim, await aiohttp_client(sim.app())


async def post(client: Client, body: Any = TICKET, url: str = URL, headers: dict[str, str] | None = None,
               ) -> tuple[int, Any]:
    resp = await client.post(url, json=body, headers=KEYS if headers is None else headers)
    return resp.status, await resp.json()


async def test_a_ticket_is_created_with_the_documented_answer(aiohttp_client: Any) -> None:
    """A valid ticket gets Status Success, Id, TicketId and Key, and is listed with its envelope."""
    sim, client = await start(aiohttp_client)
    status, body = await post(client)
    assert status == 200
    assert list(body) == ["Status", "ReasonForFailure", "Id", "Message", "TicketId", "Key"]
    assert (body["Status"], body["Id"], body["Key"], body["ReasonForFailure"]) == ("Success", "1", "#001", None)
    assert len(body["TicketId"]) == 36
    listing = await (await client.get("/tickets")).json()
    assert listing["tickets"][0]["Fields"] == TICKET["Fields"]
    assert listing["tickets"][0]["TicketId"] == body["TicketId"]
    assert listing["tickets"] == sim.tickets


@pytest.mark.parametrize(("change", "status", "kind"), [
    ({"headers": {"X-LSQ-ACCESS-KEY": SANDBOX_ACCESS_KEY, "X-LSQ-SECRET-KEY": "wrong"}}, 401,
     "MXUnAuthorizedAccessException"),
    ({"headers": {}}, 401, "MXUnAuthorizedAccessException"),
    ({"url": "/api/tenants/other-org/tickets"}, 404, "MXNotFoundException"),
    ({"body": {"TypeId": "1", "Fields": "Title=x", "RelatedTicketTypeId": 1}}, 400, "MXInvalidInputException"),
    ({"body": {"Fields": []}}, 400, "MXInvalidInputException"),
    ({"body": [TICKET]}, 400, "MXInvalidInputException"),
    ({"body": {**TICKET, "Fields": [{"SchemaName": "Title", "Value": "x"}]}}, 500, "MXInvalidInputException"),
])
async def test_failures(aiohttp_client: Any, change: dict[str, Any], status: int, kind: str) -> None:
    """Bad keys 401, unknown org 404, a body not shaped as documented 400, no lead field 500; nothing created."""
    sim, client = await start(aiohttp_client)
    got, body = await post(client, **change)
    assert (got, body["Status"], body["ExceptionType"]) == (status, "Error", kind)
    assert sim.tickets == []


async def test_a_lead_id_alone_is_enough(aiohttp_client: Any) -> None:
    """A LeadId in the envelope satisfies the one-of-three lead rule."""
    _, client = await start(aiohttp_client)
    body = {**TICKET, "LeadId": "45b5fded", "Fields": [{"SchemaName": "Title", "Value": "x"}]}
    assert (await post(client, body))[0] == 200


async def test_mandatory_fields_are_a_knob(aiohttp_client: Any) -> None:
    """Fields the account marks mandatory are refused when missing, naming them."""
    _, client = await start(aiohttp_client, mandatory_fields=("Title", "Priority"))
    status, body = await post(client)
    assert status == 500
    assert body["ExceptionMessage"] == "Mandatory field(s) missing: Priority"


async def test_the_26th_call_in_5_seconds_gets_429(aiohttp_client: Any) -> None:
    """25 calls within 5 s are served; the 26th gets the documented 429 message; calls refused do not count."""
    clock = FakeClock()
    sim, client = await start(aiohttp_client, clock=clock)
    for n in range(25):
        clock.now += 0.1
        assert (await post(client))[0] == 200, n
    status, body = await post(client)
    assert status == 429
    assert body["ExceptionMessage"] == "API calls exceeded the limit of 25 in 5 second(s)"
    clock.now = 100.1 + 5.0  # the first call is now a full window old
    assert (await post(client))[0] == 200
    assert (await post(client))[0] == 429
    assert [e["status"] for e in sim.received.entries].count(429) == 2
    assert len(sim.tickets) == 26


async def test_the_window_is_configurable(aiohttp_client: Any) -> None:
    """With 2 per 0.5 s, the third call inside half a second is refused, and its message says so."""
    clock = FakeClock()
    _, client = await start(aiohttp_client, limit=2, window_seconds=0.5, clock=clock)
    assert [(await post(client))[0] for _ in range(3)] == [200, 200, 429]
    clock.now += 0.5
    assert [(await post(client))[0] for _ in range(2)] == [200, 200]
    status, body = await post(client)
    assert (status, body["ExceptionMessage"]) == (429, "API calls exceeded the limit of 2 in 0.5 second(s)")
