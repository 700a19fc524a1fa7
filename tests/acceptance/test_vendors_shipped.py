"""The shipped default config and example mappings, run whole against the built-in sandboxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.registries import REGISTRIES
from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, eventually, runtime


async def test_each_example_mapping_delivers_to_its_sandbox(bridge_client: AppClient, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A web form, an email, a chat message and a status change each become a ticket (or update) in its sandbox."""
    monkeypatch.chdir(tmp_path)
    client = await bridge_client(load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES))
    sims: dict[str, Any] = runtime(client).simulators
    assert set(sims) == {"kapture", "leadsquared", "netgroot"}

    async def post(source: str, **kwargs: Any) -> None:
        resp = await client.post(f"/hooks/{source}", **kwargs)
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["deliveries"] == 1

    await post("service-request", data={"email": "asha@example.com", "subject": "Router down", "message": "Help"})
    await post("support-mail", json={"from": "asha@example.com", "subject": "Invoice", "text": "Hi",
                                     "message_id": "<m1@x>"})
    await post("chat", json={"from": "+919876543210", "text": "My bill is wrong", "message_id": "c1"})
    await eventually(lambda: len(sims["kapture"].tickets) == 1)
    ticket = sims["kapture"].tickets[0]
    await post("status-changes", json={"ticket_id": ticket["ticketId"], "status": "closed", "note": "done"})

    async def all_succeeded() -> bool:
        rows = await runtime(client).store.list_deliveries(DeliveryFilter())
        return len(rows) == 4 and {r.status for r in rows} == {"succeeded"}

    await eventually(all_succeeded)
    assert sims["leadsquared"].tickets[0]["Fields"][0] == {"SchemaName": "LeadDetail.EmailAddress",
                                                           "Value": "asha@example.com"}
    assert sims["netgroot"].tickets[0]["subject"] == "Billing Issue"
    assert (ticket["substatus"], ticket["comments"]) == ("CL", ["done"])


async def test_the_readmes_two_emails_make_one_ticket_and_a_comment(bridge_client: AppClient, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped support-mail route threads: the README's first email creates a Kapture ticket, its reply
    becomes a comment on it."""
    monkeypatch.chdir(tmp_path)
    client = await bridge_client(load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES))
    for payload in ({"from": "asha@example.com", "subject": "Router down", "message_id": "<m1@example.com>",
                     "stripped_text": "No internet since morning"},
                    {"from": "asha@example.com", "subject": "Re: Router down", "message_id": "<m2@example.com>",
                     "in_reply_to": "<m1@example.com>", "references": ["<m1@example.com>"],
                     "stripped_text": "Still down"}):
        resp = await client.post("/hooks/support-mail", json=payload)
        assert resp.status == 202, await resp.text()
    kapture = runtime(client).simulators["kapture"]
    await eventually(lambda: len(kapture.tickets) == 1 and kapture.tickets[0]["comments"] == ["Still down"])
    assert kapture.tickets[0]["fields"]["ticket_details"] == "No internet since morning"


REPO = Path(__file__).resolve().parents[2]
CHAT = [("c1-1", "Internet is down"), ("c1-2", "Still down"), ("c1-3", "My bill is wrong too")]


async def post_chat(client: Any, conversation: str = "wa:+919876543210") -> None:
    for message_id, text in CHAT:
        resp = await client.post("/hooks/chat", json={"from": "+919876543210", "from_name": "Asha", "text": text,
                                                      "message_id": message_id, "conversation_id": conversation})
        assert resp.status == 202, await resp.text()


async def chat_rows(client: Any) -> list[Any]:
    store = runtime(client).store

    async def settled() -> bool:
        rows = await store.list_deliveries(DeliveryFilter(limit=10))
        return len(rows) == 3 and {r.status for r in rows} == {"succeeded"}

    await eventually(settled)
    return sorted(await store.list_deliveries(DeliveryFilter(limit=10)), key=lambda r: r.id)


async def test_the_shipped_chat_route_threads_follow_ups_as_tickets_naming_the_first(
        bridge_client: AppClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat customer's three messages on the shipped `chat` route: one ISP CRM ticket for the first, and (the CRM
    having no update endpoint) each later message a new ticket whose message names the first, in order."""
    monkeypatch.chdir(tmp_path)
    client = await bridge_client(load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES))
    await post_chat(client)
    rows = await chat_rows(client)
    netgroot = runtime(client).simulators["netgroot"]
    first, *later = netgroot.tickets
    assert first["message"] == "Internet is down (chat from Asha, +919876543210)"
    assert [t["message"] for t in later] == [
        f"Follow-up to ticket {first['ticket_id']}: Still down (chat from Asha, +919876543210)",
        f"Follow-up to ticket {first['ticket_id']}: My bill is wrong too (chat from Asha, +919876543210)"]
    assert [t["subject"] for t in netgroot.tickets] == ["Technical Support", "Technical Support", "Billing Issue"]
    assert [r.role for r in rows] == ["create", "follow_up", "follow_up"]
    assert {r.conversation for r in rows} == {"chat-to-ispcrm|chat:wa:+919876543210"}
    assert [r.ticket_id for r in rows] == [str(t["ticket_id"]) for t in netgroot.tickets]


async def test_the_chat_route_with_follow_ups_skipped_sends_only_the_first_message(
        bridge_client: AppClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped chat mapping with `follow_up: {skip: true}`: one ticket; the later messages are recorded as
    skipped follow-ups of it, nothing sent."""
    monkeypatch.chdir(tmp_path)
    shipped = (REPO / "mappings" / "chat-to-ispcrm.yaml").read_text()
    (tmp_path / "mappings").mkdir()
    skipping = shipped[:shipped.index("\nfollow_up:\n")] + "\nfollow_up: {skip: true}\n"
    (tmp_path / "mappings" / "chat-to-ispcrm.yaml").write_text(skipping)
    (tmp_path / "bridge.yaml").write_text((REPO / "bridge" / "defaults" / "bridge.yaml").read_text())
    client = await bridge_client(load_config(tmp_path / "bridge.yaml", environ={}, cwd=tmp_path,
                                             registries=REGISTRIES))
    await post_chat(client)
    rows = await chat_rows(client)
    netgroot = runtime(client).simulators["netgroot"]
    assert [t["message"] for t in netgroot.tickets] == ["Internet is down (chat from Asha, +919876543210)"]
    assert [(r.role, r.ticket_id) for r in rows] == [("create", "101"), ("follow_up", None), ("follow_up", None)]
    assert [r.last_error for r in rows[1:]] == ["follow-up skipped: the mapping's follow_up says skip"] * 2
