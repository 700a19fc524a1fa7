"""Conversations' follow-ups through the whole app, over real HTTP to the sandboxes: on LeadSquared a reply is
a portal activity or an internal note on the numeric ticket Id, and a field change its multipart update; on a
generic `http` destination the follow-up's path names the ticket (`{ticket.id}`)."""

from __future__ import annotations

from typing import Any

from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.threads import commented_thread

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  chat-activity: {kind: json}
  chat-note: {kind: json}
  chat-update: {kind: json}
  chat-refs: {kind: json}
  partner: {kind: json}
destinations:
  lsq: {vendor: leadsquared, sandbox: true, retry: {schedule: [50ms]}}
  api: {vendor: http, sandbox: true, path: /tickets, ticket_id_path: data.id, retry: {schedule: [50ms]}}
"""


def lsq_mapping(source: str, follow_up: str) -> str:
    return f"""
    source: {source}
    destination: lsq
    action: create_ticket
    fields:
      LeadDetail.EmailAddress: "{{{{ payload.email }}}}"
      Title: "{{{{ payload.text }}}}"
    follow_up:
{follow_up}
    """


MAPPINGS = {
    "activity": lsq_mapping("chat-activity", """
      action: add_activity
      fields: {Text: "{{ payload.text }}", Direction: INBOUND}"""),
    "note": lsq_mapping("chat-note", """
      action: add_note
      fields: {TextPart: "Customer wrote: {{ payload.text }}"}"""),
    "refs": lsq_mapping("chat-refs", """
      action: add_note
      fields: {TextPart: "{{ ticket.id }} {{ ticket.key }} {{ ticket.uuid }}: {{ payload.text }}"}"""),
    "update": lsq_mapping("chat-update", """
      action: update_ticket
      fields: {Status: Reopened, Title: "{{ payload.text }}"}"""),
    "api": commented_thread("partner"),
}


async def thread(client: Any, source: str, texts: list[str], **extra: str) -> list[Any]:
    """Post a conversation's messages to `source` in order; its deliveries once all have succeeded."""
    for text in texts:
        body = {"email": "asha@example.com", "conversation_id": "c-1", "text": text, **extra}
        resp = await client.post(f"/hooks/{source}", json=body)
        assert resp.status == 202, await resp.text()
    store = runtime(client).store

    async def done() -> bool:
        rows = [r for r in await store.list_deliveries(DeliveryFilter(limit=50)) if r.source == source]
        return len(rows) == len(texts) and all(r.status == "succeeded" for r in rows)

    await eventually(done)
    rows = [r for r in await store.list_deliveries(DeliveryFilter(limit=50)) if r.source == source]
    return sorted(rows, key=lambda r: r.id)


async def start(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    return await bridge_client(write_config(CONFIG, MAPPINGS))


async def test_leadsquared_replies_are_portal_activities_on_the_numeric_ticket_id(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """The first chat message creates a LeadSquared ticket; the replies are INBOUND portal activities posted to
    `…/ticket/{Id}/portal/activity` with the create's numeric Id, in order."""
    client = await start(write_config, bridge_client)
    rows = await thread(client, "chat-activity", ["Router down", "Still down", "Back up, thanks"])
    sim = runtime(client).simulators["leadsquared"]
    (ticket,) = sim.tickets
    assert ticket["Id"].isdigit()
    assert ticket["Activities"] == [{"Text": "Still down", "Direction": "INBOUND"},
                                    {"Text": "Back up, thanks", "Direction": "INBOUND"}]
    paths = [e["path"] for e in sim.received.entries if e["method"] == "POST" and "portal/activity" in e["path"]]
    assert paths and all(p.endswith(f"/ticket/{ticket['Id']}/portal/activity") for p in paths)
    assert [r.role for r in rows] == ["create", "follow_up", "follow_up"]


async def test_leadsquared_replies_as_internal_notes_name_the_ticket(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A mapping choosing `add_note`: each reply is an internal note whose RelatedTicketId is the ticket's Id."""
    client = await start(write_config, bridge_client)
    await thread(client, "chat-note", ["Router down", "Still down"])
    (ticket,) = runtime(client).simulators["leadsquared"].tickets
    assert ticket["Notes"] == ["Customer wrote: Still down"]
    assert ticket["Activities"] == []


async def test_leadsquared_follow_ups_see_the_tickets_id_key_and_uuid(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """The create's numeric Id, Key and TicketId UUID are stored on its delivery and reach the follow-up as
    `ticket.id`, `ticket.key` and `ticket.uuid`."""
    client = await start(write_config, bridge_client)
    create, _ = await thread(client, "chat-refs", ["Router down", "Still down"])
    (ticket,) = runtime(client).simulators["leadsquared"].tickets
    assert (create.ticket_id, create.ticket_key, create.ticket_uuid) == (ticket["Id"], ticket["Key"],
                                                                         ticket["TicketId"])
    assert ticket["Notes"] == [f"{ticket['Id']} {ticket['Key']} {ticket['TicketId']}: Still down"]


async def test_a_leadsquared_field_change_is_the_multipart_update_of_that_ticket(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A follow-up with `update_ticket` is the documented multipart `PUT …/tickets/{Id}/update`: the ticket's
    fields change, nothing new is created."""
    client = await start(write_config, bridge_client)
    await thread(client, "chat-update", ["Router down", "Down again"])
    sim = runtime(client).simulators["leadsquared"]
    (ticket,) = sim.tickets
    values = {f["SchemaName"]: f["Value"] for f in ticket["Fields"]}
    assert (values["Status"], values["Title"]) == ("Reopened", "Down again")
    assert len(ticket["Updates"]) == 1
    (put,) = [e for e in sim.received.entries if e["method"] == "PUT"]
    assert put["path"].endswith(f"/tickets/{ticket['Id']}/update")


async def test_an_http_follow_up_posts_to_the_path_naming_its_ticket(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """On a generic http destination the first message creates at /tickets and each reply is sent to
    /tickets/{ticket.id}/comments with the id the create's answer gave, showing on that ticket in order."""
    client = await start(write_config, bridge_client)
    rows = await thread(client, "partner", ["Printer jammed", "Still jammed", "Fixed"], case="case-7")
    sim = runtime(client).simulators["http"]
    first = sim.tickets[0]
    assert (first["id"], first["path"], first["body"]) == ("T-1", "/tickets", {"title": "Printer jammed"})
    assert [(u["path"], u["body"]) for u in first["updates"]] == [
        ("/tickets/T-1/comments", {"comment": "Still jammed"}), ("/tickets/T-1/comments", {"comment": "Fixed"})]
    assert [r.role for r in rows] == ["create", "follow_up", "follow_up"]
    assert len(sim.tickets) == 1 + 2  # the simulator keeps every write: the create, and the replies at its path
    assert [t["path"] for t in sim.tickets[1:]] == ["/tickets/T-1/comments"] * 2
