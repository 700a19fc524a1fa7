"""Values PostgreSQL refuses for their data, through the whole app: here a character a LATIN1 database has no
equivalent for (SQLSTATE 22P05), which text from a provider or a vendor may hold and which no layer before the
store writes out. Such a refusal is the data's problem: intake answers 422 naming it (never a 503 that every retry
would meet again), a vendor's answer is recorded in a reduced form (never resent), and the store is not counted
as failing: no `store.failing`, and /readyz stays 200."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from bridge.delivery.dispatcher import MINIMAL_ERROR
from bridge.store.base import DeliveryFilter
from bridge.store.postgres import PostgresStore
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.kapture_answering import delivered
from tests.fixtures.providers import compact, load
from tests.fixtures.threads import post_thread

pytestmark = pytest.mark.integration

UNTRANSLATABLE = ('character with byte sequence 0xf0 0x9f 0x98 0x80 in encoding "UTF8" has no equivalent in '
                  'encoding "LATIN1" (SQLSTATE 22P05)')
"""What PostgreSQL says of 😀 (U+1F600) sent to a LATIN1 database."""
JSON = {"Content-Type": "application/json"}


INTAKE = """
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


def mail(message_id: str) -> bytes:
    """Postmark's inbound post of a mail with this MessageID, its dedup key (a text column)."""
    return compact({**load("postmark/inbound.json"), "MessageID": message_id, "Subject": "Router down \U0001F600"})


async def test_an_event_the_database_refuses_is_a_422_naming_why_and_the_store_stays_ready(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A mail whose MessageID holds 😀, to a LATIN1 database: 422 with the refusal's SQLSTATE (the database's own
    words, which name its tables and indexes, are logged, not sent), saying nothing was stored; counted and
    logged as `intake.store_refused` with the reason, no `store.failing`, /readyz 200; the next mail (its
    subject's 😀 is in the payload, kept as JSON bytes) is stored."""
    client = await bridge_client(write_config(INTAKE, MAPPINGS), store=PostgresStore(latin1_dsn), workers=False)
    rt = runtime(client)
    with capture_logs() as logs:
        resp = await client.post("/hooks/postmark", data=mail("pm-\U0001F600-1"), headers=JSON)
        assert resp.status == 422, await resp.text()
        assert await resp.json() == {
            "accepted": False, "check": "store",
            "error": "the store refused this event's data (SQLSTATE 22P05); nothing of it was stored, and sending "
                     "it again will be refused the same way"}
        assert (await client.get("/readyz")).status == 200
    events = [e["event"] for e in logs]
    assert [e["error"] for e in logs if e["event"] == "intake.store_refused"] == [UNTRANSLATABLE]
    assert "store.failing" not in events and "intake.store_unavailable" not in events
    assert rt.counters.get("intake.store_refused") == 1
    assert rt.store.problem() is None and rt.store.commit_failures == 0
    assert await rt.store.list_deliveries(DeliveryFilter()) == []
    resp = await client.post("/hooks/postmark", data=mail("pm-2"), headers=JSON)
    assert resp.status == 202, await resp.text()
    event = await rt.store.get_event((await resp.json())["event_id"])
    assert event.payload["subject"] == "Router down \U0001F600"


async def test_a_refused_event_among_a_group_is_refused_alone(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """Mails posted at once share one group commit: the one the database refuses gets its 422, the others are
    stored (202), and the store is not counted as failing."""
    client = await bridge_client(write_config(INTAKE, MAPPINGS), store=PostgresStore(latin1_dsn), workers=False)
    rt = runtime(client)
    ids = ["pm-a", "pm-b", "pm-\U0001F600", "pm-c", "pm-d"]
    with capture_logs() as logs:
        answers = await asyncio.gather(*(client.post("/hooks/postmark", data=mail(i), headers=JSON) for i in ids))
    assert [a.status for a in answers] == [202, 202, 422, 202, 202]
    assert len(await rt.store.list_deliveries(DeliveryFilter())) == 4
    assert "store.failing" not in [e["event"] for e in logs]
    assert rt.store.problem() is None and rt.store.commit_failures == 0
    assert (await client.get("/readyz")).status == 200


async def test_an_answer_the_database_refuses_is_recorded_reduced_and_not_sent_again(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """Kapture answers a success whose body holds 😀, to an app on a LATIN1 database: the attempt's full record (its
    excerpt) is refused, so it is recorded reduced: the success stands with its ticket, the excerpt and exchange
    left out, the error naming the refusal. The ticket is made once; no `store.failing`, /readyz 200."""
    sent = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal sent
        sent += 1
        return web.Response(text='[{"status": "success", "ticket_id": 7, "message": "cr\u00e9\u00e9 \U0001F600"}]',
                            content_type="application/json")

    with capture_logs() as logs:
        client, detail = await delivered(write_config, bridge_client, aiohttp_server, PostgresStore(latin1_dsn),
                                         answer)
        assert (await client.get("/readyz")).status == 200
    store = runtime(client).store
    assert (detail.delivery.status, detail.delivery.ticket_id) == ("succeeded", "7")
    (attempt,) = detail.attempts
    assert (attempt.classification, attempt.http_status) == ("success", 200)
    assert (attempt.response_excerpt, attempt.exchange) == (None, None)
    assert attempt.error == (f"this attempt's full record could not be written (the store refused it: "
                             f"{UNTRANSLATABLE}): kept without its response excerpt and exchange")
    assert sent == 1
    events = [e["event"] for e in logs]
    assert "delivery.record_reduced" in events
    assert "store.failing" not in events and "delivery.record_retrying" not in events
    assert store.problem() is None and store.commit_failures == 0


async def test_the_audit_log_is_listed_on_a_database_whose_encoding_lacks_u_ffff(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """The first page of the audit log is asked for without a bound the database must hold (U+FFFF, which LATIN1
    lacks): it lists the changes made, newest first."""
    config = INTAKE.replace('store: {url: "sqlite:///var/unused.db"}',
                            'store: {url: "sqlite:///var/unused.db"}\nadmin: {token: admin-secret}')
    client = await bridge_client(write_config(config, MAPPINGS), store=PostgresStore(latin1_dsn))
    admin = {"Authorization": "Bearer admin-secret"}
    for action in ("pause", "resume"):
        resp = await client.post(f"/admin/api/destinations/kapture/{action}", json={}, headers=admin)
        assert resp.status == 200, await resp.text()
    resp = await client.get("/admin/api/audit", headers=admin)
    assert resp.status == 200, await resp.text()
    assert [e["action"] for e in (await resp.json())["items"]] == ["destination.resume", "destination.pause"]


async def test_a_ticket_id_the_database_refuses_is_recorded_minimal_and_not_sent_again(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """Kapture answers a success whose ticket id holds 😀, to an app on a LATIN1 database: the full record (its
    excerpt) and the reduced one (the ticket id) are refused, so the attempt is recorded minimal: succeeded, its
    classification and status kept, no ticket id, the error saying the record was reduced twice (the ticket id is in
    the log). The ticket is made once; no `store.failing`."""
    sent = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal sent
        sent += 1
        return web.Response(text='[{"status": "success", "ticket_id": "7\U0001F600"}]', content_type="application/json")

    with capture_logs() as logs:
        client, detail = await delivered(write_config, bridge_client, aiohttp_server, PostgresStore(latin1_dsn),
                                         answer)
    store = runtime(client).store
    assert (detail.delivery.status, detail.delivery.ticket_id) == ("succeeded", None)
    (attempt,) = detail.attempts
    assert (attempt.classification, attempt.http_status, attempt.response_excerpt) == ("success", 200, None)
    assert attempt.error == MINIMAL_ERROR
    assert sent == 1
    [minimal] = [e for e in logs if e["event"] == "delivery.record_minimal"]
    assert minimal["ticket_id"] == "7\U0001F600" and "LATIN1" in minimal["error"]
    assert minimal["dropped"] == ["ticket_id"]  # what LATIN1 lacks is left out; not in a conversation: nothing lost
    assert "conversation.ticket_lost" not in [e["event"] for e in logs]
    events = [e["event"] for e in logs]
    assert events.count("delivery.record_reduced") == 1
    assert "delivery.record_failed" not in events and "store.failing" not in events
    assert store.problem() is None and store.commit_failures == 0


LSQ_CASE = {"case": """
    source: events
    destination: lsq
    action: create_ticket
    conversation: "{{ payload.case }}"
    fields:
      LeadDetail.EmailAddress: asha@example.com
      Title: "Case {{ payload.case }}"
    follow_up:
      action: add_note
      fields:
        TextPart: "{{ payload.text }}"
"""}


async def test_a_key_the_database_refuses_leaves_the_conversation_its_ticket_id(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """LeadSquared answers a conversation's create with Id 143 and a Key holding 😀, to an app on a LATIN1 database:
    the full record (its excerpt) and the reduced one (the Key) are refused, so the attempt is recorded minimal,
    keeping Id 143 and the ticket's UUID (plain ASCII) and leaving out the Key (`conversation.ticket_partial`, not
    `conversation.ticket_lost`). The thread's second message is then a note on ticket 143: one ticket, not two."""
    uuid = "27e8259d-0681-4adb-b5e8-14f66a208dd4"
    creates: list[Any] = []
    notes: list[Any] = []

    async def create(request: web.Request) -> web.Response:
        creates.append(await request.json())
        return web.json_response({"Status": "Success", "Id": "143", "TicketId": uuid, "Key": "#143 \U0001F600"})

    async def note(request: web.Request) -> web.Response:
        notes.append(await request.json())
        return web.json_response({"Message": "Activity Created", "RelatedTicketId": "143"})

    vendor = web.Application()
    vendor.router.add_post("/api/tenants/acme/tickets", create)
    vendor.router.add_post("/api/tenants/acme/internalnote/upload", note)
    base = str((await aiohttp_server(vendor)).make_url("")).rstrip("/")
    config = f"""
    server: {{shutdown_grace_seconds: 1}}
    store: {{url: "sqlite:///var/unused.db"}}
    sources:
      events: {{kind: json}}
    destinations:
      lsq: {{vendor: leadsquared, base_url: '{base}', org_id: acme, access_key: ak, secret_key: sk,
             retry: {{schedule: [50ms], jitter: 0}}}}
    """
    with capture_logs() as logs:
        client = await bridge_client(write_config(config, LSQ_CASE), store=PostgresStore(latin1_dsn))
        store = runtime(client).store
        await post_thread(client, store)
    assert len(creates) == 1
    assert [(n["RelatedTicketId"], n["TextPart"]) for n in notes] == [(143, "second")]
    first, second = sorted(await store.list_deliveries(DeliveryFilter()), key=lambda r: r.id)
    assert (first.status, first.ticket_id, first.ticket_key, second.status) == ("succeeded", "143", None, "succeeded")
    (attempt,) = (await store.get_delivery(first.id)).attempts
    assert attempt.error == MINIMAL_ERROR
    assert first.conversation is not None
    (conversation,) = await store.get_conversations(first.conversation)
    assert (conversation.conversation.ticket_id, conversation.conversation.ticket_key,
            conversation.conversation.ticket_uuid) == ("143", None, uuid)
    [minimal] = [e for e in logs if e["event"] == "delivery.record_minimal"]
    assert (minimal["dropped"], minimal["ticket_key"]) == (["ticket_key"], "#143 \U0001F600")
    [partial] = [e for e in logs if e["event"] == "conversation.ticket_partial"]
    assert partial["ticket_id"] == "143"
    events = [e["event"] for e in logs]
    assert "conversation.ticket_lost" not in events and "store.failing" not in events
