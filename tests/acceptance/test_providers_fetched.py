"""Email providers whose content is fetched while the request waits, through the whole app and over real HTTP
to local stand-ins: Resend (the Receiving API and the raw download) and Brevo (attachment downloads). The
email arrives whole; a fetch that fails or hangs is a 503 with nothing stored, and the post sent again is
then stored."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import (
    ASHA_EMAIL,
    JPEG,
    JPEG_SHA256,
    NOW,
    compact,
    load,
    raw,
    svix_headers,
    without_provider,
)

SECRET = "whsec_cmVzZW5kLXNpZ25pbmctc2VjcmV0"
API_KEY = "re_N9f8TbDq_resend"
EMAIL_ID = "56761188-7520-42d8-8898-ff6fc54ce618"

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  resend:
    kind: resend
    secret: "${RESEND_SECRET}"
    api_key: "${RESEND_API_KEY}"
    api_url: "${RESEND_API_URL}"
    fetch_timeout: 500ms
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
"""
MAPPING = """
    source: resend
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
      email_id: {from: payload.from, required: true}
      ticket_details: "{{ payload.stripped_text }}"
"""


@dataclass
class StandIn:
    """Resend's Receiving API and raw download on a local port: answers as the fixtures say, or as broken."""

    mode: dict[str, str] = field(default_factory=dict)
    """Per path kind ("api", "raw"): "ok", "down" (HTTP 500) or "hang" (never answers)."""
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    no_raw: bool = False
    """Answer without a raw download, so that attachments are fetched one by one."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/emails/receiving/{id}", self.email)
        app.router.add_get("/emails/receiving/{id}/attachments/{attachment}", self.attachment)
        app.router.add_get("/raw/{id}", self.raw)
        app.router.add_get("/files/{attachment}", self.file)
        return app

    async def _broken(self, kind: str) -> web.Response | None:
        mode = self.mode.get(kind, "ok")
        if mode == "hang":
            await self.release.wait()
        if mode != "ok":
            return web.Response(status=500, text="internal error")
        return None

    async def email(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        if (broken := await self._broken("api")) is not None:
            return broken
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"name": "validation_error", "message": "API key is invalid"}, status=401)
        email = load("resend/received_email.json")
        if request.match_info["id"] != email["id"]:
            return web.json_response({"name": "not_found"}, status=404)
        email["raw"]["download_url"] = str(request.url.with_path(f"/raw/{email['id']}").with_query(sig="abc"))
        if self.no_raw:
            del email["raw"]
        return web.json_response(email)

    async def attachment(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"name": "validation_error"}, status=401)
        attachment_id = request.match_info["attachment"]
        url = request.url.with_path(f"/files/{attachment_id}").with_query(signature="sig-123")
        return web.json_response({"object": "attachment", "id": attachment_id, "download_url": str(url)})

    async def file(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def raw(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        if (broken := await self._broken("raw")) is not None:
            return broken
        return web.Response(body=raw("ses/message.eml"), content_type="message/rfc822")


@pytest.fixture
async def stand_in(aiohttp_server: Any) -> AsyncIterator[StandIn]:
    resend = StandIn()
    server = await aiohttp_server(resend.app())
    resend.url = str(server.make_url("/"))
    yield resend
    resend.release.set()


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient, stand_in: StandIn) -> Any:
    env = {"RESEND_SECRET": SECRET, "RESEND_API_KEY": API_KEY, "RESEND_API_URL": stand_in.url}
    c = await bridge_client(write_config(CONFIG, {"email": MAPPING}, env))
    runtime(c).sources["resend"].handler.clock = lambda: float(NOW)
    return c


def request() -> tuple[bytes, dict[str, str]]:
    body = compact(load("resend/email_received.json"))
    return body, svix_headers(SECRET, body, msg_id="msg_2mdTGFxKWUDqRCvqYfEbEX2AJSg")


def stored_events(tmp_path: Path) -> int:
    with sqlite3.connect(f"file:{tmp_path / 'var' / 'bridge.db'}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
    return count


async def test_received_email_is_fetched_over_http_and_arrives_whole(client: Any, stand_in: StandIn,
                                                                      tmp_path: Path) -> None:
    """The event's email is fetched with the API key, its raw message downloaded, and the event stored whole,
    attachment on disk; a ticket follows."""
    body, headers = request()
    resp = await client.post("/hooks/resend", data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    expected = {**ASHA_EMAIL, "envelope_from": "asha.rao@example.com",
                "attachments": [{**ASHA_EMAIL["attachments"][0], "stored": True}]}
    assert without_provider(event.payload) == expected
    assert (tmp_path / "var" / "attachments" / JPEG_SHA256[:2] / JPEG_SHA256).exists()
    assert stand_in.seen == [(f"/emails/receiving/{EMAIL_ID}", f"Bearer {API_KEY}"), (f"/raw/{EMAIL_ID}", None)]
    assert json.dumps(event.payload).find(API_KEY) == -1
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)


async def test_without_a_raw_download_each_attachment_is_fetched(client: Any, stand_in: StandIn) -> None:
    """When Resend gives no raw download, the API's fields are used and each attachment is fetched through the
    attachments API and the download URL it gives: the email still arrives whole."""
    stand_in.no_raw = True
    body, headers = request()
    resp = await client.post("/hooks/resend", data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    expected = {**ASHA_EMAIL, "envelope_from": "asha.rao@example.com",
                "attachments": [{**ASHA_EMAIL["attachments"][0], "stored": True}]}
    assert without_provider(event.payload) == expected
    attachment_id = load("resend/received_email.json")["attachments"][0]["id"]
    assert [path for path, _auth in stand_in.seen] == [
        f"/emails/receiving/{EMAIL_ID}", f"/emails/receiving/{EMAIL_ID}/attachments/{attachment_id}",
        f"/files/{attachment_id}"]


@pytest.mark.parametrize("broken", ["api", "raw"])
async def test_failed_fetch_is_503_then_the_retried_event_is_stored(client: Any, stand_in: StandIn,
                                                                     tmp_path: Path, broken: str) -> None:
    """The API or the raw download answering 500 is a 503 with nothing stored; Resend's retry of the same
    event, once the API answers, is stored."""
    stand_in.mode[broken] = "down"
    body, headers = request()
    failed = await client.post("/hooks/resend", data=body, headers=headers)
    assert failed.status == 503
    answer = await failed.json()
    assert answer["check"] == "fetch" and "HTTP 500" in answer["error"] and EMAIL_ID in answer["error"]
    assert stored_events(tmp_path) == 0
    assert runtime(client).counters["intake.rejected.503"] == 1
    stand_in.mode.clear()
    retried = await client.post("/hooks/resend", data=body, headers=headers)
    assert retried.status == 202
    assert stored_events(tmp_path) == 1


async def test_fetch_that_hangs_times_out_as_503(client: Any, stand_in: StandIn, tmp_path: Path) -> None:
    """An API that never answers is given up after `fetch_timeout`: a 503, nothing stored."""
    stand_in.mode["api"] = "hang"
    body, headers = request()
    resp = await client.post("/hooks/resend", data=body, headers=headers)
    assert resp.status == 503
    assert "Timeout" in (await resp.json())["error"]
    assert stored_events(tmp_path) == 0


async def test_a_wrong_api_key_is_503_naming_the_answer(write_config: ConfigFactory, bridge_client: AppClient,
                                                        stand_in: StandIn, tmp_path: Path) -> None:
    """A key Resend refuses gives a 503 naming Resend's HTTP 401, and never shows the key."""
    env = {"RESEND_SECRET": SECRET, "RESEND_API_KEY": "re_wrong_key", "RESEND_API_URL": stand_in.url}
    c = await bridge_client(write_config(CONFIG, {"email": MAPPING}, env))
    runtime(c).sources["resend"].handler.clock = lambda: float(NOW)
    body, headers = request()
    resp = await c.post("/hooks/resend", data=body, headers=headers)
    assert resp.status == 503
    text = await resp.text()
    assert "HTTP 401" in text and "re_wrong_key" not in text
    assert stored_events(tmp_path) == 0


async def test_a_received_email_over_the_body_cap_is_413(write_config: ConfigFactory, bridge_client: AppClient,
                                                         stand_in: StandIn, tmp_path: Path) -> None:
    """What Resend answers is read up to server.max_body_bytes: a larger email is a 413, not retried as a 503."""
    env = {"RESEND_SECRET": SECRET, "RESEND_API_KEY": API_KEY, "RESEND_API_URL": stand_in.url}
    c = await bridge_client(write_config("server: {max_body_bytes: 1024}\n" + CONFIG, {"email": MAPPING}, env))
    runtime(c).sources["resend"].handler.clock = lambda: float(NOW)
    body, headers = request()
    resp = await c.post("/hooks/resend", data=body, headers=headers)
    assert resp.status == 413
    assert "over 1024 bytes" in (await resp.json())["error"]
    assert stored_events(tmp_path) == 0


# -- Brevo: attachments downloaded by their DownloadToken ------------------------------------------------------

BREVO_CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  brevo: {kind: brevo, token: "${BREVO_TOKEN}", api_key: "${BREVO_API_KEY}", api_url: "${BREVO_API_URL}"}
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms]}}
"""


@dataclass
class BrevoStandIn:
    """Brevo's inbound attachments API on a local port: the photo for the fixture's token, or HTTP 502."""

    down: bool = False
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v3/inbound/attachments/{token}", self.attachment)
        return app

    async def attachment(self, request: web.Request) -> web.Response:
        self.seen.append((request.match_info["token"], request.headers.get("api-key")))
        if self.down:
            return web.Response(status=502)
        if request.headers.get("api-key") != "xkeysib-brevo":
            return web.json_response({"code": "unauthorized"}, status=401)
        return web.Response(body=JPEG, content_type="image/jpeg")


async def test_brevo_attachments_are_downloaded_and_a_failed_download_is_retried(
        write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, tmp_path: Path) -> None:
    """With an API key, Brevo's attachment is downloaded and stored with the event; while the API fails, the
    post is a 503 with nothing stored, and Brevo's next post of it is stored whole."""
    brevo = BrevoStandIn(down=True)
    server = await aiohttp_server(brevo.app())
    env = {"BREVO_TOKEN": "brevo-token", "BREVO_API_KEY": "xkeysib-brevo", "BREVO_API_URL": str(server.make_url("/v3"))}
    c = await bridge_client(write_config(BREVO_CONFIG, {"email": MAPPING.replace("source: resend", "source: brevo")},
                                         env))
    body = compact(load("brevo/inbound.json"))
    headers = {"Content-Type": "application/json"}
    failed = await c.post("/hooks/brevo?token=brevo-token", data=body, headers=headers)
    assert failed.status == 503
    assert (await failed.json())["check"] == "fetch"
    assert stored_events(tmp_path) == 0
    brevo.down = False
    resp = await c.post("/hooks/brevo?token=brevo-token", data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    event = await runtime(c).store.get_event((await resp.json())["event_id"])
    expected = {**ASHA_EMAIL, "envelope_from": "asha.rao@example.com", "spam": {"verdict": "unknown", "score": 0.3},
                "attachments": [{**ASHA_EMAIL["attachments"][0], "stored": True}]}
    assert without_provider(event.payload) == expected
    token = load("brevo/inbound.json")["items"][0]["Attachments"][0]["DownloadToken"]
    assert brevo.seen == [(token, "xkeysib-brevo")] * 2
