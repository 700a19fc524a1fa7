"""The server's retention sweep: delivered events go once past their limit, pending work stays, and the
sweep is logged and counted in /metrics."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from bridge.errors import NotFound
from bridge.store.base import DeliveryFilter
from tests.acceptance.test_metrics import AUTH, samples
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

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
