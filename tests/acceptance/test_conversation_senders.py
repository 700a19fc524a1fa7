"""A thread is joined only by the sender who opened it: a stranger who writes a customer's ticket number in the
subject, or names the customer's Message-ID in References, gets a ticket of his own (the probe's two attacks)."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  support-mail: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
"""

MAPPING = """
    name: mail-to-kapture
    source: support-mail
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
      email_id: {from: payload.from, required: true}
      ticket_details: "{{ payload.stripped_text }}"
    follow_up:
      action: update_ticket
      fields:
        ticket_id: "{{ ticket.id }}"
        sub_status: P
        comment: "{{ payload.stripped_text }} (first sender {{ ticket.first_sender }})"
"""


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    return await bridge_client(write_config(CONFIG, {"mail": MAPPING}))


async def post(client: Any, **body: Any) -> None:
    resp = await client.post("/hooks/support-mail", json=body)
    assert resp.status == 202, await resp.text()


async def settled(client: Any, count: int) -> None:
    store = runtime(client).store

    async def done() -> bool:
        rows = await store.list_deliveries(DeliveryFilter(limit=100))
        return len(rows) == count and all(r.status in ("succeeded", "dead") for r in rows)

    await eventually(done)


async def tickets(client: Any) -> list[dict[str, Any]]:
    resp = await client.get("/sandbox/kapture/tickets")
    assert resp.status == 200
    found: list[dict[str, Any]] = (await resp.json())["tickets"]
    return found


async def opened(client: Any, **first: Any) -> dict[str, Any]:
    """Post a thread's first message; once it is delivered, the one ticket it made."""
    await post(client, **first)
    await settled(client, 1)
    (ticket,) = await tickets(client)
    return ticket


async def test_another_sender_cannot_comment_on_a_customers_ticket(client: Any) -> None:
    victim = await opened(client, **{"from": "Victim@Corp.example", "subject": "Invoice",
                                     "message_id": "<v1@corp.example>", "stripped_text": "victim private"})
    tid = victim["ticketId"]
    with capture_logs() as logs:
        await post(client, **{"from": "attacker@evil.example", "subject": f"hi [#{tid}]",
                              "message_id": "<a1@evil.example>", "stripped_text": "ATTACKER via subject token"})
        await post(client, **{"from": "attacker@evil.example", "subject": "unrelated",
                              "message_id": "<a2@evil.example>", "references": ["<v1@CORP.example>"],
                              "stripped_text": "ATTACKER via References"})
        await settled(client, 3)
    await post(client, **{"from": "victim@corp.example", "subject": f"Re: Invoice [#{tid}]",
                          "message_id": "<v2@corp.example>", "references": ["<v1@corp.example>"],
                          "stripped_text": "victim reply"})
    await post(client, **{"from": "victim@corp.example", "subject": "Re: Invoice",
                          "message_id": "<v3@corp.example>", "references": ["<v1@corp.example>"],
                          "stripped_text": "victim second reply"})
    await settled(client, 5)
    now = {t["ticketId"]: t for t in await tickets(client)}
    assert now[tid]["comments"] == ["victim reply (first sender victim@corp.example)",
                                    "victim second reply (first sender victim@corp.example)"]
    attackers = [t for t in now.values() if t["ticketId"] != tid]
    assert sorted(t["detail"] for t in attackers) == ["ATTACKER via References", "ATTACKER via subject token"]
    assert all(t["email"] == "attacker@evil.example" and t["comments"] == [] for t in attackers)
    assert sorted(e["named"] for e in logs if e["event"] == "conversation.sender_mismatch") == [
        "conversation", "ticket"]
    rows = await runtime(client).store.list_deliveries(DeliveryFilter(limit=100))
    assert all(r.status == "succeeded" for r in rows)


RETAINED = CONFIG.replace("  support-mail: {kind: json}\n", "  support-mail: {kind: json}\n  chat: {kind: json}\n") + (
    "retention: {events: 0s, attempts: 0s, every: 50ms}\n")
CHAT = """
    name: chat-to-kapture
    source: chat
    destination: kapture
    action: create_ticket
    reopen_after: 1ms
    fields:
      title: chat
      email_id: chat@example.com
      ticket_details: "{{ payload.text }}"
"""


async def test_a_customers_token_reply_follows_up_after_retention_took_the_thread(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Retention purges a thread's messages, but keeps the conversation that holds the customer's ticket (for
    `retention.tickets`, 90 days by default): the customer's `[#id]` reply still comments on the ticket, and a
    stranger's still opens a ticket of his own. A chat's conversation (no sender to answer by token) goes with
    its messages, as before: its going shows that a sweep has run after every message was purged."""
    client = await bridge_client(write_config(RETAINED, {"mail": MAPPING + "    reopen_after: 1ms\n", "chat": CHAT}))
    store = runtime(client).store
    await post(client, **{"from": "victim@corp.example", "subject": "Invoice", "message_id": "<v1@corp.example>",
                          "stripped_text": "victim private"})

    async def delivered() -> bool:  # at the vendor: retention may purge the delivery's row before a poll sees it
        return len(await tickets(client)) == 1

    await eventually(delivered)
    resp = await client.post("/hooks/chat", json={"conversation_id": "+9100001", "text": "hello"})
    assert resp.status == 202, await resp.text()

    async def swept() -> bool:
        rows = await store.list_deliveries(DeliveryFilter(limit=100))
        return not rows and not await store.get_conversations("chat:+9100001")

    await eventually(swept)
    (victim,) = [t for t in await tickets(client) if t["email"] == "victim@corp.example"]
    tid = victim["ticketId"]
    (kept,) = await store.get_conversations("mail:v1@corp.example")
    assert (kept.conversation.ticket_id, kept.deliveries) == (tid, [])
    await post(client, **{"from": "victim@corp.example", "subject": f"Re: Invoice [#{tid}]",
                          "message_id": "<v2@corp.example>", "stripped_text": "victim reply"})
    await post(client, **{"from": "attacker@evil.example", "subject": f"hi [#{tid}]",
                          "message_id": "<a1@evil.example>", "stripped_text": "ATTACKER via subject token"})

    async def answered() -> bool:
        return len(await tickets(client)) >= 3 and any(t["comments"] for t in await tickets(client))

    await eventually(answered)
    now = {t["ticketId"]: t for t in await tickets(client)}
    assert now[tid]["comments"] == ["victim reply (first sender victim@corp.example)"]
    others = sorted(t["detail"] for t in now.values() if t["ticketId"] != tid)
    assert others == ["ATTACKER via subject token", "hello"]


async def test_a_json_senders_display_name_does_not_split_the_thread(client: Any) -> None:
    """A JSON source's `from` with a display name and without it is one sender: the reply comments on the
    ticket rather than opening one of its own."""
    await post(client, **{"from": "Bob Smith <Bob@Example.COM>", "subject": "Printer", "message_id": "<b1@x.io>",
                          "stripped_text": "printer jammed"})
    await settled(client, 1)
    with capture_logs() as logs:
        await post(client, **{"from": "bob@example.com", "subject": "Re: Printer", "message_id": "<b2@x.io>",
                              "references": ["<b1@x.io>"], "stripped_text": "still jammed"})
        await settled(client, 2)
    (ticket,) = await tickets(client)
    assert ticket["comments"] == ["still jammed (first sender bob@example.com)"]
    assert [e for e in logs if e["event"] == "conversation.sender_mismatch"] == []


async def test_a_customer_whose_client_writes_the_address_as_the_name_keeps_the_thread(client: Any) -> None:
    """Outlook and Exchange write a From as `'john@x.com' <john@x.com>`: one mailbox whose display text is its
    own angle-addr, the sender. The customer's `[#id]` replies (so written, or bare) comment on the ticket. A
    From whose display text is another address names no sender, whichever of the two is the customer's: a
    lenient parse (`parseaddr`) reads the display text's, so a provider's DMARC check may have passed for it;
    such a message gets a ticket of its own."""
    john = await opened(client, **{"from": "'john@x.com' <John@X.com>", "subject": "Invoice",
                                   "message_id": "<j1@x.com>", "stripped_text": "invoice wrong"})
    tid = john["ticketId"]
    with capture_logs() as logs:
        for n, from_ in enumerate(["'john@x.com' <john@x.com>", "john@x.com", "JOHN@x.com <john@X.com>"]):
            await post(client, **{"from": from_, "subject": f"Re: Invoice [#{tid}]", "message_id": f"<j{n + 2}@x.com>",
                                  "stripped_text": f"reply {n}"})
        for n, from_ in enumerate(["john@x.com <a@evil.example>", "a@evil.example <john@x.com>",
                                   "jdoe@x.onmicrosoft.com <john@x.com>"]):
            await post(client, **{"from": from_, "subject": f"Re: Invoice [#{tid}]",
                                  "message_id": f"<a{n}@evil.example>", "stripped_text": f"ATTACKER {n}"})
        await settled(client, 7)
    now = {t["ticketId"]: t for t in await tickets(client)}
    assert sorted(now[tid]["comments"]) == [f"reply {n} (first sender john@x.com)" for n in range(3)]
    assert sorted(t["detail"] for t in now.values() if t["ticketId"] != tid) == [f"ATTACKER {n}" for n in range(3)]
    assert [e["named"] for e in logs if e["event"] == "conversation.sender_mismatch"] == ["ticket"] * 3


async def test_a_from_naming_the_customer_beside_another_mailbox_or_only_encoded_opens_its_own_ticket(
        client: Any) -> None:
    """A `from` of two mailboxes, the customer's in angle brackets, or naming the customer's address only inside
    an encoded word, is not the customer: its message gets a ticket of its own rather than the customer's."""
    ceo = await opened(client, **{"from": "CEO <ceo@corp.example>", "subject": "Payroll",
                                  "message_id": "<c1@corp.example>", "stripped_text": "payroll question"})
    with capture_logs() as logs:
        for n, from_ in enumerate(["x@evil.example, <ceo@corp.example>",
                                   "=?utf-8?q?=3Cceo=40corp.example=3E?= (via x@evil.example)"]):
            await post(client, **{"from": from_, "subject": f"Re: Payroll [#{ceo['ticketId']}]",
                                  "message_id": f"<x{n}@evil.example>", "references": ["<c1@corp.example>"],
                                  "stripped_text": f"ATTACKER {n}"})
        await settled(client, 3)
    now = {t["ticketId"]: t for t in await tickets(client)}
    assert now[ceo["ticketId"]]["comments"] == []
    assert sorted(t["detail"] for t in now.values() if t["ticketId"] != ceo["ticketId"]) == ["ATTACKER 0",
                                                                                              "ATTACKER 1"]
    assert len([e for e in logs if e["event"] == "conversation.sender_mismatch"]) == 2


ALIASED = CONFIG.replace("  support-mail: {kind: json}\n", "  support-mail: {kind: json, sender_domain_aliases: "
                         "{contoso.onmicrosoft.com: contoso.com, contoso.de: contoso.com}}\n")


@pytest.mark.parametrize("aliased", [True, False])
async def test_a_tenants_onmicrosoft_address_keeps_its_thread_when_the_source_names_the_alias(
        write_config: ConfigFactory, bridge_client: AppClient, aliased: bool) -> None:
    """Microsoft 365 mail may come from a mailbox's `tenant.onmicrosoft.com` address or its custom domain's. With
    `sender_domain_aliases` naming the two domains one, a reply from either form of the address (any case)
    comments on the ticket the other opened, by References and by `[#id]` token alike; another mailbox of the
    tenant does not. Without it the two addresses are two senders, as before: each reply opens a ticket."""
    client = await bridge_client(write_config(ALIASED if aliased else CONFIG, {"mail": MAPPING}))
    ticket = await opened(client, **{"from": "Jo <jo@contoso.com>", "subject": "VPN",
                                     "message_id": "<c1@contoso.com>", "stripped_text": "vpn down"})
    tid = ticket["ticketId"]
    with capture_logs() as logs:
        await post(client, **{"from": "Jo <Jo@Contoso.onmicrosoft.com>", "subject": "Re: VPN",
                              "message_id": "<c2@contoso.onmicrosoft.com>", "references": ["<c1@contoso.com>"],
                              "stripped_text": "still down"})
        await post(client, **{"from": "jo@contoso.de", "subject": f"Re: VPN [#{tid}]",
                              "message_id": "<c3@contoso.de>", "stripped_text": "any news"})
        await post(client, **{"from": "ann@contoso.onmicrosoft.com", "subject": "Re: VPN",
                              "message_id": "<c4@contoso.onmicrosoft.com>", "references": ["<c1@contoso.com>"],
                              "stripped_text": "ANN"})
        await settled(client, 4)
    now = {t["ticketId"]: t for t in await tickets(client)}
    others = sorted(t["detail"] for t in now.values() if t["ticketId"] != tid)
    if aliased:
        assert now[tid]["comments"] == ["still down (first sender jo@contoso.com)",
                                        "any news (first sender jo@contoso.com)"]
        assert others == ["ANN"]
        assert [e["named"] for e in logs if e["event"] == "conversation.sender_mismatch"] == ["conversation"]
    else:
        assert now[tid]["comments"] == []
        assert others == ["ANN", "any news", "still down"]


async def test_a_thread_opened_before_the_alias_was_named_is_kept(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A thread opened from the onmicrosoft address before the source named the alias keeps that address as
    its first sender; once the alias is named (a restart with it), replies from it or from the custom domain's
    address join it rather than opening conversations of their own."""
    client = await bridge_client(write_config(CONFIG, {"mail": MAPPING}))
    await post(client, **{"from": "jo@contoso.onmicrosoft.com", "subject": "VPN",
                          "message_id": "<c1@contoso.onmicrosoft.com>", "stripped_text": "vpn down"})
    await settled(client, 1)
    await client.close()
    client = await bridge_client(write_config(ALIASED, {"mail": MAPPING}))
    with capture_logs() as logs:
        for n, sender in enumerate(["jo@contoso.onmicrosoft.com", "jo@contoso.com", "ann@contoso.com"]):
            await post(client, **{"from": sender, "subject": "Re: VPN", "message_id": f"<r{n}@x>",
                                  "references": ["<c1@contoso.onmicrosoft.com>"], "stripped_text": f"reply {n}"})
        await settled(client, 4)
    (thread,) = await runtime(client).store.get_conversations("mail:c1@contoso.onmicrosoft.com")
    assert (thread.conversation.sender, thread.conversation.messages) == ("jo@contoso.onmicrosoft.com", 3)
    assert [e["named"] for e in logs if e["event"] == "conversation.sender_mismatch"] == ["conversation"]
