"""Replays through the whole app: a signed Mailgun token reused with another body is refused with 401 and
stores nothing, across a restart too; the provider's own retry of the same message stays a 200 duplicate. A
captured Twilio message whose parameters are cut at other places (same signature) is a 401 too."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient

from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import NOW, load, mailgun_fields, multipart, twilio_signature

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  mail: {kind: mailgun, signing_key: "${MAILGUN_KEY}"}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
MAPPING = """
    source: mail
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
"""


def forged_from(fields: dict[str, str]) -> dict[str, str]:
    """A captured request's timestamp, token and signature around another message of the attacker's."""
    out = {k: v for k, v in fields.items() if k != "message-headers"}
    return {**out, "Message-Id": "<attacker.1@evil.test>", "subject": "Please refund to IBAN XX00",
            "Subject": "Please refund to IBAN XX00", "body-plain": "Send the refund elsewhere.",
            "stripped-text": "Send the refund elsewhere."}


async def start(write_config: ConfigFactory, bridge_client: AppClient) -> TestClient[Any, Any]:
    client = await bridge_client(write_config(CONFIG, {"mail": MAPPING}, {"MAILGUN_KEY": KEY}))
    runtime(client).sources["mail"].handler.clock = lambda: float(NOW + 30)
    return client


async def post(client: TestClient[Any, Any], fields: dict[str, str]) -> Any:
    body, ctype = multipart(fields)  # a fresh boundary each time, as each of Mailgun's posts has
    return await client.post("/hooks/mail", data=body, headers={"Content-Type": ctype})


def stored(tmp_path: Path) -> list[str]:
    with sqlite3.connect(f"file:{tmp_path / 'var' / 'bridge.db'}?mode=ro", uri=True) as db:
        return [str(r[0]) for r in db.execute("SELECT dedup_key FROM events ORDER BY received_at")]


async def test_a_token_reused_with_another_body_is_401_and_stores_nothing(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """The captured token, timestamp and signature around a new message are refused as a replay, naming the
    check, counted as a 401, and nothing of the new message is stored."""
    client = await start(write_config, bridge_client)
    fields = mailgun_fields(KEY)
    assert (await post(client, fields)).status == 202
    resp = await post(client, forged_from(fields))
    assert resp.status == 401
    answer = await resp.json()
    assert answer["check"] == "replay"
    assert "Mailgun `token` was already used" in answer["error"]
    assert stored(tmp_path) == ["<CAF=asha.1@mail.example.com>"]
    assert runtime(client).counters["intake.rejected.401"] == 1


async def test_the_providers_retry_of_the_same_message_is_a_duplicate(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """The same message again with the same token, even in bytes that differ (a new multipart boundary), is
    the usual 200 duplicate naming the first event."""
    client = await start(write_config, bridge_client)
    fields = mailgun_fields(KEY)
    first = await post(client, fields)
    again = await post(client, fields)
    assert (first.status, again.status) == (202, 200)
    assert await again.json() == {"accepted": True, "duplicate": True, "event_id": (await first.json())["event_id"]}
    assert len(stored(tmp_path)) == 1


async def test_the_token_is_remembered_across_a_restart(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """A server started again on the same SQLite file still refuses the token with another body."""
    fields = mailgun_fields(KEY)
    first = await start(write_config, bridge_client)
    assert (await post(first, fields)).status == 202
    await first.close()
    second = await start(write_config, bridge_client)
    resp = await post(second, forged_from(fields))
    assert (resp.status, (await resp.json())["check"]) == (401, "replay")
    assert (await post(second, fields)).status == 200
    assert len(stored(tmp_path)) == 1


async def test_a_token_recorded_before_scopes_is_refused_with_another_body_after_the_upgrade(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """A version before signing-key scopes recorded a Mailgun token under its source's name alone: after an
    upgrade within the token's tolerance, the captured token around a new body on that same source is still a
    401 replay, and Mailgun's retry of the first message still a 200 duplicate."""
    fields = mailgun_fields(KEY)
    first = await start(write_config, bridge_client)
    assert (await post(first, fields)).status == 202
    await first.close()
    with sqlite3.connect(tmp_path / "var" / "bridge.db") as db:  # the row as the earlier version keyed it
        assert db.execute("UPDATE nonces SET source = 'mail' WHERE source LIKE 'key:%'").rowcount == 1
    db.close()
    second = await start(write_config, bridge_client)
    resp = await post(second, forged_from(fields))
    assert (resp.status, (await resp.json())["check"]) == (401, "replay")
    assert (await post(second, fields)).status == 200
    assert stored(tmp_path) == ["<CAF=asha.1@mail.example.com>"]


async def test_a_new_token_with_a_new_message_is_accepted(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """Each of Mailgun's posts has its own token: a second message with its own is stored as usual."""
    client = await start(write_config, bridge_client)
    fields = mailgun_fields(KEY)
    assert (await post(client, fields)).status == 202
    other = forged_from(mailgun_fields(KEY, token="b" * 50))
    assert (await post(client, other)).status == 202
    assert len(stored(tmp_path)) == 2


TWO_SOURCES = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  mail: {kind: mailgun, signing_key: "${MAILGUN_KEY}"}
  sales: {kind: mailgun, signing_key: "${MAILGUN_KEY}"}
  other-account: {kind: mailgun, signing_key: "${OTHER_KEY}"}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
TWO_MAPPING = MAPPING.replace("source: mail", "source: [mail, sales, other-account]")


async def test_a_token_is_refused_on_every_source_sharing_its_signing_key(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """Mailgun's signing key is the account's: a token captured on one source and replayed to another source
    with the same key, with another body or the same one, is a 401 replay there too, and nothing is stored; a
    source with another key never sees a token of this one's (its signature fails first)."""
    client = await bridge_client(write_config(TWO_SOURCES, {"mail": TWO_MAPPING},
                                              {"MAILGUN_KEY": KEY, "OTHER_KEY": "key-" + "9" * 32}))
    for source in runtime(client).sources.values():
        source.handler.clock = lambda: float(NOW + 30)
    fields = mailgun_fields(KEY)
    assert (await post(client, fields)).status == 202
    for replay in (forged_from(fields), fields):
        body, ctype = multipart(replay)
        resp = await client.post("/hooks/sales", data=body, headers={"Content-Type": ctype})
        assert (resp.status, (await resp.json())["check"]) == (401, "replay")
    body, ctype = multipart(forged_from(fields))
    resp = await client.post("/hooks/other-account", data=body, headers={"Content-Type": ctype})
    assert (resp.status, (await resp.json())["check"]) == (401, "signature")
    assert stored(tmp_path) == ["<CAF=asha.1@mail.example.com>"]
    assert (await post(client, fields)).status == 200  # Mailgun's own retry to the first source: a duplicate


TWILIO_TOKEN = "12345678901234567890123456789012"
TWILIO_URL = "https://bridge.example.com/hooks/sms"
TWILIO = f"""
store: {{url: "sqlite:///var/bridge.db"}}
sources:
  sms: {{kind: twilio, auth_token: "${{TWILIO_TOKEN}}", public_url: "{TWILIO_URL}"}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
"""
TWILIO_MAPPING = MAPPING.replace("source: mail", "source: sms").replace("payload.subject", "payload.text")


async def test_a_captured_twilio_message_cut_at_other_places_is_401_and_stores_nothing(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """The captured signature over a message whose MessagingServiceSid is moved into MessageSid's value (the
    same signed text) is refused as a signature failure, and only the genuine message is stored."""
    client = await bridge_client(write_config(TWILIO, {"sms": TWILIO_MAPPING}, {"TWILIO_TOKEN": TWILIO_TOKEN}))
    sms: dict[str, str] = load("twilio/sms.json")
    headers = {"X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, TWILIO_URL, sms),
               "Content-Type": "application/x-www-form-urlencoded"}
    assert (await client.post("/hooks/sms", data=urlencode(sms), headers=headers)).status == 202
    recut = {k: v for k, v in sms.items() if k != "MessagingServiceSid"}
    recut["MessageSid"] += "MessagingServiceSid" + sms["MessagingServiceSid"]
    resp = await client.post("/hooks/sms", data=urlencode(recut), headers=headers)
    assert (resp.status, (await resp.json())["check"]) == (401, "signature")
    assert stored(tmp_path) == [sms["MessageSid"]]
