"""The server's retention sweep: delivered events go once past their limit, pending work stays, and the
sweep is logged and counted in /metrics."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from bridge.config import RetentionConfig
from bridge.errors import NotFound
from bridge.retention import Policy
from bridge.store.base import DeliveryFilter
from bridge.store.rows import now_ms
from tests.acceptance.test_conversations import CHAT, ENV, PROVIDERS_CONFIG, settled
from tests.acceptance.test_metrics import AUTH, samples
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import compact, hub_signature, load

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
admin: {token: letmein}
retention: {events: 0s, attempts: 0s, every: 50ms}
sources:
  contact: {kind: form}
  held: {kind: form}
destinations:
  kapture: {vendor: kapture, sandbox: true}
  unreachable: {vendor: kapture, base_url: "http://127.0.0.1:9", token: t, retry: {schedule: [1h], jitter: 0}}
"""
MAPPINGS = {
    "contact": """
        source: contact
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
    """,
    "held": """
        source: held
        destination: unreachable
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
    """,
}


async def test_the_sweep_purges_delivered_events_and_keeps_pending_ones(write_config: ConfigFactory,
                                                                       bridge_client: AppClient) -> None:
    """Delivered events leave the store at the next sweep once past the limit, with `retention.purged`
    logged and counted by kind; an event still waiting to be delivered stays."""
    with capture_logs() as logs:
        client: Any = await bridge_client(write_config(CONFIG, MAPPINGS))
        rt = runtime(client)
        ids = []
        for source in ("contact", "contact", "held"):
            resp = await client.post(f"/hooks/{source}", data={"subject": "Router down"},
                                     headers={"Accept": "application/json"})
            assert resp.status == 202
            ids.append((await resp.json())["event_id"])
        assert rt.store is not None
        store = rt.store

        async def gone(event_id: str) -> bool:
            try:
                await store.get_event(event_id)
            except NotFound:
                return True
            return False

        async def delivered_gone() -> bool:
            return await gone(ids[0]) and await gone(ids[1])

        await eventually(delivered_gone)

        async def counted() -> bool:
            got = samples(await (await client.get("/metrics", headers=AUTH)).text())
            return got.get('ticketbridge_retention_purged_total{kind="events"}') == 2

        await eventually(counted)
    got = samples(await (await client.get("/metrics", headers=AUTH)).text())
    assert got['ticketbridge_retention_purged_total{kind="deliveries"}'] == 2
    assert not await gone(ids[2])
    waiting = await store.list_deliveries(DeliveryFilter())
    assert [(d.event_id, d.status) for d in waiting] == [(ids[2], "pending")]
    purged = [e for e in logs if e["event"] == "retention.purged"]
    assert sum(e["events"] for e in purged) == 2 and all(e["log_level"] == "info" for e in purged)


DAY_MS = 86_400_000


async def test_a_whatsapp_customers_number_goes_with_the_events_not_the_tickets_limit(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A WhatsApp conversation keeps the customer's phone number as its sender and holds a ticket, but no `[#id]`
    token answers a chat: with the default limits (events 30 days, tickets 90 days) a sweep 40 days on deletes
    it with its messages, rather than keep the number for the tickets' limit."""
    c = await bridge_client(write_config(PROVIDERS_CONFIG, {"chat": CHAT}, ENV))
    data = load("whatsapp/messages.json")
    value = data["entry"][0]["changes"][0]["value"]
    value["messages"] = [{**value["messages"][0], "id": "wamid.0", "text": {"body": "Router down"}}]
    body = compact(data)
    resp = await c.post("/hooks/whatsapp", data=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": hub_signature("wa-secret", body)})
    assert resp.status == 202, await resp.text()
    await settled(c, 1)
    store = runtime(c).store
    number = value["messages"][0]["from"]
    (kept,) = await store.get_conversations(f"chat:{number}")
    assert kept.conversation.ticket_id is not None and kept.conversation.sender == number
    cutoffs = Policy.from_config(RetentionConfig()).cutoffs(now_ms() + 40 * DAY_MS)
    assert cutoffs.tickets_ms is not None and cutoffs.conversations_ms is not None
    assert cutoffs.tickets_ms < kept.conversation.last_message_at_ms < cutoffs.conversations_ms
    purged = [await store.purge(cutoffs, 500) for _ in range(2)]  # the conversation goes with its event, or after
    assert (sum(p.events for p in purged), sum(p.conversations for p in purged)) == (1, 1)
    assert await store.get_conversations(f"chat:{number}") == []
