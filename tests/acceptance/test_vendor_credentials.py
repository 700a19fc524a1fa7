"""Credentials with a lifetime through the whole app over real HTTP: a Netgroot destination that logs in keeps
delivering while its simulator expires tokens every second, renews once when a token is revoked, and logs out
at shutdown."""

from __future__ import annotations

from typing import Any

from bridge.simulators.netgroot import NetgrootSimulator
from bridge.store.base import DeliveryDetail, DeliveryFilter
from bridge.vendors.netgroot import SANDBOX_USERNAME
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

ISP = ("{vendor: netgroot, sandbox: true, type_id: 1, status_id: 1, priority_id: 2, group_id: 1, "
       "auth: {login: {username: sandbox, password: '${ISP_PASSWORD}'}}, "
       "retry: {schedule: [50ms, 50ms, 50ms], jitter: 0}}")
CONFIG = f"""
    server: {{shutdown_grace_seconds: 1}}
    store: {{url: "sqlite:///var/bridge.db"}}
    sources:
      events: {{kind: json}}
    destinations:
      isp: {ISP}
    """
MAPPING = {"m": """
    source: events
    destination: isp
    action: create_ticket
    fields:
      subject: "{{ payload.subject }}"
      message: "{{ payload.text }}"
"""}


async def start(write_config: ConfigFactory, bridge_client: AppClient,
                rate_limit_seconds: float | None = None) -> tuple[Any, NetgrootSimulator]:
    """The app delivering `events` to the Netgroot simulator. With `rate_limit_seconds`, the destination allows one
    request in that many seconds and the mapping names its subject by id (no look-up among the requests)."""
    config, mapping = CONFIG, MAPPING
    if rate_limit_seconds is not None:
        limit = f"rate_limit: {{requests: 1, per_seconds: {rate_limit_seconds}}},"
        dest = ISP.replace("type_id: 1,", f"type_id: 1, {limit}")
        config = CONFIG.replace(f"isp: {ISP}", f"isp: {dest}")
        mapping = {"m": MAPPING["m"].replace('subject: "{{ payload.subject }}"', "subject_id: 2")}
    client = await bridge_client(write_config(config, mapping, environ={"ISP_PASSWORD": "sandbox-password"}))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    return client, sim


async def post(client: Any, n: int, first: int) -> None:
    for i in range(first, first + n):
        resp = await client.post("/hooks/events", json={"subject": "Billing Issue", "text": f"event {i}"})
        assert resp.status == 202, await resp.text()


async def all_settled(client: Any, n: int) -> list[DeliveryDetail]:
    store = runtime(client).store

    async def settled() -> bool:
        rows = await store.list_deliveries(DeliveryFilter(limit=1000))
        return len(rows) == n and all(r.status in ("succeeded", "dead") for r in rows)

    await eventually(settled, timeout=20)
    rows = await store.list_deliveries(DeliveryFilter(limit=1000))
    return [await store.get_delivery(r.id) for r in rows]


async def test_login_keeps_delivering_across_token_expiry(write_config: ConfigFactory,
                                                          bridge_client: AppClient) -> None:
    """With tokens that expire every second, events posted over several lifetimes all succeed, none dead, each
    filed for the logged-in subscriber, with one Login per lifetime rather than per request."""
    client, sim = await start(write_config, bridge_client)
    knobs = await client.put("/sandbox/netgroot/_knobs", json={"token_lifetime_seconds": 1})
    assert knobs.status == 200, await knobs.text()
    sent = 0
    while sim.logins < 4:  # three renewals: the run spans at least three expiries
        await post(client, 5, sent)
        sent += 5
        await all_settled(client, sent)
        assert sent < 2000, "no token renewal seen"
    details = await all_settled(client, sent)
    assert [d.delivery.status for d in details if d.delivery.status != "succeeded"] == []
    assert len(sim.tickets) == sent
    assert {t["subscriber_id"] for t in sim.tickets} == {1}
    assert sim.logins < sent  # tokens are shared between deliveries


async def test_a_revoked_token_is_renewed_once_and_the_delivery_succeeds(write_config: ConfigFactory,
                                                                         bridge_client: AppClient) -> None:
    """When the CRM stops honouring a token before its `exp` (a Logout elsewhere), the refused send logs in
    again and is sent once more in the same attempt: the delivery succeeds on its first attempt."""
    client, sim = await start(write_config, bridge_client)
    await post(client, 1, 0)
    await all_settled(client, 1)
    sim.jwts.clear()  # every token the CRM issued is revoked
    await post(client, 1, 1)
    details = await all_settled(client, 2)
    assert [(d.delivery.status, len(d.attempts)) for d in details] == [("succeeded", 1), ("succeeded", 1)]
    assert sim.logins == 2


async def test_a_log_in_waits_for_its_slot_in_the_rate_limit(write_config: ConfigFactory,
                                                              bridge_client: AppClient) -> None:
    """The Login a delivery makes for its token counts against the destination's rate limit, as the ticket it
    files does: with one request allowed in 0.2 s, the CRM sees the Login and the CreateTicket at least 0.2 s
    apart, not back to back."""
    client, sim = await start(write_config, bridge_client, rate_limit_seconds=0.2)
    await post(client, 1, 0)
    (detail,) = await all_settled(client, 1)
    assert detail.delivery.status == "succeeded"
    arrived = [(e["path"].rsplit("/", 1)[-1], e["t"]) for e in sim.received.entries]
    assert [path for path, _ in arrived] == ["Login", "CreateTicket"]
    assert arrived[1][1] - arrived[0][1] >= 0.2


async def test_a_wrong_password_is_auth_and_names_the_fix(write_config: ConfigFactory,
                                                          bridge_client: AppClient) -> None:
    """A refused log-in makes the delivery dead with `auth`, its error naming the keys to fix."""
    client, sim = await start(write_config, bridge_client)
    sim.subscribers = {SANDBOX_USERNAME: ("another-password", 1)}  # the demo log-in's password no longer valid
    await post(client, 1, 0)
    (detail,) = await all_settled(client, 1)
    assert (detail.delivery.status, detail.attempts[0].classification) == ("dead", "auth")
    assert "check auth.login.username and password" in (detail.delivery.last_error or "")


async def test_shutdown_logs_out(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Stopping the app calls Logout with the token in use."""
    client, sim = await start(write_config, bridge_client)
    await post(client, 1, 0)
    await all_settled(client, 1)
    await client.close()
    assert (sim.logouts, sim.jwts) == (1, {})


async def test_the_logout_at_shutdown_waits_for_its_slot_in_the_rate_limit(write_config: ConfigFactory,
                                                                           bridge_client: AppClient) -> None:
    """The Logout made at shutdown counts against the destination's rate limit, as every other request does: with
    one request allowed in 0.3 s, the CRM sees the CreateTicket and the Logout at least 0.3 s apart, not back to
    back, and the token is revoked."""
    client, sim = await start(write_config, bridge_client, rate_limit_seconds=0.3)
    await post(client, 1, 0)
    (detail,) = await all_settled(client, 1)
    assert detail.delivery.status == "succeeded"
    await client.close()
    arrived = [(e["path"].rsplit("/", 1)[-1], e["t"]) for e in sim.received.entries]
    assert [path for path, _ in arrived] == ["Login", "CreateTicket", "Logout"]
    assert arrived[2][1] - arrived[1][1] >= 0.3
    assert (sim.logouts, sim.jwts) == (1, {})


async def test_kapture_expired_key_is_auth(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """With the simulator answering the legacy "Auth Key Expired" / `Fail`, the delivery is auth (one attempt,
    the breaker told), not a permanent rejection of the ticket."""
    config = CONFIG.replace(f"isp: {ISP}", "isp: {vendor: kapture, sandbox: true}")
    mapping = {"m": MAPPING["m"].replace("subject: \"{{ payload.subject }}\"", "title: \"{{ payload.subject }}\"")
               .replace("message:", "ticket_details:")}
    client = await bridge_client(write_config(config, mapping))
    assert (await client.put("/sandbox/kapture/_knobs", json={"auth_key_expired": True})).status == 200
    await post(client, 1, 0)
    (detail,) = await all_settled(client, 1)
    assert [(a.classification, a.http_status) for a in detail.attempts] == [("auth", 200)]
    assert detail.delivery.last_error == "kapture: Auth Key Expired"
