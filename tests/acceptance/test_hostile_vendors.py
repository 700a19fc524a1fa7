"""Delivery through the whole app over real HTTP to a vendor that is broken or hostile (a stand-in server, not
a simulator): whatever it answers, each attempt ends with a recorded reason, nothing it says fills the store
or the logs, and other destinations keep delivering."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
import structlog
from aiohttp import web

from bridge.delivery.sender import ERROR_CHARS, MAX_RESPONSE_BYTES
from bridge.store.base import DeliveryDetail, DeliveryFilter
from bridge.vendors.base import decode_json
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.kapture_answering import MAPPING, answering, kapture_answering
from tests.loop_cpu import LoopCpu, measured

FAST_RETRY = "retry: {schedule: [50ms], jitter: 0}"
SUCCESS = json.dumps([{"status": "success", "ticket_id": "713516551147"}]).encode()


def config(destinations: str) -> str:
    return f"""
    server: {{shutdown_grace_seconds: 1}}
    store: {{url: "sqlite:///var/bridge.db"}}
    sources:
      events: {{kind: json}}
    destinations:
    {destinations}
    """


def config_per_destination(destinations: str, *names: str) -> tuple[str, dict[str, str]]:
    """`config(destinations)` with a JSON source `<name>-events` for each destination named, in place of `events`,
    and the mappings making a ticket of each source's bodies at its destination."""
    mappings = {name: f"source: {name}-events\ndestination: {name}\naction: create_ticket\n"
                      "fields: {title: '{{ payload.title }}'}\n" for name in names}
    sources = "\n".join(f"      {name}-events: {{kind: json}}" for name in names)
    return config(destinations).replace("      events: {kind: json}", sources), mappings


async def post(client: Any, title: str, source: str = "events") -> None:
    resp = await client.post(f"/hooks/{source}", json={"title": title})
    assert resp.status == 202, await resp.text()


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


async def test_a_vendor_s_huge_answers_are_cut_before_the_store_and_the_logs(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """A success whose ticket id is 200,000 characters, sent with 120 headers of 8 KB, is a success without
    that id (the error says why, and `delivery.ticket_id_dropped` is logged); a failure whose message is 200,000
    characters is dead with the message cut. No stored attempt and no log line holds more than a few kilobytes of
    what the vendor said."""
    answers = iter([
        {"status": "success", "ticket_id": "7" * 200_000},
        {"status": "fail", "message": "m" * 200_000},
    ])

    async def answer(request: web.Request) -> web.Response:
        headers = {f"X-Filler-{i}": "h" * 8000 for i in range(120)}
        return web.json_response([next(answers)], headers=headers)

    base = await kapture_answering(aiohttp_server, answer)
    dest = f"  kapture: {{vendor: kapture, base_url: '{base}', token: k3y, {FAST_RETRY}}}"
    client = await bridge_client(write_config(config(dest), MAPPING))
    with structlog.testing.capture_logs() as logs:
        await post(client, "first")
        (first,) = await settled(client, 1)
        await post(client, "second")
        first, second = await settled(client, 2)
    assert first.delivery.status == "succeeded" and first.delivery.ticket_id is None
    (attempt,) = first.attempts
    assert attempt.classification == "success"
    assert [e["log_level"] for e in logs if e["event"] == "delivery.ticket_id_dropped"] == ["warning"]
    assert attempt.error == ("the answer's ticket id at `ticket_id` is text of 200000 characters, not kept (an id "
                             "is a whole number or non-blank text of at most 256 characters, no NUL); the delivery "
                             "keeps no ticket id")
    assert second.delivery.status == "dead"
    (attempt,) = second.attempts
    assert attempt.classification == "permanent"
    assert attempt.error is not None and attempt.error.startswith("kapture: HTTP 200: mmm")
    assert len(attempt.error) == ERROR_CHARS and attempt.error.endswith("…")
    for detail in (first, second):
        for kept in detail.attempts:
            assert len(msgspec.json.encode(kept)) < 40_000
            assert kept.exchange is not None
            assert kept.exchange["response_headers"]["…"].endswith("more headers not kept")
    longest = max(len(json.dumps(entry, default=str)) for entry in logs)
    assert longest < 5_000


async def test_a_vendor_holding_every_request_does_not_stall_another_destination_on_its_host(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """One destination's vendor holds each of its 70 requests unanswered; a second destination on the same host
    (another path of the same API) still delivers at once, on its first attempt: the connections one destination
    holds are bounded by its own max_in_flight, not taken from a pool the other waits on."""
    held: list[web.Request] = []
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        held.append(request)
        await release.wait()
        return web.json_response({"id": "S"})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"id": "F-1"})

    base = await answering(aiohttp_server, {"/slow": slow, "/fast": fast})
    dests = (f"  slow: {{vendor: http, base_url: '{base}', path: /slow, max_in_flight: 70, timeout_seconds: 60}}\n"
             f"      fast: {{vendor: http, base_url: '{base}', path: /fast, ticket_id_path: id, timeout_seconds: 5,"
             f" {FAST_RETRY}}}")
    conf, mappings = config_per_destination(dests, "slow", "fast")
    client = await bridge_client(write_config(conf, mappings))
    try:
        await asyncio.gather(*(post(client, f"held {n}", "slow-events") for n in range(70)))
        await eventually(lambda: len(held) >= 64)  # (64: all that a shared per-host pool would let through)
        await post(client, "urgent", "fast-events")
        store = runtime(client).store

        async def fast_delivered() -> bool:
            rows = await store.list_deliveries(DeliveryFilter(destination="fast"))
            return len(rows) == 1 and rows[0].status == "succeeded"

        await eventually(fast_delivered)
        (row,) = await store.list_deliveries(DeliveryFilter(destination="fast"))
        detail = await store.get_delivery(row.id)
        assert [a.classification for a in detail.attempts] == ["success"]
    finally:
        release.set()


async def test_no_send_waits_for_a_pooled_connection_when_every_lane_is_full(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The delivery client's pool holds every destination's max_in_flight at once (here exactly: 3 + 1 on one host,
    the pool's 256 floor lowered to 2 so that it is the lanes' total that sizes it), and a lane holds no more
    connections than its max_in_flight: with a vendor holding every request, both lanes have all their sends at the
    vendor, none waits in the pool (whose wait aiohttp counts in the connect timeout: a send that waited past it
    would be a `retry` counted against the vendor, though nothing left), and each delivery succeeds on its first
    attempt once released."""
    monkeypatch.setattr("bridge.fdlimit.POOL_CONNECTIONS", 2)
    held: dict[str, int] = {"/a": 0, "/b": 0}
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        held[request.path] += 1
        await release.wait()
        return web.json_response({"id": "T-1"})

    base = await answering(aiohttp_server, {"/a": slow, "/b": slow})
    dests = (f"  a: {{vendor: http, base_url: '{base}', path: /a, max_in_flight: 3, timeout_seconds: 60}}\n"
             f"      b: {{vendor: http, base_url: '{base}', path: /b, max_in_flight: 1, timeout_seconds: 60}}")
    conf, mappings = config_per_destination(dests, "a", "b")
    client = await bridge_client(write_config(conf, mappings))
    rt = runtime(client)
    assert rt.dispatcher is not None
    connector = rt.dispatcher.session.connector
    assert connector is not None and (connector.limit, connector.limit_per_host) == (4, 0)
    try:
        await asyncio.gather(*(post(client, f"a {n}", "a-events") for n in range(6)),
                             *(post(client, f"b {n}", "b-events") for n in range(3)))
        await eventually(lambda: held == {"/a": 3, "/b": 1})
        assert not any(connector._waiters.values())  # aiohttp's queue of sends waiting for a connection
    finally:
        release.set()
    done = await settled(client, 9)
    assert [[a.classification for a in d.attempts] for d in done] == [["success"]] * 9


LENIENT_TICKET = "713516551148"


def lenient_answer(limit: int) -> bytes:
    """A Kapture success of at most `limit` bytes that msgspec refuses (one byte that is not UTF-8, at its end) and
    Python's decoder reads: its ticket id, then as many empty objects as fit (each a value `_escaped` walks), the
    costliest shape to read leniently."""
    head = b'[{"status": "success", "ticket_id": "%s", "echo": [' % LENIENT_TICKET.encode()
    tail = b'"\xe9"]}]'
    return head + b"{}," * ((limit - len(head) - len(tail)) // 3) + tail


async def test_a_crafted_answer_read_leniently_does_not_hold_the_event_loop(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """A success of 256 KiB (the most of an answer read) that msgspec refuses for one byte that is not UTF-8 and
    Python's decoder reads, made of 87,000 empty objects (the costliest shape to read leniently: 40-130 ms of CPU
    on the event loop, once per such answer), is classified as before (a success naming its ticket) without any
    callback of the loop taking more than MAX_CALLBACK_CPU_MS of CPU: it is classified in a thread. (A first
    delivery answered as usual warms the app's paths first.)"""
    crafted = lenient_answer(MAX_RESPONSE_BYTES)
    assert len(crafted) <= MAX_RESPONSE_BYTES and decode_json(crafted) is not None
    answers = iter([SUCCESS, crafted])

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=next(answers), content_type="application/json")

    base = await kapture_answering(aiohttp_server, answer)
    dest = f"  kapture: {{vendor: kapture, base_url: '{base}', token: k3y, {FAST_RETRY}}}"
    client = await bridge_client(write_config(config(dest), MAPPING))
    await post(client, "first")
    await settled(client, 1)
    with LoopCpu().measuring() as meter:
        await post(client, "second")
        _, second = await settled(client, 2)
    assert (second.delivery.status, second.delivery.ticket_id) == ("succeeded", LENIENT_TICKET)
    assert [(a.classification, a.http_status) for a in second.attempts] == [("success", 200)]
    measured("a delivery answered with a crafted answer read leniently", meter)
