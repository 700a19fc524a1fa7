"""The console's playground answers what intake answers for the same bytes: the handler's intercept runs with
`verify` off as on (a handshake, an ignored notification), a handler's bug is a 400 as at /hooks, and a body
intake parses in its parser thread is parsed there too."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.acceptance.console_app import ADMIN, READ
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import compact, load, multipart, slack_headers

SLACK_SECRET = "slack-signing-secret-0123456789"
CONFIG = f"""
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: admin-secret, read_tokens: {{grafana: grafana-secret}}}}
sources:
  partner: {{kind: json}}
  slk: {{kind: slack, signing_secret: {SLACK_SECRET}}}
  sg: {{kind: sendgrid}}
  pm: {{kind: postmark}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
"""
MAPPINGS = {"partner": """
    source: partner
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.title }}"
"""}

Client = TestClient[Any, Any]
JSON = {"Content-Type": "application/json"}


def _slack(data: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = compact(data)
    return body, slack_headers(SLACK_SECRET, body, timestamp=int(time.time()))


def _cases() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    sendgrid, sendgrid_type = multipart(load("sendgrid/parse.json"))  # text only: the playground takes text
    return {
        "slack handshake": ("slk", *_slack({"type": "url_verification", "challenge": "c-123", "token": "t"})),
        "slack message": ("slk", *_slack(load("slack/message.json"))),
        "slack callback without an event": ("slk", *_slack({"type": "event_callback", "event_id": "Ev1"})),
        "slack other payload": ("slk", *_slack({"type": "app_rate_limited", "team_id": "T1"})),
        "sendgrid event webhook": ("sg", compact([{"event": "delivered", "email": "a@example.com"}]), JSON),
        "sendgrid json that is no event list": ("sg", compact({"event": "delivered"}), JSON),
        "sendgrid inbound parse": ("sg", sendgrid, {"Content-Type": sendgrid_type}),
        "postmark inbound": ("pm", compact(load("postmark/inbound.json")), JSON),
        "postmark delivery record": ("pm", compact({"RecordType": "Delivery", "MessageID": "m1"}), JSON),
        "json": ("partner", compact({"title": "Printer on fire"}), JSON),
        "malformed json": ("partner", b"{not json", JSON),
    }


async def _intake_says(client: Client, source: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, Any]:
    """Intake's answer as the playground states it: outcome, status and message."""
    resp = await client.post(f"/hooks/{source}", data=body, headers=headers)
    answer = await resp.json()
    if resp.status == 202 or answer.get("event_id") or answer.get("events"):
        return "events", resp.status, None
    if "challenge" in answer:
        return "handshake", resp.status, None
    if answer.get("ignored"):
        return "ignored", resp.status, answer["ignored"]
    return "rejected", resp.status, answer["error"]


async def _playground_says(client: Client, source: str, body: bytes, headers: dict[str, str],
                           verify: bool) -> tuple[str, int | None, Any]:
    resp = await client.post("/admin/api/playground", headers=READ, json={
        "source": source, "body": body.decode(), "headers": headers, "verify": verify})
    assert resp.status == 200, await resp.text()
    out = await resp.json()
    return out["outcome"], out["status"], out["message"]


@pytest.mark.parametrize("case", list(_cases()))
async def test_the_playground_answers_what_intake_answers_for_the_same_bytes(
        write_config: ConfigFactory, bridge_client: AppClient, case: str) -> None:
    """With `verify` off (the console's default) and on, a signed body gets intake's outcome: a Slack handshake
    is a handshake (not a 500), a SendGrid Event Webhook post is ignored (not refused), a refusal is intake's
    status and words."""
    client = await bridge_client(write_config(CONFIG, MAPPINGS), workers=False)
    source, body, headers = _cases()[case]
    off = await _playground_says(client, source, body, headers, verify=False)
    on = await _playground_says(client, source, body, headers, verify=True)
    outcome, status, message = await _intake_says(client, source, body, headers)
    expected = (outcome, None if outcome == "events" else status, message)
    handshake = ("handshake", 200)
    assert off[:2] == handshake if outcome == "handshake" else off == expected
    assert on[:2] == handshake if outcome == "handshake" else on == expected


async def test_a_handlers_bug_is_intakes_400_in_the_playground(write_config: ConfigFactory,
                                                                bridge_client: AppClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that raises something other than a refusal on some bytes is answered 400 naming the error at
    /hooks; the playground says the same, rather than failing with a 500."""
    client = await bridge_client(write_config(CONFIG, MAPPINGS), workers=False)
    handler = runtime(client).sources["partner"].handler

    def broken(request: web.Request, body: bytes) -> Any:
        raise KeyError("event")

    monkeypatch.setattr(handler, "parse", broken)
    body = compact({"title": "x"})
    assert await _playground_says(client, "partner", body, JSON, verify=False) == await _intake_says(
        client, "partner", body, JSON) == ("rejected", 400, "the request could not be parsed (KeyError); the error "
                                                             "is logged")


async def test_the_playground_parses_a_many_part_body_in_intakes_parser_thread(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SendGrid post of many MIME parts is parsed off the event loop by the playground, as intake parses it, so
    that the server keeps answering meanwhile."""
    client = await bridge_client(write_config(CONFIG, MAPPINGS), workers=False)
    handler = runtime(client).sources["sg"].handler
    parse = handler.parse
    threads: list[str] = []

    def spied(request: web.Request, body: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return parse(request, body)

    monkeypatch.setattr(handler, "parse", spied)
    # 60 parts: past OFFLOAD_MIME_LINES, so that intake parses the body in its parser thread
    parts = "".join(f"--B\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(60))
    mime = ("From: a@example.com\r\nTo: s@example.com\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="B"\r\n\r\n{parts}--B--\r\n')
    body, content_type = multipart({"email": mime})
    out = await client.post("/admin/api/playground", headers=ADMIN, json={
        "source": "sg", "body": body.decode(), "headers": {"Content-Type": content_type}})
    assert out.status == 200 and (await out.json())["outcome"] == "events", await out.text()
    intake = await client.post("/hooks/sg", data=body, headers={"Content-Type": content_type})
    assert intake.status == 202
    assert len(threads) == 2 and all(name.startswith("ticketbridge-parse") for name in threads), threads


async def test_the_playground_and_an_events_page_explain_past_the_loop_slice_in_the_parser_thread(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explaining a mapping renders its templates as intake does: past the loop slice (here over before it
    starts), the explanation is made again off the loop, in the console's own thread (so that a read token's
    explanations never queue ahead of intake's parses), and says the same."""
    from structlog.testing import capture_logs

    from bridge import offload
    from bridge.console import api, playground

    threads: list[str] = []
    decisions = playground.decisions

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return decisions(*args)

    monkeypatch.setattr(playground, "decisions", recording)
    monkeypatch.setattr(api, "decisions", recording)
    looping = {"partner": MAPPINGS["partner"].replace('"{{ payload.title }}"',
                                                      '"{% for w in [payload.title] %}{{ w }}{% endfor %}"')}
    client = await bridge_client(write_config(CONFIG, looping), workers=False)
    body = compact({"title": "Printer on fire"})
    ask = {"source": "partner", "body": body.decode(), "headers": JSON}
    within = await (await client.post("/admin/api/playground", headers=ADMIN, json=ask)).json()
    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)
    with capture_logs() as logs:
        past = await (await client.post("/admin/api/playground", headers=ADMIN, json=ask)).json()
        accepted = await client.post("/hooks/partner", data=body, headers=JSON)
        event_id = (await accepted.json())["event_id"]
        page = await (await client.get(f"/admin/api/events/{event_id}", headers=ADMIN)).json()
    [decision] = past["events"][0]["decisions"]
    assert decision["fields"] == {"title": "Printer on fire"}
    assert past["events"][0]["decisions"] == within["events"][0]["decisions"]
    assert page["decisions"] == within["events"][0]["decisions"]
    assert [(e["event"], e.get("what")) for e in logs if e["event"].endswith(("render.offloaded", "render_offloaded"))
            ] == [("render.offloaded", "playground"), ("intake.render_offloaded", None),
                  ("render.offloaded", "event_view")]
    # the loop's (within), then each past the slice begun on the loop and made again in the console's own thread,
    # never intake's parser thread
    assert [name.split("_")[0] for name in threads] == [
        "MainThread", "MainThread", "ticketbridge-console", "MainThread", "ticketbridge-console"]
