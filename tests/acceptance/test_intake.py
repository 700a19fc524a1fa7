"""The inbound HTTP contract, one test per row of the answer table in docs/architecture.md, through the whole app."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from bridge.errors import StoreUnavailable
from bridge.events import Event
from bridge.logs import LEVEL
from bridge.store.base import AcceptResult, DeliveryFilter, NewDelivery, Nonce
from bridge.store.sqlite import SqliteStore
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.spies import calls_through

CONFIG = """
server: {max_body_bytes: 4096}
store: {url: "sqlite:///var/bridge.db"}
sources:
  contact:
    kind: form
    redirect: "https://example.com/thanks"
    cors_origins: ["https://example.com"]
    honeypot: website
  strict:
    kind: form
    reject_invalid: true
  partner:
    kind: json
    dedup: payload.id
    hmac: {secret: "${PARTNER_SECRET}", header: X-Signature, algorithm: sha256, encoding: hex, prefix: "sha256="}
  private:
    kind: json
    auth: {basic: {username: ops, password: "${PRIVATE_PASSWORD}"}}
  mail:
    kind: mailgun
    signing_key: "${PARTNER_SECRET}"
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [50ms, 50ms]}}
"""

MAPPINGS = {
    "contact": """
        source: [contact, strict]
        destination: kapture
        action: create_ticket
        fields:
          title: "Enquiry: {{ payload.subject }}"
          email_id: {from: payload.email, required: true, transform: [strip, lower]}
          source_ref: "{{ event.id }}"
    """,
    "partner": """
        source: [partner, private]
        destination: kapture
        action: create_ticket
        fields:
          title: {from: payload.title, required: true}
          source_ref: "{{ payload.id }}"
    """,
}

ENV = {"PARTNER_SECRET": "s3cret", "PRIVATE_PASSWORD": "pw"}


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    return await bridge_client(write_config(CONFIG, MAPPINGS, ENV))


def sign(body: bytes, secret: str = "s3cret") -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def all_deliveries(client: Any) -> list[Any]:
    store = runtime(client).store
    assert store is not None
    return await store.list_deliveries(DeliveryFilter(limit=1000))


async def test_form_post_is_stored_and_answered_202(client: Any) -> None:
    """A form post is committed with its delivery before the 202, which carries the event id."""
    resp = await client.post("/hooks/contact", data={"email": " A@B.com ", "subject": "Router down"},
                             headers={"Accept": "application/json"})
    assert resp.status == 202
    body = await resp.json()
    assert body["accepted"] is True and body["deliveries"] == 1
    store = runtime(client).store
    event = await store.get_event(body["event_id"])
    assert event.payload == {"email": " A@B.com ", "subject": "Router down"}
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)
    assert sim.tickets[0]["fields"] == {"title": "Enquiry: Router down", "email_id": "a@b.com",
                                        "source_ref": body["event_id"]}


async def test_browser_form_post_with_redirect_gets_303(client: Any) -> None:
    """A browser's form post to a source with `redirect` is sent there with 303 once stored."""
    resp = await client.post("/hooks/contact", data={"email": "a@b.com", "subject": "x"},
                             headers={"Accept": "text/html,application/xhtml+xml"}, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "https://example.com/thanks"
    assert len(await all_deliveries(client)) == 1


async def test_a_page_scripts_form_fetch_gets_json_not_the_redirect(client: Any) -> None:
    """A page's fetch() of a FormData to a source with `redirect` (multipart, `Accept: */*`, and the browser's
    `Sec-Fetch-Mode: cors`) is answered 202 JSON its script can read, not a 303 to another site; the same
    form submitted by the browser itself (`navigate`) is still redirected."""
    form = {"email": "a@b.com", "subject": "x"}
    fetched = await client.post("/hooks/contact", data=form, allow_redirects=False, headers={
        "Accept": "*/*", "Origin": "https://example.com", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"})
    assert fetched.status == 202, await fetched.text()
    assert (await fetched.json())["accepted"] is True
    assert fetched.headers["Access-Control-Allow-Origin"] == "https://example.com"
    navigated = await client.post("/hooks/contact", data=form, allow_redirects=False, headers={
        "Accept": "*/*", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})
    assert (navigated.status, navigated.headers["Location"]) == (303, "https://example.com/thanks")


async def test_repeated_form_keys_become_lists(client: Any) -> None:
    """Repeated keys in a form body become a list in the payload."""
    resp = await client.post("/hooks/contact", data=[("email", "a@b.com"), ("subject", "x"), ("topic", "a"),
                                                     ("topic", "b")], headers={"Accept": "application/json"})
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.payload["topic"] == ["a", "b"]


async def test_same_dedup_key_is_answered_200_duplicate(client: Any) -> None:
    """The same dedup key again is answered 200 with the first event's id, and sent only once."""
    body = json.dumps({"id": "p-1", "title": "Outage"}).encode()
    headers = {"Content-Type": "application/json", "X-Signature": sign(body)}
    first = await client.post("/hooks/partner", data=body, headers=headers)
    second = await client.post("/hooks/partner", data=body, headers=headers)
    assert first.status == 202
    assert second.status == 200
    first_id = (await first.json())["event_id"]
    assert await second.json() == {"accepted": True, "duplicate": True, "event_id": first_id}
    assert len(await all_deliveries(client)) == 1


async def test_a_configured_dedup_key_is_exact_to_its_type(client: Any) -> None:
    """A `dedup:` path's values are keys by type: `5` and `"5"`, `true` and `"True"`, `[1]` and `"[1]"` are six
    events, and an id sent again is a duplicate of its own kind only. Null, {} and [] name no event: each such
    post is stored, none is taken for another's duplicate."""
    async def post(value: Any) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"id": value, "title": "Outage"}).encode()
        resp = await client.post("/hooks/partner", data=body, headers={"Content-Type": "application/json",
                                                                        "X-Signature": sign(body)})
        return resp.status, await resp.json()

    values = [5, "5", True, "True", [1], "[1]", {"a": 1, "b": 2}]
    assert [status for status, _ in [await post(v) for v in values]] == [202] * len(values)
    again = await post({"b": 2, "a": 1})  # the same object, its keys in another order
    assert again[0] == 200 and again[1]["duplicate"] is True
    assert [(await post(v))[0] for v in ["5", 5, None, None, {}, {}, [], []]] == [200, 200] + [202] * 6
    assert len(await all_deliveries(client)) == len(values) + 6


async def test_unknown_source_is_404(client: Any) -> None:
    """A source that is not configured is answered 404."""
    resp = await client.post("/hooks/nope", json={"a": 1})
    assert resp.status == 404
    assert "unknown source 'nope'" in (await resp.json())["error"]


@pytest.mark.parametrize(("headers", "reason"), [
    ({}, "missing"),
    ({"X-Signature": "sha256=" + "0" * 64}, "does not match"),
    ({"X-Signature": "deadbeef"}, "does not start with"),
])
async def test_bad_signature_is_401_and_stores_nothing(client: Any, headers: dict[str, str], reason: str) -> None:
    """A missing or wrong HMAC signature is refused with 401 naming the check, and nothing is stored."""
    resp = await client.post("/hooks/partner", data=b'{"id": "x", "title": "t"}',
                             headers={"Content-Type": "application/json", **headers})
    assert resp.status == 401
    body = await resp.json()
    assert body["check"] == "hmac" and reason in body["error"]
    assert await all_deliveries(client) == []


async def test_basic_auth_is_checked(client: Any) -> None:
    """A source with basic auth refuses wrong credentials with 401 and takes the right ones."""
    wrong = await client.post("/hooks/private", json={"id": "1", "title": "t"}, headers=_basic("ops", "nope"))
    assert wrong.status == 401 and (await wrong.json())["check"] == "basic_auth"
    right = await client.post("/hooks/private", json={"id": "1", "title": "t"}, headers=_basic("ops", "pw"))
    assert right.status == 202


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_body_over_the_limit_is_413(client: Any) -> None:
    """A body over max_body_bytes is refused with 413 and not stored."""
    resp = await client.post("/hooks/contact", data={"email": "a@b.com", "subject": "x" * 5000})
    assert resp.status == 413
    assert await all_deliveries(client) == []


async def test_content_type_not_taken_is_415(client: Any) -> None:
    """A content type the source does not take is refused with 415, naming what it takes."""
    body = b"hello"
    resp = await client.post("/hooks/partner", data=body,
                             headers={"Content-Type": "text/plain", "X-Signature": sign(body)})
    assert resp.status == 415
    assert "application/json" in (await resp.json())["error"]


async def test_content_type_is_checked_before_the_signature(client: Any) -> None:
    """A provider source given the wrong content type answers 415, before its signature check reads the body."""
    # JSON is taken too (Mailgun's signed event webhooks, answered as not a message); plain text never is.
    resp = await client.post("/hooks/mail", data=b"signature=forged", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["check"] == "content_type"
    assert await all_deliveries(client) == []


@pytest.mark.parametrize(("source", "content_type", "body", "reason"), [
    ("partner", "application/json", b'{"id": ', "malformed JSON"),
    ("partner", "application/json", b"[1, 2]", "expected a JSON object"),
    ("contact", "multipart/form-data", b"--x\r\n", "boundary"),
])
async def test_malformed_body_is_400(client: Any, source: str, content_type: str, body: bytes, reason: str) -> None:
    """A body its parser cannot read is refused with 400 and the parser's reason."""
    resp = await client.post(f"/hooks/{source}", data=body, headers={"Content-Type": content_type,
                                                                     "X-Signature": sign(body)})
    assert resp.status == 400
    assert reason in (await resp.json())["error"]


async def test_missing_required_field_with_reject_invalid_is_422(client: Any) -> None:
    """With reject_invalid, a form missing a required field is refused with 422 and the field errors."""
    resp = await client.post("/hooks/strict", data={"subject": "x"})
    assert resp.status == 422
    body = await resp.json()
    assert body["errors"] == ["email_id: required (payload.email is missing)"]
    assert await all_deliveries(client) == []


async def test_missing_required_field_without_reject_invalid_is_a_dead_delivery(client: Any) -> None:
    """Without reject_invalid, an event a mapping cannot render is accepted and its delivery is dead with the reason."""
    resp = await client.post("/hooks/contact", data={"subject": "x"}, headers={"Accept": "application/json"})
    assert resp.status == 202
    [delivery] = await all_deliveries(client)
    assert delivery.status == "dead"
    assert delivery.last_error == "email_id: required (payload.email is missing)"


class FailingStore(SqliteStore):
    """An SQLite store whose disk has failed: every accept raises StoreUnavailable."""

    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,
                     nonce: Nonce | None = None, *, weight: int = 0) -> AcceptResult:
        raise StoreUnavailable("disk I/O error")


async def test_store_unavailable_is_503(write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """When the store cannot commit, the answer is 503 with Retry-After, never a 2xx."""
    client = await bridge_client(write_config(CONFIG, MAPPINGS, ENV), store=FailingStore(tmp_path / "f.db"))
    resp = await client.post("/hooks/contact", data={"email": "a@b.com", "subject": "x"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert (await resp.json())["accepted"] is False


class CountingLog:
    """Stands in for intake's logger: notes each level asked for, writes nothing."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, level: str) -> Any:
        self.asked.append(level)
        return lambda *args, **kwargs: None


@pytest.mark.parametrize(("debug", "asked"), [(False, []), (True, ["debug"])])
async def test_an_accepted_request_asks_the_logger_for_a_debug_line_only_when_one_is_written(
        client: Any, monkeypatch: pytest.MonkeyPatch, debug: bool, asked: list[str]) -> None:
    """Logging above debug, an accepted request makes no call to the logger (a filtered-out line costs 1-2 us of
    CPU per request); at debug it writes its `intake.accepted` line."""
    counting = CountingLog()
    monkeypatch.setattr("bridge.intake.log", counting)
    monkeypatch.setattr(LEVEL, "debug", debug)
    resp = await client.post("/hooks/contact", data={"email": "a@b.com", "subject": "x"},
                             headers={"Accept": "application/json"})
    assert resp.status == 202
    assert counting.asked == asked


async def test_filled_honeypot_looks_accepted_but_is_never_delivered(client: Any) -> None:
    """A filled honeypot is answered like a success and stored as spam, with no delivery."""
    resp = await client.post("/hooks/contact", data={"email": "a@b.com", "subject": "x", "website": "spam.biz"},
                             headers={"Accept": "application/json"})
    assert resp.status == 202
    body = await resp.json()
    assert body["deliveries"] == 0
    event = await runtime(client).store.get_event(body["event_id"])
    assert event.spam is True
    assert await all_deliveries(client) == []


async def test_cors_preflight_and_post_for_allowed_origin(client: Any) -> None:
    """An allowed origin gets a preflight answer and Access-Control-Allow-Origin on the post."""
    pre = await client.options("/hooks/contact", headers={"Origin": "https://example.com",
                                                          "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "content-type"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://example.com"
    assert pre.headers["Vary"] == "Origin"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "content-type"
    post = await client.post("/hooks/contact", json={"email": "a@b.com", "subject": "x"},
                             headers={"Origin": "https://example.com"})
    assert post.status == 202
    assert post.headers["Access-Control-Allow-Origin"] == "https://example.com"


async def test_cors_preflight_for_other_origin_is_refused(client: Any) -> None:
    """An origin not in cors_origins gets 403 on preflight and no CORS header on a post."""
    pre = await client.options("/hooks/contact", headers={"Origin": "https://evil.example"})
    assert pre.status == 403
    post = await client.post("/hooks/contact", json={"email": "a@b.com", "subject": "x"},
                             headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in post.headers


async def test_get_on_a_source_without_handshake_is_405(client: Any) -> None:
    """A GET to a source whose provider has no handshake is answered 405."""
    resp = await client.get("/hooks/contact")
    assert resp.status == 405


async def test_health_endpoints(client: Any) -> None:
    """/healthz answers while the process lives; /readyz once the store is open."""
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_a_client_gone_mid_upload_is_one_log_line(write_config: ConfigFactory,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends half a body and hangs up is logged once as intake.client_disconnected, no traceback."""
    from bridge.cli.serve import serve
    from tests.integration.processes import free_port

    config = write_config(CONFIG, MAPPINGS, ENV)
    port = free_port()
    config = dataclasses.replace(config, server=msgspec.structs.replace(config.server, host="127.0.0.1", port=port))
    stop = asyncio.Event()
    with capture_logs() as logs:
        server = asyncio.create_task(serve(config, workers=False, stop=stop))  # the server as `serve` runs it
        try:
            await eventually(lambda: any(e["event"] == "server.started" for e in logs))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /hooks/partner HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 100")  # the handler is reading the body now
            writer.write(b'{"id": "half a bo')
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await eventually(lambda: any(e["event"] == "intake.client_disconnected" for e in logs))
        finally:
            stop.set()
            await server
    [gone] = [e for e in logs if e["event"] == "intake.client_disconnected"]
    assert (gone["source"], gone["content_length"]) == ("partner", 1000)
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_sandbox_holds_the_newest_tickets_and_calls_only(client: Any) -> None:
    """Anyone may post a form, and each post a sandbox destination takes makes a ticket and a call in its
    simulator: past their caps the oldest are dropped, so the simulator's memory does not grow with the posts."""
    sim = runtime(client).simulators["kapture"]
    sim.max_tickets = sim.received.max_entries = 5
    for n in range(20):
        resp = await client.post("/hooks/contact", data={"email": f"a{n}@b.com", "subject": f"s{n}"},
                                 headers={"Accept": "application/json"})
        assert resp.status == 202

    async def all_sent() -> bool:
        done = await runtime(client).store.list_deliveries(DeliveryFilter(status="succeeded", limit=100))
        return len(done) == 20

    await eventually(all_sent)
    assert [t["email"] for t in sim.tickets] == [f"a{n}@b.com" for n in range(15, 20)]
    assert len(sim.received.entries) == 5


LOOPING_CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  orders: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
LOOPING = {"orders": """
    source: orders
    destination: kapture
    action: create_ticket
    fields:
      title: "{% for line in payload.lines %}{{ line.sku }};{% endfor %}"
"""}


async def test_a_render_failure_before_the_slice_ran_out_is_logged_once(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mapping that failed to render on the loop before another ran past the loop slice fails again when the
    plan is begun again in the parser thread: `routing.render_failed` is logged once (for the plan kept), as it
    is counted once and stored as one dead delivery."""
    from bridge import offload

    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)  # over at the first check of a render that loops
    bad = """
    source: orders
    destination: kapture
    action: create_ticket
    fields:
      title: {from: payload.customer, required: true}
"""
    client = await bridge_client(write_config(LOOPING_CONFIG, {"a-bad": bad, "b-orders": LOOPING["orders"]}))
    with capture_logs() as logs:
        resp = await client.post("/hooks/orders", json={"lines": [{"sku": "A1"}, {"sku": "B2"}]})
        assert resp.status == 202, await resp.text()
    assert [e["event"] for e in logs if e["event"] in ("intake.render_offloaded", "routing.render_failed")] == [
        "intake.render_offloaded", "routing.render_failed"]
    rows = await all_deliveries(client)
    assert sorted((r.mapping, r.status) for r in rows)[0] == ("a-bad", "dead")
    assert runtime(client).counters.get("render.offloaded", 0) == 1


@pytest.mark.parametrize("past_slice", [False, True], ids=["within", "past"])
async def test_a_render_past_its_slice_of_the_loop_is_done_again_in_the_parser_thread(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch,
        past_slice: bool) -> None:
    """A small request's mappings render on the loop; one whose templates run past offload.LOOP_SLICE_S (here over
    before it starts, so at their first loop step) is rendered again in the parser thread, with the same body,
    and counted."""
    import threading

    from bridge import intake, offload

    if past_slice:
        monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)  # over before it starts
    threads: list[str] = []
    calls_through(monkeypatch, intake, "_plan_each", lambda *_: threads.append(threading.current_thread().name))
    looks: list[int] = []
    calls_through(monkeypatch, intake, "offloaded", lambda body: looks.append(len(body)))
    client = await bridge_client(write_config(LOOPING_CONFIG, LOOPING))
    resp = await client.post("/hooks/orders", json={"lines": [{"sku": "A1"}, {"sku": "B2"}]})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["deliveries"] == 1
    assert [name.startswith("ticketbridge-parse") for name in threads] == ([False, True] if past_slice else [False])
    [row] = await all_deliveries(client)
    store = runtime(client).store
    assert store is not None
    detail = await store.get_delivery(row.id)
    assert detail.delivery.status != "dead"
    assert detail.body == {"title": "A1;B2;"}, detail.body
    assert runtime(client).counters.get("render.offloaded", 0) == (1 if past_slice else 0)
    assert len(looks) == 1  # one look at the body places the checks, the parse and the render
