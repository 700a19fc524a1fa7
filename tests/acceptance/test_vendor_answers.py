"""What ticketbridge makes of a vendor's answer that is neither plainly a success nor plainly a failure, through the
whole app over real HTTP to a stand-in vendor: an unrequested `101 Switching Protocols` (the outcome is unknown, the
delivery in doubt, its connection never used again), and a success whose ticket id is an object (a success without
the id, said in the attempt's record, the log and /metrics)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aiohttp import web

from bridge.store.base import DeliveryDetail, DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.kapture_answering import MAPPING as KAPTURE_MAPPING
from tests.fixtures.kapture_answering import answering, kapture_answering
from tests.fixtures.threads import commented_thread

TOKEN = "letmein"
SUCCESS = json.dumps([{"status": "success", "ticket_id": "713516551148"}]).encode()


def config(destination: str) -> str:
    return f"""
    server: {{shutdown_grace_seconds: 1}}
    store: {{url: "sqlite:///var/bridge.db"}}
    admin: {{token: "{TOKEN}"}}
    sources:
      events: {{kind: json}}
    destinations:
      {destination}
    """


async def settled(client: Any, n: int) -> list[DeliveryDetail]:
    """The first `n` deliveries once each is succeeded or dead, oldest first."""
    store = runtime(client).store

    async def details() -> list[DeliveryDetail]:
        rows = await store.list_deliveries(DeliveryFilter(limit=100))
        return [await store.get_delivery(r.id) for r in reversed(rows)]

    async def done() -> bool:
        found = await details()
        return len(found) == n and all(d.delivery.status in ("succeeded", "dead") for d in found)

    await eventually(done)
    return await details()


@asynccontextmanager
async def switching_vendor(first: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """A Kapture stand-in on a bare socket, keeping its connections open: it answers the first request `first` and
    every later one a success. Yields its base URL and, for each request, the number of the connection it came on."""
    came_on: list[int] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                came_on.append(mine)
                writer.write(first if len(came_on) == 1 else b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(SUCCESS), SUCCESS))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", came_on
    finally:
        server.close()


async def test_an_unrequested_101_is_an_unknown_outcome_and_its_connection_is_not_reused(
    write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A create answered `101 Switching Protocols` (which ticketbridge never asks for) is not dead: the attempt is
    recorded `unknown` with HTTP 101 and why, the delivery is in doubt and settled by the destination's
    `on_unknown` (Kapture without a reference: resend, counted as a possible duplicate), and the resend goes out on
    a new connection: the one that brought the 101 (with a body after it) never carries another request."""
    first = b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 5\r\n\r\nhello"
    async with switching_vendor(first) as (base, came_on):
        dest = f"kapture: {{vendor: kapture, base_url: '{base}', token: k3y, retry: {{schedule: [50ms], jitter: 0}}}}"
        client = await bridge_client(write_config(config(dest), KAPTURE_MAPPING))
        with structlog.testing.capture_logs() as logs:
            resp = await client.post("/hooks/events", json={"title": "Router down"})
            assert resp.status == 202, await resp.text()
            (detail,) = await settled(client, 1)
    row = detail.delivery
    assert (row.status, row.ticket_id, row.unknowns, row.duplicates, row.in_doubt_since_ms) == (
        "succeeded", "713516551148", 1, 1, None)
    unknown, success = detail.attempts
    assert (unknown.classification, unknown.http_status, success.classification) == ("unknown", 101, "success")
    assert unknown.error is not None and unknown.error.startswith("HTTP 101 (Switching Protocols")
    assert "the vendor may have acted on the request" in unknown.error
    assert came_on == [1, 2]
    (said,) = [e for e in logs if e["event"] == "delivery.outcome_unknown"]
    assert said["log_level"] == "warning" and "HTTP 101" in said["error"]
    assert not [e for e in logs if e["event"] == "delivery.dead"]


THREADED = {"chat": commented_thread("events")}


async def threaded_app(write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
                       tickets: Callable[[web.Request], Awaitable[web.Response]]) -> Any:
    """The app threading `events` by case to an `http` destination (ticket id at `data.id`) on a stand-in vendor
    whose `POST /tickets` is `tickets`."""
    base = await answering(aiohttp_server, {"/tickets": tickets})
    dest = f"api: {{vendor: http, base_url: '{base}', path: /tickets, ticket_id_path: data.id}}"
    return await bridge_client(write_config(config(dest), THREADED))


async def two_messages(client: Any) -> list[DeliveryDetail]:
    """Two messages of conversation `c-1`, each accepted, the second posted once the first's delivery is settled;
    both deliveries once settled, oldest first."""
    resp = await client.post("/hooks/events", json={"case": "c-1", "text": "Router down"})
    assert resp.status == 202, await resp.text()
    await settled(client, 1)
    resp = await client.post("/hooks/events", json={"case": "c-1", "text": "Still down"})
    assert resp.status == 202, await resp.text()
    return await settled(client, 2)


async def test_a_create_whose_ticket_id_is_an_object_succeeds_loudly_without_it(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """A conversation's create answered 201 with `data.id` an object is a success (not sent again: the ticket was
    made) without a ticket id: the attempt's error names the path, the value and what follows (the conversation's
    next message creates a new ticket), `conversation.ticket_lost` is logged as an error (as when a minimal record
    leaves the id out: one event, one level, what operators alert on), /metrics counts it in
    `ticketbridge_delivery_ticket_ids_dropped_total`, and the next message is indeed a create."""
    paths: list[str] = []

    async def tickets(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.json_response({"data": {"id": {"number": 5, "prefix": "T"}}}, status=201)

    client = await threaded_app(write_config, bridge_client, aiohttp_server, tickets)
    with structlog.testing.capture_logs() as logs:
        first, second = await two_messages(client)
    row = first.delivery
    assert (row.status, row.ticket_id, row.role) == ("succeeded", None, "create")
    (attempt,) = first.attempts
    assert (attempt.classification, attempt.http_status) == ("success", 201)
    assert attempt.error == (
        "the answer's ticket id at `data.id` is an object ({\"number\":5,\"prefix\":\"T\"}), not kept (an id is a "
        "whole number or non-blank text of at most 256 characters, no NUL); the conversation has no ticket, so its "
        "next message will create a new ticket; find the ticket at the vendor and give it with `ticketbridge "
        "deliveries set-ticket ID --ticket-id T`")
    assert row.last_error == attempt.error
    lost = [e for e in logs if e["event"] == "conversation.ticket_lost"]
    assert len(lost) == 2 and all(e["log_level"] == "error" for e in lost)
    assert lost[0]["conversation"] == row.conversation and "`data.id` is an object" in lost[0]["error"]
    assert (second.delivery.role, paths) == ("create", ["/tickets", "/tickets"])
    metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert 'ticketbridge_delivery_ticket_ids_dropped_total{destination="api"} 2' in (await metrics.text())


async def test_a_create_answered_without_a_ticket_id_is_counted_logged_shown_and_its_next_message_creates(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """A conversation's create answered 201 with no `data.id` at all (the destination's `ticket_id_path`) is a
    success without a ticket id, not silently: the attempt's error says what is missing and what follows,
    `delivery.ticket_id_missing` is logged as a warning with the delivery's and event's ids, /metrics counts it in
    `ticketbridge_delivery_ticket_ids_missing_total`, the admin API shows `ticket_missing` on the delivery, and the
    conversation's next message is sent as a new ticket (a create), whose id the conversation then keeps."""
    paths: list[str] = []

    async def tickets(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.json_response({"data": {} if len(paths) == 1 else {"id": 8}}, status=201)

    client = await threaded_app(write_config, bridge_client, aiohttp_server, tickets)
    with structlog.testing.capture_logs() as logs:
        first, second = await two_messages(client)
    row = first.delivery
    assert (row.status, row.ticket_id, row.role, row.ticket_missing) == ("succeeded", None, "create", True)
    assert row.last_error == (
        "the vendor's answer gave no ticket id (at `data.id`): the conversation has no ticket, so its next message "
        "will be sent as a new ticket; find the ticket at the vendor and give it with `ticketbridge deliveries "
        "set-ticket ID --ticket-id T`")
    (missing,) = [e for e in logs if e["event"] == "delivery.ticket_id_missing"]
    assert (missing["log_level"], missing["delivery_id"], missing["event_id"], missing["conversation"]) == (
        "warning", row.id, row.event_id, row.conversation)
    assert (second.delivery.role, second.delivery.ticket_id, second.delivery.ticket_missing) == ("create", "8", False)
    assert paths == ["/tickets", "/tickets"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    shown = await (await client.get(f"/admin/api/deliveries/{row.id}", headers=auth)).json()
    assert shown["delivery"]["ticket_missing"] is True
    metrics = await (await client.get("/metrics", headers=auth)).text()
    assert 'ticketbridge_delivery_ticket_ids_missing_total{destination="api"} 1' in metrics
    assert "ticketbridge_delivery_ticket_ids_dropped_total{" not in metrics


async def test_a_refusal_in_a_coding_not_offered_is_retried_not_held(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """A create answered `500` with `Content-Encoding: zstd` (a coding not offered: requests offer gzip, deflate and
    br, what the sender reads) is the vendor's refusal its status says: a `retry` recording HTTP 500 and why its body
    was not read, the delivery never in doubt, and the next try succeeds. It used to be `unknown` (aiohttp refused
    the answer's head), the delivery in doubt and resent as a possible duplicate."""
    offered: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        offered.append(request.headers.get("Accept-Encoding", ""))
        if len(offered) == 1:
            return web.Response(status=500, body=b"(\xb5/\xfd\x00X\x91\x00\x00busy",
                                headers={"Content-Type": "text/plain", "Content-Encoding": "zstd"})
        return web.Response(body=SUCCESS, content_type="application/json")

    base = await kapture_answering(aiohttp_server, answer)
    dest = f"kapture: {{vendor: kapture, base_url: '{base}', token: k3y, retry: {{schedule: [50ms], jitter: 0}}}}"
    client = await bridge_client(write_config(config(dest), KAPTURE_MAPPING))
    resp = await client.post("/hooks/events", json={"title": "Router down"})
    assert resp.status == 202, await resp.text()
    (detail,) = await settled(client, 1)
    row = detail.delivery
    assert (row.status, row.ticket_id, row.unknowns, row.duplicates) == ("succeeded", "713516551148", 0, 0)
    refused, success = detail.attempts
    assert (refused.classification, refused.http_status, success.classification) == ("retry", 500, "success")
    assert refused.error == ("HTTP 500; its body could not be read: its Content-Encoding is 'zstd', which "
                             "ticketbridge does not read (it offers gzip, deflate, br)")
    assert offered == ["gzip, deflate, br"] * 2


async def test_a_success_status_whose_body_cannot_be_decoded_is_never_a_quiet_success(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """An `http` destination that reads nothing from its answers, answered `201` with `Content-Encoding: x-foo`: the
    body may say the request failed, and cannot be read, so the outcome is `unknown` and the delivery held (the
    destination offers no look-up), never a success. It used to be a success: aiohttp handed the bytes over as they
    came, and the adapter, reading no path in them, took the status alone."""
    async def tickets(request: web.Request) -> web.Response:
        return web.Response(status=201, body=b"\x1f\x8b garbled",
                            headers={"Content-Type": "application/json", "Content-Encoding": "x-foo"})

    base = await answering(aiohttp_server, {"/tickets": tickets})
    mapping = {"m": "source: events\ndestination: api\naction: create_ticket\nfields: {title: '{{ payload.title }}'}\n"}
    client = await bridge_client(write_config(config(f"api: {{vendor: http, base_url: '{base}', path: /tickets}}"),
                                              mapping))
    resp = await client.post("/hooks/events", json={"title": "Router down"})
    assert resp.status == 202, await resp.text()
    (detail,) = await settled(client, 1)
    assert detail.delivery.status == "dead" and detail.delivery.in_doubt_since_ms is not None
    assert [(a.classification, a.http_status) for a in detail.attempts] == [("unknown", 201)]
    assert (detail.attempts[0].error or "").startswith(
        "HTTP 201; its body could not be read: its Content-Encoding is 'x-foo', which ticketbridge does not read (it "
        "offers gzip, deflate, br): the vendor may have acted on it")
