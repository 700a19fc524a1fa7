"""`deliveries set-ticket` and `POST /admin/api/deliveries/{id}/set-ticket` over HTTP: a conversation's create
answered by the vendor without a ticket id is given the ticket the operator found, and the thread's next message
follows up on it rather than making a second ticket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from bridge.cli import main
from bridge.store.base import AuditEntry
from bridge.store.sqlite import SqliteStore
from tests.acceptance.console_app import ADMIN, NO_ID_CONFIG
from tests.acceptance.test_vendor_answers import THREADED, TOKEN, config, settled
from tests.acceptance.threaded import serve_in_thread
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.threads import commented_thread

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def no_id_then(later: dict[str, Any] | None = None) -> tuple[list[str], Any]:
    """A stand-in vendor's `POST /tickets` (and comments): the first create answered 201 without `data.id`, every
    later request `later` (a comment's answer by default); the paths it was asked, in order."""
    paths: list[str] = []

    async def tickets(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.json_response({"data": {}} if len(paths) == 1 else (later or {"data": {"ok": True}}), status=201)

    return paths, tickets


async def threaded_app(write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
                       tickets: Any) -> Any:
    """The app threading `events` by case to an `http` destination (ticket id at `data.id`) on a stand-in vendor
    whose `POST /tickets` and `POST /tickets/{id}/comments` are `tickets`."""
    app = web.Application()
    app.router.add_post("/tickets", tickets)
    app.router.add_post("/tickets/{id}/comments", tickets)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    dest = f"api: {{vendor: http, base_url: '{base}', path: /tickets, ticket_id_path: data.id}}"
    return await bridge_client(write_config(config(dest), THREADED))


async def message(client: Any, text: str) -> None:
    resp = await client.post("/hooks/events", json={"case": "c-1", "text": text})
    assert resp.status == 202, await resp.text()


async def test_a_create_without_a_ticket_id_takes_the_operators_ticket_and_the_thread_follows_up(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """The vendor answers a conversation's create 201 without its ticket id; the operator's set-ticket gives the
    delivery and its conversation the ticket they found (ticket_missing cleared, an attempt and an audit entry
    saying who and why), and the thread's next message is posted as a comment on that ticket, not a new ticket.
    Asked again, it is refused (409) naming the ticket the delivery has; an unknown id is a 404."""
    paths, tickets = no_id_then()
    client = await threaded_app(write_config, bridge_client, aiohttp_server, tickets)
    await message(client, "Router down")
    (first,) = await settled(client, 1)
    assert (first.delivery.role, first.delivery.ticket_id, first.delivery.ticket_missing) == ("create", None, True)
    resp = await client.post(f"/admin/api/deliveries/{first.delivery.id}/set-ticket", headers=AUTH,
                             json={"ticket_id": "T-77", "note": "found in the vendor's inbox"})
    assert resp.status == 200, await resp.text()
    shown = (await resp.json())["delivery"]
    assert (shown["status"], shown["ticket_id"], shown["ticket_missing"]) == ("succeeded", "T-77", False)
    attempts = (await resp.json())["attempts"]
    assert (attempts[-1]["classification"], attempts[-1]["error"]) == (
        "marked", "ticket T-77 set by admin: found in the vendor's inbox")
    audit = (await (await client.get("/admin/api/audit", headers=AUTH)).json())["items"]
    assert [(e["action"], e["target"], e["detail"]["ticket_id"]) for e in audit] == [
        ("delivery.set_ticket", first.delivery.id, "T-77")]
    await message(client, "Still down")
    _, second = await settled(client, 2)
    assert (second.delivery.role, second.delivery.status) == ("follow_up", "succeeded")
    assert paths == ["/tickets", "/tickets/T-77/comments"]
    again = await client.post(f"/admin/api/deliveries/{first.delivery.id}/set-ticket", headers=AUTH,
                              json={"ticket_id": "T-78"})
    assert again.status == 409
    assert (await again.json())["error"] == (
        f"delivery {first.delivery.id} cannot take ticket 'T-78': it has ticket 'T-77' already")
    unknown = await client.post("/admin/api/deliveries/dlv_nope/set-ticket", headers=AUTH, json={"ticket_id": "T"})
    assert unknown.status == 404


async def test_a_conversation_a_later_message_gave_a_ticket_is_not_given_another(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """When the thread's next message was already sent as a new ticket (the create named none), set-ticket on the
    first create answers 409 naming the conversation and the ticket it has, and changes nothing: the thread keeps
    following up on its ticket."""
    _, tickets = no_id_then({"data": {"id": 8}})
    client = await threaded_app(write_config, bridge_client, aiohttp_server, tickets)
    await message(client, "Router down")
    await settled(client, 1)
    await message(client, "Still down")
    first, second = await settled(client, 2)
    assert (second.delivery.role, second.delivery.ticket_id) == ("create", "8")
    resp = await client.post(f"/admin/api/deliveries/{first.delivery.id}/set-ticket", headers=AUTH,
                             json={"ticket_id": "T-77"})
    assert resp.status == 409
    said = (await resp.json())["error"]
    assert f"its conversation {first.delivery.conversation} has ticket '8' already" in said, said
    detail = await runtime(client).store.get_delivery(first.delivery.id)
    assert (detail.delivery.ticket_id, detail.delivery.ticket_missing) == (None, True)
    assert first.delivery.conversation is not None
    (conv,) = await runtime(client).store.get_conversations(first.delivery.conversation)
    assert conv.conversation.ticket_id == "8"


def delivered(url: str, n: int) -> list[dict[str, Any]]:
    """The server's first `n` deliveries, oldest first, once each is settled (its sandbox answers at once)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        items = requests.get(f"{url}/admin/api/deliveries", headers=ADMIN, timeout=10).json()["items"]
        if len(items) == n and all(d["status"] in ("succeeded", "dead") for d in items):
            return list(reversed(items))
        time.sleep(0.02)
    raise AssertionError(f"{n} deliveries were not settled within 10 s")


def test_set_ticket_goes_through_the_server_and_the_next_message_follows_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries set-ticket --url` against a server whose sandbox vendor named no ticket: the create takes the
    ticket (exit 0, saying the conversation follows up on it), the thread's next message is a follow-up on it,
    asking again is the server's 409 (exit 1), an unknown id its 404 (exit 1), a read token its 403 (exit 2)."""
    with serve_in_thread(tmp_path / "server", NO_ID_CONFIG, {"thread": commented_thread("events")}) as url:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
        post = {"case": "c-9", "text": "Router down"}
        requests.post(f"{url}/hooks/events", json=post, timeout=10).raise_for_status()
        (first,) = delivered(url, 1)
        assert (first["role"], first["ticket_missing"]) == ("create", True)
        assert main(["deliveries", "set-ticket", "--url", url, first["id"], "--ticket-id", "T-5",
                     "--note", "found"]) == 0
        assert f"{first['id']}: ticket T-5 set; conversation {first['conversation']} follows up on it" in \
            capsys.readouterr().out
        requests.post(f"{url}/hooks/events", json={**post, "text": "Still down"}, timeout=10).raise_for_status()
        _, second = delivered(url, 2)
        assert second["role"] == "follow_up"
        view = requests.get(f"{url}/admin/api/deliveries/{second['id']}", headers=ADMIN, timeout=10).json()
        assert view["attempts"][-1]["exchange"]["request"]["url"].endswith("/tickets/T-5/comments")
        assert main(["deliveries", "set-ticket", "--url", url, first["id"], "--ticket-id", "T-6"]) == 1
        err = capsys.readouterr().err
        assert "answered 409" in err and "it has ticket 'T-5' already" in err
        assert main(["deliveries", "set-ticket", "--url", url, "dlv_nope", "--ticket-id", "T-6"]) == 1
        assert "no delivery 'dlv_nope'" in capsys.readouterr().err
        monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "grafana-secret")
        assert main(["deliveries", "set-ticket", "--url", url, first["id"], "--ticket-id", "T-6"]) == 2
        assert "403" in capsys.readouterr().err


def test_set_ticket_on_the_store_file_is_audited_and_refuses_with_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries set-ticket -c bridge.yaml` works on the store file (no server): the create takes the ticket and
    the change is in the audit log under the user's name; a delivery that is no ticketless create is refused with
    why (exit 1), an unknown id too."""
    with serve_in_thread(tmp_path, NO_ID_CONFIG, {"thread": commented_thread("events")}) as url:
        requests.post(f"{url}/hooks/events", json={"case": "c-1", "text": "Router down"},
                      timeout=10).raise_for_status()
        (first,) = delivered(url, 1)
    config = str(tmp_path / "bridge.yaml")
    assert main(["deliveries", "set-ticket", first["id"], "--ticket-id", "T-5", "--ticket-key", "K-5",
                 "-c", config]) == 0
    assert "ticket T-5 set; conversation" in capsys.readouterr().out
    assert main(["deliveries", "show", first["id"], "-c", config]) == 0
    out = capsys.readouterr().out
    assert "ticket    T-5" in out and "NO TICKET ID" not in out
    assert main(["deliveries", "set-ticket", first["id"], "--ticket-id", "T-6", "-c", config]) == 1
    assert f"{first['id']}: ticket T-6 not set: it has ticket 'T-5' already" in capsys.readouterr().err
    assert main(["deliveries", "set-ticket", "dlv_nope", "--ticket-id", "T-6", "-c", config]) == 1
    assert "no delivery 'dlv_nope'" in capsys.readouterr().err
    assert [(e.action, e.target, e.actor.startswith("cli:"), e.detail) for e in asyncio.run(audited(tmp_path))] == [
        ("delivery.set_ticket", first["id"], True, {"ticket_id": "T-5", "ticket_key": "K-5", "note": None})]


async def audited(folder: Path) -> list[AuditEntry]:
    store = SqliteStore(folder / "var" / "bridge.db")
    await store.open()
    try:
        return await store.list_audit()
    finally:
        await store.close()
