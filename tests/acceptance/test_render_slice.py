"""Every render the server makes on its event loop holds it for one loop slice at most, whatever the mapping: the
shipped partner-to-kapture mapping (no Jinja field; html_to_text on the partner's description) given a large HTML
description is begun on the loop and made again off it, at intake, on an event's console page, in the playground,
in a re-rendering replay, for a conversation's follow-up and for a follow-up sent again as its conversation's create.
Before, only a mapping with a Jinja field had a slice, and these held the loop for the whole of html_to_text (for the
61 KB description /healthz waited 174 ms). Shown by the thread each render ran in, not by time."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from structlog.testing import capture_logs

from bridge.mapping.text import html_to_text
from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

ADMIN = {"Authorization": "Bearer admin-secret"}
CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
admin: {token: admin-secret}
sources:
  partner-api: {kind: json}
  chat: {kind: json}
destinations:
  demo-kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
"""
PARTNER = (Path(__file__).parents[2] / "mappings" / "partner-to-kapture.yaml").read_text()
CHAT = """
source: chat
destination: demo-kapture
action: create_ticket
fields:
  title: {from: payload.subject}
  ticket_details: {from: payload.html, transform: [html_to_text]}
follow_up:
  action: update_ticket
  fields:
    sub_status: P
    comment: {from: payload.html, transform: [html_to_text]}
"""
PARAGRAPH = "<p>Fibre cut near <b>MG Road</b>.</p><ul><li>Area: 5</li><li>Homes: 40</li></ul>"
LARGE = PARAGRAPH * 750  # 61 KB, as the partner may send
LOOP = threading.current_thread().name


def recording(threads: list[str], fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, noting the thread of each call."""

    def recorded(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return fn(*args)

    return recorded


def begun_on_the_loop_and_made_again_in(threads: list[str], pool: str) -> bool:
    """Whether each render (one at least) was begun on the loop and made again in `pool`'s thread."""
    return bool(threads) and len(threads) % 2 == 0 and all(
        first == LOOP and again.startswith(pool) for first, again in zip(threads[::2], threads[1::2], strict=True))


async def start(write_config: ConfigFactory, bridge_client: AppClient, **kwargs: Any) -> Any:
    return await bridge_client(write_config(CONFIG, {"partner-to-kapture": PARTNER, "chat": CHAT}), **kwargs)


async def deliveries(client: Any) -> list[Any]:
    return sorted(await runtime(client).store.list_deliveries(DeliveryFilter(limit=100)), key=lambda r: r.id)


async def test_intake_renders_a_large_description_off_the_loop_and_a_small_one_on_it(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge import intake

    threads: list[str] = []
    monkeypatch.setattr(intake, "_plan_each", recording(threads, intake._plan_each))
    client = await start(write_config, bridge_client, workers=False)
    for n, html in enumerate((PARAGRAPH, LARGE)):
        body = {"id": f"p-{n}", "title": "Outage", "description_html": html}
        resp = await client.post("/hooks/partner-api", json=body)
        assert resp.status == 202, await resp.text()
    assert threads[0] == LOOP  # the small one
    assert begun_on_the_loop_and_made_again_in(threads[1:], "ticketbridge-parse")
    assert runtime(client).counters.get("render.offloaded", 0) == 1
    store = runtime(client).store
    small, large = [(await store.get_delivery(row.id)).body for row in await deliveries(client)]
    assert small is not None and small["ticket_details"] == "Fibre cut near MG Road.\n\n- Area: 5\n- Homes: 40"
    assert large is not None and large["ticket_details"] == html_to_text(LARGE)


async def test_the_console_explains_and_rerenders_a_large_description_off_the_loop(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event's page and the playground explain in the console's thread; a re-rendering replay (a dry run here)
    renders again in the parser thread: each begun on the loop, as before, and stopped there at once."""
    from bridge import routing
    from bridge.console import api, playground

    client = await start(write_config, bridge_client)
    body = {"id": "p-1", "title": "Outage", "description_html": LARGE}
    accepted = await client.post("/hooks/partner-api", json=body)
    assert accepted.status == 202, await accepted.text()
    event_id = (await accepted.json())["event_id"]
    await eventually(lambda: _settled(client, 1))
    [row] = await deliveries(client)
    explained: list[str] = []
    rerendered: list[str] = []
    decisions = playground.decisions
    monkeypatch.setattr(playground, "decisions", recording(explained, decisions))
    monkeypatch.setattr(api, "decisions", recording(explained, decisions))
    monkeypatch.setattr(routing, "render_event", recording(rerendered, routing.render_event))
    with capture_logs() as logs:
        page = await client.get(f"/admin/api/events/{event_id}", headers=ADMIN)
        assert page.status == 200, await page.text()
        tried = await client.post("/admin/api/playground", headers=ADMIN, json={
            "source": "partner-api", "body": json.dumps(body),
            "headers": {"Content-Type": "application/json"}})
        assert tried.status == 200, await tried.text()
        replay = await client.post("/admin/api/replay", headers=ADMIN,
                                   json={"ids": [row.id], "rerender": True, "dry_run": True})
        assert replay.status == 200, await replay.text()
    assert begun_on_the_loop_and_made_again_in(explained, "ticketbridge-console") and len(explained) == 4
    assert begun_on_the_loop_and_made_again_in(rerendered, "ticketbridge-parse") and len(rerendered) == 2
    assert [e["what"] for e in logs if e["event"] == "render.offloaded"] == ["event_view", "playground", "rerender"]
    for answer in (await page.json(), (await tried.json())["events"][0]):
        [decision] = answer["decisions"]
        assert decision["fields"]["ticket_details"] == html_to_text(LARGE)
    assert (await replay.json())["refused"] == []


async def _settled(client: Any, n: int, status: str = "succeeded") -> bool:
    rows = await deliveries(client)
    return len(rows) == n and all(r.status == status for r in rows)


async def test_a_follow_up_and_a_create_sent_again_render_a_large_message_off_the_loop(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation's follow-up is rendered at send time by the delivery loop; once its ticket is gone and the
    conversation reset, the dead follow-up replayed is rendered again as the conversation's create. Both begin on the
    loop and are made again in the parser thread."""
    from bridge import app

    follow_ups: list[str] = []
    creates: list[str] = []
    monkeypatch.setattr(app, "render_follow_up", recording(follow_ups, app.render_follow_up))
    monkeypatch.setattr(app, "render_create_again", recording(creates, app.render_create_again))
    client = await start(write_config, bridge_client)
    sim = runtime(client).simulators["kapture"]
    first, second = PARAGRAPH * 700, PARAGRAPH * 800

    async def say(html: str) -> None:
        resp = await client.post("/hooks/chat", json={"conversation_id": "c-1", "subject": "Outage", "html": html})
        assert resp.status == 202, await resp.text()

    await say(first)
    await eventually(lambda: _settled(client, 1))
    sim.drop(sim.tickets[0]["ticketId"])
    await say(second)

    async def follow_up_dead() -> bool:
        return [r.status for r in await deliveries(client)] == ["succeeded", "dead"]

    await eventually(follow_up_dead)
    assert begun_on_the_loop_and_made_again_in(follow_ups, "ticketbridge-parse")
    dead = (await deliveries(client))[1]
    assert dead.conversation is not None
    key = quote(dead.conversation.split("|", 1)[1], safe="")
    reset = await client.post(f"/admin/api/conversations/{key}/reset", headers=ADMIN, json={})
    assert reset.status == 200, await reset.text()
    replayed = await client.post("/admin/api/replay", headers=ADMIN, json={"ids": [dead.id]})
    assert replayed.status == 200, await replayed.text()
    await eventually(lambda: _settled(client, 2))
    assert begun_on_the_loop_and_made_again_in(creates, "ticketbridge-parse")
    assert [t["detail"] for t in sim.tickets] == [html_to_text(second)]
