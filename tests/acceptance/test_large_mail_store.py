"""A large text mail through the whole app over HTTP, stored on SQLite: its event (the text kept as `text`,
`stripped_text` and in the provider's fields) and its delivery (whose body quotes the text) are encoded and written
on a worker thread, so that no step of storing it holds the event loop, which answers every other request."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import pytest

from bridge.store import sqlite as sqlite_store
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import basic, compact, load
from tests.loop_cpu import LoopCpu, measured

PASSWORD = "postmark-pw"
CONFIG = """
server: {max_body_bytes: 16777216}
store: {url: "sqlite:///var/bridge.db"}
sources:
  postmark: {kind: postmark, auth: {basic: {username: postmark, password: "${POSTMARK_PW}"}}}
  brevo: {kind: brevo, token: "${BREVO_TOKEN}"}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
ENV = {"POSTMARK_PW": PASSWORD, "BREVO_TOKEN": "brevo-token"}
MAPPINGS = {"email": """
    source: [postmark, brevo]
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
      email_id: {from: payload.from, required: true}
      ticket_details: {from: payload.stripped_text}
"""}
TEXT_BYTES = 6 * 1024 * 1024
"""About 24 MiB stored (the text three times in the event, once in the body)."""


def inserting_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads that insert accepted events' rows, one entry per insert, from now on."""
    inserted: list[int] = []
    insert = sqlite_store._insert

    def noted(conn: Any, *rows: Any) -> None:
        inserted.append(threading.get_ident())
        insert(conn, *rows)

    monkeypatch.setattr(sqlite_store, "_insert", noted)
    return inserted


def large_text_mail(line: str = "the router blinks red and the line drops every few minutes, please help\n",
                    end: str = "") -> bytes:
    """Postmark's inbound JSON with a plain text of TEXT_BYTES (`line` over and over, then `end`) and no stripped
    reply of Postmark's: the bridge strips it itself (nothing to strip: `stripped_text` is the text again)."""
    mail = load("postmark/inbound.json")
    mail.update(TextBody=line * (TEXT_BYTES // len(line)) + end, HtmlBody="", StrippedTextReply="", Attachments=[])
    return compact(mail)


async def posted_without_stalling(client: Any, mail: bytes) -> tuple[str, LoopCpu]:
    """Post `mail` to Postmark's inbound hook: answered 202, no callback the loop ran meanwhile over
    MAX_CALLBACK_CPU_MS of its CPU (`measured`). The event's id, and the meter."""
    headers = {"Content-Type": "application/json", "Authorization": basic("postmark", PASSWORD)}
    with LoopCpu().measuring() as meter:
        resp = await client.post("/hooks/postmark", data=io.BytesIO(mail), headers=headers)
        answer = await resp.json()
    assert resp.status == 202, answer
    measured("accept", meter)
    return answer["event_id"], meter


async def test_a_large_text_mail_is_stored_without_holding_the_event_loop(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 6 MiB text mail is answered 202 once stored, its rows inserted on a thread other than the event loop's,
    and no callback the loop runs meanwhile (reading the request, answering it, the group commit) takes more
    than a few milliseconds of its CPU (5-6 ms, reading the body); encoding and writing the rows on the loop held
    it for 70-80 ms."""
    client: Any = await bridge_client(write_config(CONFIG, MAPPINGS, ENV), workers=False)
    inserted = inserting_threads(monkeypatch)
    event_id, meter = await posted_without_stalling(client, large_text_mail())
    assert inserted and meter.thread not in inserted
    event = await runtime(client).store.get_event(event_id)
    assert event.payload["stripped_text"] == event.payload["text"].rstrip("\n")


def brevo_mails(texts: list[int]) -> bytes:
    """Brevo's inbound post of one mail per entry of `texts`, each with a text of that many characters."""
    line = "the router blinks red and the line drops every few minutes, please help\n"
    item = load("brevo/inbound.json")["items"][0]
    return compact({"items": [{**item, "MessageId": f"<m{n}@example.com>",
                               "Headers": {**item["Headers"], "Message-ID": f"<m{n}@example.com>"},
                               "RawTextBody": line * (chars // len(line)), "RawHtmlBody": "",
                               "ExtractedMarkdownMessage": "", "Attachments": []} for n, chars in enumerate(texts)]})


async def test_each_event_of_a_request_weighs_its_own_text(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Brevo post of one large mail and nine small ones: the large one is encoded and written off the loop, by
    itself; the small ones are encoded on the loop and written with their groups, where a small write costs least.
    Each weighed its share of the body before (a tenth of it), so the large one was encoded and written on the
    loop."""
    client: Any = await bridge_client(write_config(CONFIG, MAPPINGS, ENV), workers=False)
    inserted = inserting_threads(monkeypatch)
    body = brevo_mails([400_000] + [2_000] * 9)  # the large one about 1.6 MB encoded: less than a group
    resp = await client.post("/hooks/brevo?token=brevo-token", data=io.BytesIO(body),
                             headers={"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()
    loop_thread = threading.get_ident()
    assert [thread != loop_thread for thread in inserted] == [True] + [False] * 9


async def test_a_mail_whose_attachment_is_saved_apart_weighs_its_text_alone(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Postmark mail of a short text and a 1.1 MiB attachment: the attachment is saved apart, and its event, which
    only names it, is small, encoded on the loop and written with its group. It weighed the request's body before
    (the attachment's base64 with it), and was written by itself off the loop, losing its group's commit."""
    client: Any = await bridge_client(write_config(CONFIG, MAPPINGS, ENV), workers=False)
    inserted = inserting_threads(monkeypatch)
    mail = load("postmark/inbound.json")
    mail["Attachments"] = [{"Name": "scan.pdf", "ContentType": "application/pdf", "ContentID": "",
                            "Content": base64.b64encode(bytes(range(256)) * 4400).decode(),
                            "ContentLength": 256 * 4400}]
    body = compact(mail)
    assert len(body) > sqlite_store.LARGE_ACCEPT_BYTES
    resp = await client.post("/hooks/postmark", data=io.BytesIO(body),
                             headers={"Content-Type": "application/json", "Authorization": basic("postmark", PASSWORD)})
    assert resp.status == 202, await resp.text()
    assert inserted == [threading.get_ident()]
