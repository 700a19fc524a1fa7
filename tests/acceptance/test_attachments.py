"""Email attachments through the whole app: sent as files where the vendor's API takes them (LeadSquared's
multipart create), named in the ticket text where it does not (Kapture), capped per destination."""

from __future__ import annotations

import hashlib
from typing import Any

from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import JPEG, NOW, mailgun_fields, multipart

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF"

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
attachments: {dir: var/files}
sources:
  support-mailgun: {kind: mailgun, signing_key: "KEY"}
destinations:
  lsq: {vendor: leadsquared, sandbox: true, retry: {schedule: [50ms]}LSQ_OPTIONS}
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
""".replace("KEY", KEY)

TO_LEADSQUARED = """
    name: email-to-leadsquared
    source: support-mailgun
    destination: lsq
    action: create_ticket
    fields:
      LeadDetail.EmailAddress: {from: payload.from, required: true}
      Title: "{{ payload.subject }}"
      Description: {from: payload.stripped_text}
      files: {from: payload.attachments, on_missing: omit}
"""

TO_KAPTURE = """
    name: email-to-kapture
    source: support-mailgun
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
      ticket_details: {from: payload.stripped_text}
      files: {from: payload.attachments, on_missing: omit}
"""


async def start(write_config: ConfigFactory, bridge_client: AppClient, lsq_options: str = "") -> Any:
    config = write_config(CONFIG.replace("LSQ_OPTIONS", lsq_options), {"lsq": TO_LEADSQUARED, "kapture": TO_KAPTURE})
    client = await bridge_client(config)
    for source in runtime(client).sources.values():
        source.handler.clock = lambda: float(NOW)
    return client


async def post_email_with_two_attachments(client: Any) -> None:
    body, ctype = multipart(mailgun_fields(KEY), [("attachment-1", "router.jpg", "image/jpeg", JPEG),
                                                  ("attachment-2", "bill.pdf", "application/pdf", PDF)])
    resp = await client.post("/hooks/support-mailgun", data=body, headers={"Content-Type": ctype})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["deliveries"] == 2


async def both_succeeded(client: Any) -> bool:
    rows = await runtime(client).store.list_deliveries(DeliveryFilter())
    return len(rows) == 2 and all(r.status == "succeeded" for r in rows)


async def test_an_email_with_two_attachments_is_a_multipart_leadsquared_ticket_and_a_kapture_ticket_naming_them(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Over HTTP: LeadSquared receives both files (names, sizes, sha256 of the bytes) in a multipart create; the
    Kapture ticket's text names both with their sizes."""
    client = await start(write_config, bridge_client)
    await post_email_with_two_attachments(client)
    await eventually(lambda: both_succeeded(client))
    simulators = runtime(client).simulators
    expected = [{"name": "router.jpg", "content_type": "image/jpeg", "size": len(JPEG),
                 "sha256": hashlib.sha256(JPEG).hexdigest()},
                {"name": "bill.pdf", "content_type": "application/pdf", "size": len(PDF),
                 "sha256": hashlib.sha256(PDF).hexdigest()}]
    (lsq_ticket,) = simulators["leadsquared"].tickets
    assert lsq_ticket["Files"] == expected
    created = [e for e in simulators["leadsquared"].received.entries if e["method"] == "POST"]
    assert [e["files"] for e in created] == [expected]
    assert "Attachments not sent" not in str(lsq_ticket["Fields"])
    (kapture_ticket,) = simulators["kapture"].tickets
    assert kapture_ticket["detail"].endswith(f"\n\nAttachments:\n- router.jpg ({len(JPEG)} B)\n- bill.pdf (2.0 KB)")


async def test_an_attachment_over_the_destinations_cap_is_named_in_the_ticket(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """With `attachments: {max_count: 1}`, LeadSquared gets the first file and its Description names the second."""
    client = await start(write_config, bridge_client, ", attachments: {max_count: 1}")
    await post_email_with_two_attachments(client)
    await eventually(lambda: both_succeeded(client))
    (ticket,) = runtime(client).simulators["leadsquared"].tickets
    assert [f["name"] for f in ticket["Files"]] == ["router.jpg"]
    description = {f["SchemaName"]: f["Value"] for f in ticket["Fields"]}["Description"]
    assert description.endswith("\n\nAttachments not sent:\n- bill.pdf (2.0 KB): over this destination's cap of 1 file")
