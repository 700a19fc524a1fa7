"""Text PostgreSQL's `text` columns refuse (NUL), sent by a provider, through the whole app on PostgreSQL: stored
with the NUL written out, never a 503 that the provider's every retry would meet again."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from bridge.store.postgres import PostgresStore
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import compact, load
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration

CONFIG = """
store: {url: "sqlite:///var/unused.db"}
sources:
  postmark: {kind: postmark}
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


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient, pg_schema: str) -> Any:
    store = PostgresStore(DSN, schema=pg_schema)
    return await bridge_client(write_config(CONFIG, MAPPINGS), store=store, workers=False)


async def test_nul_in_a_dedup_key_is_stored_written_out(client: Any) -> None:
    """A Postmark MessageID (the dedup key) holding `\\u0000` is stored with the NUL written `\\x00`, and the
    same message again is its duplicate; the JSON payload keeps its NUL as it came."""
    data = {**load("postmark/inbound.json"), "MessageID": "id-\u0000-1", "Subject": "Router\u0000down"}
    resp = await client.post("/hooks/postmark", data=compact(data), headers={"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.dedup_key == "id-\\x00-1"
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
