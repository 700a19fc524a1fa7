"""A conversation's first message whose record the store refused twice, through the whole app on SQLite and on
PostgreSQL: its minimal record keeps the ticket id the vendor gave (plain ASCII, which every store takes), so the
thread's next message is sent as a follow-up of that ticket, not as a second ticket for the customer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from bridge.delivery.dispatcher import MINIMAL_ERROR
from bridge.errors import StoreRefused
from bridge.store.base import AttemptResult, DeliveryFilter
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from bridge.vendors.kapture import CREATE_PATH, UPDATE_PATH
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.threads import post_thread
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration

MAPPINGS = {"case": """
    source: events
    destination: kapture
    action: create_ticket
    conversation: "{{ payload.case }}"
    fields:
      title: "Case {{ payload.case }}"
    follow_up:
      action: update_ticket
      fields:
        ticket_id: "{{ ticket.id }}"
        sub_status: P
        comment: "{{ payload.text }}"
"""}


def refusal(refused: list[AttemptResult], result: AttemptResult) -> None:
    """Refuse, for its data, the full and the reduced record of the first attempt (as a LATIN1 database refuses text
    it has no equivalent for); take every later record."""
    if len(refused) < 2:
        refused.append(result)
        raise StoreRefused(f"refused on purpose (SQLSTATE 22P05): try {len(refused)}", "SQLSTATE 22P05")


class RefusingSqlite(SqliteStore):
    refused: list[AttemptResult]

    async def record(self, result: AttemptResult, *, owner: str | None = None,
                     token: int | None = None) -> None:
        refusal(self.refused, result)
        await super().record(result, owner=owner, token=token)


class RefusingPostgres(PostgresStore):
    refused: list[AttemptResult]

    async def record(self, result: AttemptResult, *, owner: str | None = None,
                     token: int | None = None) -> None:
        refusal(self.refused, result)
        await super().record(result, owner=owner, token=token)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RefusingSqlite | RefusingPostgres:
    if request.param == "sqlite":
        made: RefusingSqlite | RefusingPostgres = RefusingSqlite(tmp_path / "bridge.db")
    else:
        made = RefusingPostgres(DSN, schema=request.getfixturevalue("pg_schema"))
    made.refused = []
    return made


async def test_a_thread_s_next_message_is_a_follow_up_after_its_first_was_recorded_minimal(
    store: RefusingSqlite | RefusingPostgres, write_config: ConfigFactory, bridge_client: AppClient,
    aiohttp_server: Any,
) -> None:
    """The first message's create succeeds as ticket 7; its full and reduced records are refused, so it is recorded
    minimal, keeping ticket 7: the conversation has it, and the second message goes to Kapture as an update of
    ticket 7. One create, one update; no `conversation.ticket_lost`."""
    creates: list[Any] = []
    updates: list[Any] = []

    async def create(request: web.Request) -> web.Response:
        creates.append(await request.json())
        return web.json_response([{"status": "success", "ticket_id": 7, "message": "created"}])

    async def update(request: web.Request) -> web.Response:
        updates.append(await request.json())
        return web.json_response([{"status": "success", "ticket_id": 7}])

    vendor = web.Application()
    vendor.router.add_post(CREATE_PATH, create)
    vendor.router.add_post(UPDATE_PATH, update)
    base = str((await aiohttp_server(vendor)).make_url("")).rstrip("/")
    config = f"""
    server: {{shutdown_grace_seconds: 1}}
    store: {{url: "sqlite:///var/unused.db"}}
    sources:
      events: {{kind: json}}
    destinations:
      kapture: {{vendor: kapture, base_url: '{base}', token: k3y, retry: {{schedule: [50ms], jitter: 0}}}}
    """
    with capture_logs() as logs:
        client = await bridge_client(write_config(config, MAPPINGS), store=store)
        kept = runtime(client).store
        await post_thread(client, kept)
    assert len(store.refused) == 2
    assert len(creates) == 1 and creates[0][0]["title"] == "Case c1"
    assert [(u[0]["ticket_id"], u[0]["comment"]) for u in updates] == [("7", "second")]
    rows = sorted(await kept.list_deliveries(DeliveryFilter()), key=lambda r: r.id)
    assert [(r.status, r.ticket_id) for r in rows] == [("succeeded", "7"), ("succeeded", "7")]
    first = await kept.get_delivery(rows[0].id)
    assert [a.error for a in first.attempts] == [MINIMAL_ERROR]
    assert rows[0].conversation is not None
    (conversation,) = await kept.get_conversations(rows[0].conversation)
    assert conversation.conversation.ticket_id == "7"
    events = [e["event"] for e in logs]
    assert events.count("delivery.record_minimal") == 1
    assert "conversation.ticket_lost" not in events and "delivery.record_failed" not in events
