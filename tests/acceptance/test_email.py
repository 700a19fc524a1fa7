"""The email channel through the whole app: one mapping for every mail provider, de-duplication under
concurrent retries, and attachments kept on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bridge.store.base import DeliveryFilter
from handlers.attachments import content_path
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import (
    JPEG,
    JPEG_SHA256,
    NOW,
    basic,
    compact,
    load,
    mailgun_multipart,
    sendgrid_multipart,
)

ENV = {"MAILGUN_KEY": "key-3ax6xnjp29jd6fds4gc373sgvjxteol0", "PARSE_PW": "parse-pw", "POSTMARK_PW": "pm-pw"}

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
attachments: {dir: var/files, max_bytes: 1024}
sources:
  support-mailgun: {kind: mailgun, signing_key: "${MAILGUN_KEY}"}
  support-sendgrid: {kind: sendgrid, auth: {basic: {username: parse, password: "${PARSE_PW}"}}}
  support-postmark: {kind: postmark, auth: {basic: {username: postmark, password: "${POSTMARK_PW}"}}}
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
"""

# One mapping, written once for the email channel, unchanged for every provider.
EMAIL_MAPPING = """
    name: email-to-kapture
    source: [support-mailgun, support-sendgrid, support-postmark]
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
      email_id: {from: payload.from, required: true}
      customer_name: {from: payload.from_name, default: ""}
      ticket_details: {from: payload.stripped_text}
      cc: "{{ payload.cc | join(', ') }}"
      thread_ref: {from: payload.in_reply_to}
      message_ref: {from: payload.message_id}
      attachment: {from: "payload.attachments[0].name"}
"""


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    c = await bridge_client(write_config(CONFIG, {"email": EMAIL_MAPPING}, ENV))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    return c


def mailgun_post() -> tuple[bytes, dict[str, str]]:
    body, ctype = mailgun_multipart(ENV["MAILGUN_KEY"])
    return body, {"Content-Type": ctype}


async def all_deliveries(client: Any) -> list[Any]:
    return await runtime(client).store.list_deliveries(DeliveryFilter(limit=1000))


async def test_same_mailgun_email_posted_twice_concurrently_gives_one_event_and_one_ticket(client: Any) -> None:
    """Two concurrent deliveries of one Mailgun email store one event (the other answered 200 duplicate) and
    create one ticket."""
    body, headers = mailgun_post()
    first, second = await asyncio.gather(client.post("/hooks/support-mailgun", data=body, headers=headers),
                                         client.post("/hooks/support-mailgun", data=body, headers=headers))
    answers = sorted([(first.status, await first.json()), (second.status, await second.json())],
                     key=lambda a: a[0])
    (dup_status, dup), (new_status, new) = answers
    assert (dup_status, new_status) == (200, 202)
    assert dup == {"accepted": True, "duplicate": True, "event_id": new["event_id"]}
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)
    await eventually(lambda: all_succeeded(client))
    assert len(sim.tickets) == 1
    assert len(await all_deliveries(client)) == 1


async def all_succeeded(client: Any) -> bool:
    return all(d.status == "succeeded" for d in await all_deliveries(client))


async def test_one_mapping_renders_the_same_ticket_from_mailgun_postmark_and_sendgrid(client: Any) -> None:
    """Mailgun, Postmark and SendGrid copies of one message, through one unchanged mapping, make identical tickets."""
    body, headers = mailgun_post()
    sg_body, sg_ctype = sendgrid_multipart()
    posts = [
        ("/hooks/support-mailgun", body, headers),
        ("/hooks/support-postmark", compact(load("postmark/inbound.json")),
         {"Content-Type": "application/json", "Authorization": basic("postmark", ENV["POSTMARK_PW"])}),
        ("/hooks/support-sendgrid", sg_body,
         {"Content-Type": sg_ctype, "Authorization": basic("parse", ENV["PARSE_PW"])}),
    ]
    for path, data, hdrs in posts:
        resp = await client.post(path, data=data, headers=hdrs)
        assert resp.status == 202, await resp.text()
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 3)
    mailgun_ticket, postmark_ticket, sendgrid_ticket = (t["fields"] for t in sim.tickets)
    assert mailgun_ticket == {
        "title": "Re: Router down [#1042]", "email_id": "asha.rao@example.com", "customer_name": "Asha Rao",
        "ticket_details": "Hi,\n\nMy router is down again since this morning.\n\nThanks,\nAsha",
        "cc": "ops@acme.test", "thread_ref": "<ticket-1042@acme.test>", "message_ref": "<CAF=asha.1@mail.example.com>",
        "attachment": "router.jpg",
    }
    assert postmark_ticket == mailgun_ticket
    assert sendgrid_ticket == mailgun_ticket


async def test_attachment_content_is_kept_on_disk_by_digest(client: Any, tmp_path: Path) -> None:
    """An attachment's content is written under the configured folder by its sha256, and the event says so."""
    body, headers = mailgun_post()
    resp = await client.post("/hooks/support-mailgun", data=body, headers=headers)
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.payload["attachments"] == [{"name": "router.jpg", "content_type": "image/jpeg", "inline": False,
                                             "size": len(JPEG),
                                             "sha256": JPEG_SHA256, "stored": True}]
    assert runtime(client).config.attachments_dir == tmp_path / "var" / "files"
    assert content_path(tmp_path / "var" / "files", JPEG_SHA256).read_bytes() == JPEG


async def test_attachment_over_the_cap_is_recorded_not_stored(client: Any, tmp_path: Path) -> None:
    """A part over attachments.max_bytes is listed with stored false and the reason; the email is still taken."""
    data = load("postmark/inbound.json")
    import base64

    data["Attachments"].append({"Name": "big.bin", "ContentType": "application/octet-stream",
                                "Content": base64.b64encode(b"x" * 2000).decode(), "ContentLength": 2000})
    resp = await client.post("/hooks/support-postmark", data=compact(data),
                             headers={"Content-Type": "application/json",
                                      "Authorization": basic("postmark", ENV["POSTMARK_PW"])})
    assert resp.status == 202
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    big = event.payload["attachments"][1]
    assert (big["name"], big["stored"], big["reason"]) == ("big.bin", False,
                                                           "2000 bytes is over the attachment cap of 1024 bytes")
    assert not content_path(tmp_path / "var" / "files", big["sha256"]).exists()


async def test_unwritable_attachment_folder_is_503_and_stores_nothing(client: Any, tmp_path: Path) -> None:
    """When attachments cannot be written, the answer is 503 (the provider retries) and no event is stored."""
    (tmp_path / "var" / "files").write_text("a file where the folder should be")
    body, headers = mailgun_post()
    resp = await client.post("/hooks/support-mailgun", data=body, headers=headers)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert runtime(client).counters["intake.attachments_unavailable"] == 1
    assert await all_deliveries(client) == []


def test_attachments_folder_defaults_under_var(write_config: ConfigFactory, tmp_path: Path) -> None:
    """Without an `attachments` table, content goes to var/attachments beside the config, capped at 10 MiB."""
    config = write_config("sources: {}\n")
    assert config.attachments_dir == tmp_path / "var" / "attachments"
    assert config.attachments.max_bytes == 10 * 1024 * 1024


def test_attachments_options_are_checked(write_config: ConfigFactory) -> None:
    """An unknown key or a negative cap in `attachments` is a config error naming the key."""
    from bridge.errors import ErrorList

    with pytest.raises(ErrorList, match="attachments"):
        write_config("attachments: {max_bytes: -1}\n")
    with pytest.raises(ErrorList, match="folder"):
        write_config("attachments: {folder: x}\n")
