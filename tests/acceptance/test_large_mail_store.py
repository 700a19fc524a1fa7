"""A large text mail through the whole app over HTTP, stored on SQLite: its event (the text kept as `text`,
`stripped_text` and in the provider's fields) and its delivery (whose body quotes the text) are encoded and written
on a worker thread, so that no step of storing it holds the event loop, which answers every other request."""

from __future__ import annotations

import asyncio
import gc
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bridge.store import sqlite as sqlite_store
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import basic, compact, load

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
MAX_CALLBACK_CPU_MS = 20.0


class LoopCpu:
    """The CPU time (`time.thread_time`) of the longest callback the event loop runs while `measuring`: how long the
    loop's own work held it without a turn for anyone else, whatever else the machine runs. (A ticker's lateness, in
    wall time, would count the machine's other work too, and the worker threads' long calls into C, which hold the
    GIL: the parser's JSON decode of the body, the encoding of the event's rows.)"""

    def __init__(self) -> None:
        self.longest_ms = 0.0
        self.longest_what = ""
        self.thread = threading.get_ident()

    @contextmanager
    def measuring(self) -> Iterator[LoopCpu]:
        run = asyncio.events.Handle._run
        meter = self

        def timed(handle: asyncio.events.Handle) -> None:
            start = time.thread_time()
            try:
                run(handle)
            finally:
                spent = (time.thread_time() - start) * 1000
                if spent > meter.longest_ms:
                    meter.longest_ms, meter.longest_what = spent, repr(handle)[:300]

        # A full collection of the cyclic garbage collector, which may fall in any callback, is no part of it.
        collecting = gc.isenabled()
        gc.collect()
        gc.disable()
        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        try:
            yield self
        finally:
            asyncio.events.Handle._run = run  # type: ignore[method-assign]
            if collecting:
                gc.enable()


def inserting_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads that insert accepted events' rows, one entry per insert, from now on."""
    inserted: list[int] = []
    insert = sqlite_store._insert

    def noted(conn: Any, *rows: Any) -> None:
        inserted.append(threading.get_ident())
        insert(conn, *rows)

    monkeypatch.setattr(sqlite_store, "_insert", noted)
    return inserted


def large_text_mail() -> bytes:
    """Postmark's inbound JSON with a plain text of TEXT_BYTES and no stripped reply of Postmark's: the bridge strips
    it itself (nothing to strip: `stripped_text` is the text again)."""
    line = "the router blinks red and the line drops every few minutes, please help\n"
    mail = load("postmark/inbound.json")
    mail.update(TextBody=line * (TEXT_BYTES // len(line)), HtmlBody="", StrippedTextReply="", Attachments=[])
    return compact(mail)


async def test_a_large_text_mail_is_stored_without_holding_the_event_loop(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 6 MiB text mail is answered 202 once stored, its rows inserted on a thread other than the event loop's,
    and no callback the loop runs meanwhile (reading the request, answering it, the group commit) takes more
    than a few milliseconds of its CPU (5-6 ms, reading the body); encoding and writing the rows on the loop held
    it for 70-80 ms."""
    client: Any = await bridge_client(write_config(CONFIG, MAPPINGS, ENV), workers=False)
    inserted = inserting_threads(monkeypatch)
    body = large_text_mail()
    headers = {"Content-Type": "application/json", "Authorization": basic("postmark", PASSWORD)}
    with LoopCpu().measuring() as meter:
        resp = await client.post("/hooks/postmark", data=io.BytesIO(body), headers=headers)
        answer = await resp.json()
    print(f"\nlongest callback on the loop: {meter.longest_ms:.1f} ms of CPU ({meter.longest_what})")
    assert resp.status == 202, answer
    assert meter.longest_ms < MAX_CALLBACK_CPU_MS, meter.longest_what
    assert inserted and meter.thread not in inserted
    event = await runtime(client).store.get_event(answer["event_id"])
    assert event.payload["stripped_text"] == event.payload["text"].rstrip("\n")


@pytest.mark.parametrize(("mails", "off_loop"), [(1, True), (3, False)])
async def test_each_event_of_a_request_weighs_its_share_of_the_body(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch, mails: int,
        off_loop: bool) -> None:
    """A Brevo post of 1.2 MiB is one large mail, encoded and written off the loop, or three mails of 400 KiB, each
    small enough to be encoded on the loop and written with its group, where a small write costs least."""
    client: Any = await bridge_client(write_config(CONFIG, MAPPINGS, ENV), workers=False)
    inserted = inserting_threads(monkeypatch)
    line = "the router blinks red and the line drops every few minutes, please help\n"
    item = load("brevo/inbound.json")["items"][0]
    items = [{**item, "MessageId": f"<m{n}@example.com>",
              "Headers": {**item["Headers"], "Message-ID": f"<m{n}@example.com>"},
              "RawTextBody": line * (1_200_000 // mails // len(line)), "RawHtmlBody": "",
              "ExtractedMarkdownMessage": "", "Attachments": []} for n in range(mails)]
    body = compact({"items": items})
    assert len(body) > sqlite_store.LARGE_ACCEPT_BYTES
    resp = await client.post("/hooks/brevo?token=brevo-token", data=io.BytesIO(body),
                             headers={"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()
    assert len(inserted) == mails
    assert {thread != threading.get_ident() for thread in inserted} == {off_loop}
