"""LeadSquared's documented edges through the whole app over real HTTP, with the simulator's knobs: MX
exceptions are not retried, a rate-limit exception inside HTTP 200 is, and a 401 off the gateway host says
it looks like the core API host."""

from __future__ import annotations

from typing import Any

from bridge.simulators.leadsquared import LeadSquaredSimulator
from bridge.store.base import DeliveryDetail
from tests.acceptance.test_vendors import config, post, settle
from tests.conftest import AppClient, ConfigFactory, runtime

MAPPING = {"m": """
    source: events
    destination: dest
    action: create_ticket
    fields:
      LeadDetail.EmailAddress: "{{ payload.email }}"
      Title: "{{ payload.title }}"
"""}


async def one_delivery(client: Any) -> DeliveryDetail:
    await post(client, {"email": "a@b.io", "title": "Router down"})
    [detail] = await settle(client)
    return detail


SANDBOX = "{vendor: leadsquared, sandbox: true, retry: {schedule: [50ms, 50ms, 50ms], jitter: 0}}"


async def test_an_mx_exception_under_a_500_is_dead_at_once(write_config: ConfigFactory,
                                                           bridge_client: AppClient) -> None:
    """MXUnknownException with HTTP 500 is permanent: one attempt, dead, retries left unused."""
    client = await bridge_client(write_config(config(SANDBOX), MAPPING))
    await client.put("/sandbox/leadsquared/_knobs", json={"exception": "MXUnknownException"})
    detail = await one_delivery(client)
    assert [(a.classification, a.http_status) for a in detail.attempts] == [("permanent", 500)]
    assert detail.delivery.last_error == "leadsquared: HTTP 500: MXUnknownException: simulated exception"


async def test_a_rate_limit_exception_inside_200_is_retried_after_the_window(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """MXAPIRateLimitExceededException inside an HTTP 200 is no success: the delivery waits the window (here the
    destination's 0.2 s) and then succeeds."""
    dest = SANDBOX.replace("sandbox: true", "sandbox: true, rate_limit: {requests: 25, per_seconds: 0.2}")
    client = await bridge_client(write_config(config(dest), MAPPING))
    await client.put("/sandbox/leadsquared/_knobs", json={"exception": "MXAPIRateLimitExceededException",
                                                          "exception_status": 200, "exception_count": 1})
    detail = await one_delivery(client)
    assert [(a.classification, a.http_status) for a in detail.attempts] == [("retry", 200), ("success", 200)]
    gap_ms = detail.attempts[1].started_at_ms - detail.attempts[0].started_at_ms
    assert gap_ms >= 200


async def test_a_401_from_a_core_host_names_the_gateway(write_config: ConfigFactory, bridge_client: AppClient,
                                                        aiohttp_server: Any) -> None:
    """A destination whose base_url is not an apigw.service-… host, answered 401, is auth with the core-host
    explanation."""
    sim = LeadSquaredSimulator(orgs={"o"}, keys={"a": "s"})
    sim.knobs.core_host = True
    server = await aiohttp_server(sim.app())
    dest = (f"{{vendor: leadsquared, base_url: \"{server.make_url('')}\", org_id: o, access_key: a, "
            "secret_key: s}")
    client = await bridge_client(write_config(config(dest), MAPPING))
    detail = await one_delivery(client)
    assert [(a.classification, a.http_status) for a in detail.attempts] == [("auth", 401)]
    assert (detail.delivery.last_error or "").startswith(
        "leadsquared: HTTP 401: this looks like the core API host; tickets need the Service CRM gateway host, "
        "and the Service CRM API must be enabled in the account")


async def test_delete_by_numeric_id_through_the_app(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A delete_ticket mapping sends the numeric Id to the trash call; the simulator's ticket is gone and the
    delivery records the Id."""
    mappings = {"m": MAPPING["m"], "delete": """
    source: deletions
    destination: dest
    action: delete_ticket
    fields:
      Id: "{{ payload.id }}"
"""}
    text = config(SANDBOX).replace("events: {kind: json}", "events: {kind: json}\n      deletions: {kind: json}")
    client = await bridge_client(write_config(text, mappings))
    created = await one_delivery(client)
    sim: LeadSquaredSimulator = runtime(client).simulators["leadsquared"]
    assert created.delivery.ticket_id == sim.tickets[0]["Id"]
    resp = await client.post("/hooks/deletions", json={"id": created.delivery.ticket_id})
    assert resp.status == 202
    both = await settle(client, 2)
    assert {(d.delivery.mapping, d.delivery.status, d.delivery.ticket_id) for d in both} == {
        ("m", "succeeded", created.delivery.ticket_id), ("delete", "succeeded", created.delivery.ticket_id)}
    assert (sim.tickets, sim.deleted) == ([], [created.delivery.ticket_id])
