"""Text PostgreSQL's `text` columns refuse (NUL), sent by a provider, through the whole app on PostgreSQL: stored
with the NUL written out, never a 503 that the provider's every retry would meet again."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from bridge.store.base import DeliveryFilter
from bridge.store.postgres import PostgresStore
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import NOW, compact, load, slack_headers
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration

CONFIG = """
store: {url: "sqlite:///var/unused.db"}
sources:
  postmark: {kind: postmark}
  slack: {kind: slack, signing_secret: s3cret}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
MAPPINGS = {"email": """
    source: postmark
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
"""}
FOLLOW_UP = """
    follow_up:
      action: update_ticket
      fields:
        ticket_id: "{{ ticket.id }}"
        sub_status: P
        comment: "{{ payload.text }}"
"""
THREADED = {"email": MAPPINGS["email"] + FOLLOW_UP, "chat": """
    source: slack
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.text }}"
""" + FOLLOW_UP}


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient, pg_schema: str) -> Any:
    store = PostgresStore(DSN, schema=pg_schema)
    return await bridge_client(write_config(CONFIG, MAPPINGS), store=store, workers=False)


async def test_nul_in_a_dedup_key_is_stored_written_out(client: Any) -> None:
    """A Postmark MessageID (the dedup key) holding `\\u0000` is stored written out (`\\0~`, the NUL `\\x00`), and
    the same message again is its duplicate; the JSON payload keeps its NUL as it came."""
    data = {**load("postmark/inbound.json"), "MessageID": "id-\u0000-1", "Subject": "Router\u0000down"}
    resp = await client.post("/hooks/postmark", data=compact(data), headers={"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.dedup_key == "\\0~id-\\x00-1"
    assert event.payload["subject"] == "Router\u0000down"
    again = await client.post("/hooks/postmark", data=compact(data), headers={"Content-Type": "application/json"})
    assert (again.status, (await again.json())["duplicate"]) == (200, True)


async def test_a_dedup_key_longer_than_an_index_row_is_kept_as_its_digest(client: Any) -> None:
    """A MessageID of 5,000 characters (PostgreSQL indexes at most 2,704 bytes of a row, and refused every such
    insert as a store failure: 503s and /readyz down) is kept as its SHA-256, and the same message again is its
    duplicate."""
    data = {**load("postmark/inbound.json"), "MessageID": "9" * 5000}
    resp = await client.post("/hooks/postmark", data=compact(data), headers={"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.dedup_key == "sha256:" + hashlib.sha256(b"9" * 5000).hexdigest()
    again = await client.post("/hooks/postmark", data=compact(data), headers={"Content-Type": "application/json"})
    assert (again.status, (await again.json())["duplicate"]) == (200, True)
    assert (await client.get("/readyz")).status == 200


@pytest.fixture
async def threaded(write_config: ConfigFactory, bridge_client: AppClient, pg_schema: str) -> Any:
    store = PostgresStore(DSN, schema=pg_schema)
    client = await bridge_client(write_config(CONFIG, THREADED), store=store, workers=False)
    runtime(client).sources["slack"].handler.clock = lambda: float(NOW)
    return client


def postmark_mail(n: int, message_id: str, references: str | None = None) -> dict[str, Any]:
    """Postmark's inbound post of a mail with these Message-ID and References (and no `[#id]` subject token)."""
    headers = [{"Name": "Message-ID", "Value": message_id}]
    if references is not None:
        headers.append({"Name": "References", "Value": references})
    return {**load("postmark/inbound.json"), "MessageID": f"pm-{n}", "Subject": "Router down", "Headers": headers}


async def conversation_of(client: Any, event_id: str) -> str | None:
    (row,) = [r for r in await runtime(client).store.list_deliveries(DeliveryFilter()) if r.event_id == event_id]
    return row.conversation


async def test_nul_in_a_message_id_is_one_conversation_written_out(threaded: Any) -> None:
    """A mail whose Message-ID holds `\\u0000` and a reply whose References name it are accepted on PostgreSQL
    and are one conversation, its key written out (`\\0~`, the NUL `\\x00`), found by the key as it came and as
    it is shown; the payload keeps the NUL as it came."""
    root = "<root\u0000.1@Mail.Example.com>"
    ids = []
    for mail in (postmark_mail(0, root), postmark_mail(1, "<reply.2@mail.example.com>", root)):
        resp = await threaded.post("/hooks/postmark", data=compact(mail), headers={"Content-Type": "application/json"})
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["event_id"])
    key = "mail:root\\x00.1@mail.example.com"
    assert [await conversation_of(threaded, i) for i in ids] == [f"\\0~email|{key}"] * 2
    for asked in ("mail:root\x00.1@mail.example.com", f"\\0~{key}"):
        (conversation,) = await runtime(threaded).store.get_conversations(asked)
        assert (conversation.conversation.key, conversation.conversation.messages) == (f"\\0~{key}", 2)
    first = await runtime(threaded).store.get_event(ids[0])
    assert first.payload["message_id"] == root


async def test_nul_in_a_chat_conversation_id_is_one_conversation_written_out(threaded: Any) -> None:
    """Two Slack messages from one person in a channel whose id holds `\\u0000` are accepted on PostgreSQL and
    are one conversation, its key written out (`\\0~`, the NUL `\\x00`)."""
    ids = []
    for n in range(2):
        data = load("slack/message.json")
        data["event"] = {**data["event"], "channel": "D024\u0000BE91L", "client_msg_id": f"m-{n}",
                         "ts": f"1717408960.00020{n}"}  # two messages: Slack's ts is each one's id in its channel
        data["event_id"] = f"Ev-{n}"
        body = compact(data)
        resp = await threaded.post("/hooks/slack", data=body, headers=slack_headers("s3cret", body))
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["event_id"])
    key = "chat:D024\\x00BE91L/U061F7AUR"
    assert [await conversation_of(threaded, i) for i in ids] == [f"\\0~chat|{key}"] * 2
    (conversation,) = await runtime(threaded).store.get_conversations(f"\\0~{key}")
    assert conversation.conversation.messages == 2
