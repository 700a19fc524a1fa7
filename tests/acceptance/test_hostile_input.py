"""Hostile counts over HTTP through the whole app: a mail with 60,000 recipients or 40,000 references, a
Twilio post with 10,000 form keys, a form with thousands of parts. Each is answered with a 413 naming what
exceeded which cap, and nothing is stored; the same shapes within the caps are accepted whole."""

from __future__ import annotations

import copy
import io
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from handlers.limits import MAX_ADDRESSES, MAX_FORM_FIELDS, MAX_HEADER_BYTES, MAX_MESSAGE_IDS
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import NOW, basic, compact, load, multipart, twilio_signature

PUBLIC_TWILIO = "https://bridge.example.com/hooks/twilio"
TOKEN = "12345678901234567890123456789012"
ENV = {"POSTMARK_PW": "pm-pw", "TWILIO_TOKEN": TOKEN}

CONFIG = f"""
store: {{url: "sqlite:///var/bridge.db"}}
sources:
  postmark: {{kind: postmark, auth: {{basic: {{username: postmark, password: "${{POSTMARK_PW}}"}}}}}}
  twilio: {{kind: twilio, auth_token: "${{TWILIO_TOKEN}}", public_url: "{PUBLIC_TWILIO}"}}
  contact: {{kind: form}}
destinations:
  kapture: {{vendor: kapture, sandbox: true, retry: {{schedule: [50ms]}}}}
"""


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    c = await bridge_client(write_config(CONFIG, {}, ENV))
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    return c


# Bodies go as streams: aiohttp's client warns that a large bytes body could hold its loop.


def postmark_mail(**changes: Any) -> dict[str, Any]:
    mail: dict[str, Any] = copy.deepcopy(load("postmark/inbound.json"))
    mail.update(changes)
    return mail


async def post_postmark(client: Any, mail: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/hooks/postmark", data=io.BytesIO(compact(mail)), headers={
        "Content-Type": "application/json", "Authorization": basic("postmark", ENV["POSTMARK_PW"])})
    return resp.status, await resp.json()


def stored_events(tmp_path: Path) -> int:
    """Events in the SQLite store, read beside the app."""
    with sqlite3.connect(f"file:{tmp_path / 'var' / 'bridge.db'}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
    return count


def recipients(n: int) -> str:
    return ", ".join(f"c{i}@ex.co" for i in range(n))


async def test_a_mail_to_60000_addresses_is_a_413_naming_the_count(client: Any, tmp_path: Path) -> None:
    """60,000 To addresses (700 KB) are refused with 413 "too many To addresses: 60000, at most 1000"."""
    mail = postmark_mail(To=recipients(60_000), ToFull=[])
    assert 700_000 < len(compact(mail)) < 1_048_576  # under the body limit: the parser sees it
    status, body = await post_postmark(client, mail)
    assert (status, body["check"]) == (413, "limits")
    assert body["error"] == f"too many To addresses: 60000, at most {MAX_ADDRESSES}"
    assert stored_events(tmp_path) == 0


async def test_a_mail_to_as_many_addresses_as_the_cap_is_stored_whole(client: Any) -> None:
    """A mail listing exactly MAX_ADDRESSES recipients (one a repeat, listed once) is accepted with each."""
    mail = postmark_mail(To=recipients(MAX_ADDRESSES - 1) + ", C0@EX.CO", ToFull=[])
    status, body = await post_postmark(client, mail)
    assert status == 202
    event = await runtime(client).store.get_event(body["event_id"])
    assert event.payload["to"] == [f"c{i}@ex.co" for i in range(MAX_ADDRESSES - 1)]


@pytest.mark.parametrize(("count", "error"), [
    (40_000, f"the header block of the email is 548901 characters, at most {MAX_HEADER_BYTES}"),
    (10_000, f"too many References message ids: 10000, at most {MAX_MESSAGE_IDS}"),
])
async def test_a_mail_with_thousands_of_references_is_a_413_naming_what_exceeded(
        client: Any, tmp_path: Path, count: int, error: str) -> None:
    """40,000 ids in References overflow the header block; 10,000 fit in it but not in the References cap."""
    ids = " ".join(f"<{i}@ex.co>" for i in range(count))
    mail = postmark_mail(Headers=[{"Name": "References", "Value": ids}])
    status, body = await post_postmark(client, mail)
    assert (status, body["check"], body["error"]) == (413, "limits", error)
    assert stored_events(tmp_path) == 0


async def test_a_mail_with_as_many_references_as_the_cap_keeps_them_in_order(client: Any) -> None:
    """MAX_MESSAGE_IDS references are accepted, in their order."""
    ids = [f"<m{i}@mail.example.com>" for i in range(MAX_MESSAGE_IDS)]
    status, body = await post_postmark(client, postmark_mail(Headers=[{"Name": "References", "Value": " ".join(ids)}]))
    assert status == 202
    event = await runtime(client).store.get_event(body["event_id"])
    assert event.payload["references"] == ids


def twilio_post(params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return urlencode(params).encode(), {"X-Twilio-Signature": twilio_signature(TOKEN, PUBLIC_TWILIO, params),
                                        "Content-Type": "application/x-www-form-urlencoded"}


async def test_twilio_post_with_10000_form_keys_is_a_413_before_the_signature(client: Any, tmp_path: Path) -> None:
    """10,000 extra form keys, even correctly signed, are refused with 413 naming the count, not checked."""
    params: dict[str, str] = {**load("twilio/sms.json"), **{f"Extra{i}": "x" for i in range(10_000)}}
    body, headers = twilio_post(params)
    resp = await client.post("/hooks/twilio", data=io.BytesIO(body), headers=headers)
    answer = await resp.json()
    assert (resp.status, answer["check"]) == (413, "limits")
    assert answer["error"] == f"too many form fields: {len(params)}, at most {MAX_FORM_FIELDS}"
    assert stored_events(tmp_path) == 0


async def test_twilio_post_with_many_keys_under_the_cap_is_verified_and_stored(client: Any) -> None:
    """A signed Twilio post with a thousand fields in all is verified and accepted."""
    sms: dict[str, str] = load("twilio/sms.json")
    params = {**sms, **{f"Extra{i}": "x" for i in range(MAX_FORM_FIELDS - len(sms))}}
    body, headers = twilio_post(params)
    resp = await client.post("/hooks/twilio", data=io.BytesIO(body), headers=headers)
    assert resp.status == 202, await resp.text()


async def test_form_with_thousands_of_parts_is_a_413(client: Any, tmp_path: Path) -> None:
    """A multipart form with more parts than MAX_FORM_FIELDS is refused with 413 naming the count."""
    body, ctype = multipart({f"field{i}": "v" for i in range(5_000)})
    resp = await client.post("/hooks/contact", data=io.BytesIO(body), headers={"Content-Type": ctype})
    answer = await resp.json()
    assert (resp.status, answer["error"]) == (413, f"too many multipart parts: 5000, at most {MAX_FORM_FIELDS}")
    assert stored_events(tmp_path) == 0
