"""Conversations through the whole app: an email thread or a chat is one Kapture ticket, and its later
messages are comments on it, in order, whatever the vendor's speed or the order mail arrives in."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from bridge.simulators.faults import Faults
from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import (
    NOW,
    basic,
    compact,
    hub_signature,
    load,
    mailersend_signature,
    mandrill_request,
    multipart,
    postal_headers,
    postal_public_key,
    svix_headers,
)

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
ENV = {"MAILGUN_KEY": KEY}

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  support-mailgun: {kind: mailgun, signing_key: "${MAILGUN_KEY}"}
  whatsapp: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
"""

MAPPING = """
    name: email-to-kapture
    source: support-mailgun
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
        comment: "{{ payload.stripped_text }}"
"""

ROOT = "<root.1@Mail.Example.com>"
THREAD = [  # (message id, in-reply-to, references, stripped text)
    (ROOT, None, None, "My router is down"),
    ("<reply.2@mail.example.com>", ROOT, ROOT, "Still down this morning"),
    ("<reply.3@mail.example.com>", "<reply.2@mail.example.com>", f"{ROOT} <reply.2@mail.example.com>",
     "Now it works, thanks"),
]


def mailgun(n: int) -> tuple[bytes, dict[str, str]]:
    """Message `n` of the thread as Mailgun posts it, signed with its own token."""
    mid, reply_to, refs, text = THREAD[n]
    token = f"token-{n}-" + "0" * 40
    headers = [["From", "asha@example.com"], ["Subject", "Router down" if n == 0 else "Re: Router down"],
               ["Message-Id", mid]] + ([["In-Reply-To", reply_to]] if reply_to else []) + (
               [["References", refs]] if refs else [])
    fields = {"recipient": "support@acme.test", "sender": "asha@example.com", "from": "asha@example.com",
              "subject": headers[1][1], "body-plain": f"{text}\n\n> quoted", "stripped-text": text,
              "message-headers": json.dumps(headers), "Message-Id": mid, "timestamp": str(NOW), "token": token,
              "signature": hmac.new(KEY.encode(), f"{NOW}{token}".encode(), hashlib.sha256).hexdigest()}
    body, ctype = multipart(fields)
    return body, {"Content-Type": ctype}


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    c = await bridge_client(write_config(CONFIG, {"email": MAPPING}, ENV))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    return c


async def post(client: Any, n: int) -> None:
    body, headers = mailgun(n)
    resp = await client.post("/hooks/support-mailgun", data=body, headers=headers)
    assert resp.status == 202, await resp.text()


async def settled(client: Any, count: int) -> list[Any]:
    store = runtime(client).store

    async def done() -> bool:
        rows = await store.list_deliveries(DeliveryFilter(limit=100))
        return len(rows) == count and all(r.status == "succeeded" for r in rows)

    await eventually(done)
    return sorted(await store.list_deliveries(DeliveryFilter(limit=100)), key=lambda r: r.id)


async def test_a_three_message_mailgun_thread_is_one_ticket_and_two_comments_in_order(client: Any) -> None:
    """Original, reply and reply to the reply make one Kapture ticket and two updates with the replies'
    stripped text, in order; the deliveries say create, follow_up, follow_up."""
    for n in range(3):
        await post(client, n)
    rows = await settled(client, 3)
    sim = runtime(client).simulators["kapture"]
    assert len(sim.tickets) == 1
    assert sim.tickets[0]["comments"] == ["Still down this morning", "Now it works, thanks"]
    assert [r.role for r in rows] == ["create", "follow_up", "follow_up"]
    assert {r.conversation for r in rows} == {"email-to-kapture|mail:root.1@mail.example.com"}


async def test_replies_sent_while_the_create_is_slow_wait_for_its_ticket(client: Any) -> None:
    """With the vendor slowed, both replies arrive while the create is in flight: they wait (listed as
    waiting), then become comments on the one ticket, in order."""
    sim = runtime(client).simulators["kapture"]
    sim.faults = Faults(latency_ms=600, after=0)
    await post(client, 0)
    store = runtime(client).store

    async def create_in_flight() -> bool:
        return any(r.status == "in_flight" for r in await store.list_deliveries(DeliveryFilter()))

    await eventually(create_in_flight)
    await post(client, 1)
    await post(client, 2)
    listed = await store.list_deliveries(DeliveryFilter(status="pending"))
    assert len(listed) == 2 and all(r.waiting for r in listed)
    await settled(client, 3)
    assert len(sim.tickets) == 1
    assert sim.tickets[0]["comments"] == ["Still down this morning", "Now it works, thanks"]


async def test_a_reply_arriving_before_its_original_lands_in_the_same_conversation(client: Any) -> None:
    """The reply to the reply arrives first: it names the same root, so it opens the conversation (the create),
    and the original and the other reply follow on its ticket."""
    for n in (2, 0, 1):
        await post(client, n)
    rows = await settled(client, 3)
    sim = runtime(client).simulators["kapture"]
    assert len(sim.tickets) == 1
    assert sim.tickets[0]["comments"] == ["My router is down", "Still down this morning"]
    assert len({r.conversation for r in rows}) == 1


async def test_a_message_after_reopen_after_starts_a_new_ticket(write_config: ConfigFactory,
                                                                 bridge_client: AppClient) -> None:
    """With `reopen_after: 1s`, a reply after a second's quiet makes a second ticket, not a comment."""
    c = await bridge_client(write_config(CONFIG, {"email": MAPPING + "    reopen_after: 1s\n"}, ENV))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    await post(c, 0)
    await settled(c, 1)
    await asyncio.sleep(1.2)  # the quiet period under test, not a synchronisation
    await post(c, 1)
    rows = await settled(c, 2)
    sim = runtime(c).simulators["kapture"]
    assert len(sim.tickets) == 2
    assert [r.role for r in rows] == ["create", "create"]


async def test_conversations_show_lists_the_ticket_and_each_message(
        client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`conversations show KEY` prints the conversation's ticket and its deliveries (create, then follow-ups);
    `deliveries list` shows each one's kind and conversation."""
    for n in range(3):
        await post(client, n)
    await settled(client, 3)
    ticket = runtime(client).simulators["kapture"].tickets[0]["ticketId"]
    monkeypatch.setenv("MAILGUN_KEY", KEY)
    config = str(tmp_path / "bridge.yaml")
    code = await asyncio.to_thread(main, ["conversations", "show", "mail:root.1@mail.example.com", "-c", config])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"ticket       {ticket}" in out
    assert "messages     3" in out
    kinds = [line.split()[4] for line in out.splitlines() if line.startswith("dlv_")]
    assert kinds == ["create", "follow_up", "follow_up"]
    code = await asyncio.to_thread(main, ["deliveries", "list", "-c", config])
    listed = capsys.readouterr().out.splitlines()
    assert code == 0 and listed[0].split()[4:8] == ["KIND", "TRIES", "TICKET", "CONVERSATION"]
    assert all("mail:root.1@mail.example.com" in line for line in listed[1:])
    code = await asyncio.to_thread(main, ["conversations", "show", "mail:nothing@x", "-c", config])
    assert code == 1 and "no conversation 'mail:nothing@x'" in capsys.readouterr().err


PROVIDERS_CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  support-mailgun: {kind: mailgun, signing_key: "${MAILGUN_KEY}"}
  support-postmark: {kind: postmark, auth: {basic: {username: postmark, password: pm-pw}}}
  support-sendgrid: {kind: sendgrid, auth: {basic: {username: parse, password: parse-pw}}}
  whatsapp: {kind: whatsapp, app_secret: wa-secret, verify_token: wa-verify}
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
"""

ALL_MAIL = MAPPING.replace("source: support-mailgun", "source: [support-mailgun, support-postmark, support-sendgrid]")

CHAT = """
    name: chat-to-kapture
    source: whatsapp
    destination: kapture
    action: create_ticket
    fields:
      title: "WhatsApp from {{ payload.from }}"
      ticket_details: "{{ payload.text }}"
    follow_up:
      action: update_ticket
      fields: {ticket_id: "{{ ticket.id }}", sub_status: P, comment: "{{ payload.text }}"}
"""


def postmark(n: int) -> tuple[bytes, dict[str, str]]:
    """Message `n` of the thread as Postmark posts it (its fixture, with this message's ids and text)."""
    mid, reply_to, refs, text = THREAD[n]
    data = load("postmark/inbound.json")
    data.update(From="asha@example.com", FromFull={"Email": "asha@example.com", "Name": "Asha", "MailboxHash": ""})
    data.update(Subject="Re: Router down", TextBody=f"{text}\n\n> quoted", StrippedTextReply=text, Attachments=[],
                Headers=[{"Name": "Message-ID", "Value": mid}, {"Name": "In-Reply-To", "Value": reply_to or ""},
                         {"Name": "References", "Value": refs or ""}])
    return compact(data), {"Content-Type": "application/json", "Authorization": basic("postmark", "pm-pw")}


def sendgrid(n: int) -> tuple[bytes, dict[str, str]]:
    """Message `n` of the thread as SendGrid's Inbound Parse posts it (its fixture, this message's headers)."""
    mid, reply_to, refs, text = THREAD[n]
    fields = load("sendgrid/parse.json")
    fields.update({"from": "asha@example.com"})  # the thread's sender (a thread is joined only by its first sender)
    fields.update(subject="Re: Router down", text=f"{text}\n\nOn Mon, Asha wrote:\n> quoted\n", attachments="0",
                  headers=f"From: asha@example.com\nMessage-ID: {mid}\nIn-Reply-To: {reply_to}\nReferences: {refs}\n"
                          "Subject: Re: Router down\n")
    fields.pop("attachment-info", None)
    body, ctype = multipart(fields)
    return body, {"Content-Type": ctype, "Authorization": basic("parse", "parse-pw")}


async def test_the_thread_through_mailgun_postmark_and_sendgrid_is_one_conversation(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """The original through Mailgun, the reply through Postmark and the reply to it through SendGrid join one
    conversation: one ticket, two comments in order."""
    c = await bridge_client(write_config(PROVIDERS_CONFIG, {"email": ALL_MAIL}, ENV))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    await post(c, 0)
    for path, (body, headers) in (("/hooks/support-postmark", postmark(1)), ("/hooks/support-sendgrid", sendgrid(2))):
        resp = await c.post(path, data=body, headers=headers)
        assert resp.status == 202, await resp.text()
    rows = await settled(c, 3)
    sim = runtime(c).simulators["kapture"]
    assert len(sim.tickets) == 1
    assert sim.tickets[0]["comments"] == ["Still down this morning", "Now it works, thanks"]
    assert [r.source for r in rows] == ["support-mailgun", "support-postmark", "support-sendgrid"]
    assert {r.conversation for r in rows} == {"email-to-kapture|mail:root.1@mail.example.com"}


async def test_a_whatsapp_customers_three_messages_make_one_ticket_and_two_follow_ups(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Three WhatsApp messages from one number: one ticket, then two comments, in order."""
    c = await bridge_client(write_config(PROVIDERS_CONFIG, {"chat": CHAT}, ENV))
    for i, text in enumerate(["Router down", "Still down", "Back up"]):
        data = load("whatsapp/messages.json")
        value = data["entry"][0]["changes"][0]["value"]
        value["messages"] = [{**value["messages"][0], "id": f"wamid.{i}", "text": {"body": text}}]
        body = compact(data)
        resp = await c.post("/hooks/whatsapp", data=body, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": hub_signature("wa-secret", body)})
        assert resp.status == 202, await resp.text()
    rows = await settled(c, 3)
    sim = runtime(c).simulators["kapture"]
    assert len(sim.tickets) == 1 and sim.tickets[0]["fields"]["ticket_details"] == "Router down"
    assert sim.tickets[0]["comments"] == ["Still down", "Back up"]
    assert [r.role for r in rows] == ["create", "follow_up", "follow_up"]


async def test_an_event_no_mapping_takes_is_counted_and_listed(
        client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A WhatsApp message with no mapping for its source leaves a trace: `events unmatched` lists it with
    the reason, and it is counted (intake outcome `unmatched` on /metrics)."""
    resp = await client.post("/hooks/whatsapp", json={"text": "hello"})
    assert resp.status == 202, await resp.text()
    event_id = (await resp.json())["event_id"]
    monkeypatch.setenv("MAILGUN_KEY", KEY)
    code = await asyncio.to_thread(main, ["events", "unmatched", "-c", str(tmp_path / "bridge.yaml")])
    out = capsys.readouterr().out
    assert code == 0 and event_id in out and "no mapping takes this source" in out
    assert runtime(client).labelled[("events.unmatched", (("reason", "no_mapping"), ("source", "whatsapp")))] == 1


# -- the thread through the email kinds that post their own JSON or raw MIME ----------------------------------

NEW_MAIL = ["brevo", "mailjet", "mandrill", "sparkpost", "resend", "mailersend", "postal"]
NEW_MAIL_CONFIG = PROVIDERS_CONFIG.replace("sources:\n", """sources:
  brevo: {kind: brevo}
  mailjet: {kind: mailjet}
  mandrill: {kind: mandrill, webhook_key: md-key, public_url: "https://bridge.example.com/hooks/mandrill"}
  sparkpost: {kind: sparkpost}
  resend: {kind: resend, secret: "whsec_cmVzZW5kLXNpZ25pbmctc2VjcmV0", api_key: re_k, api_url: "https://api.resend.test"}
  mailersend: {kind: mailersend, secret: ms-secret}
  postal: {kind: postal, public_key: "${POSTAL_KEY}"}
""")


def thread_eml(n: int) -> str:
    """Message `n` of the thread as raw MIME, its reply above a quoted attribution."""
    mid, reply_to, refs, text = THREAD[n]
    lines = ["From: asha@example.com", "To: support@acme.test", "Subject: Re: Router down", f"Message-ID: {mid}",
             *([f"In-Reply-To: {reply_to}"] if reply_to else []), *([f"References: {refs}"] if refs else []),
             "Content-Type: text/plain; charset=utf-8", "", text, "", "On Mon, Asha wrote:", "> quoted", ""]
    return "\r\n".join(lines)


def new_mail(kind: str, n: int) -> tuple[bytes, dict[str, str]]:
    """Message `n` of the thread as `kind` posts it, signed as that provider signs."""
    mid, reply_to, refs, text = THREAD[n]
    if kind == "brevo":
        item = {"MessageId": mid, "InReplyTo": reply_to, "From": {"Address": "asha@example.com"},
                "Subject": "Re: Router down", "RawTextBody": f"{text}\n\n> quoted", "ExtractedMarkdownMessage": text,
                "Headers": {"References": refs} if refs else {}}
        return compact({"items": [item]}), {"Content-Type": "application/json"}
    if kind == "mailjet":
        headers = {"Message-ID": mid, **({"In-Reply-To": reply_to, "References": refs} if refs else {})}
        data = {"From": "asha@example.com", "Subject": "Re: Router down", "Headers": headers,
                "Text-part": f"{text}\n\nOn Mon, Asha wrote:\n> quoted\n"}
        return compact(data), {"Content-Type": "application/json"}
    if kind == "mandrill":
        events = [{"event": "inbound", "msg": {"raw_msg": thread_eml(n)}}]
        return mandrill_request("md-key", "https://bridge.example.com/hooks/mandrill", events)
    if kind == "sparkpost":
        return compact([{"msys": {"relay_message": {"content": {"email_rfc822": thread_eml(n)}}}}]), {
            "Content-Type": "application/json"}
    if kind == "resend":
        body = compact({"type": "email.received", "data": {"email_id": f"email-{n}"}})
        return body, svix_headers("whsec_cmVzZW5kLXNpZ25pbmctc2VjcmV0", body, msg_id=f"msg_{n}")
    if kind == "mailersend":
        body = compact({"type": "inbound.message", "data": {"id": f"ms-{n}", "raw": thread_eml(n)}})
        return body, {"Content-Type": "application/json", "Signature": mailersend_signature("ms-secret", body)}
    body = compact({"id": n, "message": base64.b64encode(thread_eml(n).encode()).decode(), "base64": True})
    return body, postal_headers(body)


async def thread_resend_api(url: str, headers: dict[str, str], timeout_s: float, max_bytes: int) -> bytes:
    """Resend's Receiving API for the thread: `email-N` is message N, whose raw download is its MIME."""
    n = int(url.rsplit("-", 1)[1])
    if "/emails/receiving/" in url:
        return compact({"id": f"email-{n}", "raw": {"download_url": f"https://cdn.resend.test/raw-{n}"}})
    return thread_eml(n).encode()


@pytest.mark.parametrize(("second", "third"), [("brevo", "mailjet"), ("mandrill", "sparkpost"),
                                               ("resend", "mailersend"), ("postal", "brevo")])
async def test_the_thread_through_the_newer_email_kinds_is_one_conversation(
        write_config: ConfigFactory, bridge_client: AppClient, second: str, third: str) -> None:
    """The original through Mailgun and the two replies through two other email kinds join one conversation:
    one ticket, two comments in order."""
    mapping = MAPPING.replace("source: support-mailgun", f"source: [support-mailgun, {', '.join(NEW_MAIL)}]")
    c = await bridge_client(write_config(NEW_MAIL_CONFIG, {"email": mapping}, {**ENV, "POSTAL_KEY":
                                                                                 postal_public_key()}))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    runtime(c).sources["resend"].handler.get = thread_resend_api  # type: ignore[attr-defined]
    await post(c, 0)
    for n, kind in ((1, second), (2, third)):
        body, headers = new_mail(kind, n)
        resp = await c.post(f"/hooks/{kind}", data=body, headers=headers)
        assert resp.status == 202, await resp.text()
    rows = await settled(c, 3)
    sim = runtime(c).simulators["kapture"]
    assert len(sim.tickets) == 1
    assert sim.tickets[0]["comments"] == ["Still down this morning", "Now it works, thanks"]
    assert [r.source for r in rows] == ["support-mailgun", second, third]
    assert {r.conversation for r in rows} == {"email-to-kapture|mail:root.1@mail.example.com"}


async def test_a_follow_up_render_past_its_slice_of_the_loop_is_done_in_the_parser_thread(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follow-up is rendered at send time, on the delivery loop's thread; one whose templates run past the loop
    slice (here over before it starts) is rendered again in the parser thread, and its comment is the same."""
    from structlog.testing import capture_logs

    from bridge import offload

    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)
    looping = MAPPING.replace('comment: "{{ payload.stripped_text }}"',
                              'comment: "{% for part in [payload.stripped_text] %}{{ part }}{% endfor %}"')
    assert looping != MAPPING
    c = await bridge_client(write_config(CONFIG, {"email": looping}, ENV))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    with capture_logs() as logs:
        for n in range(2):
            await post(c, n)
        await settled(c, 2)
    assert runtime(c).simulators["kapture"].tickets[0]["comments"] == ["Still down this morning"]
    assert [e["what"] for e in logs if e["event"] == "render.offloaded"] == ["follow_up"]


async def test_a_thread_whose_ticket_is_gone_is_reset_and_its_dead_reply_replayed_as_a_create(
        client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The thread's ticket is deleted at Kapture: the reply dies (the vendor has no such ticket). `conversations
    reset KEY` detaches the conversation from it (audited); the dead reply replayed is then the thread's create,
    a new ticket from the reply's own event, and the next reply a comment on that one."""
    store = runtime(client).store
    await post(client, 0)
    await settled(client, 1)
    sim = runtime(client).simulators["kapture"]
    gone = sim.tickets[0]["ticketId"]
    sim.drop(gone)
    await post(client, 1)

    async def reply_dead() -> bool:
        return [r.status for r in await store.list_deliveries(DeliveryFilter(limit=10))] == ["dead", "succeeded"]

    await eventually(reply_dead)
    dead = (await store.list_deliveries(DeliveryFilter(limit=1)))[0]
    monkeypatch.setenv("MAILGUN_KEY", KEY)
    config = str(tmp_path / "bridge.yaml")
    key = "mail:root.1@mail.example.com"
    code = await asyncio.to_thread(main, ["conversations", "reset", "mail:nothing@x", "-c", config])
    assert code == 1 and "no conversation 'mail:nothing@x'" in capsys.readouterr().err
    code = await asyncio.to_thread(main, ["conversations", "reset", key, "--reason", "merged in Kapture",
                                          "-c", config])
    out = capsys.readouterr().out
    assert code == 0 and f"email-to-kapture|{key}: ticket {gone} detached" in out, out
    (audit,) = await store.list_audit()
    assert (audit.action, audit.target, audit.detail["reason"]) == ("conversation.reset", key, "merged in Kapture")
    assert audit.detail["conversations"][0]["ticket_id"] == gone
    assert await asyncio.to_thread(main, ["replay", dead.id, "-c", config]) == 0
    capsys.readouterr()
    rows = await settled(client, 2)
    assert [r.role for r in rows] == ["create", "create"]
    assert len(sim.tickets) == 1 and sim.tickets[0]["ticketId"] != gone  # the gone one was dropped
    assert sim.tickets[0]["detail"] == "Still down this morning"
    await post(client, 2)
    rows = await settled(client, 3)
    assert rows[-1].role == "follow_up" and sim.tickets[0]["comments"] == ["Now it works, thanks"]
