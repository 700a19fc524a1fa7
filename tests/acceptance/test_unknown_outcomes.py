"""Unknown outcomes over real HTTP: a vendor that makes the ticket and then never answers in time, and what
each `on_unknown` makes of it (reconcile finds the ticket, resend counts the duplicates, hold waits)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import structlog

from bridge.cli import main
from bridge.cli.remote import TOKEN_ENV
from bridge.simulators.faults import Faults
from bridge.simulators.kapture import KaptureSimulator
from bridge.store.base import DeliveryFilter, DeliveryRow
from tests.acceptance.console_app import threaded_mapping
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

MAPPING = {
    "partner": """
        source: partner
        destination: kapture
        action: create_ticket
        fields:
          title: {from: payload.title, required: true}
          source_ref: "{{ payload.id }}"
          bridge_ref: "{{ event.id }}"
    """,
}


def config(on_unknown: str, extra: str = "") -> str:
    return f"""
    store: {{url: "sqlite:///var/bridge.db"}}
    admin: {{token: t0k}}
    sources:
      partner: {{kind: json, dedup: payload.id}}
    destinations:
      kapture: {{vendor: kapture, sandbox: true, timeout_seconds: 0.2, max_in_flight: 32, on_unknown: {on_unknown},
                 retry: {{schedule: [50ms, 50ms, 50ms, 50ms, 50ms], jitter: 0}}{extra}}}
    """


REFERENCE = ", reference_field: bridge_ref"
BELOW_BREAKER = 4  # sends failing in a row before a destination's breaker opens: 5


async def cli(client: Any, capsys: Any, *args: str) -> tuple[int, str, str]:
    """A `ticketbridge` verb against the running app, through its admin API (`--url`), in a thread: the CLI
    runs its own event loop."""
    code = await asyncio.to_thread(main, [*args, "--url", str(client.make_url("")).rstrip("/")])
    out, err = capsys.readouterr()
    return code, out, err


async def post_all(client: Any, idents: list[str]) -> None:
    async def one(ident: str) -> None:
        resp = await client.post("/hooks/partner", json={"id": ident, "title": f"ticket {ident}"})
        assert resp.status == 202, await resp.text()

    await asyncio.gather(*(one(i) for i in idents))


async def rows(client: Any) -> list[DeliveryRow]:
    return await runtime(client).store.list_deliveries(DeliveryFilter(limit=1000))


async def all_settled(client: Any, n: int, status: str) -> bool:
    found = await rows(client)
    return len(found) == n and all(r.status == status for r in found)


def speaker(client: Any, conversation: str) -> Callable[[str], Awaitable[None]]:
    """What posts a text as the next message of `conversation` to `partner`, each accepted (202)."""
    async def say(text: str) -> None:
        resp = await client.post("/hooks/partner", json={"conversation_id": conversation, "text": text})
        assert resp.status == 202, await resp.text()

    return say


async def test_reconcile_finds_each_ticket_made_before_the_timeout(write_config: ConfigFactory,
                                                                   bridge_client: AppClient) -> None:
    """With every create answered too late (the ticket made, then the answer held past the timeout) and
    `on_unknown: reconcile`, 200 events make exactly 200 tickets, and each delivery records the ticket the
    look-up found."""
    client = await bridge_client(write_config(config("reconcile", REFERENCE), MAPPING))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(hang_after_count=-1, hang_seconds=3)
    idents = [f"r-{i}" for i in range(200)]
    # In groups below the breaker's threshold: a vendor that never answers in time is otherwise (rightly) paused.
    for start in range(0, 200, BELOW_BREAKER):
        await post_all(client, idents[start:start + BELOW_BREAKER])
        await eventually(lambda n=start + BELOW_BREAKER: all_settled(client, n, "succeeded"), timeout=30)
    refs = Counter(t["fields"]["source_ref"] for t in sim.tickets)
    assert set(refs) == set(idents)
    assert max(refs.values()) == 1, f"duplicates: {[r for r, n in refs.items() if n > 1][:5]}"
    by_ref = {t["fields"]["bridge_ref"]: t["ticketId"] for t in sim.tickets}
    store = runtime(client).store
    for row in await rows(client):
        detail = await store.get_delivery(row.id)
        assert row.ticket_id == by_ref[row.event_id]
        kinds = [a.classification for a in detail.attempts]
        # (a look-up slower than the timeout on a busy machine is a plain retry in between)
        assert kinds[0] == "unknown" and kinds[-1] == "reconciled" and set(kinds[1:-1]) <= {"retry"}
        assert (row.unknowns, row.duplicates, row.in_doubt_since_ms) == (1, 0, None)


async def test_reconcile_sends_when_the_vendor_holds_no_ticket(write_config: ConfigFactory,
                                                               bridge_client: AppClient) -> None:
    """A send that timed out before the vendor made anything is looked up, not found, and sent again: one
    ticket, no duplicate counted."""
    client = await bridge_client(write_config(config("reconcile", REFERENCE), MAPPING))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(hang_count=1, hang_seconds=2)
    await post_all(client, ["a"])
    await eventually(lambda: all_settled(client, 1, "succeeded"))
    (row,) = await rows(client)
    detail = await runtime(client).store.get_delivery(row.id)
    assert [a.classification for a in detail.attempts] == ["unknown", "success"]
    assert len(sim.tickets) == 1 and row.ticket_id == sim.tickets[0]["ticketId"]
    assert (row.unknowns, row.duplicates) == (1, 0)
    assert len(sim.pulls) >= 1


async def test_resend_counts_and_flags_the_duplicates(write_config: ConfigFactory, bridge_client: AppClient,
                                                      capsys: Any, monkeypatch: Any) -> None:
    """With `on_unknown: resend`, each create answered too late is sent again: the vendor holds a second
    ticket for each, and exactly those deliveries count a duplicate, which `deliveries show` flags."""
    monkeypatch.setenv(TOKEN_ENV, "t0k")
    client = await bridge_client(write_config(config("resend"), MAPPING))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(hang_after_count=20, hang_seconds=2)
    idents = [f"d-{i}" for i in range(60)]
    await post_all(client, idents)
    await eventually(lambda: all_settled(client, 60, "succeeded"), timeout=30)
    refs = Counter(t["fields"]["source_ref"] for t in sim.tickets)
    extra = {ident: n - 1 for ident, n in refs.items() if n > 1}
    # The 20 held answers at least; a create slower than the timeout on a busy machine is one more, rightly.
    assert set(refs) == set(idents) and len(extra) >= 20
    store = runtime(client).store
    counted = {(await store.get_event(r.event_id)).payload["id"]: r.duplicates for r in await rows(client)
               if r.duplicates}
    assert counted == extra
    ident, n = next(iter(extra.items()))
    [row] = [r for r in await rows(client) if (await store.get_event(r.event_id)).payload["id"] == ident]
    code, out, _ = await cli(client, capsys, "deliveries", "show", row.id)
    assert code == 0 and f"POSSIBLE DUPLICATE: sent again {n} time(s)" in out


async def test_hold_waits_for_the_operator(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """With `on_unknown: hold`, a create answered too late is not sent again: it is dead, held in doubt, with
    one ticket at the vendor; marking it succeeded through the admin API records that ticket, audited."""
    client = await bridge_client(write_config(config("hold"), MAPPING))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(hang_after_count=1, hang_seconds=2)
    await post_all(client, ["h"])
    await eventually(lambda: all_settled(client, 1, "dead"))
    (row,) = await rows(client)
    assert row.in_doubt_since_ms is not None and row.unknowns == 1
    assert "held" in (row.last_error or "")
    assert len(sim.tickets) == 1
    ticket = sim.tickets[0]["ticketId"]
    headers = {"Authorization": "Bearer t0k"}
    resp = await client.post(f"/admin/api/deliveries/{row.id}/mark-succeeded", headers=headers,
                             json={"ticket_id": ticket, "note": "found in the console"})
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    assert view["delivery"]["status"] == "succeeded" and view["delivery"]["ticket_id"] == ticket
    assert view["attempts"][-1]["classification"] == "marked"
    again = await client.post(f"/admin/api/deliveries/{row.id}/mark-succeeded", headers=headers,
                              json={"ticket_id": ticket})
    assert again.status == 409
    audit = await (await client.get("/admin/api/audit", headers=headers)).json()
    assert audit["items"][0]["action"] == "delivery.mark_succeeded"
    assert audit["items"][0]["detail"]["ticket_id"] == ticket


CHAT = {"chat": threaded_mapping()}


async def test_a_follow_up_checks_its_ticket_still_exists(write_config: ConfigFactory,
                                                           bridge_client: AppClient) -> None:
    """With `check_ticket`, a follow-up first asks Kapture (get by ticket id) for its ticket: while it exists
    the comment goes; once gone the follow-up fails, naming the ticket, and updates nothing."""
    client = await bridge_client(write_config("""
    store: {url: "sqlite:///var/bridge.db"}
    sources:
      partner: {kind: json}
    destinations:
      kapture: {vendor: kapture, sandbox: true, check_ticket: true, retry: {schedule: [50ms]}}
    """, CHAT))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    say = speaker(client, "c-1")
    await say("router down")
    await eventually(lambda: all_settled(client, 1, "succeeded"))
    await say("still down")
    await eventually(lambda: all_settled(client, 2, "succeeded"))
    ticket = sim.tickets[0]
    assert ticket["comments"] == ["still down"] and sim.gets == [[ticket["ticketId"]]]
    sim.drop(ticket["ticketId"])  # deleted in the account
    await say("hello?")

    async def third_dead() -> bool:
        return [r.status for r in await rows(client)] == ["dead", "succeeded", "succeeded"]

    await eventually(third_dead)
    latest = (await rows(client))[0]
    assert f"ticket {ticket['ticketId']} no longer exists" in (latest.last_error or "")
    assert len(sim.gets) == 2 and ticket["comments"] == ["still down"]


CHAT_WITH_REFERENCE = {"chat": threaded_mapping().replace("fields:\n  title:",
                                                           "fields:\n  bridge_ref: \"{{ event.id }}\"\n  title:", 1)}


async def test_a_follow_up_in_doubt_is_held_not_resent_under_reconcile(write_config: ConfigFactory,
                                                                       bridge_client: AppClient) -> None:
    """Under `on_unknown: reconcile`, a thread's follow-up whose comment Kapture applied but answered too late is not
    sent again (Kapture cannot find a comment again, and reconcile never guesses): it is held for an operator, dead
    and in doubt, its error naming the ticket and what to do; `delivery.follow_up_in_doubt` is logged as a warning,
    /metrics counts it (`handling="held"`), and the ticket holds the comment once. The operator's mark-succeeded
    settles it."""
    client = await bridge_client(write_config(config("reconcile", REFERENCE), CHAT_WITH_REFERENCE))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    say = speaker(client, "c-doubt")
    await say("router down")
    await eventually(lambda: all_settled(client, 1, "succeeded"))
    ticket = sim.tickets[0]["ticketId"]
    sim.faults = Faults(hang_after_count=1, hang_seconds=2)
    with structlog.testing.capture_logs() as logs:
        await say("still down")

        async def follow_up_held() -> bool:
            return [r.status for r in await rows(client)] == ["dead", "succeeded"]

        await eventually(follow_up_held)
    held = (await rows(client))[0]
    assert (held.role, held.unknowns, held.duplicates) == ("follow_up", 1, 0)
    assert held.in_doubt_since_ms is not None
    assert held.last_error == (
        f"held: an earlier send of this follow-up had an unknown outcome, so ticket {ticket} may already hold it, "
        "and no vendor's API lets ticketbridge find a reply or update again (on_unknown: reconcile); check the "
        "ticket at the vendor, then `replay` (send it) or `mark-succeeded` (it is there)")
    assert sim.tickets[0]["comments"] == ["still down"]
    (said,) = [e for e in logs if e["event"] == "delivery.follow_up_in_doubt"]
    assert (said["log_level"], said["handling"], said["ticket_id"], said["delivery_id"]) == (
        "warning", "held", ticket, held.id)
    auth = {"Authorization": "Bearer t0k"}
    metrics = await (await client.get("/metrics", headers=auth)).text()
    assert ('ticketbridge_delivery_follow_ups_in_doubt_total{destination="kapture",handling="held"} 1'
            in metrics)
    resp = await client.post(f"/admin/api/deliveries/{held.id}/mark-succeeded", headers=auth,
                             json={"ticket_id": ticket, "note": "the comment is on the ticket"})
    assert resp.status == 200, await resp.text()
    assert [r.status for r in await rows(client)] == ["succeeded", "succeeded"]


async def test_a_follow_up_in_doubt_is_resent_and_counted_under_resend(write_config: ConfigFactory,
                                                                        bridge_client: AppClient) -> None:
    """Under `on_unknown: resend`, the same follow-up in doubt is sent again, as the destination asks: the ticket
    holds the comment twice, the delivery counts a possible duplicate, and `delivery.follow_up_in_doubt` and
    /metrics (`handling="resent"`) say so."""
    client = await bridge_client(write_config(config("resend"), CHAT))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    say = speaker(client, "c-resent")
    await say("router down")
    await eventually(lambda: all_settled(client, 1, "succeeded"))
    sim.faults = Faults(hang_after_count=1, hang_seconds=2)
    with structlog.testing.capture_logs() as logs:
        await say("still down")
        await eventually(lambda: all_settled(client, 2, "succeeded"))
    resent = (await rows(client))[0]
    assert (resent.role, resent.unknowns, resent.duplicates) == ("follow_up", 1, 1)
    assert sim.tickets[0]["comments"] == ["still down", "still down"]
    assert [e["handling"] for e in logs if e["event"] == "delivery.follow_up_in_doubt"] == ["resent"]
    metrics = await (await client.get("/metrics", headers={"Authorization": "Bearer t0k"})).text()
    assert ('ticketbridge_delivery_follow_ups_in_doubt_total{destination="kapture",handling="resent"} 1'
            in metrics)


async def test_a_held_create_keeps_its_thread_waiting_for_the_operator(write_config: ConfigFactory,
                                                                       bridge_client: AppClient) -> None:
    """With `on_unknown: hold`, a thread's create answered too late is held; the thread's next message waits for
    it (no second ticket), and marking the create succeeded with the vendor's ticket sends the waiting message as
    a comment on that ticket."""
    client = await bridge_client(write_config(config("hold"), CHAT))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(hang_after_count=1, hang_seconds=2)
    say = speaker(client, "c-held")
    await say("router down")
    await eventually(lambda: all_settled(client, 1, "dead"))
    await say("still down")

    async def second_waits() -> bool:
        found = await rows(client)
        return len(found) == 2 and found[0].status == "pending" and found[0].waiting

    await eventually(second_waits)
    held = (await rows(client))[1]
    assert len(sim.tickets) == 1 and sim.tickets[0]["comments"] == []
    ticket = sim.tickets[0]["ticketId"]
    resp = await client.post(f"/admin/api/deliveries/{held.id}/mark-succeeded",
                             headers={"Authorization": "Bearer t0k"}, json={"ticket_id": ticket})
    assert resp.status == 200, await resp.text()
    await eventually(lambda: all_settled(client, 2, "succeeded"))
    assert len(sim.tickets) == 1 and sim.tickets[0]["comments"] == ["still down"]
    assert (await rows(client))[0].role == "follow_up"


async def test_an_operator_resets_a_conversation_whose_ticket_is_gone(write_config: ConfigFactory,
                                                                     bridge_client: AppClient, capsys: Any) -> None:
    """The chat's ticket is deleted at Kapture, so its next message dies. `POST /admin/api/conversations/{key}/reset`
    (admin token, audited, in the OpenAPI document) detaches the conversation; the dead message replayed is then
    a create. `conversations reset --url` goes through the same route."""
    client = await bridge_client(write_config(config("hold"), CHAT))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    headers = {"Authorization": "Bearer t0k"}
    say = speaker(client, "c-gone")
    await say("router down")
    await eventually(lambda: all_settled(client, 1, "succeeded"))
    gone = sim.tickets[0]["ticketId"]
    sim.drop(gone)
    await say("still down")

    async def second_dead() -> bool:
        return [r.status for r in await rows(client)] == ["dead", "succeeded"]

    await eventually(second_dead)
    dead = (await rows(client))[0]
    assert dead.conversation is not None
    key = dead.conversation.split("|", 1)[1]
    path = f"/admin/api/conversations/{quote(key, safe='')}/reset"
    assert (await client.post(path, json={})).status == 401
    missing = await client.post("/admin/api/conversations/chat%3Anothing/reset", headers=headers, json={})
    assert missing.status == 404 and 'no conversation "chat:nothing"' in (await missing.json())["error"]
    resp = await client.post(path, headers=headers, json={"reason": "merged"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"key": key, "conversations": [
        {"id": dead.conversation, "mapping": "chat", "destination": "kapture", "ticket_id": gone,
         "ticket_key": None, "ticket_uuid": None}]}
    audit = await (await client.get("/admin/api/audit", headers=headers)).json()
    assert (audit["items"][0]["action"], audit["items"][0]["target"]) == ("conversation.reset", key)
    assert audit["items"][0]["detail"]["reason"] == "merged"
    spec = await (await client.get("/admin/openapi.json", headers=headers)).json()
    assert "post" in spec["paths"]["/admin/api/conversations/{key}/reset"]
    replayed = await client.post("/admin/api/replay", headers=headers, json={"ids": [dead.id]})
    assert replayed.status == 200, await replayed.text()
    await eventually(lambda: all_settled(client, 2, "succeeded"))
    assert [t["taskTitle"] for t in sim.tickets] == ["still down"]
    assert [r.role for r in await rows(client)] == ["create", "create"]
    os.environ[TOKEN_ENV] = "t0k"
    try:
        code, out, _ = await cli(client, capsys, "conversations", "reset", key)
    finally:
        del os.environ[TOKEN_ENV]
    assert code == 0 and f"conversation {dead.conversation}: ticket {sim.tickets[0]['ticketId']} detached" in out
