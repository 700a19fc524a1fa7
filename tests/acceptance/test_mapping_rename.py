"""A renamed mapping on a running server: the reload that removes the old name warns of the work it strands,
and `replay --rerender` with the new mapping (`rerender_mapping`) sends a stranded follow-up on its ticket."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = f"""
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: {TOKEN}}}
sources:
  chat: {{kind: json}}
destinations:
  kapture: {{vendor: kapture, sandbox: true, retry: {{schedule: [50ms]}}}}
"""
CHAT = """
name: chat-old
source: chat
destination: kapture
action: create_ticket
conversation: "{{ payload.thread }}"
fields:
  title: "Chat {{ payload.thread }}"
  email_id: "{{ payload.from }}"
  ticket_details: "{{ payload.text }}"
follow_up:
  action: update_ticket
  fields:
    ticket_id: "{{ ticket.id }}"
    sub_status: P
    comment: "{{ payload.text }}"
"""


async def post(client: Any, text: str) -> None:
    resp = await client.post("/hooks/chat", json={"thread": "t-1", "from": "asha@example.com", "text": text})
    assert resp.status == 202, await resp.text()


async def replay(client: Any, **body: Any) -> tuple[int, Any]:
    resp = await client.post("/admin/api/replay", json=body, headers=ADMIN)
    return resp.status, await resp.json()


async def test_a_renamed_mapping_warns_and_its_stranded_follow_up_is_sent_with_the_new_one(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """Renaming a threaded mapping while a follow-up waits: the reload logs the old name with its pending
    delivery and open conversation; the follow-up goes dead when claimed; a re-render with its own mapping is
    refused, pointing at `rerender_mapping`, and one with the new mapping sends it on the same ticket."""
    client = await bridge_client(write_config(CONFIG, {"chat-old": CHAT}))
    rt = runtime(client)
    store = rt.store
    assert store is not None
    await post(client, "My router is down")

    async def statuses() -> list[tuple[str, str, str | None]]:
        rows = await store.list_deliveries(DeliveryFilter(limit=10))
        return [(r.status, r.mapping, r.last_error) for r in reversed(rows)]

    await eventually(lambda: _first_is(statuses, "succeeded"))
    resp = await client.post("/admin/api/destinations/kapture/pause", json={"reason": "rename"}, headers=ADMIN)
    assert resp.status == 200
    await post(client, "Still down")
    [follow_up] = [r.id for r in await store.list_deliveries(DeliveryFilter(status="pending"))]

    folder = tmp_path / "mappings"
    with capture_logs() as logs:
        (folder / "chat-new.yaml").write_text(textwrap.dedent(CHAT.replace("name: chat-old", "name: chat-new")))
        (folder / "chat-old.yaml").unlink()
        await eventually(lambda: sorted(rt.mappings.mappings) == ["chat-new"])
        await eventually(lambda: any(e["event"] == "mappings.removed_with_work" for e in logs))
    [warned] = [e for e in logs if e["event"] == "mappings.removed_with_work"]
    assert (warned["log_level"], warned["mapping"]) == ("warning", "chat-old")
    assert (warned["pending"], warned["in_flight"], warned["conversations"]) == (1, 0, 1)
    assert "--mapping NEW" in warned["note"]

    resp = await client.post("/admin/api/destinations/kapture/resume", headers=ADMIN)
    assert resp.status == 200
    await eventually(lambda: _first_is(statuses, "dead", at=1))
    assert (await statuses())[1][2] == "not sent: mapping 'chat-old' is no longer loaded"

    status, body = await replay(client, ids=[follow_up], rerender=True)
    assert status == 200 and body["replayed"] == []
    assert "--mapping NEW" in body["refused"][0]["reason"]
    status, body = await replay(client, ids=[follow_up], rerender=True, rerender_mapping="nope")
    assert status == 409 and "'nope'" in body["error"] and "loaded: chat-new" in body["error"]

    status, body = await replay(client, ids=[follow_up], rerender_mapping="chat-new")  # it re-renders
    assert (status, body["replayed"], body["refused"]) == (200, [follow_up], [])
    await eventually(lambda: _first_is(statuses, "succeeded", at=1))
    detail = await store.get_delivery(follow_up)
    assert (detail.delivery.mapping, detail.delivery.role, detail.delivery.action) == (
        "chat-new", "follow_up", "update_ticket")
    [ticket] = rt.simulators["kapture"].tickets
    assert ticket["comments"] == ["Still down"]
    [entry] = (await (await client.get("/admin/api/audit", headers=ADMIN)).json())["items"][:1]
    assert entry["detail"]["mapping"] == "chat-new"


async def _first_is(statuses: Any, status: str, at: int = 0) -> bool:
    rows = await statuses()
    return len(rows) > at and rows[at][0] == status
