"""SES with the S3 action through the whole app, against a real S3-compatible server started by the test: the
message is read from the bucket before the event is stored; S3 down is a 503 with nothing stored, and SNS's
retry of the same notification then succeeds, once."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import handlers.ses
from handlers.attachments import content_path
from handlers.email import email_payload
from handlers.s3_client import S3Client
from tests.acceptance.test_providers import send, stored_events
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import NOW, TOPIC, FakeSns, compact, ses_notification
from tests.fixtures.s3 import SES_KEY, S3Server, s3_serving, ses_s3_received

MAPPINGS = {
    "email": """
        source: ses
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
          email_id: {from: payload.from, required: true}
          ticket_details: {from: payload.stripped_text}
    """,
}
SNS = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    yield from s3_serving(monkeypatch)


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient, s3: S3Server) -> Any:
    config = write_config(f"""
        store: {{url: "sqlite:///var/bridge.db"}}
        sources:
          ses: {{kind: ses, topic_arns: ["{TOPIC}"], s3: {{endpoint_url: "{s3.url}", timeout: 5s}}}}
        destinations:
          kapture: {{vendor: kapture, sandbox: true, retry: {{schedule: [50ms]}}}}
        """, MAPPINGS)
    c = await bridge_client(config)
    handler: Any = runtime(c).sources["ses"].handler
    handler.clock = lambda: float(NOW)
    handler.fetch = FakeSns()
    return c


def big_email(attachment: bytes) -> EmailMessage:
    """A message over 2 MB raw: a text body, and a binary attachment (base64 in the MIME)."""
    message = EmailMessage()
    message["From"] = "Asha Rao <asha.rao@example.com>"
    message["To"] = "Acme Support <support@acme.test>"
    message["Subject"] = "Router logs, as asked"
    message["Message-ID"] = "<CAF=asha.2@mail.example.com>"
    message.set_content("Hi,\n\nThe router's logs are attached.\n\nAsha\n")
    message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="router-logs.bin")
    return message


def big_text_email(size: int) -> EmailMessage:
    """A message of about `size` bytes of plain text and nothing else: what the MIME parse reads line by line
    and the reply stripper walks, the costly part of a large message (an attachment is one base64 decode)."""
    message = EmailMessage()
    message["From"] = "Asha Rao <asha.rao@example.com>"
    message["To"] = "Acme Support <support@acme.test>"
    message["Subject"] = "Router logs, pasted"
    message["Message-ID"] = "<CAF=asha.3@mail.example.com>"
    line = "the router blinks red and the line drops every few minutes, please help\n"
    message.set_content(line * (size // len(line)))
    return message


def notification(key: str = SES_KEY, message: EmailMessage | None = None,
                 **envelope: Any) -> tuple[str, bytes, dict[str, str]]:
    """The signed SNS notification of an S3-action receipt; with `message`, its headers are the ones SES reads
    into the notification (`mail.headers`, `mail.commonHeaders`), as they are for the object SES wrote."""
    received, _raw = ses_s3_received(key)
    if message is not None:
        received["mail"]["headers"] = [{"name": k, "value": str(v)} for k, v in message.items()]
        received["mail"]["commonHeaders"] = {"from": [message["From"]], "to": [message["To"]],
                                             "subject": message["Subject"], "messageId": message["Message-ID"]}
    return "/hooks/ses", compact(ses_notification(Message=json.dumps(received), **envelope)), SNS


async def test_two_megabyte_email_arrives_whole(client: Any, s3: S3Server, tmp_path: Path) -> None:
    """A 2 MB message written by the S3 action is read, parsed and stored whole: its attachment's bytes on
    disk equal the original, and a ticket is made from its body."""
    attachment = os.urandom(1_600_000)
    message = big_email(attachment)
    raw = message.as_bytes()
    assert len(raw) > 2_000_000
    s3.put(SES_KEY, raw)
    resp = await send(client, notification(message=message))
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    payload = event.payload
    assert (payload["from"], payload["subject"]) == ("asha.rao@example.com", "Router logs, as asked")
    assert payload["text"] == "Hi,\n\nThe router's logs are attached.\n\nAsha\n"
    [meta] = payload["attachments"]
    digest = hashlib.sha256(attachment).hexdigest()
    assert (meta["name"], meta["size"], meta["sha256"]) == ("router-logs.bin", len(attachment), digest)
    assert content_path(runtime(client).config.attachments_dir, digest).read_bytes() == attachment
    assert stored_events(tmp_path) == 1
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)


async def test_a_large_text_message_is_parsed_off_the_loop_and_each_turn_given_back(
        client: Any, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 MB plain text message, whose notification is a few KB, is parsed in the parser thread (its payload,
    reply stripping included, not only the MIME) and stored whole. Each read holds its turn until the request is
    answered, stored or refused, and then gives it back: with one turn, each notification that follows is read."""
    threads: list[str] = []

    def recorded(**fields: Any) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return email_payload(**fields)

    monkeypatch.setattr(handlers.ses, "email_payload", recorded)
    handler: Any = runtime(client).sources["ses"].handler
    await handler.s3.close()
    handler.s3 = S3Client(handler.ses.s3, "us-east-1", max_reads=1)  # closed with the app, as the one it replaces
    message = big_text_email(2_000_000)
    s3.put("inbound/text", message.as_bytes())
    s3.put("inbound/bomb", b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"".join(
        b"--a\r\nContent-Type: multipart/mixed; boundary=%d\r\n\r\n" % i for i in range(40)))

    stored = await send(client, notification("inbound/text", message, MessageId="big-text-1"))
    assert stored.status == 202, await stored.text()
    event = await runtime(client).store.get_event((await stored.json())["event_id"])
    assert event.payload["text"] == message.get_content()
    assert threads and all(name.startswith("ticketbridge-parse") for name in threads), threads
    refused = await send(client, notification("inbound/bomb", MessageId="bomb-1"))
    assert refused.status == 413, await refused.text()
    again = await send(client, notification("inbound/text", message, MessageId="big-text-2"))
    assert again.status == 202, await again.text()


async def test_s3_down_is_503_then_the_retry_is_stored_once(client: Any, s3: S3Server, tmp_path: Path) -> None:
    """With S3 down, the notification is answered 503 and nothing is stored; once S3 is back, SNS's retry of
    the same notification is stored, and a further retry is a duplicate of it."""
    _received, raw = ses_s3_received()
    s3.put(SES_KEY, raw)
    s3.stop()
    with capture_logs() as logs:
        down = await send(client, notification())
    assert down.status == 503
    answer = await down.json()
    assert answer["check"] == "s3" and "nothing was stored" in answer["error"]
    assert stored_events(tmp_path) == 0
    assert [e["key"] for e in logs if e["event"] == "ses.s3_unavailable"] == [SES_KEY]

    s3.start()
    retried = await send(client, notification())
    assert retried.status == 202, await retried.text()
    first = await retried.json()
    event = await runtime(client).store.get_event(first["event_id"])
    assert event.payload["subject"] == "Re: Router down [#1042]"
    assert event.payload["text"].startswith("Hi,")

    again = await send(client, notification())
    assert again.status == 200, await again.text()
    assert (await again.json())["duplicate"] is True
    assert stored_events(tmp_path) == 1


async def test_object_gone_is_answered_200_and_counted(client: Any, tmp_path: Path) -> None:
    """A notification whose object the bucket does not hold is not a message: 200, counted, nothing stored."""
    resp = await send(client, notification("inbound/never-written"))
    assert resp.status == 200
    assert (await resp.json())["ignored"].startswith("not a message: the SES S3 action's object is gone")
    assert runtime(client).counters["intake.ignored"] == 1
    assert runtime(client).labelled[("intake.ignored", (("reason", "not_a_message:s3_gone"), ("source", "ses")))] == 1
    assert stored_events(tmp_path) == 0


async def test_s3_client_is_made_at_start_and_closed_at_stop(client: Any, s3: S3Server) -> None:
    """The S3 client is made as the app starts (so no request pays for its setup), kept for every read, and
    closed when the app stops."""
    reader: Any = runtime(client).sources["ses"].handler.s3
    made = reader._client
    assert made is not None
    _received, raw = ses_s3_received()
    s3.put(SES_KEY, raw)
    assert (await send(client, notification())).status == 202
    assert reader._client is made
    await client.close()
    assert reader._client is None


async def test_client_that_cannot_be_made_at_start_is_a_503_until_it_can(
        write_config: ConfigFactory, bridge_client: AppClient, s3: S3Server, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A client that cannot be made as the app starts (here, a profile that does not exist) does not stop the
    start: it is logged, each notification is a 503 saying why, and once the setup is mended the next is stored."""
    _received, raw = ses_s3_received()
    s3.put(SES_KEY, raw)
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    config = write_config(f"""
        store: {{url: "sqlite:///var/bridge.db"}}
        sources:
          ses: {{kind: ses, topic_arns: ["{TOPIC}"], s3: {{endpoint_url: "{s3.url}"}}}}
        destinations:
          kapture: {{vendor: kapture, sandbox: true}}
        """, MAPPINGS)
    with capture_logs() as logs:
        c: Any = await bridge_client(config)
    [failed] = [e for e in logs if e["event"] == "app.handler_open_failed"]
    assert failed["source"] == "ses" and "no-such-profile" in failed["error"]
    handler: Any = runtime(c).sources["ses"].handler
    handler.clock = lambda: float(NOW)
    handler.fetch = FakeSns()
    refused = await send(c, notification())
    assert refused.status == 503 and "no-such-profile" in (await refused.json())["error"]
    monkeypatch.delenv("AWS_PROFILE")
    assert (await send(c, notification())).status == 202
    assert stored_events(tmp_path) == 1
